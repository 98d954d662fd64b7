"""JSON files and JSON lines that are always valid JSON.

JSON has no NaN or infinity; Python's ``json`` writes them as bare ``NaN`` / ``Infinity``, which
other readers reject. Every file the library writes goes through here: a non-finite number is
written as ``null`` and its place is named beside it (``nonfinite_values`` in a file,
``nonfinite`` in a metrics line), so nothing is silently lost or made up.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np


def _plain(x):
    """``x`` as plain Python data: arrays and numpy scalars become lists and numbers."""
    if isinstance(x, np.generic) or (hasattr(x, "__array__") and not isinstance(x, (dict, list, tuple, str))):
        return np.asarray(x).tolist()
    return x


def finite_json(payload: Any) -> tuple[Any, list[str]]:
    """``payload`` with every NaN / infinite number replaced by ``None`` (JSON ``null``), and the
    paths where that happened (``"a.b[2]"``; ``"$"`` for the payload itself). Arrays and numpy
    scalars become lists and numbers."""
    where: list[str] = []

    def clean(x, path):
        x = _plain(x)
        if isinstance(x, float) and not math.isfinite(x):
            where.append(path or "$")
            return None
        if isinstance(x, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(x)]
        return x

    return clean(payload, ""), where


def _json_default(x):
    return str(x)


def write_json(path: str, payload: Any) -> None:
    """Write ``payload`` as valid JSON, atomically (temporary file, fsync, rename).

    Non-finite numbers are written as ``null`` and their paths listed under
    ``"nonfinite_values"`` (a dict payload), so the file says what it replaced.
    """
    payload, where = finite_json(payload)
    if where and isinstance(payload, dict):
        payload = dict(payload, nonfinite_values=where)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_line(record: dict) -> str:
    """One metrics record as one line of valid JSON (ending in a newline).

    Non-finite values become ``null`` and the record gains ``"nonfinite": [<their keys>]``
    (``"grad_norm"``, ``"per_task_return[3]"``), so a skipped non-finite update is visible and
    the line still parses everywhere.
    """
    record, where = finite_json(record)
    if where:
        record = dict(record, nonfinite=where)
    return json.dumps(record, default=_json_default, allow_nan=False) + "\n"
