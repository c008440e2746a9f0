"""What every fault is (inject, remove, and the parameters a later process needs to remove it), and the
safety rule every fault checks before it changes anything.

Safety: a fault acts only on this machine's loopback addresses and on processes it was handed. An address
anywhere else is refused with ``UnsafeTarget`` before anything is changed: a reliability test or a drill
must never break a server that it did not build.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol


class FaultError(Exception):
    """A fault could not be injected or removed; the message says what, and what was left as it was."""


class UnsafeTarget(FaultError):
    """The target is outside what a fault may touch (loopback, processes handed to it); nothing changed."""


class Fault(Protocol):
    """One fault: ``inject`` breaks something, ``remove`` puts it back. Both are idempotent.

    ``params`` is what the state file keeps (JSON, never a secret's value): enough for ``remove_recorded``
    in another process to undo the fault after the process that injected it crashed.
    """

    @property
    def kind(self) -> str: ...

    def describe(self) -> str: ...

    def params(self) -> dict[str, Any]: ...

    def inject(self) -> None: ...

    def remove(self) -> None: ...


def require_loopback(host: str, what: str) -> str:
    """The host if every address it resolves to is loopback; otherwise ``UnsafeTarget``.

    Resolved, not matched by name: ``localhost`` may be anything in /etc/hosts, and a name that resolves to
    one loopback and one routable address is refused.
    """
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as err:
        raise UnsafeTarget(f"{what}: {host!r} does not resolve ({err}); nothing changed") from None
    addresses = {str(info[4][0]) for info in infos}
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise UnsafeTarget(
            f"{what}: {host} is not a loopback address ({', '.join(outside)}): faults only touch loopback "
            "servers on this machine; nothing changed"
        )
    return host


class LoopThread:
    """An event loop of its own in a daemon thread, which the fault proxies run on: blocking code, a test's
    event loop and a worker can all use a proxy, and it dies with its process, leaving nothing to undo."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, setup: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
        """Run ``setup`` (listen, bind) on the new loop, then keep the loop running; ``FaultError`` if the
        setup failed or did not finish within 10 s."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            try:
                loop.run_until_complete(setup())
            except BaseException as err:  # reported to start()'s caller
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            pending = asyncio.all_tasks(loop)  # connections still open at stop: end them, not leak them
            for task in pending:
                task.cancel()

            async def drain() -> None:
                await asyncio.gather(*pending, return_exceptions=True)

            loop.run_until_complete(drain())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise FaultError(f"{what} could not listen: {failure or 'timeout'}")

    def stop(self, teardown: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``teardown`` on the loop (bounded), then stop it once the callbacks it scheduled have run."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(teardown(), loop).result(5)
        loop.call_soon_threadsafe(loop.call_soon, loop.stop)  # after the transports' close callbacks
        thread.join(10)
        self.loop = None
