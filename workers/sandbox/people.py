"""The sandbox's demo people (alice, bob, carol) with real SSH keys, and the gateway key, made once.

``ssh-keygen`` makes passphrase-less ed25519 keys under ``<state>/keys/`` (mode 0600, the directory 0700)
and ``<state>/people.yaml`` lists their public halves. Keys are kept across ``up`` (an existing key is never
replaced: signatures in earlier histories stay checkable), and ``--reset`` deletes them with the state.
The CLI finds ``<state>/keys/<person>`` on its own, so a demo approval is signed out of the box.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runbooks.people import DEMO_MARKER

PEOPLE = {  # name: (display name, Slack id, groups)
    "alice": ("Alice (SRE on call)", "U0SANDALICE", ["sre"]),
    "bob": ("Bob (SRE)", "U0SANDBOB", ["sre"]),
    "carol": ("Carol (DBA)", "U0SANDCAROL", ["dba"]),
}
GATEWAY = "sandbox-gateway"


class SandboxKeysError(RuntimeError):
    """ssh-keygen is missing or failed."""


@dataclass(frozen=True)
class DemoPeople:
    people_file: Path
    keys_dir: Path

    def key(self, person: str) -> Path:
        return self.keys_dir / person


def ensure_demo_people(state_dir: Path) -> DemoPeople:
    keys = state_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    lines = {name: _ensure_key(keys / name, name) for name in [*PEOPLE, GATEWAY]}
    marker = keys / DEMO_MARKER
    if not marker.exists():
        marker.write_text("Demo keys of the drflow sandbox: the CLI signs with them as alice, bob, carol.\n")
    people = {
        "people": [
            {"name": name, "display_name": display, "keys": [lines[name]], "slack": [slack], "groups": groups}
            for name, (display, slack, groups) in PEOPLE.items()
        ],
        "gateways": [{"name": GATEWAY, "key": lines[GATEWAY]}],
    }
    people_file = state_dir / "people.yaml"
    header = "# Written by `drflow sandbox up`: the demo people and their public keys (private: keys/).\n"
    # JSON is YAML: the people loader reads it like any people file.
    text = header + json.dumps(people, indent=2) + "\n"
    if not people_file.exists() or people_file.read_text() != text:
        people_file.write_text(text)
    return DemoPeople(people_file=people_file, keys_dir=keys)


def _ensure_key(private: Path, name: str) -> str:
    public = private.with_name(f"{private.name}.pub")
    if not (private.exists() and public.exists()):
        keygen = shutil.which("ssh-keygen")
        if keygen is None:
            raise SandboxKeysError(
                "ssh-keygen is not installed (package openssh-client): it makes the demo keys"
            )
        private.unlink(missing_ok=True)
        public.unlink(missing_ok=True)
        done = subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@drflow-sandbox", "-f", str(private)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise SandboxKeysError(f"ssh-keygen could not make the key of {name}: {done.stderr.strip()}")
    os.chmod(private, 0o600)
    return public.read_text().strip()
