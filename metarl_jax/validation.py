"""Argument validation shared by every config: one message shape, ``field=value is invalid: <allowed>``."""

from __future__ import annotations


def require(cond: bool, field: str, value, allowed: str) -> None:
    """Raise ``ValueError(f"{field}={value!r} is invalid: {allowed}")`` unless ``cond``."""
    if not cond:
        raise ValueError(f"{field}={value!r} is invalid: {allowed}")
