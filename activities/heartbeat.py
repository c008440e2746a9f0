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
bounded by its start-to-close timeout, as before. Activities that heartbeat their own progress (propagation,
whose retry resumes from the details) do not use these: a beat without details would replace them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Iterator

from temporalio import activity

BEAT_EVERY = 2.0
"""Seconds between liveness heartbeats: far inside the workflows' 10 s heartbeat timeout."""


def _listened() -> bool:
    return activity.in_activity() and bool(activity.info().heartbeat_timeout)


@contextlib.contextmanager
def beating(every: float = BEAT_EVERY) -> Iterator[None]:
    """For blocking activities: heartbeat from a side thread while the body runs."""
    if not _listened():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            # The SDK's heartbeat of a threaded activity is thread-safe; it needs the activity's context,
            # which ``context.run`` gives this thread.
            with contextlib.suppress(Exception):  # a heartbeat lost is no reason to fail the activity
                activity.heartbeat()

    context = contextvars.copy_context()
    name = f"heartbeat-{activity.info().activity_type}"
    thread = threading.Thread(target=context.run, args=(beat,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.asynccontextmanager
async def beating_async(every: float = BEAT_EVERY) -> AsyncIterator[None]:
    """For async activities: heartbeat from a task while the body awaits."""
    if not _listened():
        yield
        return

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):  # as above: a lost beat must not fail the body
                activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
