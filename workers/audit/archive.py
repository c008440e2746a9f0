"""A tamper-evident archive of one run: its history, the rendered report and a SHA-256 manifest.

Layout, in a local directory (default ``.drflow/archive``) or under an S3 prefix::

    <root>/<workflow id>/<run id>/history.json   the full history, secrets redacted (still replays)
                                 report.md       the audit report (Markdown)
                                 report.json     the audit report (JSON: timeline + regulation mapping)
                                 manifest.sig    SSHSIG signature of manifest.json (with a worker key)
                                 manifest.json   SHA-256 and size of each file above; written last
    <root>/.drflow-chain/0000000001.json         one link per archive, created exclusively (the chain)

Temporal's retention then no longer limits the evidence. On S3 every object is written with a SHA-256
checksum that S3 verifies on upload and, when a retention is configured, with Object Lock (mode and
retain-until date; the bucket must have Object Lock enabled). ``verify`` recomputes every digest and names
the file that changed or went missing, and fails on a file its kind requires that the manifest leaves out,
on a file the manifest does not list, and on an empty manifest. An existing archive is never overwritten:
archiving the same run again checks it instead.

Signed: with ``DRFLOW_ARCHIVE_KEY`` (a secret reference to an OpenSSH ed25519 private key) the worker signs
each manifest (namespace ``drflow-archive``); ``verify`` checks it against ``archive_keys`` of a people file.
Chained, per store: each manifest records the SHA-256 of the previous archive's manifest in the same store,
and the position is claimed by creating ``.drflow-chain/<sequence>.json`` exclusively (``os.link`` on a
folder, ``If-None-Match: *`` on S3), so two workers never take the same place: the loser reads the new head
and tries the next one. ``verify_chain`` walks it and names a deleted, reordered or replaced archive.

Configuration (the worker's environment): ``DRFLOW_ARCHIVE`` (a directory, or ``s3://bucket/prefix``),
``DRFLOW_ARCHIVE_RETENTION_DAYS``, ``DRFLOW_ARCHIVE_LOCK_MODE`` (``GOVERNANCE`` or ``COMPLIANCE``);
``DRFLOW_ARCHIVE=off`` turns archiving off on that worker; ``DRFLOW_ARCHIVE_KEY`` and
``DRFLOW_ARCHIVE_KEY_NAME`` sign. S3 endpoints and credentials come from boto3's
standard chain (``AWS_ENDPOINT_URL_S3`` for a non-AWS endpoint).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

from pydantic import Field, ValidationError
from temporalio.client import WorkflowHistory
from temporalio.exceptions import ApplicationError

from activities.approvals.attestations import Ed25519Signer
from activities.approvals.signatures import SignatureRefused, check_signature, parse_armored
from activities.archive import (
    ARCHIVE_ENV,
    ArchivedFile,
    ArchiveResult,
    ChainPosition,
    LockMode,
    Manifest,
    ObjectLock,
    SignedBy,
)
from activities.errors import ArchiveRefused
from activities.secrets import resolve_secret
from runbooks.model import StrictModel
from runbooks.people import People
from runbooks.secrets import SECRET_REF_PATTERN
from workers.audit.model import Timeline
from workers.audit.redact import redact_history
from workers.audit.render import render_json, render_markdown
from workers.audit.timeline import build_timeline

RETENTION_ENV = "DRFLOW_ARCHIVE_RETENTION_DAYS"
LOCK_MODE_ENV = "DRFLOW_ARCHIVE_LOCK_MODE"
DEFAULT_ARCHIVE = ".drflow/archive"
ARCHIVE_OFF = "off"
KEY_ENV = "DRFLOW_ARCHIVE_KEY"
KEY_NAME_ENV = "DRFLOW_ARCHIVE_KEY_NAME"
DEFAULT_KEY_NAME = "worker"
ARCHIVE_NAMESPACE = "drflow-archive"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
HISTORY = "history.json"
CHAIN_DIR = ".drflow-chain"
LINK_NAME = re.compile(r"^(\d{10})\.json$")
MAX_CLAIMS = 50
MEDIA_TYPES = {
    HISTORY: "application/json",
    "report.md": "text/markdown; charset=utf-8",
    "report.json": "application/json",
    MANIFEST: "application/json",
    SIGNATURE: "text/plain",
}
# The files an archive of each kind must hold, exactly: a manifest that leaves one out, or lists another,
# fails verify. Every kind drflow writes today has the same three; a new kind names its own here.
ARCHIVE_FILES: tuple[str, ...] = (HISTORY, "report.md", "report.json")
FILES_OF_KIND: dict[str, tuple[str, ...]] = {}
META_FILES = frozenset({MANIFEST, SIGNATURE})


def required_files(kind: str) -> tuple[str, ...]:
    return FILES_OF_KIND.get(kind, ARCHIVE_FILES)


class ArchiveError(ArchiveRefused):
    """The archive cannot be written or read as asked; the message says what to fix."""


class ArchiveConfig(StrictModel):
    location: str = Field(default=DEFAULT_ARCHIVE, description="a directory, s3://bucket/prefix, or off")
    retention_days: int | None = Field(default=None, ge=1, description="S3 Object Lock retention")
    lock_mode: LockMode = "GOVERNANCE"
    key: str | None = Field(
        default=None, pattern=SECRET_REF_PATTERN, description="env:VAR or file:/path to the signing key"
    )
    key_name: str = Field(default=DEFAULT_KEY_NAME, min_length=1, description="its name in archive_keys")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ArchiveConfig:
        env = os.environ if env is None else env
        days = env.get(RETENTION_ENV, "").strip()
        mode = env.get(LOCK_MODE_ENV, "GOVERNANCE").strip().upper() or "GOVERNANCE"
        try:
            return cls.model_validate(
                {
                    "location": env.get(ARCHIVE_ENV, "").strip() or DEFAULT_ARCHIVE,
                    "retention_days": int(days) if days else None,
                    "lock_mode": mode,
                    "key": env.get(KEY_ENV, "").strip() or None,
                    "key_name": env.get(KEY_NAME_ENV, "").strip() or DEFAULT_KEY_NAME,
                }
            )
        except (ValueError, ValidationError) as err:
            # never the key setting's value: it must be a reference, but a pasted key must not reach a log
            names = f"{ARCHIVE_ENV}, {RETENTION_ENV}, {LOCK_MODE_ENV}, {KEY_ENV} (env:VAR or file:/path)"
            problems = (
                "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_input=False)
                )
                if isinstance(err, ValidationError)
                else str(err)
            )
            raise ArchiveError(f"invalid archive settings ({names}): {problems}") from err

    def signer(self) -> Ed25519Signer | None:
        """The worker's manifest signer, its key resolved now: a wrong key fails at start, not per archive."""
        if self.key is None:
            return None
        try:
            text = resolve_secret(self.key)
        except ApplicationError as err:
            raise ArchiveError(f"{KEY_ENV}: {err.message}") from None
        try:
            return Ed25519Signer(self.key_name, text, ARCHIVE_NAMESPACE, f"{KEY_ENV} ({self.key})")
        except ValueError as err:
            raise ArchiveError(str(err)) from None

    @property
    def enabled(self) -> bool:
        return self.location.strip().lower() != ARCHIVE_OFF


FileStatus = Literal["ok", "changed", "missing", "not-in-manifest", "not-of-its-kind", "extra"]
MARKS: dict[str, str] = {
    "ok": "ok     ", "changed": "CHANGED", "missing": "MISSING",
    "not-in-manifest": "UNLISTED", "not-of-its-kind": "UNEXPECTED", "extra": "EXTRA",
}  # fmt: skip


class FileCheck(StrictModel):
    name: str
    status: FileStatus
    expected_sha256: str | None = None
    actual_sha256: str | None = None
    detail: str = ""


SignatureStatus = Literal["trusted", "signed", "unsigned", "untrusted", "invalid"]


class ManifestSignature(StrictModel):
    """What ``manifest.sig`` proves: which key signed this manifest, and whether the trust list knows it."""

    status: SignatureStatus
    fingerprint: str | None = None
    key_name: str | None = Field(default=None, description="its name in archive_keys")
    trust_list: bool = Field(description="whether archive_keys were given to check against")
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "trusted" or (not self.trust_list and self.status in ("signed", "unsigned"))

    def line(self) -> str:
        fp = self.fingerprint or ""
        text = {
            "trusted": f"ok      {SIGNATURE}: signed by archive key {self.key_name!r} ({fp})",
            "signed": f"note    {SIGNATURE}: signed by key {fp}; no archive_keys given, so who holds it is "
            "not checked",
            "unsigned": (
                f"FAILED  {SIGNATURE}: the archive is not signed, and archive_keys are trusted"
                if self.trust_list
                else f"note    {SIGNATURE}: the archive is not signed"
            ),
            "untrusted": f"FAILED  {SIGNATURE}: signed by key {fp}, which is no trusted archive key",
            "invalid": f"FAILED  {SIGNATURE}: does not verify over manifest.json",
        }[self.status]
        return "  " + text + (f" ({self.detail})" if self.detail else "")


class VerifyReport(StrictModel):
    location: str
    ok: bool
    manifest_sha256: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    kind: str | None = None
    checks: list[FileCheck] = Field(default_factory=list)
    signature: ManifestSignature | None = None
    chain: ChainPosition | None = None
    problems: list[str] = Field(default_factory=list)
    unlisted: list[str] = Field(
        default_factory=list, description="files in the folder the manifest does not name (a failure)"
    )

    def lines(self) -> list[str]:
        head = f"{'OK' if self.ok else 'FAILED'}: {self.location}"
        if self.workflow_id:
            head += f" ({self.workflow_id}, run {self.run_id})"
        lines = [head]
        if self.manifest_sha256:
            lines.append(f"  manifest.json sha256 {self.manifest_sha256}")
        for check in self.checks:
            text = f"  {MARKS[check.status]} {check.name}"
            if check.status == "changed":
                text += f": sha256 {check.actual_sha256}, manifest says {check.expected_sha256}"
            if check.detail:
                text += f" ({check.detail})"
            lines.append(text)
        if self.signature is not None:
            lines.append(self.signature.line())
        if self.manifest_sha256 and not any("not a drflow archive manifest" in p for p in self.problems):
            lines.append("  " + chain_words(self.chain))
        lines += [f"  problem: {p}" for p in self.problems]
        return lines


def chain_words(chain: ChainPosition | None) -> str:
    if chain is None:
        return "chain:  not chained (archived before drflow chained its archives)"
    if chain.previous_manifest_sha256 is None:
        return f"chain:  sequence {chain.sequence}, the first of its store"
    return (
        f"chain:  sequence {chain.sequence}, after {chain.previous} "
        f"(manifest sha256 {chain.previous_manifest_sha256})"
    )


# ---------------------------------------------------------------------------------------------- stores
class _Store(Protocol):
    location: str

    def read(self, name: str, version_id: str | None = None) -> bytes | None: ...

    def write(self, name: str, data: bytes, media_type: str) -> str | None: ...

    def create(self, name: str, data: bytes, media_type: str) -> bool:
        """Write ``name`` only if it does not exist yet, atomically; False when another writer was first."""
        ...

    def names(self) -> list[str]: ...

    def describe(self, name: str) -> str: ...


class _LocalStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.location = str(folder)

    def read(self, name: str, version_id: str | None = None) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes, media_type: str) -> str | None:
        """Atomic (temporary file, then rename), read-only afterwards: never a half-written file."""
        temporary = self._temporary(name, data)
        try:
            os.replace(temporary, self.folder / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return None

    def create(self, name: str, data: bytes, media_type: str) -> bool:
        """``os.link`` of a complete temporary file: atomic, and it fails if the name exists (POSIX)."""
        temporary = self._temporary(name, data)
        try:
            os.link(temporary, self.folder / name)
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)
        return True

    def _temporary(self, name: str, data: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o444)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return Path(temporary)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def describe(self, name: str) -> str:
        return ""


class _S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str, lock: ObjectLock | None = None) -> None:
        self.client, self.bucket, self.prefix, self.lock = client, bucket, prefix.strip("/"), lock
        self.location = f"s3://{bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read(self, name: str, version_id: str | None = None) -> bytes | None:
        from botocore.exceptions import ClientError

        extra = {"VersionId": version_id} if version_id else {}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(name), **extra)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchVersion"):
                return None
            raise
        body: bytes = response["Body"].read()
        return body

    def write(self, name: str, data: bytes, media_type: str) -> str | None:
        return self._put(name, data, media_type, {})

    def create(self, name: str, data: bytes, media_type: str) -> bool:
        """S3 conditional write (``If-None-Match: *``): S3 refuses it once the key exists."""
        from botocore.exceptions import ClientError

        try:
            self._put(name, data, media_type, {"IfNoneMatch": "*"})
        except ClientError as err:
            error = err.response.get("Error", {})
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 412: the key exists; 409: a concurrent conditional write of the same key is in flight
            refused = error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")
            if refused or status in (409, 412):
                return False
            raise
        return True

    def _put(self, name: str, data: bytes, media_type: str, extra: dict[str, Any]) -> str | None:
        digest = hashlib.sha256(data).digest()
        if self.lock is not None:
            extra = {
                **extra, "ObjectLockMode": self.lock.mode, "ObjectLockRetainUntilDate": self.lock.retain_until
            }  # fmt: skip
        response = self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(name),
            Body=data,
            ContentType=media_type,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(digest).decode(),
            Metadata={"sha256": digest.hex()},
            **extra,
        )
        version: str | None = response.get("VersionId")
        return version

    def names(self) -> list[str]:
        prefix = self._key("")
        paginator = self.client.get_paginator("list_objects_v2")
        names = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                rest = str(item["Key"])[len(prefix) :]
                if rest and "/" not in rest:
                    names.append(rest)
        return sorted(names)

    def describe(self, name: str) -> str:
        head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if not mode:
            return "no Object Lock"
        return (
            f"Object Lock {mode} until {until:%Y-%m-%d}"
            if isinstance(until, datetime)
            else f"Object Lock {mode}"
        )


def parse_s3(location: str) -> tuple[str, str]:
    rest = location.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ArchiveError(f"{location!r} names no bucket: use s3://bucket/prefix")
    return bucket, prefix.strip("/")


def s3_client() -> Any:
    """An S3 client from boto3's standard chain (``AWS_ENDPOINT_URL_S3`` points it at another endpoint)."""
    import boto3

    return boto3.client("s3")


def _segment(value: str) -> str:
    """A workflow or run id as one safe path segment (ids are user-chosen and may contain ``/``)."""
    return quote(value, safe="-_.@=+") if value not in ("", ".", "..") else quote(value, safe="") or "_"


def _child(store: _Store, *segments: str) -> _Store:
    if isinstance(store, _S3Store):
        key = "/".join(p for p in (store.prefix, *segments) if p)
        return _S3Store(store.client, store.bucket, key, store.lock)
    assert isinstance(store, _LocalStore)
    return _LocalStore(store.folder.joinpath(*segments))


def root_store(config: ArchiveConfig, client: Any = None) -> _Store:
    """The store's root, where every run folder and the chain live."""
    if config.location.startswith("s3://"):
        bucket, prefix = parse_s3(config.location)
        lock = None
        if config.retention_days is not None:
            lock = ObjectLock(
                mode=config.lock_mode,
                retain_until=datetime.now(UTC).replace(microsecond=0) + timedelta(days=config.retention_days),
            )
        return _S3Store(client if client is not None else s3_client(), bucket, prefix, lock)
    return _LocalStore(Path(config.location).absolute())


def archive_path(workflow_id: str, run_id: str) -> str:
    """``<workflow>/<run>`` inside a store: how the chain names an archive."""
    return f"{_segment(workflow_id)}/{_segment(run_id)}"


def run_store(config: ArchiveConfig, workflow_id: str, run_id: str, client: Any = None) -> _Store:
    if _segment(workflow_id) == CHAIN_DIR:
        raise ArchiveError(f"a workflow id of {CHAIN_DIR!r} would be archived into the store's chain")
    return _child(root_store(config, client), _segment(workflow_id), _segment(run_id))


def _store_at(location: str, client: Any = None) -> _Store:
    """The store of an existing run folder (or its manifest.json) named on the command line."""
    if location.startswith("s3://"):
        bucket, prefix = parse_s3(location)
        prefix = prefix.removesuffix(MANIFEST).strip("/")
        return _S3Store(client if client is not None else s3_client(), bucket, prefix)
    path = Path(location)
    if path.name == MANIFEST or path.is_file():
        path = path.parent
    return _LocalStore(path)


def _root_at(location: str, client: Any = None) -> _Store:
    if location.startswith("s3://"):
        bucket, prefix = parse_s3(location)
        return _S3Store(client if client is not None else s3_client(), bucket, prefix)
    return _LocalStore(Path(location))


def _archive_paths(root: _Store) -> list[str]:
    """Every ``<workflow>/<run>`` of the store that has a manifest.json."""
    if isinstance(root, _S3Store):
        prefix = root._key("")
        found = []
        for page in root.client.get_paginator("list_objects_v2").paginate(Bucket=root.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                parts = str(item["Key"])[len(prefix) :].split("/")
                if len(parts) == 3 and parts[2] == MANIFEST and parts[0] != CHAIN_DIR:
                    found.append(f"{parts[0]}/{parts[1]}")
        return sorted(found)
    assert isinstance(root, _LocalStore)
    if not root.folder.is_dir():
        return []
    return sorted(
        f"{m.parent.parent.name}/{m.parent.name}"
        for m in root.folder.glob(f"*/*/{MANIFEST}")
        if not m.parent.parent.name.startswith(".")
    )


# --------------------------------------------------------------------------------------------- writing
class ChainLink(StrictModel):
    """``.drflow-chain/<sequence>.json``: the archive that holds this place, and its manifest's digest.

    The manifest text and its signature are kept too, so a worker that stopped between claiming the place
    and writing the manifest completes it on its retry instead of leaving a hole.
    """

    format: Literal["drflow-archive-chain/1"] = "drflow-archive-chain/1"
    sequence: int = Field(ge=1)
    archive: str = Field(description="<workflow>/<run> inside the store")
    manifest_sha256: str
    previous_manifest_sha256: str | None = None
    manifest: str
    signature: str | None = None


def link_name(sequence: int) -> str:
    return f"{sequence:010d}.json"


def _chain_links(chain: _Store) -> list[tuple[int, str]]:
    found = [(int(m.group(1)), name) for name in chain.names() if (m := LINK_NAME.match(name))]
    return sorted(found)


def chain_head(chain: _Store) -> ChainLink | None:
    """The link with the highest sequence; the next archive takes sequence + 1."""
    links = _chain_links(chain)
    if not links:
        return None
    raw = chain.read(links[-1][1])
    if raw is None:
        raise ArchiveError(f"{chain.location}/{links[-1][1]} was listed but cannot be read")
    try:
        return ChainLink.model_validate_json(raw)
    except ValidationError as err:
        raise ArchiveError(
            f"{chain.location}/{links[-1][1]} is not a drflow chain link: the chain is damaged, "
            f"run drflow audit verify --store ({err.errors()[0]['msg']})"
        ) from err


def bundle(history: WorkflowHistory) -> tuple[Timeline, dict[str, bytes]]:
    """The files of an archive: the redacted history and the reports rendered from it."""
    timeline = build_timeline(history)
    redacted = redact_history(history.to_json_dict())
    files = {
        HISTORY: (json.dumps(redacted, indent=2, ensure_ascii=False) + "\n").encode(),
        "report.md": render_markdown(timeline).encode(),
        "report.json": render_json(timeline).encode(),
    }
    return timeline, files


def archive_history(
    history: WorkflowHistory,
    kind: str,
    config: ArchiveConfig,
    client: Any = None,
    signer: Ed25519Signer | None = None,
    trust: People | None = None,
) -> ArchiveResult:
    """Write the run's archive, or check the one already there (a retry never overwrites evidence).

    The manifest is written last, after its place in the chain is claimed: a manifest in a run folder
    means the archive is complete and chained.
    """
    if not config.enabled:
        raise ArchiveError(
            f"archiving is off ({ARCHIVE_ENV}={config.location}): name a directory or s3://..."
        )
    timeline, files = bundle(history)
    if timeline.status == "running":
        raise ArchiveError(
            f"{timeline.workflow_id} (run {timeline.run_id}) is still running: archive it once it has closed "
            "(an archive is written once and never replaced)"
        )
    store = run_store(config, timeline.workflow_id, timeline.run_id, client)
    existing = store.read(MANIFEST)
    if existing is not None:
        report = verify_store(store, trust)
        if not report.ok:
            raise ArchiveError(
                f"an archive of this run already exists at {store.location} and fails verification: "
                + "; ".join(report.lines()[1:])
            )
        manifest = Manifest.model_validate_json(existing)
        if signer is not None and (
            manifest.signed_by is None or manifest.signed_by.fingerprint != signer.fingerprint
        ):
            # Without a trust list the check above cannot tell a re-signed manifest; a signing worker knows
            # its own key, and what it archived carries it.
            who = (
                "nobody"
                if manifest.signed_by is None
                else f"{manifest.signed_by.name} ({manifest.signed_by.fingerprint})"
            )
            raise ArchiveError(
                f"an archive of this run already exists at {store.location}, signed by {who}, not by this "
                f"worker's key {signer.name} ({signer.fingerprint}): check it with "
                "`drflow audit verify --people` (after a key rotation it may be the old key's)"
            )
        return ArchiveResult(
            location=store.location, manifest_sha256=_sha(existing), manifest=manifest, already_archived=True
        )
    written = []
    for name, data in files.items():
        version = store.write(name, data, MEDIA_TYPES[name])
        written.append(
            ArchivedFile(
                name=name,
                sha256=_sha(data),
                bytes=len(data),
                media_type=MEDIA_TYPES[name],
                version_id=version,
            )
        )
    lock = store.lock if isinstance(store, _S3Store) else None
    manifest = Manifest(
        workflow_id=timeline.workflow_id,
        run_id=timeline.run_id,
        workflow_type=timeline.workflow_type,
        kind=kind,
        run_status=timeline.status,
        run_closed_at=timeline.closed_at,
        history_events=timeline.history_events,
        archived_at=datetime.now(UTC),
        files=written,
        object_lock=lock,
        signed_by=None if signer is None else SignedBy(name=signer.name, fingerprint=signer.fingerprint),
    )
    here = archive_path(timeline.workflow_id, timeline.run_id)
    link = _claim(_child(root_store(config, client), CHAIN_DIR), here, manifest, signer)
    if link.signature is not None:
        store.write(SIGNATURE, link.signature.encode(), MEDIA_TYPES[SIGNATURE])
    data = link.manifest.encode()
    store.write(MANIFEST, data, MEDIA_TYPES[MANIFEST])
    return ArchiveResult(
        location=store.location, manifest_sha256=_sha(data), manifest=Manifest.model_validate_json(data)
    )


def _claim(chain: _Store, here: str, manifest: Manifest, signer: Ed25519Signer | None) -> ChainLink:
    """Take the next place in the chain: read the head, create the next link exclusively, or try again.

    Several workers archiving into one store at once each get their own sequence number; none overwrites
    another's link, so the chain cannot fork.
    """
    for _ in range(MAX_CLAIMS):
        head = chain_head(chain)
        if head is not None and head.archive == here:
            # this run's own link, from an attempt that stopped before its manifest: finish that one
            claimed = Manifest.model_validate_json(head.manifest)
            if [(f.name, f.sha256) for f in claimed.files] != [(f.name, f.sha256) for f in manifest.files]:
                raise ArchiveError(
                    f"the chain's head {link_name(head.sequence)} names {here} with other file digests: "
                    "the archive was written differently before; check the store with drflow audit verify"
                )
            return head
        position = ChainPosition(
            sequence=1 if head is None else head.sequence + 1,
            previous_manifest_sha256=None if head is None else head.manifest_sha256,
            previous=None if head is None else head.archive,
        )
        data = (manifest.model_copy(update={"chain": position}).model_dump_json(indent=2) + "\n").encode()
        link = ChainLink(
            sequence=position.sequence,
            archive=here,
            manifest_sha256=_sha(data),
            previous_manifest_sha256=position.previous_manifest_sha256,
            manifest=data.decode(),
            signature=None if signer is None else signer.sign_bytes(data),
        )
        raw = (link.model_dump_json(indent=2) + "\n").encode()
        if chain.create(link_name(position.sequence), raw, "application/json"):
            return link
    raise ArchiveError(
        f"could not claim a place in the chain at {chain.location} after {MAX_CLAIMS} attempts "
        "(many workers archiving at once?); the archive is retried"
    )


class HistoryArchiver:
    """``activities.archive.ArchiveWriter`` over this module: what the worker hands its archive activities."""

    def __init__(self, config: ArchiveConfig | None = None) -> None:
        self.config = config or ArchiveConfig.from_env()
        self.signer = self.config.signer() if self.config.enabled else None

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def write(self, history: WorkflowHistory, kind: str) -> ArchiveResult:
        return archive_history(history, kind, self.config, signer=self.signer)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ reading, verifying
def verify(location: str, client: Any = None, trust: People | None = None) -> VerifyReport:
    """Recompute every digest of the archive at ``location`` (a run folder, its manifest, or s3://...)."""
    return verify_store(_store_at(location, client), trust)


def check_manifest_signature(raw: bytes, armored: bytes | None, trust: People | None) -> ManifestSignature:
    """The signature in ``manifest.sig`` over these manifest bytes, and the trusted key it belongs to."""
    trusted = trust is not None and bool(trust.archive_keys)
    if armored is None:
        return ManifestSignature(status="unsigned", trust_list=trusted)
    try:
        sig = parse_armored(armored.decode("utf-8", "replace"))
        check_signature(sig, raw, ARCHIVE_NAMESPACE)
    except SignatureRefused as err:
        return ManifestSignature(status="invalid", trust_list=trusted, detail=str(err))
    if not trusted:
        return ManifestSignature(status="signed", fingerprint=sig.fingerprint, trust_list=False)
    assert trust is not None
    key = trust.archive_key_for(sig.fingerprint)
    if key is None:
        return ManifestSignature(status="untrusted", fingerprint=sig.fingerprint, trust_list=True)
    return ManifestSignature(
        status="trusted", fingerprint=sig.fingerprint, key_name=key.name, trust_list=True
    )


def _file_check(store: _Store, item: ArchivedFile) -> FileCheck:
    data = store.read(item.name)
    if data is None:
        return FileCheck(name=item.name, status="missing", expected_sha256=item.sha256)
    actual = _sha(data)
    if actual == item.sha256 and len(data) == item.bytes:
        return FileCheck(
            name=item.name, status="ok", expected_sha256=item.sha256, actual_sha256=actual,
            detail=store.describe(item.name),
        )  # fmt: skip
    detail = ""
    if item.version_id:
        original = store.read(item.name, item.version_id)
        detail = (
            f"a newer version was written over it; the archived version {item.version_id} is intact"
            if original is not None and _sha(original) == item.sha256
            else f"the archived version {item.version_id} is gone or changed too"
        )
    return FileCheck(
        name=item.name, status="changed", expected_sha256=item.sha256, actual_sha256=actual, detail=detail
    )


def verify_store(store: _Store, trust: People | None = None) -> VerifyReport:
    """Strict: exactly the files the kind requires, each digest, the signature, the folder it lies in."""
    raw = store.read(MANIFEST)
    if raw is None:
        return VerifyReport(
            location=store.location, ok=False, problems=[f"no {MANIFEST} at {store.location}"]
        )
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as err:
        return VerifyReport(
            location=store.location,
            ok=False,
            manifest_sha256=_sha(raw),
            problems=[f"{MANIFEST} is not a drflow archive manifest: {err.errors()[0]['msg']}"],
        )
    required = required_files(manifest.kind)
    checks = [_file_check(store, item) for item in manifest.files]
    listed = {item.name for item in manifest.files}
    holds = f"a {manifest.kind} archive holds {', '.join(required)}"
    checks = [
        c if c.name in required else c.model_copy(update={"status": "not-of-its-kind", "detail": holds})
        for c in checks
    ]
    checks += [
        FileCheck(name=name, status="not-in-manifest", detail=f"a {manifest.kind} archive requires it")
        for name in required
        if name not in listed
    ]
    unlisted = [name for name in store.names() if name not in listed and name not in META_FILES]
    checks += [
        FileCheck(name=name, status="extra", detail="in the folder, not in the manifest")
        for name in unlisted
        if name not in required  # a required file left out is already named as not in the manifest
    ]
    problems = []
    if not manifest.files:
        problems.append(f"{MANIFEST} lists no files: an empty manifest proves nothing")
    if len(listed) != len(manifest.files):
        problems.append(f"{MANIFEST} lists a file twice")
    expected = archive_path(manifest.workflow_id, manifest.run_id)
    here = store.location.rstrip("/")
    if not here.endswith("/" + expected):
        problems.append(
            f"{MANIFEST} is the archive of {expected} but lies in {here}: moved, or swapped with another"
        )
    signature = check_manifest_signature(raw, store.read(SIGNATURE), trust)
    claimed = manifest.signed_by
    if claimed is not None and signature.fingerprint not in (None, claimed.fingerprint):
        problems.append(
            f"{SIGNATURE} is by key {signature.fingerprint}, but {MANIFEST} says {claimed.fingerprint}"
        )
    if claimed is not None and signature.status == "unsigned":
        problems.append(f"{MANIFEST} says it is signed by {claimed.name!r}, but {SIGNATURE} is missing")
    return VerifyReport(
        location=store.location,
        ok=all(c.status == "ok" for c in checks) and not problems and signature.ok,
        manifest_sha256=_sha(raw),
        workflow_id=manifest.workflow_id,
        run_id=manifest.run_id,
        kind=manifest.kind,
        checks=checks,
        signature=signature,
        chain=manifest.chain,
        problems=problems,
        unlisted=unlisted,
    )


def is_archive(location: str) -> bool:
    if location.startswith("s3://"):
        return True
    path = Path(location)
    return (path / MANIFEST).is_file() or path.name == MANIFEST


def read_archived_history(location: str, client: Any = None, trust: People | None = None) -> WorkflowHistory:
    """The history kept in an archive, verified first: replaying a changed copy would prove nothing."""
    store = _store_at(location, client)
    report = verify_store(store, trust)
    if not report.ok:
        raise ArchiveError("the archive fails verification:\n" + "\n".join(report.lines()))
    data = store.read(HISTORY)
    if data is None:
        raise ArchiveError(f"no {HISTORY} at {store.location}")
    return WorkflowHistory.from_json(report.workflow_id or "", data.decode())


# ------------------------------------------------------------------------------------------- the chain
class ChainReport(StrictModel):
    """A whole store: every link in order, each archive verified, and the head an auditor writes down."""

    location: str
    ok: bool
    links: int = 0
    head: ChainLink | None = None
    archives: list[VerifyReport] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    unchained: list[str] = Field(default_factory=list, description="archives from before the chain")

    def lines(self) -> list[str]:
        lines = [f"chain {'OK' if self.ok else 'FAILED'}: {self.location}: {self.links} chained archives"]
        for report in self.archives:
            lines += report.lines()
        lines += [
            f"  not chained: {path} (archived before drflow chained its archives)" for path in self.unchained
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        if self.head is None:
            lines.append("chain head: none (no chained archive in this store)")
        else:
            lines.append(
                f"chain head: sequence {self.head.sequence}, {self.head.archive}, "
                f"manifest sha256 {self.head.manifest_sha256}"
            )
        return lines


def verify_chain(location: str, client: Any = None, trust: People | None = None) -> ChainReport:
    """Walk ``.drflow-chain`` from sequence 1: each link must follow the one before it, and name the
    archive whose manifest has exactly its digest; every archive in the store must be in the chain."""
    root = _root_at(location, client)
    chain = _child(root, CHAIN_DIR)
    problems: list[str] = []
    reports: list[VerifyReport] = []
    previous: ChainLink | None = None
    expected = 1
    linked: set[str] = set()
    links = _chain_links(chain)
    for sequence, name in links:
        where = f"{CHAIN_DIR}/{name}"
        if sequence != expected:
            missing = ", ".join(f"{CHAIN_DIR}/{link_name(n)}" for n in range(expected, sequence))
            problems.append(f"{missing} missing: an archive (or its link) was deleted from the chain")
        expected = sequence + 1
        raw = chain.read(name)
        try:
            link = ChainLink.model_validate_json(raw or b"")
        except ValidationError as err:
            problems.append(f"{where} is not a chain link: {err.errors()[0]['msg']}")
            previous = None
            continue
        if link.sequence != sequence:
            problems.append(f"{where} says sequence {link.sequence}: links were renamed or reordered")
        if previous is not None and link.previous_manifest_sha256 != previous.manifest_sha256:
            problems.append(
                f"{where} follows manifest sha256 {link.previous_manifest_sha256}, but the link before it "
                f"({previous.archive}) has {previous.manifest_sha256}: reordered, or an archive was removed"
            )
        if previous is None and sequence == 1 and link.previous_manifest_sha256 is not None:
            problems.append(f"{where} is the first link but names a previous manifest")
        linked.add(link.archive)
        store = _child(root, *link.archive.split("/"))
        report = verify_store(store, trust)
        reports.append(report)
        manifest_raw = store.read(MANIFEST)
        if manifest_raw is None:
            problems.append(f"{link.archive}/{MANIFEST} missing: archive {sequence} of the chain was deleted")
        elif _sha(manifest_raw) != link.manifest_sha256:
            problems.append(
                f"{link.archive}/{MANIFEST} is not the manifest chained at {where} "
                f"(sha256 {_sha(manifest_raw)}, the link says {link.manifest_sha256}): "
                "replaced, or swapped with another archive"
            )
        elif report.chain is None or report.chain.sequence != sequence:
            problems.append(f"{link.archive}/{MANIFEST} does not record sequence {sequence} of the chain")
        previous = link
    unchained = []
    for path in _archive_paths(root):
        if path in linked:
            continue
        report = verify_store(_child(root, *path.split("/")), trust)
        reports.append(report)
        if report.chain is None:
            unchained.append(path)  # from before chaining: verified like any other, listed as such
        else:
            problems.append(
                f"{path}/{MANIFEST} claims sequence {report.chain.sequence} of the chain, but no link names "
                "it: its link was deleted, or it was copied in from elsewhere"
            )
    head = previous if links and previous is not None and previous.sequence == links[-1][0] else None
    return ChainReport(
        location=root.location,
        ok=not problems and all(r.ok for r in reports),
        links=len(links),
        head=head,
        archives=reports,
        problems=problems,
        unchained=unchained,
    )
