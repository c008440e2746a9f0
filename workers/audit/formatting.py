"""How the audit puts things into words: spans, step and timer names.

Shared by the timeline's chronology and the renderings, so a step or a span reads the same everywhere.
"""

from __future__ import annotations

from datetime import timedelta

from workers.audit.model import ActivityRecord, TimerRecord


def format_span(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def step_name(record: ActivityRecord) -> str:
    return f"{record.name} ({record.summary})" if record.summary else record.name


def timer_name(record: TimerRecord) -> str:
    return f"of {record.seconds:g}s" + (f" ({record.summary})" if record.summary else "")
