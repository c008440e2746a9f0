"""The replication lag's trend over the last checks: a warning while the lag is still far from the RPO.

A lag at 20 % of the RPO is no warning on its own; the same lag after 5 %, 10 % and 15 % at the three
checks before, rising at a rate that reaches the RPO within the runbook's ``trend_horizon``, is one. From
``warn_at`` of the RPO on, ``lag-near-rpo`` speaks instead: one incident, one warning. Pure,
over the checks Temporal kept (activities/readiness_history.py) and this check's measurement.
"""

from __future__ import annotations

from datetime import datetime

from activities.database.results import ReplicationStatus
from activities.readiness_history import PastCheck
from runbooks.durations import format_duration
from runbooks.model import Objectives
from workflows.readiness_report import EarlyWarning

MIN_POINTS = 3  # two points are a line through noise; three agree on a direction
LAG_FLOOR = 1.0  # seconds: below it a rise is jitter, whatever the slope


def lag_trend(
    past: list[PastCheck], now: datetime, current: list[ReplicationStatus], objectives: Objectives
) -> list[EarlyWarning]:
    rpo = objectives.rpo.total_seconds()
    horizon = objectives.lag_trend_horizon.total_seconds()
    found: list[EarlyWarning] = []
    for status in current:
        lag = status.lag_seconds
        if lag is None or rpo <= 0 or lag >= objectives.warn_fraction * rpo or lag < LAG_FLOOR:
            continue  # unknown; past warn_at (``lag-near-rpo`` says it already); too small to mean anything
        points = sorted(
            [
                (check.checked_at, past_lag.lag_seconds)
                for check in past
                for past_lag in check.lags
                if past_lag.primary_region == status.primary_region
                and past_lag.standby_region == status.standby_region
                and past_lag.lag_seconds is not None
                and check.checked_at < now
            ]
            + [(now, lag)]
        )
        if len(points) < MIN_POINTS or points[0][1] >= lag:
            continue
        slope = _slope([((t - points[0][0]).total_seconds(), value) for t, value in points])
        if slope <= 0:
            continue
        reach = (rpo - lag) / slope
        if reach > horizon:
            continue
        span = format_duration(now - points[0][0])
        found.append(EarlyWarning(
            code="lag-rising",
            message=f"replication lag {status.primary_region} → {status.standby_region} rose from "
            f"{points[0][1]:.1f}s to {lag:.1f}s over the last {len(points)} checks ({span}); at this rate it "
            f"passes the RPO of {format_duration(objectives.rpo)} in about {_about(reach)} (warns within "
            f"{format_duration(objectives.lag_trend_horizon)})",
        ))  # fmt: skip
    return found


def _slope(points: list[tuple[float, float]]) -> float:
    """Least squares: seconds of lag gained per second of wall time."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def _about(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))}s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)}m"
    return f"{seconds / 3600:.1f}h"
