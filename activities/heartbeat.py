"""Liveness heartbeats while an activity blocks: a dead worker costs a heartbeat timeout, not the whole
start-to-close timeout.

A promotion blocked in ``pg_promote`` or a fence blocked in ``pg_ctl stop`` cannot heartbeat from its own
code, so without this a worker killed mid-call was noticed only when the start-to-close timeout expired (tried
on the sandbox: a kill -9 during promotion cost the 120 s timeout although the worker was back in 35 s). These
helpers beat from beside the call instead: a thread for blocking activities (the worker's thread pool), a
task for async ones. They beat only where the caller set a heartbeat timeout (otherwise nobody listens, and
each heartbeat is a billable action on Temporal Cloud), and not before ``every`` seconds have passed, so a
short activity sends none.

They prove the worker is alive, not that the call makes progress: a call that hangs with a live worker is
bounded by its start-to-close timeout, as before. A body that wants its retry to know what it did calls
``progress(...)`` before the step that must not be repeated blindly (``pg_promote``): that beat is sent at
once when it is the attempt's first (the SDK throttles later ones), and the liveness beats repeat its
details instead of replacing them; the retry reads them with ``previous_progress()``. Activities that
heartbeat their own progress on every poll (propagation) do not use the liveness beats at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from temporalio import activity

BEAT_EVERY = 2.0
"""Seconds between liveness heartbeats: far inside the workflows' 10 s heartbeat timeout."""


class _Details:
    """What the liveness beats send: the last ``progress`` of the body, or nothing."""

    def __init__(self) -> None:
        self.values: tuple[Any, ...] = ()


_details: contextvars.ContextVar[_Details | None] = contextvars.ContextVar("drflow_heartbeat", default=None)


def _listened() -> bool:
    return activity.in_activity() and bool(activity.info().heartbeat_timeout)


def _beat(details: _Details) -> None:
    with contextlib.suppress(Exception):  # a heartbeat lost is no reason to fail the activity
        activity.heartbeat(*details.values)


def progress(*values: Any) -> None:
    """Heartbeat ``values`` now (JSON-able) and have the liveness beats of this attempt repeat them."""
    if not _listened():
        return
    details = _details.get()
    if details is None:
        details = _Details()
        _details.set(details)
    details.values = values
    _beat(details)


def previous_progress() -> list[Any]:
    """The details of the previous attempt's last heartbeat (decoded JSON), or [] on a first attempt."""
    if not activity.in_activity() or activity.info().attempt == 1:
        return []
    return list(activity.info().heartbeat_details or [])


@contextlib.contextmanager
def beating(every: float = BEAT_EVERY) -> Iterator[None]:
    """For blocking activities: heartbeat from a side thread while the body runs."""
    if not _listened():
        yield
        return
    stop = threading.Event()
    details = _Details()
    token = _details.set(details)  # before the copy: the body's progress() and this thread share it

    def beat() -> None:
        while not stop.wait(every):
            # The SDK's heartbeat of a threaded activity is thread-safe; it needs the activity's context,
            # which ``context.run`` gives this thread.
            _beat(details)

    context = contextvars.copy_context()
    name = f"heartbeat-{activity.info().activity_type}"
    thread = threading.Thread(target=context.run, args=(beat,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _details.reset(token)


@contextlib.asynccontextmanager
async def beating_async(every: float = BEAT_EVERY) -> AsyncIterator[None]:
    """For async activities: heartbeat from a task while the body awaits."""
    if not _listened():
        yield
        return

    details = _Details()
    token = _details.set(details)  # the task copies the context: the body's progress() and it share it

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            _beat(details)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        _details.reset(token)
