"""Real OpenSSH keys for the approval tests, made by the system's ``ssh-keygen`` in a temporary directory."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SSH_KEYGEN = "/usr/bin/ssh-keygen"


@dataclass(frozen=True)
class Key:
    private: Path
    public_line: str
    fingerprint: str  # as `ssh-keygen -lf` prints it


def make_key(directory: Path, name: str, kind: str = "ed25519", bits: int | None = None) -> Key:
    """A passphrase-less key pair; ``kind`` is ``ed25519``, ``rsa`` (3072 bits) or ``ecdsa`` (P-256)."""
    private = directory / name
    size = bits or {"rsa": 3072, "ecdsa": 256}.get(kind)
    extra = ["-b", str(size)] if size else []
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, *extra, "-N", "", "-C", f"{name}@test", "-f", str(private)],
        check=True,
        capture_output=True,
    )
    listed = subprocess.run([SSH_KEYGEN, "-lf", str(private)], check=True, capture_output=True, text=True)
    return Key(private, (directory / f"{name}.pub").read_text().strip(), listed.stdout.split()[1])


def keygen_sign(key: Key, message: bytes, namespace: str = "drflow-approval") -> str:
    """What an operator's ``ssh-keygen -Y sign`` prints for this message."""
    done = subprocess.run(
        [SSH_KEYGEN, "-Y", "sign", "-n", namespace, "-f", str(key.private)],
        input=message,
        check=True,
        capture_output=True,
    )
    return done.stdout.decode()
