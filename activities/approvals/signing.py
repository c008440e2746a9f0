"""Signing a decision with the operator's own SSH key, by the real ``ssh-keygen -Y sign`` (for the CLI).

drflow never reads a private key: ``ssh-keygen`` does, or the operator's ssh-agent holds it. The result is
the armored SSHSIG text that ``signatures.verify_decision`` and ``ssh-keygen -Y verify`` both accept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from activities.approvals.signatures import NAMESPACE, DecisionPayload


class SigningError(RuntimeError):
    """ssh-keygen could not sign: no key, no agent, a passphrase it could not ask for, ..."""


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise SigningError("ssh-keygen is not installed (OpenSSH 8.1 or later signs with -Y sign)")
    return found


def agent_keys(env: Mapping[str, str] | None = None) -> list[str]:
    """The public key lines the ssh-agent holds (``ssh-add -L``)."""
    done = subprocess.run(
        ["ssh-add", "-L"],
        capture_output=True,
        text=True,
        env=dict(env or os.environ),
        check=False,
        timeout=30,
    )
    if done.returncode != 0:
        raise SigningError(f"ssh-agent has no keys or is unreachable: {(done.stderr or done.stdout).strip()}")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def sign(
    payload: DecisionPayload | bytes,
    key_file: str | os.PathLike[str] | None = None,
    *,
    namespace: str = NAMESPACE,
    allowed_keys: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> str:
    """Sign with ``ssh-keygen -Y sign -n drflow-approval``; returns the armored signature.

    With ``key_file``, that (private) key signs. Without one, the ssh-agent at ``SSH_AUTH_SOCK`` signs with
    ``-U``, using the first agent key that is one of ``allowed_keys`` (the person's keys in the people file)
    or, when none are given, the agent's first key.
    """
    message = payload.canonical() if isinstance(payload, DecisionPayload) else payload
    environment = dict(env if env is not None else os.environ)
    command = [_ssh_keygen(), "-Y", "sign", "-n", namespace]
    with tempfile.TemporaryDirectory(prefix="drflow-sign-") as scratch:
        if key_file is not None:
            command += ["-f", str(key_file)]
        else:
            if not environment.get("SSH_AUTH_SOCK"):
                raise SigningError("no key file given and no ssh-agent (SSH_AUTH_SOCK is not set)")
            public = _agent_key(agent_keys(environment), allowed_keys)
            public_file = Path(scratch) / "agent-key.pub"
            public_file.write_text(public + "\n")
            command += ["-U", "-f", str(public_file)]
        done = subprocess.run(
            command, input=message, capture_output=True, env=environment, check=False, timeout=120
        )
    if done.returncode != 0:
        raise SigningError(f"ssh-keygen -Y sign failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


def _agent_key(available: list[str], allowed: Sequence[str]) -> str:
    if not allowed:
        if not available:
            raise SigningError("the ssh-agent holds no keys")
        return available[0]
    wanted = {" ".join(line.split()[:2]) for line in allowed}
    for line in available:
        if " ".join(line.split()[:2]) in wanted:
            return line
    raise SigningError("none of the ssh-agent's keys is listed for you in the people file")
