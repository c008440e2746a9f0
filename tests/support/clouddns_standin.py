"""A local HTTP stand-in of the Cloud DNS v1 REST API (no emulator exists), with the real JSON shapes.

It serves the paths drflow uses: managedZones get, rrsets list (with ``name``/``type`` filters), changes create
and get, and managedZones testIamPermissions. Changes are atomic and conditional as Cloud DNS's are: a
deletion that does not match the record set exactly is refused with 412 ``conditionNotMet``, an addition over
an existing one with 409 ``alreadyExists``. A new change is ``pending`` for ``pending_polls`` reads, then
``done``. Tests can make the next calls answer 429 ``rateLimitExceeded`` and count what landed.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from runbooks.model import Nameserver
from tests.support.dns import udp_nameserver
from workers.sandbox.named import LOOPBACK

RecordSet = dict[str, Any]
_ZONE = re.compile(r"^/dns/v1/projects/(?P<project>[^/]+)/managedZones/(?P<zone>[^/:]+)(?P<rest>.*)$")


@dataclass
class ManagedZone:
    name: str
    dns_name: str
    rrsets: dict[tuple[str, str], RecordSet] = field(default_factory=dict)

    def resource(self, project: str) -> dict[str, Any]:
        return {
            "kind": "dns#managedZone",
            "name": self.name,
            "dnsName": self.dns_name,
            "id": str(abs(hash((project, self.name))) % 10**18),
            "description": "drflow test zone",
            "nameServers": [f"ns-cloud-a{i}.googledomains.com." for i in range(1, 5)],
            "creationTime": "2024-01-01T00:00:00.000Z",
            "visibility": "public",
        }


@dataclass
class CloudDnsStandIn:
    project: str = "drflow-test"
    port: int = 0
    zones: dict[str, ManagedZone] = field(default_factory=dict)
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending_polls: int = 1
    granted: set[str] | None = None  # None: every permission asked for is granted
    throttle: dict[str, int] = field(default_factory=dict)  # "GET rrsets", "POST changes", ... -> count
    landed_changes: int = 0
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def add_zone(self, name: str, dns_name: str, rrsets: list[RecordSet]) -> ManagedZone:
        zone = ManagedZone(
            name,
            dns_name,
            {(rs["name"], rs["type"]): {"kind": "dns#resourceRecordSet", **rs} for rs in rrsets},
        )
        self.zones[name] = zone
        return zone

    def rrset(self, zone: str, name: str, type: str) -> RecordSet | None:
        return self.zones[zone].rrsets.get((name, type))

    # ------------------------------------------------------------------------------------------ serving
    def handle(self, method: str, url: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(url)
        match = _ZONE.match(parts.path)
        if match is None:
            return _error(404, "notFound", f"no such path {parts.path}")
        project, zone_name, rest = match.group("project"), match.group("zone"), match.group("rest")
        kind = (
            "changes" if rest.startswith("/changes") else "rrsets" if rest.startswith("/rrsets") else "zone"
        )
        if rest.startswith(":testIamPermissions"):
            kind = "testIamPermissions"
        key = f"{method} {kind}"
        with self.lock:
            self.requests.append(key)
            if self.throttle.get(key, 0) > 0:
                self.throttle[key] -= 1
                return _error(429, "rateLimitExceeded", "Rate Limit Exceeded", status="RESOURCE_EXHAUSTED")
            zone = self.zones.get(zone_name) if project == self.project else None
            if kind == "testIamPermissions" and method == "POST":
                asked = (body or {}).get("permissions", [])
                granted = [
                    p for p in asked if zone is not None and (self.granted is None or p in self.granted)
                ]
                return 200, {"permissions": granted} if granted else {}
            if zone is None:
                return _error(
                    404,
                    "notFound",
                    f"The 'parameters.managedZone' resource named '{zone_name}' does not exist.",
                )
            if kind == "zone" and method == "GET":
                return 200, zone.resource(project)
            if kind == "rrsets" and method == "GET":
                query = parse_qs(parts.query)
                name, type = query.get("name", [None])[0], query.get("type", [None])[0]
                found = [
                    rs for (n, t), rs in sorted(zone.rrsets.items())
                    if (name is None or n == name) and (type is None or t == type)
                ]  # fmt: skip
                return 200, {"kind": "dns#resourceRecordSetsListResponse", "rrsets": found}
            if kind == "changes" and method == "POST":
                return self._create_change(zone, body or {})
            if kind == "changes" and method == "GET":
                change = self.changes.get(rest.removeprefix("/changes/"))
                if change is None:
                    return _error(
                        404, "notFound", f"The 'parameters.changeId' resource named '{rest}' does not exist."
                    )
                if change["status"] == "pending":
                    change["_polls"] += 1
                    if change["_polls"] > self.pending_polls:
                        change["status"] = "done"
                return 200, {k: v for k, v in change.items() if not k.startswith("_")}
        return _error(400, "invalid", f"{method} {parts.path} is not served by the stand-in")

    def _create_change(self, zone: ManagedZone, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        additions, deletions = body.get("additions", []), body.get("deletions", [])
        rrsets = dict(zone.rrsets)
        for index, deletion in enumerate(deletions):
            key = (deletion["name"], deletion["type"])
            if key not in rrsets:
                return _error(
                    404, "notFound",
                    f"The 'entity.change.deletions[{index}]' resource named '{key[0]} ({key[1]})' does not exist.",
                )  # fmt: skip
            if _comparable(rrsets[key]) != _comparable(deletion):
                return _error(
                    412, "conditionNotMet",
                    f"Precondition not met for 'entity.change.deletions[{index}]'",
                    status="FAILED_PRECONDITION",
                )  # fmt: skip
            del rrsets[key]
        for index, addition in enumerate(additions):
            key = (addition["name"], addition["type"])
            if key in rrsets:
                return _error(
                    409, "alreadyExists",
                    f"The resource 'entity.change.additions[{index}]' named '{key[0]} ({key[1]})' already exists",
                    status="ALREADY_EXISTS",
                )  # fmt: skip
            rrsets[key] = {"kind": "dns#resourceRecordSet", **addition}
        zone.rrsets = rrsets
        self.landed_changes += 1
        change_id = str(len(self.changes) + 1)
        self.changes[change_id] = {
            "kind": "dns#change",
            "id": change_id,
            "status": "pending",
            "startTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "additions": additions,
            "deletions": deletions,
            "_polls": 0,
        }
        return 200, {k: v for k, v in self.changes[change_id].items() if not k.startswith("_")}


def _comparable(rrset: RecordSet) -> RecordSet:
    return {k: v for k, v in rrset.items() if k not in ("kind", "signatureRrdatas")}


def _error(code: int, reason: str, message: str, status: str = "") -> tuple[int, dict[str, Any]]:
    return code, {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            **({"status": status} if status else {}),
        }
    }


@contextmanager
def serve_clouddns(standin: CloudDnsStandIn | None = None) -> Iterator[CloudDnsStandIn]:
    state = standin or CloudDnsStandIn()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload = state.handle(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def library_client(standin: CloudDnsStandIn) -> Any:
    """google-cloud-dns's own client, pointed at the stand-in through its client options, anonymously."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import dns

    return dns.Client(
        project=standin.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": standin.endpoint},
    )


@contextmanager
def clouddns_nameserver(standin: CloudDnsStandIn, zone: str) -> Iterator[Nameserver]:
    """Answers authoritatively what the stand-in's managed zone ``zone`` holds (simple record sets only),
    standing in for the ns-cloud-*.googledomains.com servers that cannot be queried offline."""
    dns_name = standin.zones[zone].dns_name

    def answer(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        if not name.endswith(dns_name):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        with standin.lock:
            found = standin.zones[zone].rrsets.get((name, dns.rdatatype.to_text(question.rdtype)))
            names = {key[0] for key in standin.zones[zone].rrsets}
        if found is not None and found.get("rrdatas"):
            response.answer.append(
                dns.rrset.from_text_list(name, found["ttl"], "IN", question.rdtype, found["rrdatas"])
            )
        elif name not in names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    with udp_nameserver(answer, "ns-cloud-a1.googledomains.com.") as nameserver:
        yield nameserver
