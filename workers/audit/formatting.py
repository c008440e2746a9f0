"""How the audit puts things into words: spans, times, durations, step and timer names.

Shared by the timeline's chronology and the renderings, so a step or a span reads the same everywhere.
"""

from __future__ import annotations

from datetime import datetime, timedelta

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


def format_time(value: datetime | None, day: bool = False) -> str:
    if value is None:
        return "-"
    text = value.strftime("%Y-%m-%d %H:%M:%S.%f" if day else "%H:%M:%S.%f")[:-3]
    return f"{text} UTC" if day else text


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def format_yes(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def format_met(value: bool | None) -> str:
    return "not known" if value is None else ("**met**" if value else "**missed**")


def identity_words(identity: str | None, key: str | None, gateway: str | None) -> str:
    """How an answer was proven: the words of the timeline and of ``drflow audit verify``."""
    if identity == "ssh-key":
        return f"ssh-key {key or '(no key recorded)'}"
    if identity == "slack-gateway":
        return f"Slack click attested by gateway {gateway or '?'} {key or '(no key recorded)'}"
    if identity == "unverified":
        return "identity not verified"
    return "identity not verified (no people file)"
