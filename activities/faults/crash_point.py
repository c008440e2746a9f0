"""A worker that kills itself with -9 at one chosen activity boundary: the crash of a sweep.

``DRFLOW_FAULT_CRASH_AT=<when>:<WorkflowType>/<activity_type>#<n>`` makes ``drflow worker`` SIGKILL its own
process at the ``n``-th first attempt of ``activity_type`` in runs of ``WorkflowType``:

- ``before``: the activity task was handed to this worker, nothing of it ran (the server still waits for it);
- ``after``: the activity did its work and the worker dies before the server hears the result, so the
  retry finds the effect already there: the case that proves an activity idempotent.

A sweep (tests/test_fault_sweep.py) finds the boundaries in a clean run's history, then runs once per
boundary with a worker started with this variable and a replacement started without it. Only the first
attempts count, so the replacement (which has no variable anyway) and retries never crash. The process kills
only itself; the worker logs a warning at start while the variable is set.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass
from typing import Any, Literal

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

CRASH_ENV = "DRFLOW_FAULT_CRASH_AT"
_SPEC = re.compile(r"^(before|after):([A-Za-z][A-Za-z0-9_]*)/([a-z][a-z0-9_]*)#([1-9][0-9]*)$")


@dataclass(frozen=True)
class CrashAt:
    when: Literal["before", "after"]
    workflow_type: str
    activity_type: str
    occurrence: int

    @classmethod
    def parse(cls, text: str) -> CrashAt:
        match = _SPEC.match(text.strip())
        if match is None:
            raise ValueError(
                f"{CRASH_ENV}={text!r}: expected <before|after>:<WorkflowType>/<activity_type>#<n>, "
                "e.g. after:Failover/db_promote#1"
            )
        when, workflow_type, activity_type, occurrence = match.groups()
        return cls(when, workflow_type, activity_type, int(occurrence))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.when}:{self.workflow_type}/{self.activity_type}#{self.occurrence}"

    @classmethod
    def from_env(cls) -> CrashAt | None:
        text = os.environ.get(CRASH_ENV)
        return cls.parse(text) if text else None


class CrashPointInterceptor(Interceptor):
    """Counts first attempts per (workflow, activity) type in this process; kills it at the chosen one."""

    def __init__(self, at: CrashAt) -> None:
        self.at = at
        self._seen = 0  # first attempts of the chosen activity in runs of the chosen type, in this process
        self._lock = threading.Lock()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CrashingActivity(next, self)

    def crashes(self, info: activity.Info) -> bool:
        chosen = (self.at.workflow_type, self.at.activity_type)
        if info.attempt != 1 or (info.workflow_type, info.activity_type) != chosen:
            return False
        with self._lock:
            self._seen += 1
            return self._seen == self.at.occurrence


class _CrashingActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, points: CrashPointInterceptor) -> None:
        super().__init__(next)
        self._points = points

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        crash = self._points.crashes(activity.info())
        if crash and self._points.at.when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = await self.next.execute_activity(input)
        if crash:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
