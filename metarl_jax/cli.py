"""Command-line plumbing of every entry point: one-line errors, exit status 2.

A rejected command line prints exactly one line on stderr, ``error: <message>``, and exits with
status 2 before any work, whatever rejected it:

* a config's own check (``field=value is invalid: <what is allowed>``, :mod:`metarl_jax.validation`);
* a value the parser cannot read at all (tyro's multi-line box is condensed to its first paragraph,
  e.g. ``error: Error parsing --horizon: invalid literal for int() with base 10: '2.5' (expected INT)``);
* an argparse error (``error: argument --iters: invalid int value: '2.5'``), through
  :class:`OneLineArgumentParser`.

``--help`` prints as usual (stdout, status 0). An unexpected internal error is not caught: it keeps
its traceback. A low layer: it imports only :mod:`metarl_jax.validation` and the standard library
(tyro when a dataclass is parsed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import sys
from typing import Any, NoReturn, Sequence

from metarl_jax.validation import check_int, require

__all__ = ["fail", "OneLineArgumentParser", "parse_dataclass", "condense_tyro_error", "int_list"]


def _one_line(message: str) -> str:
    """``message`` with its lines joined by single spaces (a message never spans lines)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with status 2 (no traceback)."""
    print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are one line, ``error: <argparse's message>``.

    argparse's own :meth:`~argparse.ArgumentParser.error` prints the usage block and then the
    error; here the usage is left to ``--help``, which works as before.
    """

    def error(self, message: str) -> NoReturn:
        fail(message)


def int_list(field: str, values: Sequence[Any], *, minimum: int | None = 1) -> list[int]:
    """The integers of command-line values such as ``["1,2", "4"]`` (commas or spaces separate them).

    Each must parse as an integer ``>= minimum``; else ``ValueError`` naming ``field`` and the
    rejected text, e.g. ``meta_batch='x' is invalid: must be an integer >= 1``. At least one is required.
    """
    out = []
    text = "an integer" + ("" if minimum is None else f" >= {minimum}")
    for item in (x for v in values for x in str(v).replace(",", " ").split()):
        require(re.fullmatch(r"[+-]?\d+", item) is not None, field, item, f"must be {text}")
        out.append(check_int(field, int(item), minimum=minimum))
    require(len(out) >= 1, field, list(values), f"must be at least one value, each {text}")
    return out


# ----------------------------------------------------------------------------- tyro

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CORNERS = "╭╮╰╯┌┐└┘"
_RULE_CHARS = set("─━-=+ ") | set(_CORNERS)
_VERTICALS = "│┃"


def _box_rows(text: str) -> list[tuple[str, int, str]]:
    """``(kind, indent, text)`` per line of a rendered tyro box, borders and colours removed.

    ``kind`` is ``"corner"`` (a line that opens or closes a UTF-8 box, its title included),
    ``"rule"`` (a horizontal rule), ``"blank"`` or ``"text"``; ``indent`` is the text's
    indentation inside the box.
    """
    rows = []
    for raw in _ANSI.sub("", text).splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if stripped[:1] in _CORNERS and stripped:
            rows.append(("corner", 0, stripped))
            continue
        if len(stripped) >= 2 and stripped[0] in _VERTICALS and stripped[-1] == stripped[0]:
            line = stripped[1:-1].rstrip()
        content = line.strip()
        if not content:
            rows.append(("blank", 0, ""))
        elif len(content) >= 3 and set(content) <= _RULE_CHARS:
            rows.append(("rule", 0, content))
        else:
            rows.append(("text", len(line) - len(line.lstrip()), content))
    return rows


def condense_tyro_error(text: str) -> str:
    """One line from tyro's error box: its first paragraph, plus the expected metavar where shown.

    The box's title (``Value error``, ``Unrecognized options``...) is dropped; the first paragraph's
    wrapped lines are joined; a paragraph ending in ``:`` (``Missing from <prog>:``) gets the options
    listed under it; ``Argument helptext:`` followed by ``--flag METAVAR`` adds ``(expected METAVAR)``.
    Any other shape falls back to the first non-empty content line; an empty text to a fixed message.
    Never raises.
    """
    try:
        rows = _box_rows(text)
        start = next((i for i, r in enumerate(rows) if r[0] == "corner"), None)
        if start is not None:
            body = rows[start + 1:]
        else:  # no UTF-8 border: the first text line is the title when a rule follows it
            body = rows
            texts = [i for i, r in enumerate(body) if r[0] != "blank"]
            if len(texts) >= 2 and body[texts[0]][0] == "text" and body[texts[1]][0] == "rule":
                body = body[texts[1] + 1:]
        first = next((i for i, r in enumerate(body) if r[0] == "text"), None)
        if first is None:
            fallback = next((r[2] for r in rows if r[0] != "blank"), "")
            return fallback or "the command line could not be parsed"
        indent = body[first][1]
        parts, i = [], first
        while i < len(body) and body[i][0] == "text" and body[i][1] == indent:
            parts.append(body[i][2])
            i += 1
        message = " ".join(parts)
        if message.endswith(":") and i < len(body) and body[i][0] == "text" and body[i][1] > indent:
            item_indent, items = body[i][1], []
            while i < len(body) and body[i][0] == "text" and body[i][1] >= item_indent:
                if body[i][1] == item_indent:
                    items.append(body[i][2])
                i += 1
            message += " " + ", ".join(items)
        for j, row in enumerate(body):
            if row[0] == "text" and row[2] == "Argument helptext:":
                usage = next((r[2] for r in body[j + 1:] if r[0] == "text"), "")
                match = re.match(r"(-\S+)\s+([^-\s].*)$", usage)
                if match:
                    message += f" (expected {match.group(2)})"
                break
        return message
    except Exception:  # noqa: BLE001 - condensing must never hide the error it condenses
        return next((line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()),
                    "the command line could not be parsed")


def _as_tuples(value: Any) -> Any:
    """JSON lists back to tuples (recursively): a saved config's tuples are read back as lists."""
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def parse_dataclass(config_cls, argv: Sequence[str] | None = None, description: str | None = None,
                    defaults: dict | None = None):
    """A config dataclass from the command line (tyro), validated; any rejection is one line, status 2.

    tyro parses into a subclass whose ``__post_init__`` does nothing (tyro would report the config's
    ``ValueError`` in a multi-line box); the config itself is then built here from the parsed fields,
    ``config_cls(**values)``, so it is validated exactly as in Python, and a ``ValueError`` prints
    ``error: <field>=<value> is invalid: <allowed>``. A command line tyro cannot parse (a value of the
    wrong type, an unknown flag, a missing value or option) prints its error condensed to one line
    (:func:`condense_tyro_error`). ``--help`` prints to stdout as usual (status 0).

    ``defaults``: field values (e.g. a saved ``config.json``; lists are read as tuples) that replace
    the class defaults for this parse, so flags not given take those values. A key that is not a
    field is rejected in one line.
    """
    import tyro

    fields = [f.name for f in dataclasses.fields(config_cls) if f.init]
    unchecked = type(config_cls.__name__, (config_cls,), {
        "__post_init__": lambda self: None, "__doc__": config_cls.__doc__,
        "__module__": config_cls.__module__, "__qualname__": config_cls.__qualname__})
    kwargs = {}
    if defaults is not None:
        unknown = sorted(set(defaults) - set(fields))
        if unknown:
            fail(f"{unknown[0]}={defaults[unknown[0]]!r} is invalid: not a field of {config_cls.__name__}")
        values = {name: _as_tuples(value) for name, value in defaults.items()}
        required = [f.name for f in dataclasses.fields(config_cls) if f.init and f.name not in values
                    and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        kwargs["default"] = unchecked(**values, **{name: tyro.MISSING for name in required})
    captured = io.StringIO()
    message = None
    try:
        with contextlib.redirect_stderr(captured):
            parsed = tyro.cli(unchecked, args=argv, description=description, **kwargs)
    except SystemExit as exit_info:
        if exit_info.code in (0, None):
            raise  # --help (printed to stdout) or a completion script
        message = condense_tyro_error(captured.getvalue())
    finally:
        if message is None:  # passed on unchanged: warnings, a help request, an internal error
            sys.stderr.write(captured.getvalue())
    if message is not None:
        fail(message)
    values = {name: getattr(parsed, name) for name in fields}
    try:
        return config_cls(**values)
    except ValueError as err:
        fail(str(err))
