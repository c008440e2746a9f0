"""Durations as operators write them in runbooks: ``30s``, ``5m``, ``1h30m``, ``250ms``.

A bare number is refused on purpose: ``ttl: 30`` is seconds by DNS convention, but ``rto: 5`` could be
anything, and a runbook is read under stress.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m`` style text; raise ValueError with an example of the expected form."""
    compact = text.strip()
    if not compact or not re.fullmatch(DURATION_PATTERN, compact):
        raise ValueError(f"invalid duration {text!r}: use a number with a unit, e.g. 30s, 5m, 1h30m, 250ms")
    seconds = sum(float(value) * _UNIT_SECONDS[unit] for value, unit in _PART.findall(compact))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render the shortest runbook form, so a dumped runbook reads like the one written."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    sign = "-" if total_ms < 0 else ""
    total_ms = abs(total_ms)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        amount, total_ms = divmod(total_ms, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return sign + "".join(parts)


def _coerce(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"invalid duration {value!r}: write it as text with a unit, e.g. 30s, 5m, 1h")


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "5m", "1h30m"]}),
]
