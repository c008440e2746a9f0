"""A TCP fault proxy for loopback servers: pass, delay, blackhole or reset what flows to one server.

The sandbox's servers all listen on 127.0.0.1, where ``tc netem`` would slow every server at once (and a
network namespace would need the servers moved into it). A proxy in front of one server breaks exactly that
server for the clients pointed at it. It runs on its own event loop in a daemon thread, so blocking code, a
test's event loop and a worker can all use it; it dies with its process, which leaves nothing to undo.

Modes, for every connection or (``after``) for the one connection that sends a byte pattern:

- ``delay``: each chunk is delivered ``delay`` seconds after it arrived, in both directions (latency, not
  throughput: chunks are pipelined, as ``netem delay`` does with packets);
- ``blackhole``: bytes are read and dropped, nothing answers, connections stay open (a partition);
- ``reset``: connections are aborted with a TCP RST, new ones as soon as they are accepted.

``after`` targets one statement: ``after=b"pg_promote"`` forwards the client's chunk that carries the call
and then applies the mode to that connection only (once), so the server acts and its answer is lost, which
is what a worker dying mid-call sees. Loss of single packets has no meaning on a TCP stream (TCP resends
them); ``tc netem loss`` in a network namespace is the tool for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from activities.faults.base import LoopThread, require_loopback

Mode = Literal["pass", "delay", "blackhole", "reset"]
CHUNK = 65536


@dataclass(frozen=True)
class ProxyFaultSpec:
    mode: Mode
    delay: float = 0.0
    after: bytes | None = None


PASS = ProxyFaultSpec(mode="pass")


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.spec: ProxyFaultSpec | None = None  # a fault applied to this connection only (``after``)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            _reset(writer)


class TcpFaultProxy:
    """Listens on ``listen_host:listen_port`` (0: a free port) and forwards to ``upstream``, both loopback."""

    def __init__(
        self, upstream_host: str, upstream_port: int, listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.upstream = (require_loopback(upstream_host, "proxy upstream"), upstream_port)
        self._listen = (require_loopback(listen_host, "proxy listen address"), listen_port)
        self._spec = PASS
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._runner = LoopThread(f"fault-proxy-{upstream_port}")
        self.port = 0
        self.accepted = 0
        self.triggered = threading.Event()  # set when an ``after`` pattern was seen

    @property
    def host(self) -> str:
        return self._listen[0]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> TcpFaultProxy:
        async def listen() -> None:
            self._server = await asyncio.start_server(self._handle, self._listen[0], self._listen[1])
            self.port = self._server.sockets[0].getsockname()[1]

        self._runner.start(listen, f"the fault proxy for {self.upstream}")
        self._loop = self._runner.loop
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.abort()

        self._runner.stop(close)
        self._loop = None

    def __enter__(self) -> TcpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ faults
    @property
    def spec(self) -> ProxyFaultSpec:
        return self._spec

    def set_fault(self, spec: ProxyFaultSpec) -> None:
        """Applies to every connection at once, except an ``after`` fault, which waits for its pattern."""
        self.triggered.clear()
        self._spec = spec
        if spec.mode == "reset" and spec.after is None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._abort_all)

    def clear(self) -> None:
        """Back to passing everything, including connections an ``after`` fault had taken."""
        self._spec = PASS
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._clear_links)

    def _clear_links(self) -> None:
        for link in self._links:
            link.spec = None

    def _abort_all(self) -> None:
        for link in list(self._links):
            link.abort()

    def _effective(self, link: _Link) -> ProxyFaultSpec:
        if link.spec is not None:
            return link.spec
        return PASS if self._spec.after is not None else self._spec

    # ------------------------------------------------------------------------------------ forwarding
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._spec.mode == "reset" and self._spec.after is None:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, reader, up_writer, from_client=True),
                self._pump(link, up_reader, writer, from_client=False),
                return_exceptions=True,
            )
        finally:
            self._links.discard(link)
            for w in (writer, up_writer):
                w.close()

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        """Copy one direction; delayed chunks go through a queue so latency does not cut throughput."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.create_task(_deliver(queue, writer))
        tail = b""
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                spec = self._effective(link)
                pattern = self._spec.after
                if from_client and link.spec is None and pattern is not None:
                    if pattern in tail + data:
                        # Forward the chunk that carries the pattern: the server acts, then the fault starts.
                        queue.put_nowait((time.monotonic(), data))
                        link.spec = self._spec
                        self._spec = PASS  # once: later connections pass
                        self.triggered.set()
                        if link.spec.mode == "reset":
                            await asyncio.sleep(0.2)  # let the chunk reach the server first
                            link.abort()
                            break
                        continue
                    tail = (tail + data)[-(len(pattern) - 1) :] if len(pattern) > 1 else b""
                if spec.mode == "blackhole":
                    continue
                if spec.mode == "reset":
                    link.abort()
                    break
                delay = spec.delay if spec.mode == "delay" else 0.0
                queue.put_nowait((time.monotonic() + delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await deliver


async def _deliver(queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter) -> None:
    try:
        while (item := await queue.get()) is not None:
            at, data = item
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, RuntimeError):
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with a RST (SO_LINGER 0), as a crashed peer or a firewall's reject does."""
    sock: Any = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


@dataclass
class ProxyFault:
    """A proxy fault as a ``Fault``: inject sets it, remove clears it. Nothing outlives the proxy's process,
    so a recorded proxy fault needs no undoing by a later one."""

    proxy: TcpFaultProxy
    spec: ProxyFaultSpec

    @property
    def kind(self) -> str:
        return "tcp-proxy"

    def describe(self) -> str:
        how = f"{self.spec.mode}" + (f" {self.spec.delay:g}s" if self.spec.mode == "delay" else "")
        once = f" once the client sends {self.spec.after!r}" if self.spec.after else ""
        return f"{how} on {self.proxy.address} -> {self.proxy.upstream[0]}:{self.proxy.upstream[1]}{once}"

    def params(self) -> dict[str, Any]:
        return {
            "listen": self.proxy.address,
            "upstream": f"{self.proxy.upstream[0]}:{self.proxy.upstream[1]}",
            "mode": self.spec.mode,
            "delay": self.spec.delay,
        }

    def inject(self) -> None:
        self.proxy.set_fault(self.spec)

    def remove(self) -> None:
        self.proxy.clear()
