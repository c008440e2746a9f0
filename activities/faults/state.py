"""What is injected, in a state file, so that a fault outlives no process: a later one undoes what a crashed
one left (``cleanup_leftovers``, ``drflow faults cleanup``).

The record is written before the fault is injected and dropped after it is removed, so a crash at any point
leaves at most a record of a fault that may be in place; removing is idempotent, so undoing one that was not
is harmless. A record belongs to the process that wrote it (pid and kernel start time, so a reused pid is
not taken for it): cleanup undoes only the faults of processes that are gone, never those of a live run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from activities.faults import postgres, process
from activities.faults.base import Fault, FaultError

STATE_FILE = "faults.json"


class FaultRecord(BaseModel):
    id: str
    kind: str
    description: str
    params: dict[str, Any]
    owner_pid: int
    owner_start: int | None
    injected_at: float


def _proxy_gone(params: dict[str, Any]) -> str:
    return f"nothing to undo: the proxy on {params.get('listen')} ended with the process that ran it"


REMOVERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "process-kill": process.remove_recorded,
    "postgres-replay-paused": postgres.remove_recorded,
    "tcp-proxy": _proxy_gone,
    "udp-proxy": _proxy_gone,
}


class FaultRegistry:
    def __init__(self, state_dir: Path | str) -> None:
        self.directory = Path(state_dir)
        self.path = self.directory / STATE_FILE
        self._ids: dict[int, str] = {}  # id(fault) -> record id, for faults this process injected

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[FaultRecord]]:
        """The records, read and written back under an exclusive lock (several processes may inject)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / (STATE_FILE + ".lock")).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self._read()
            before = list(records)
            yield records
            if records != before:
                temporary = self.path.with_suffix(".tmp")
                temporary.write_text(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
                temporary.replace(self.path)

    def _read(self) -> list[FaultRecord]:
        if not self.path.exists():
            return []
        return [FaultRecord.model_validate(r) for r in json.loads(self.path.read_text() or "[]")]

    def records(self) -> list[FaultRecord]:
        with self._locked() as records:
            return list(records)

    def inject(self, fault: Fault) -> FaultRecord:
        """Record, then inject; a fault that refuses (``FaultError``) changed nothing, so its record goes."""
        if fault.kind not in REMOVERS:
            raise FaultError(f"fault kind {fault.kind!r} has no way to be undone after a crash")
        me = os.getpid()
        record = FaultRecord(
            id=uuid.uuid4().hex[:12], kind=fault.kind, description=fault.describe(), params=fault.params(),
            owner_pid=me, owner_start=process.start_time(me), injected_at=time.time(),
        )  # fmt: skip
        with self._locked() as records:
            records.append(record)
        try:
            fault.inject()
        except BaseException:
            with self._locked() as records:
                records[:] = [r for r in records if r.id != record.id]
            raise
        self._ids[id(fault)] = record.id
        return record

    def remove(self, fault: Fault) -> None:
        """Remove, then drop the record; a removal that fails keeps it, for cleanup to try again."""
        fault.remove()
        record_id = self._ids.pop(id(fault), None)
        with self._locked() as records:
            records[:] = [r for r in records if r.id != record_id]

    @contextlib.contextmanager
    def injected(self, fault: Fault) -> Iterator[FaultRecord]:
        record = self.inject(fault)
        try:
            yield record
        finally:
            self.remove(fault)


def _owner_alive(record: FaultRecord) -> bool:
    return process.alive(record.owner_pid) and process.start_time(record.owner_pid) == record.owner_start


def cleanup_leftovers(state_dir: Path | str, *, include_live: bool = False) -> list[str]:
    """Undo every recorded fault whose process is gone (with ``include_live``, every one); one line each.

    A fault that cannot be undone now (its server is down) keeps its record and says so: run it again.
    """
    registry = FaultRegistry(state_dir)
    lines: list[str] = []
    with registry._locked() as records:
        kept: list[FaultRecord] = []
        for record in records:
            if _owner_alive(record) and not include_live:
                kept.append(record)
                continue
            try:
                done = REMOVERS[record.kind](record.params)
            except Exception as err:
                kept.append(record)
                lines.append(f"NOT undone: {record.description}: {err}")
                continue
            lines.append(f"undone: {record.description}: {done}")
        records[:] = kept
    return lines
