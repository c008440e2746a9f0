"""HAProxy weights through its runtime API (the stats socket, ``level admin``): the sandbox, on-prem sites.

drflow speaks of traffic in percent: a region at 25 gets a quarter of the requests. HAProxy weights are
relative (0..256) and ``balance roundrobin`` honours them per request, so drflow sets each server's weight to
its percent and the shares follow; a read turns whatever weights HAProxy holds back into shares.

The runtime API answers one command per connection (non-interactive mode) and reports a refusal as text
("No such server.") on an otherwise normal answer, so every change is verified by reading it back.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from activities.errors import TrafficManagerRefused, TrafficManagerUnreachable
from activities.traffic.provider import TrafficWeightsState
from runbooks.model import HaproxyTraffic

MAX_HAPROXY_WEIGHT = 256
RUNTIME_TIMEOUT = 5.0
_GET_WEIGHT = re.compile(r"^(\d+) \(initial (\d+)\)$")
_ANSWER_EXCERPT = 300


class HaproxyError(RuntimeError):
    """Anything that went wrong talking to HAProxy."""


class HaproxyRuntimeError(HaproxyError, TrafficManagerRefused):
    """The runtime API refused a command or answered something unexpected; the message quotes it."""


class HaproxyUnreachableError(HaproxyError, TrafficManagerUnreachable):
    """Nothing answers at the runtime API address (HAProxy down, wrong path, no permission)."""


@dataclass(frozen=True)
class ServerWeight:
    current: int
    initial: int

    @property
    def raw(self) -> str:
        """As ``get weight`` prints it, for the record."""
        return f"{self.current} (initial {self.initial})"


class HaproxyRuntime:
    """A client of one HAProxy's runtime API: ``unix:/path/admin.sock`` or ``tcp:host:port``."""

    def __init__(self, address: str, timeout: float = RUNTIME_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        kind, sep, where = address.partition(":")
        if not sep or kind not in ("unix", "tcp") or not where:
            raise ValueError(
                f"{address!r} is not a runtime API address: unix:/path/to/admin.sock or tcp:host:port"
            )
        self._family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        self._target: str | tuple[str, int]
        if kind == "unix":
            # Relative paths resolve from where drflow runs, like the runbook's file: secrets.
            self._target = str(Path(where).absolute())
        else:
            host, sep, port = where.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{address!r} is not tcp:host:port")
            self._target = (host, int(port))

    def command(self, line: str) -> str:
        """Send one command and return HAProxy's whole answer, stripped."""
        try:
            with socket.socket(self._family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self._target)
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as err:
            raise HaproxyUnreachableError(
                f"HAProxy runtime API at {self.address} did not answer `{line}`: {err.strerror or err}"
            ) from None
        return b"".join(chunks).decode(errors="replace").strip()

    def get_weight(self, backend: str, server: str) -> ServerWeight:
        answer = self.command(f"get weight {backend}/{server}")
        match = _GET_WEIGHT.match(answer)
        if match is None:
            raise HaproxyRuntimeError(f"`get weight {backend}/{server}` answered: {_excerpt(answer)}")
        return ServerWeight(current=int(match.group(1)), initial=int(match.group(2)))

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Set an absolute weight; HAProxy says nothing on success, so any text is a refusal."""
        if not 0 <= weight <= MAX_HAPROXY_WEIGHT:
            raise ValueError(f"HAProxy weights are 0..{MAX_HAPROXY_WEIGHT}, not {weight}")
        answer = self.command(f"set server {backend}/{server} weight {weight}")
        if answer:
            raise HaproxyRuntimeError(
                f"`set server {backend}/{server} weight {weight}` answered: {_excerpt(answer)}"
            )


class HaproxyWeights:
    """The runbook's regions as servers of one HAProxy backend; a region's percent is its server weight.

    The runtime API is a blocking socket, so each call runs in a thread and the event loop stays free.
    """

    def __init__(self, traffic: HaproxyTraffic, runtime: HaproxyRuntime | None = None) -> None:
        self.traffic = traffic
        self.runtime = runtime or HaproxyRuntime(traffic.runtime_api)

    @property
    def name(self) -> str:
        return "haproxy"

    async def read(self) -> TrafficWeightsState:
        return _state(await asyncio.to_thread(self._server_weights))

    async def write(self, desired: dict[str, int]) -> bool:
        """Raised weights go first and lowered ones after, so the total never drops to 0 on the way."""
        current = await asyncio.to_thread(self._server_weights)
        changes = {region: weight for region, weight in desired.items() if current[region].current != weight}
        for region in sorted(changes, key=lambda r: changes[r] - current[r].current, reverse=True):
            server = self.traffic.servers[region]
            try:
                await asyncio.to_thread(
                    self.runtime.set_weight, self.traffic.backend, server, changes[region]
                )
            except TrafficManagerRefused as err:
                raise HaproxyRuntimeError(
                    f"refused weight {changes[region]} for {region} ({self.traffic.backend}/{server}): {err}"
                ) from None
        return bool(changes)

    def _server_weights(self) -> dict[str, ServerWeight]:
        """Each region's server weight, as HAProxy holds it now."""
        backend = self.traffic.backend
        return {
            region: self.runtime.get_weight(backend, server)
            for region, server in self.traffic.servers.items()
        }


def _state(weights: Mapping[str, ServerWeight]) -> TrafficWeightsState:
    total = sum(weight.current for weight in weights.values())
    return TrafficWeightsState(
        weights={region: round(100 * w.current / total) if total else 0 for region, w in weights.items()},
        raw={region: w.raw for region, w in weights.items()},
    )


def _excerpt(text: str) -> str:
    flat = " ".join(text.split()) or "(nothing)"
    return flat if len(flat) <= _ANSWER_EXCERPT else flat[:_ANSWER_EXCERPT] + "..."
