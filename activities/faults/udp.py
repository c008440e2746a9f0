"""A UDP fault proxy for one loopback server (a nameserver): pass, delay, lose or blackhole its datagrams.

DNS is UDP, where the TCP proxy (``proxy.py``) cannot stand, and where loss is what a bad network does:
a query or its answer simply never arrives. The proxy gives each client address its own upstream socket
(as a NAT does), so answers go back to the client that asked. Loss is drawn per datagram and direction
from a seeded generator, so a test's run is repeatable. Like the TCP proxy it runs on its own event loop in
a daemon thread and dies with its process, leaving nothing to undo.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from activities.faults.base import FaultError, LoopThread, require_loopback

UdpMode = Literal["pass", "delay", "loss", "blackhole"]


@dataclass(frozen=True)
class UdpFaultSpec:
    mode: UdpMode
    delay: float = 0.0
    loss: float = 0.0  # the probability each datagram, either way, is dropped
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise FaultError(f"loss must be a probability between 0 and 1, not {self.loss}")
        if self.delay < 0:
            raise FaultError(f"delay must not be negative, not {self.delay}")


UDP_PASS = UdpFaultSpec(mode="pass")


@dataclass
class UdpCounts:
    forwarded: int = 0
    dropped: int = 0
    answered: int = 0


class _ToClient(asyncio.DatagramProtocol):
    """The upstream socket of one client: what the server answers goes back to that client."""

    def __init__(self, proxy: UdpFaultProxy, client: tuple[str, int]) -> None:
        self.proxy = proxy
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.proxy._relay(data, self.client, to_client=True)


class _FromClients(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpFaultProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.proxy._from_client(data, (str(addr[0]), int(addr[1])))


@dataclass
class _State:
    listen: asyncio.DatagramTransport | None = None
    upstreams: dict[tuple[str, int], asyncio.DatagramTransport] = field(default_factory=dict)


class UdpFaultProxy:
    """Listens on ``listen_host:listen_port`` (0: a free port) and relays to ``upstream``, both loopback."""

    def __init__(
        self, upstream_host: str, upstream_port: int, listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.upstream = (require_loopback(upstream_host, "proxy upstream"), upstream_port)
        self._listen = (require_loopback(listen_host, "proxy listen address"), listen_port)
        self._spec = UDP_PASS
        self._random = random.Random(0)
        self._state = _State()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = LoopThread(f"udp-fault-proxy-{upstream_port}")
        self.port = 0
        self.counts = UdpCounts()

    @property
    def address(self) -> str:
        return f"{self._listen[0]}:{self.port}"

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> UdpFaultProxy:
        async def bind() -> None:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _FromClients(self), local_addr=self._listen
            )
            self._state.listen = transport
            self.port = transport.get_extra_info("sockname")[1]

        self._runner.start(bind, f"the UDP fault proxy for {self.upstream}")
        self._loop = self._runner.loop
        return self

    def stop(self) -> None:
        async def close() -> None:
            for transport in [self._state.listen, *self._state.upstreams.values()]:
                if transport is not None:
                    transport.close()

        self._runner.stop(close)
        self._loop = None

    def __enter__(self) -> UdpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ faults
    @property
    def spec(self) -> UdpFaultSpec:
        return self._spec

    def set_fault(self, spec: UdpFaultSpec) -> None:
        self._random = random.Random(spec.seed)
        self._spec = spec

    def clear(self) -> None:
        self._spec = UDP_PASS

    # ------------------------------------------------------------------------------------ relaying
    def _from_client(self, data: bytes, client: tuple[str, int]) -> None:
        """On the proxy's loop: relay to the server through this client's own upstream socket."""
        upstream = self._state.upstreams.get(client)
        if upstream is None:
            assert self._loop is not None
            self._loop.create_task(self._open_upstream(data, client))
            return
        self._relay(data, client, to_client=False)

    async def _open_upstream(self, data: bytes, client: tuple[str, int]) -> None:
        assert self._loop is not None
        if client not in self._state.upstreams:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _ToClient(self, client), remote_addr=self.upstream
            )
            self._state.upstreams[client] = transport
        self._relay(data, client, to_client=False)

    def _relay(self, data: bytes, client: tuple[str, int], *, to_client: bool) -> None:
        spec = self._spec
        if spec.mode == "blackhole" or (spec.mode == "loss" and self._random.random() < spec.loss):
            self.counts.dropped += 1
            return
        delay = spec.delay if spec.mode in ("delay", "loss") else 0.0
        assert self._loop is not None
        self._loop.call_later(delay, self._send, data, client, to_client)

    def _send(self, data: bytes, client: tuple[str, int], to_client: bool) -> None:
        with contextlib.suppress(OSError):
            if to_client:
                if self._state.listen is not None:
                    self._state.listen.sendto(data, client)
                    self.counts.answered += 1
            else:
                upstream = self._state.upstreams.get(client)
                if upstream is not None:
                    upstream.sendto(data)
                    self.counts.forwarded += 1


@dataclass
class UdpProxyFault:
    """A UDP proxy fault as a ``Fault``: inject sets it, remove clears it; nothing outlives the process."""

    proxy: UdpFaultProxy
    spec: UdpFaultSpec

    @property
    def kind(self) -> str:
        return "udp-proxy"

    def describe(self) -> str:
        how: str = self.spec.mode
        if self.spec.mode == "loss":
            how += f" {self.spec.loss:.0%}"
        if self.spec.delay:
            how += f" +{self.spec.delay:g}s"
        return f"{how} on udp {self.proxy.address} -> {self.proxy.upstream[0]}:{self.proxy.upstream[1]}"

    def params(self) -> dict[str, Any]:
        return {
            "listen": self.proxy.address,
            "upstream": f"{self.proxy.upstream[0]}:{self.proxy.upstream[1]}",
            "mode": self.spec.mode,
            "delay": self.spec.delay,
            "loss": self.spec.loss,
        }

    def inject(self) -> None:
        self.proxy.set_fault(self.spec)

    def remove(self) -> None:
        self.proxy.clear()
