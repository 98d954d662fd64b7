"""Argument and config validation shared by every module (the lowest layer: no jax, no project imports).

Every check raises ``ValueError`` with one message shape::

    f"{field}={value!r} is invalid: {allowed}"

naming the field, the rejected value (its ``repr``) and what is allowed (a range, the choices).
Types are strict, so a config never holds a value its code would silently convert:

* integers: Python ``int`` and numpy integers; ``bool`` (an ``int`` subclass), floats (``2.0``
  included), strings and ``None`` are rejected;
* real numbers: ``int``, ``float`` and numpy integers / floats, finite (``NaN`` and ``+-inf`` are
  rejected); ``bool`` and strings are rejected;
* booleans: ``bool`` and ``numpy.bool_`` only (not ``0`` / ``1``).

The ``check_*`` helpers return the value converted to the plain Python type (``int``, ``float``,
``bool``, a tuple) so callers can store it; a frozen dataclass's ``__post_init__`` calls them for
their side effect.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Sequence

import numpy as np

__all__ = [
    "require",
    "is_int",
    "is_real",
    "check_int",
    "check_optional_int",
    "check_real",
    "check_optional_real",
    "check_probability",
    "check_bool",
    "check_choice",
    "check_int_sequence",
    "check_real_sequence",
    "check_interval",
    "check_writable_dir",
]


def require(cond: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ``ValueError(f"{field}={value!r} is invalid: {allowed}")`` unless ``cond``.

    The primitive every other check uses; call it directly for conditions specific to one
    config (a field that depends on another, a type check). ``allowed`` says what is allowed
    ("must be ...", "allowed values are ..."), not what went wrong.
    """
    if not cond:
        raise ValueError(f"{field}={value!r} is invalid: {allowed}")


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (``bool`` and ``numpy.bool_`` excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number: ``int``, ``float``, a numpy integer or floating.

    ``bool`` / ``numpy.bool_``, strings, ``None``, arrays, ``NaN`` and ``+-inf`` are not.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return False
    return is_int(value) or math.isfinite(value)  # an int too large for a float is still finite


def _number(x: float) -> str:
    """A bound as written in a message: ``0``, ``1``, ``0.5``, ``2.4`` (no trailing ``.0``)."""
    return f"{x:g}"


def _bounds_text(minimum, maximum, min_open: bool, max_open: bool) -> str:
    """``" >= 1"``, ``" > 0"``, ``" <= 5"``, ``" in [0, 1)"`` or ``""`` (a leading space when not empty)."""
    if minimum is not None and maximum is not None:
        return f" in {'(' if min_open else '['}{_number(minimum)}, {_number(maximum)}{')' if max_open else ']'}"
    if minimum is not None:
        return f" {'>' if min_open else '>='} {_number(minimum)}"
    if maximum is not None:
        return f" {'<' if max_open else '<='} {_number(maximum)}"
    return ""


def _in_bounds(value, minimum, maximum, min_open: bool, max_open: bool) -> bool:
    """Whether ``value`` lies between the bounds (``None``: unbounded on that side)."""
    if minimum is not None and not (value > minimum if min_open else value >= minimum):
        return False
    if maximum is not None and not (value < maximum if max_open else value <= maximum):
        return False
    return True


def _int_text(minimum: int | None, maximum: int | None) -> str:
    """``"an integer >= 1"``, ``"an integer in [1, 4]"``, ``"an integer"``..."""
    return "an integer" + _bounds_text(minimum, maximum, False, False)


def check_int(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``int(value)`` if ``value`` is an integer in ``[minimum, maximum]`` (``None``: unbounded), else ``ValueError``.

    Accepts Python and numpy integers; rejects ``bool``, floats (even ``2.0``), strings and ``None``.
    Message: ``"must be an integer >= 1"``, ``"must be an integer in [1, 4]"``...
    """
    require(is_int(value) and _in_bounds(value, minimum, maximum, False, False), field, value,
            f"must be {_int_text(minimum, maximum)}")
    return int(value)


def check_optional_int(field: str, value: Any, *, minimum: int | None = None,
                       maximum: int | None = None) -> int | None:
    """``None`` for ``None``, else :func:`check_int` of ``value`` (message ``"must be None or an integer >= 1"``)."""
    if value is None:
        return None
    require(is_int(value) and _in_bounds(value, minimum, maximum, False, False), field, value,
            f"must be None or {_int_text(minimum, maximum)}")
    return int(value)


def _real_text(minimum, maximum, min_open: bool, max_open: bool) -> str:
    """``"a finite number > 0"``, ``"a number in (0, 1]"`` (two bounds imply finite), ``"a finite number"``."""
    if minimum is not None and maximum is not None:
        return "a number" + _bounds_text(minimum, maximum, min_open, max_open)
    return "a finite number" + _bounds_text(minimum, maximum, min_open, max_open)


def check_real(field: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
               min_open: bool = False, max_open: bool = False) -> float:
    """``float(value)`` if ``value`` is a finite real number between the bounds, else ``ValueError``.

    The interval is ``[minimum, maximum]``; ``min_open`` / ``max_open`` exclude that end
    (``minimum=0, min_open=True`` is ``> 0``); ``None`` leaves that side unbounded. Accepts
    ``int``, ``float`` and numpy numbers; rejects ``bool``, strings, ``None``, ``NaN`` and ``+-inf``.
    Message: ``"must be a finite number > 0"``, ``"must be a number in (0, 1]"``...
    """
    require(is_real(value) and _in_bounds(value, minimum, maximum, min_open, max_open), field, value,
            f"must be {_real_text(minimum, maximum, min_open, max_open)}")
    return float(value)


def check_optional_real(field: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                        min_open: bool = False, max_open: bool = False) -> float | None:
    """``None`` for ``None``, else :func:`check_real` of ``value`` (message ``"must be None or a ..."``)."""
    if value is None:
        return None
    require(is_real(value) and _in_bounds(value, minimum, maximum, min_open, max_open), field, value,
            f"must be None or {_real_text(minimum, maximum, min_open, max_open)}")
    return float(value)


def check_probability(field: str, value: Any) -> float:
    """:func:`check_real` on ``[0, 1]``: ``"must be a number in [0, 1]"``."""
    return check_real(field, value, minimum=0.0, maximum=1.0)


def check_bool(field: str, value: Any) -> bool:
    """``bool(value)`` if ``value`` is ``True`` or ``False`` (``bool`` or ``numpy.bool_``), else ``ValueError``.

    ``0``, ``1``, ``"yes"`` and ``None`` are rejected. Message: ``"must be True or False"``.
    """
    require(isinstance(value, (bool, np.bool_)), field, value, "must be True or False")
    return bool(value)


def _same_choice(value: Any, choice: Any) -> bool:
    """``value == choice`` for a value of the choice's type (so ``True`` is not ``1`` and arrays never compare)."""
    if choice is None or value is None:
        return value is choice
    if isinstance(value, bool) != isinstance(choice, bool) or not isinstance(value, type(choice)):
        return False
    return bool(value == choice)


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (of the choice's type), else ``ValueError``.

    Message: ``"must be one of 'a', 'b'"`` (each choice's ``repr``).
    """
    choices = tuple(choices)
    require(any(_same_choice(value, c) for c in choices), field, value,
            f"must be one of {', '.join(repr(c) for c in choices)}")
    return value


def _is_sequence(value: Any) -> bool:
    """A tuple or list (a string is not a sequence of values here)."""
    return isinstance(value, (tuple, list))


def check_int_sequence(field: str, value: Any, *, minimum: int | None = 1, min_length: int = 1) -> tuple[int, ...]:
    """``tuple(int(v) for v in value)`` if ``value`` is a tuple or list of at least ``min_length``
    integers each ``>= minimum`` (e.g. hidden layer sizes), else ``ValueError``.

    Elements follow :func:`check_int`'s types (no ``bool``, no floats). Message:
    ``"must be a non-empty sequence of integers >= 1"``.
    """
    ok = (_is_sequence(value) and len(value) >= min_length
          and all(is_int(v) and _in_bounds(v, minimum, None, False, False) for v in value))
    size = "a non-empty sequence" if min_length == 1 else f"a sequence of at least {min_length}" if min_length else "a sequence"
    require(ok, field, value, f"must be {size} of integers{_bounds_text(minimum, None, False, False)}")
    return tuple(int(v) for v in value)


def check_real_sequence(field: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                        min_open: bool = False, max_open: bool = False, min_length: int = 1) -> tuple[float, ...]:
    """``tuple(float(v) for v in value)`` if ``value`` is a tuple or list of at least ``min_length``
    finite numbers each between the bounds (as in :func:`check_real`), else ``ValueError``.

    Message: ``"must be a non-empty sequence of finite numbers > 0"``.
    """
    ok = (_is_sequence(value) and len(value) >= min_length
          and all(is_real(v) and _in_bounds(v, minimum, maximum, min_open, max_open) for v in value))
    size = "a non-empty sequence" if min_length == 1 else f"a sequence of at least {min_length}" if min_length else "a sequence"
    require(ok, field, value,
            f"must be {size} of finite numbers{_bounds_text(minimum, maximum, min_open, max_open)}")
    return tuple(float(v) for v in value)


def check_interval(field: str, value: Any, *, minimum: float | None = None,
                   maximum: float | None = None) -> tuple[float, float]:
    """``(float(lo), float(hi))`` if ``value`` is a pair ``(lo, hi)`` of finite numbers with
    ``minimum <= lo < hi <= maximum`` (``None``: unbounded on that side), else ``ValueError``.

    A range to sample from (``lo == hi`` is not a range). Message:
    ``"must be a pair (lo, hi) of finite numbers with -2 <= lo < hi <= 2"``.
    """
    ok = (_is_sequence(value) and len(value) == 2 and all(is_real(v) for v in value)
          and value[0] < value[1] and _in_bounds(value[0], minimum, None, False, False)
          and _in_bounds(value[1], None, maximum, False, False))
    low = "" if minimum is None else f"{_number(minimum)} <= "
    high = "" if maximum is None else f" <= {_number(maximum)}"
    require(ok, field, value, f"must be a pair (lo, hi) of finite numbers with {low}lo < hi{high}")
    return float(value[0]), float(value[1])


def check_writable_dir(field: str, path: Any) -> str:
    """``path`` if an output directory can be used there, else ``ValueError``; nothing is created.

    Allowed: an existing writable directory, or a path that does not exist yet whose nearest
    existing ancestor is a writable directory (so ``os.makedirs`` can create it). Refused, each
    named in the message: an empty or non-string path, a path that is a regular file (or any
    non-directory), a path that lies under a regular file, a dangling symbolic link, and a
    directory without write permission. Write permission is read with ``os.access`` (best effort:
    a privileged user passes it everywhere). Message:
    ``"out_dir='f/runs' is invalid: it lies under the regular file 'f'; must be a writable directory
    or a path where one can be created"``.
    """
    allowed = "must be a writable directory or a path where one can be created"
    require(isinstance(path, (str, os.PathLike)) and os.fspath(path) != "", field, path, f"{allowed} (a non-empty path)")
    full = os.path.abspath(os.fspath(path))
    if os.path.lexists(full) and not os.path.exists(full):
        require(False, field, path, f"it is a symbolic link to nothing; {allowed}")
    if os.path.exists(full):
        kind = "a regular file" if os.path.isfile(full) else "not a directory"
        require(os.path.isdir(full), field, path, f"it is {kind}; {allowed}")
        require(os.access(full, os.W_OK | os.X_OK), field, path, f"{full!r} is not writable; {allowed}")
        return os.fspath(path)
    ancestor = os.path.dirname(full)
    while not os.path.exists(ancestor) and not os.path.lexists(ancestor) and ancestor != os.path.dirname(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        kind = "regular file" if os.path.isfile(ancestor) else "non-directory"
        require(False, field, path, f"it lies under the {kind} {ancestor!r}; {allowed}")
    require(os.access(ancestor, os.W_OK | os.X_OK), field, path, f"{ancestor!r} is not writable; {allowed}")
    return os.fspath(path)
