"""What every fault is (inject, remove, and the parameters a later process needs to remove it), and the
safety rule every fault checks before it changes anything.

Safety: a fault acts only on this machine's loopback addresses and on processes it was handed. An address
anywhere else is refused with ``UnsafeTarget`` before anything is changed: a reliability test or a drill
must never break a server that it did not build.
"""

from __future__ import annotations

import ipaddress
import socket
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
