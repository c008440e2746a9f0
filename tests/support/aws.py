"""AWS emulators as real HTTP servers for the whole session, and the small tools tests use with them.

- ``moto_endpoint``: moto's ``ThreadedMotoServer`` (Route53 records and weights, RDS instances, CloudWatch).
- ``ministack_endpoint``: ministack as a child process (Aurora global switchover/failover state changes, and
  Route53 changes that are PENDING before INSYNC, and that refuse a DELETE of values no longer there).
- ``ThrottlingProxy``: an HTTP proxy in front of either that answers chosen requests with AWS throttling
  errors (nothing forwarded) or forwards them and then loses the answer, counting what reached the emulator.
- ``route53_nameserver``: a UDP nameserver answering from the emulator's Route53 zone, standing in for the
  awsdns servers so propagation can be checked offline.

Neither emulator is optional: a missing one fails the session loudly, it never skips.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from botocore.stub import Stubber

from activities.cloud.aws import AwsClients
from runbooks.model import Nameserver
from tests.support.dns import udp_nameserver
from workers.sandbox.named import LOOPBACK, free_port

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SERVICES = ("route53", "rds", "cloudwatch", "sts")


def session() -> boto3.session.Session:
    return boto3.session.Session(region_name="us-east-1", **CREDENTIALS)


def clients_for(endpoint: str) -> AwsClients:
    """The product's client factory, every service pointed at one emulator."""
    return AwsClients(session=session(), endpoints=dict.fromkeys(SERVICES, endpoint))


def client(service: str, endpoint: str, region: str = "us-east-1") -> Any:
    """A plain boto3 client for setting up the emulator's world (what an operator or AWS itself did)."""
    return session().client(service, region_name=region, endpoint_url=endpoint)  # type: ignore[call-overload]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------------------------- moto
@pytest.fixture(scope="session", name="moto_endpoint")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        _wait_for_port(port, "moto")
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ ministack
@pytest.fixture(scope="session", name="ministack_endpoint")
def ministack_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if importlib.util.find_spec("ministack") is None:
        raise RuntimeError("ministack is not installed: run `make test`, which installs the dev extras")
    directory = tmp_path_factory.mktemp("ministack")
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "BIND_HOST": LOOPBACK,
        "SERVICES": ",".join(SERVICES),
        "IOT_MTLS_ENABLED": "0",
        "LOG_LEVEL": "WARNING",
        "TMPDIR": str(directory),
    }
    log = (directory / "ministack.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ministack"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=directory
    )
    try:
        _wait_for_port(port, "ministack", process=process, log=directory / "ministack.log")
        yield f"http://{LOOPBACK}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def _wait_for_port(
    port: int, what: str, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not start on port {port}:\n{tail}")


# ------------------------------------------------------------------------------------ Stubber clients
@dataclass
class StubbedClients:
    """Real botocore clients whose answers come from a ``Stubber`` (where no emulator behaves like AWS)."""

    stubs: dict[tuple[str, str], Stubber] = field(default_factory=dict)
    clients: dict[tuple[str, str], Any] = field(default_factory=dict)

    def stub(self, service: str, region: str) -> Stubber:
        key = (service, region)
        if key not in self.clients:
            self.clients[key] = session().client(service, region_name=region)  # type: ignore[call-overload]
            self.stubs[key] = Stubber(self.clients[key])
            self.stubs[key].activate()
        return self.stubs[key]

    def _get(self, service: str, region: str) -> Any:
        self.stub(service, region)
        return self.clients[(service, region)]

    def route53(self) -> Any:
        return self._get("route53", "us-east-1")

    def rds(self, region: str) -> Any:
        return self._get("rds", region)

    def cloudwatch(self, region: str) -> Any:
        return self._get("cloudwatch", region)

    def sts(self) -> Any:
        return self._get("sts", "us-east-1")

    def assert_all_used(self) -> None:
        for stubber in self.stubs.values():
            stubber.assert_no_pending_responses()


# ----------------------------------------------------------------------------------- throttling proxy
THROTTLED = """<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Error><Type>Sender</Type><Code>{code}</Code>
<Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"""

Match = Callable[[str, str, str], bool]  # (method, path, body)


@dataclass
class Rule:
    """The next ``count`` requests that ``match`` get ``action`` instead of a plain answer."""

    match: Match
    count: int
    action: str  # "Throttling", "PriorRequestNotComplete": refused unforwarded; "lose": forwarded, then 503


REQUEST = threading.local()  # the headers of the request this handler thread is answering, for answers
Reply = tuple[int, bytes]
Answer = Callable[[str, str, str], Reply | None]  # answered here, never forwarded
Rewrite = Callable[[str, str, bytes], bytes]  # applied to the upstream's answer


@dataclass
class ThrottlingProxy:
    upstream: str
    port: int = 0
    rules: list[Rule] = field(default_factory=list)
    forwarded: list[tuple[str, str, str]] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def add(self, match: Match, count: int, action: str) -> None:
        self.rules.append(Rule(match, count, action))

    def count(self, match: Match) -> int:
        return sum(1 for request in self.forwarded if match(*request))

    def _take(self, method: str, path: str, body: str) -> str | None:
        for rule in self.rules:
            if rule.count > 0 and rule.match(method, path, body):
                rule.count -= 1
                return rule.action
        return None


@contextmanager
def throttling_proxy(upstream: str) -> Iterator[ThrottlingProxy]:
    proxy = ThrottlingProxy(upstream)
    host, _, port = upstream.removeprefix("http://").partition(":")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            method, path = self.command, self.path
            REQUEST.headers = dict(self.headers.items())
            with lock:
                action = proxy._take(method, path, body.decode(errors="replace"))
            for answer in proxy.answers:
                reply = answer(method, path, body.decode(errors="replace"))
                if reply is not None:
                    self._answer(reply[0], {"Content-Type": "text/xml"}, reply[1])
                    return
            if action in ("Throttling", "PriorRequestNotComplete"):
                with lock:
                    proxy.refused.append((method, path, action))
                payload = THROTTLED.format(
                    code=action, message="Rate exceeded", request_id=uuid.uuid4()
                ).encode()
                self._answer(400, {"Content-Type": "text/xml"}, payload)
                return
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
            finally:
                connection.close()
            with lock:
                proxy.forwarded.append((method, path, body.decode(errors="replace")))
            if action == "lose":
                self._answer(503, {"Content-Type": "text/plain"}, b"upstream connection reset")
                return
            for rewrite in proxy.rewrites:
                payload = rewrite(method, path, payload)
            kept = {
                k: v for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection")
            }
            self._answer(response.status, kept, payload)

        def _answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ------------------------------------------------------------------ Route53 APIs moto does not answer
ROUTE53_NS = "https://route53.amazonaws.com/doc/2013-04-01/"


@dataclass
class Route53Extras:
    """Wire stand-ins, in front of moto, for the Route53 APIs it lacks, in the XML Route53 documents:
    UpdateHostedZoneFeatures / GetHostedZone's ``Features`` (accelerated recovery: ENABLING for
    ``enabling_reads`` reads of the zone, then ENABLED, as the real one takes minutes) and GetHostedZoneLimit
    (``MAX_RRSETS_BY_ZONE``: ``limit``, and the zone's real ResourceRecordSetCount from moto)."""

    proxy: ThrottlingProxy
    limit: int = 10000
    enabling_reads: int = 1
    status: dict[str, str] = field(default_factory=dict)  # zone id -> AcceleratedRecoveryStatus
    reads: dict[str, int] = field(default_factory=dict)

    def install(self) -> Route53Extras:
        self.proxy.answers += [self._update_features, self._zone_limit]
        self.proxy.rewrites.append(self._with_features)
        return self

    def _update_features(self, method: str, path: str, body: str) -> Reply | None:
        found = re.fullmatch(r"/2013-04-01/hostedzone/([^/]+)/features", path)
        if method != "POST" or found is None:
            return None
        enable = re.search(r"<EnableAcceleratedRecovery>(\w+)</EnableAcceleratedRecovery>", body)
        wanted = enable is not None and enable.group(1) == "true"
        self.status[found.group(1)] = "ENABLING" if wanted else "DISABLED"
        self.reads[found.group(1)] = 0
        return 200, f'<?xml version="1.0"?><UpdateHostedZoneFeaturesResponse xmlns="{ROUTE53_NS}"/>'.encode()

    def _zone_limit(self, method: str, path: str, body: str) -> Reply | None:
        found = re.fullmatch(r"/2013-04-01/hostedzonelimit/([^/]+)/([A-Z_]+)", path)
        if method != "GET" or found is None:
            return None
        zone_id, kind = found.groups()
        if kind != "MAX_RRSETS_BY_ZONE":
            return 400, THROTTLED.format(
                code="InvalidInput", message=f"unsupported limit {kind}", request_id=uuid.uuid4()
            ).encode()
        count = client("route53", self.proxy.upstream).get_hosted_zone(Id=zone_id)["HostedZone"][
            "ResourceRecordSetCount"
        ]
        return 200, (
            f'<?xml version="1.0"?><GetHostedZoneLimitResponse xmlns="{ROUTE53_NS}"><Limit>'
            f"<Type>{kind}</Type><Value>{self.limit}</Value></Limit><Count>{count}</Count>"
            "</GetHostedZoneLimitResponse>"
        ).encode()

    def _with_features(self, method: str, path: str, payload: bytes) -> bytes:
        found = re.fullmatch(r"/2013-04-01/hostedzone/([^/]+)", path)
        if method != "GET" or found is None or found.group(1) not in self.status:
            return payload
        zone_id = found.group(1)
        self.reads[zone_id] += 1
        if self.status[zone_id] == "ENABLING" and self.reads[zone_id] > self.enabling_reads:
            self.status[zone_id] = "ENABLED"
        features = (
            f"<Features><AcceleratedRecoveryStatus>{self.status[zone_id]}</AcceleratedRecoveryStatus>"
            "</Features></HostedZone>"
        )
        return payload.replace(b"</HostedZone>", features.encode(), 1)


@dataclass
class RdsExtras:
    """A wire stand-in, in front of moto, for RDS's DescribeAccountAttributes (moto and ministack lack it),
    in the Query protocol's XML: the ``DBInstances`` quota of the region the request is signed for, with
    ``Used`` counted from moto's instances there and ``Max`` = ``max_instances``."""

    proxy: ThrottlingProxy
    max_instances: int = 40

    def install(self) -> RdsExtras:
        self.proxy.answers.append(self._account_attributes)
        return self

    def _account_attributes(self, method: str, path: str, body: str) -> Reply | None:
        if method != "POST" or "Action=DescribeAccountAttributes" not in body:
            return None
        region = self._signed_region()
        used = len(client("rds", self.proxy.upstream, region).describe_db_instances()["DBInstances"])
        return 200, (
            '<?xml version="1.0"?><DescribeAccountAttributesResponse '
            'xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><DescribeAccountAttributesResult><AccountQuotas>'
            f"<AccountQuota><AccountQuotaName>DBInstances</AccountQuotaName><Used>{used}</Used>"
            f"<Max>{self.max_instances}</Max></AccountQuota>"
            "</AccountQuotas></DescribeAccountAttributesResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</DescribeAccountAttributesResponse>"
        ).encode()

    def _signed_region(self) -> str:
        authorization = getattr(REQUEST, "headers", {}).get("Authorization", "")
        found = re.search(r"Credential=[^/]+/\d+/([a-z0-9-]+)/rds/", authorization)
        return found.group(1) if found else "us-east-1"


# ------------------------------------------------------------------------------- Route53 nameserver
@contextmanager
def route53_nameserver(endpoint: str, hosted_zone_id: str, zone: str) -> Iterator[Nameserver]:
    """Answers authoritatively, per query, what the emulator's hosted zone holds.

    A simple record answers as it is; weighted record sets answer as Route53 does: one set per query, drawn
    by weight among those above 0 (all of them equally when every weight is 0). Other routing policies are
    not served.
    """
    route53 = client("route53", endpoint)

    def answer(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        if not name.endswith(zone):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        listed = route53.list_resource_record_sets(
            HostedZoneId=hosted_zone_id,
            StartRecordName=name,
            StartRecordType=dns.rdatatype.to_text(question.rdtype),
        )["ResourceRecordSets"]
        matching = [
            rs for rs in listed
            if rs["Name"].lower() == name and rs["Type"] == dns.rdatatype.to_text(question.rdtype)
        ]  # fmt: skip
        found = [rs for rs in matching if "SetIdentifier" not in rs] or _weighted_choice(matching)
        if found:
            values = [rr["Value"] for rr in found[0].get("ResourceRecords", [])]
            response.answer.append(
                dns.rrset.from_text_list(name, found[0]["TTL"], "IN", question.rdtype, values)
            )
        elif not any(rs["Name"].lower() == name for rs in listed):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    with udp_nameserver(answer, "ns-1.awsdns.test.") as nameserver:
        yield nameserver


def _weighted_choice(record_sets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    weighted = [rs for rs in record_sets if "SetIdentifier" in rs and "Weight" in rs]
    live = [rs for rs in weighted if int(rs["Weight"]) > 0]
    if live:
        return random.choices(live, weights=[int(rs["Weight"]) for rs in live])
    return [random.choice(weighted)] if weighted else []


# ------------------------------------------------------------------------------------- environment
ENDPOINT_VARIABLES = {
    "route53": "AWS_ENDPOINT_URL_ROUTE_53",
    "rds": "AWS_ENDPOINT_URL_RDS",
    "cloudwatch": "AWS_ENDPOINT_URL_CLOUDWATCH",
    "sts": "AWS_ENDPOINT_URL_STS",
}


def isolate_aws_environment(monkeypatch: pytest.MonkeyPatch, *, credentials: bool = True) -> None:
    """Only what the test sets: no profile, config file, instance metadata or endpoint from the machine."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/drflow-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/drflow-test-aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])


def point_aws_at(monkeypatch: pytest.MonkeyPatch, **endpoints: str) -> None:
    """What an operator does for VPC endpoints, here for emulators: botocore's per-service endpoint settings."""
    isolate_aws_environment(monkeypatch)
    for service, endpoint in endpoints.items():
        monkeypatch.setenv(ENDPOINT_VARIABLES[service], endpoint)


def hosted_zone(endpoint: str, zone: str) -> str:
    """A new hosted zone; its id starts with Z as AWS's do (moto draws from all letters unless told)."""
    route53 = client("route53", endpoint)
    wanted = "Z" + uuid.uuid4().hex[:20].upper()
    _register_moto_zone_id(zone, wanted)
    created = route53.create_hosted_zone(Name=zone, CallerReference=unique("ref"))
    zone_id: str = created["HostedZone"]["Id"].removeprefix("/hostedzone/")
    if not zone_id.startswith("Z"):
        raise AssertionError(f"hosted zone id {zone_id} does not look like AWS's (Z...)")
    return zone_id


def _register_moto_zone_id(zone: str, zone_id: str) -> None:
    """moto runs in this process: tell its id generator the id the next zone of this name gets."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.route53.models import HostedZoneIdentifier
    from moto.utilities.id_generator import moto_id_manager

    moto_id_manager.set_custom_id(HostedZoneIdentifier(DEFAULT_ACCOUNT_ID, zone, None), zone_id)


# ----------------------------------------------------------------------------- moto's RDS, corrected
@pytest.fixture
def moto_promotes_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's PromoteReadReplica leaves the promoted instance naming its source, which AWS clears: correct it.

    The one stand-in the RDS tests need to run a failover on moto (moto serves from this process, so the
    patch reaches the server): after PromoteReadReplica the instance is standalone, as in the API reference,
    and its old source no longer lists it.
    """
    from moto.rds.models import RDSBackend

    original = RDSBackend.promote_read_replica

    def promote(self: RDSBackend, db_kwargs: dict[str, Any]) -> Any:
        database = self.databases[db_kwargs["db_instance_identifier"]]
        source = database.source_db_instance_identifier
        promoted = original(self, db_kwargs)
        if source:
            primary = self.find_db_from_id(source)
            for name in (database.db_instance_arn, database.db_instance_identifier):
                if name in primary.replicas:
                    primary.replicas.remove(name)
            promoted.source_db_instance_identifier = None
        return promoted

    monkeypatch.setattr(RDSBackend, "promote_read_replica", promote)


def moto_rds_instance(region: str, identifier: str) -> Any:
    """The moto server's own record of an instance, for a test that plays what AWS does over minutes."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.rds.models import rds_backends

    return rds_backends[DEFAULT_ACCOUNT_ID][region].databases[identifier]
