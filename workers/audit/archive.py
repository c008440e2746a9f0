"""A tamper-evident archive of one run: its history, the rendered report and a SHA-256 manifest.

Layout, in a local directory (default ``.drflow/archive``) or under an S3 prefix::

    <root>/<workflow id>/<run id>/history.json   the full history, secrets redacted (still replays)
                                 report.md       the audit report (Markdown)
                                 report.json     the audit report (JSON: timeline + regulation mapping)
                                 manifest.json   SHA-256 and size of each file above; written last

Temporal's retention then no longer limits the evidence. On S3 every object is written with a SHA-256
checksum that S3 verifies on upload and, when a retention is configured, with Object Lock (mode and
retain-until date; the bucket must have Object Lock enabled). ``verify`` recomputes every digest and names
the file that changed or went missing. An existing archive is never overwritten: archiving the same run
again checks it instead.

Configuration (the worker's environment): ``DRFLOW_ARCHIVE`` (a directory, or ``s3://bucket/prefix``),
``DRFLOW_ARCHIVE_RETENTION_DAYS``, ``DRFLOW_ARCHIVE_LOCK_MODE`` (``GOVERNANCE`` or ``COMPLIANCE``);
``DRFLOW_ARCHIVE=off`` turns archiving off on that worker. S3 endpoints and credentials come from boto3's
standard chain (``AWS_ENDPOINT_URL_S3`` for a non-AWS endpoint).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

from pydantic import Field, ValidationError
from temporalio.client import WorkflowHistory

from activities.archive import ARCHIVE_ENV, ArchivedFile, ArchiveResult, LockMode, Manifest, ObjectLock
from activities.errors import ArchiveRefused
from runbooks.model import StrictModel
from workers.audit.model import Timeline
from workers.audit.redact import redact_history
from workers.audit.render import render_json, render_markdown
from workers.audit.timeline import build_timeline

RETENTION_ENV = "DRFLOW_ARCHIVE_RETENTION_DAYS"
LOCK_MODE_ENV = "DRFLOW_ARCHIVE_LOCK_MODE"
DEFAULT_ARCHIVE = ".drflow/archive"
ARCHIVE_OFF = "off"
MANIFEST = "manifest.json"
HISTORY = "history.json"
MEDIA_TYPES = {
    HISTORY: "application/json",
    "report.md": "text/markdown; charset=utf-8",
    "report.json": "application/json",
    MANIFEST: "application/json",
}


class ArchiveError(ArchiveRefused):
    """The archive cannot be written or read as asked; the message says what to fix."""


class ArchiveConfig(StrictModel):
    location: str = Field(default=DEFAULT_ARCHIVE, description="a directory, s3://bucket/prefix, or off")
    retention_days: int | None = Field(default=None, ge=1, description="S3 Object Lock retention")
    lock_mode: LockMode = "GOVERNANCE"

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
                }
            )
        except (ValueError, ValidationError) as err:
            raise ArchiveError(
                f"invalid archive settings ({ARCHIVE_ENV}, {RETENTION_ENV}, {LOCK_MODE_ENV}): {err}"
            ) from err

    @property
    def enabled(self) -> bool:
        return self.location.strip().lower() != ARCHIVE_OFF


class FileCheck(StrictModel):
    name: str
    status: Literal["ok", "changed", "missing"]
    expected_sha256: str
    actual_sha256: str | None = None
    detail: str = ""


class VerifyReport(StrictModel):
    location: str
    ok: bool
    manifest_sha256: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    checks: list[FileCheck] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    unlisted: list[str] = Field(
        default_factory=list, description="files in the folder the manifest does not name"
    )

    def lines(self) -> list[str]:
        head = f"{'OK' if self.ok else 'FAILED'}: {self.location}"
        if self.workflow_id:
            head += f" ({self.workflow_id}, run {self.run_id})"
        lines = [head]
        if self.manifest_sha256:
            lines.append(f"  manifest.json sha256 {self.manifest_sha256}")
        for check in self.checks:
            mark = {"ok": "ok     ", "changed": "CHANGED", "missing": "MISSING"}[check.status]
            text = f"  {mark} {check.name}"
            if check.status == "changed":
                text += f": sha256 {check.actual_sha256}, manifest says {check.expected_sha256}"
            if check.detail:
                text += f" ({check.detail})"
            lines.append(text)
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {name} is in the folder but not in the manifest" for name in self.unlisted]
        return lines


# ---------------------------------------------------------------------------------------------- stores
class _Store(Protocol):
    location: str

    def read(self, name: str, version_id: str | None = None) -> bytes | None: ...

    def write(self, name: str, data: bytes, media_type: str) -> str | None: ...

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
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o444)
            os.replace(temporary, self.folder / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return None

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
        digest = hashlib.sha256(data).digest()
        extra: dict[str, Any] = {}
        if self.lock is not None:
            extra = {"ObjectLockMode": self.lock.mode, "ObjectLockRetainUntilDate": self.lock.retain_until}
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


def run_store(config: ArchiveConfig, workflow_id: str, run_id: str, client: Any = None) -> _Store:
    if config.location.startswith("s3://"):
        bucket, prefix = parse_s3(config.location)
        lock = None
        if config.retention_days is not None:
            lock = ObjectLock(
                mode=config.lock_mode,
                retain_until=datetime.now(UTC).replace(microsecond=0) + timedelta(days=config.retention_days),
            )
        key = "/".join(p for p in (prefix, _segment(workflow_id), _segment(run_id)) if p)
        return _S3Store(client if client is not None else s3_client(), bucket, key, lock)
    return _LocalStore(Path(config.location).absolute() / _segment(workflow_id) / _segment(run_id))


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


# --------------------------------------------------------------------------------------------- writing
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
    history: WorkflowHistory, kind: str, config: ArchiveConfig, client: Any = None
) -> ArchiveResult:
    """Write the run's archive, or check the one already there (a retry never overwrites evidence)."""
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
        report = verify_store(store)
        if not report.ok:
            raise ArchiveError(
                f"an archive of this run already exists at {store.location} and fails verification: "
                + "; ".join(report.lines()[1:])
            )
        manifest = Manifest.model_validate_json(existing)
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
    )
    data = (manifest.model_dump_json(indent=2) + "\n").encode()
    store.write(MANIFEST, data, MEDIA_TYPES[MANIFEST])
    return ArchiveResult(location=store.location, manifest_sha256=_sha(data), manifest=manifest)


class HistoryArchiver:
    """``activities.archive.ArchiveWriter`` over this module: what the worker hands its archive activities."""

    def __init__(self, config: ArchiveConfig | None = None) -> None:
        self.config = config or ArchiveConfig.from_env()

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def write(self, history: WorkflowHistory, kind: str) -> ArchiveResult:
        return archive_history(history, kind, self.config)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ reading, verifying
def verify(location: str, client: Any = None) -> VerifyReport:
    """Recompute every digest of the archive at ``location`` (a run folder, its manifest, or s3://...)."""
    return verify_store(_store_at(location, client))


def verify_store(store: _Store) -> VerifyReport:
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
    checks = []
    for item in manifest.files:
        data = store.read(item.name)
        if data is None:
            checks.append(FileCheck(name=item.name, status="missing", expected_sha256=item.sha256))
            continue
        actual = _sha(data)
        if actual == item.sha256 and len(data) == item.bytes:
            checks.append(
                FileCheck(
                    name=item.name,
                    status="ok",
                    expected_sha256=item.sha256,
                    actual_sha256=actual,
                    detail=store.describe(item.name),
                )
            )
            continue
        detail = ""
        if item.version_id:
            original = store.read(item.name, item.version_id)
            detail = (
                f"a newer version was written over it; the archived version {item.version_id} is intact"
                if original is not None and _sha(original) == item.sha256
                else f"the archived version {item.version_id} is gone or changed too"
            )
        checks.append(
            FileCheck(
                name=item.name,
                status="changed",
                expected_sha256=item.sha256,
                actual_sha256=actual,
                detail=detail,
            )
        )
    listed = {item.name for item in manifest.files} | {MANIFEST}
    return VerifyReport(
        location=store.location,
        ok=all(c.status == "ok" for c in checks),
        manifest_sha256=_sha(raw),
        workflow_id=manifest.workflow_id,
        run_id=manifest.run_id,
        checks=checks,
        unlisted=[name for name in store.names() if name not in listed],
    )


def is_archive(location: str) -> bool:
    if location.startswith("s3://"):
        return True
    path = Path(location)
    return (path / MANIFEST).is_file() or path.name == MANIFEST


def read_archived_history(location: str, client: Any = None) -> WorkflowHistory:
    """The history kept in an archive, verified first: replaying a changed copy would prove nothing."""
    store = _store_at(location, client)
    report = verify_store(store)
    if not report.ok:
        raise ArchiveError("the archive fails verification:\n" + "\n".join(report.lines()))
    data = store.read(HISTORY)
    if data is None:
        raise ArchiveError(f"no {HISTORY} at {store.location}")
    return WorkflowHistory.from_json(report.workflow_id or "", data.decode())
