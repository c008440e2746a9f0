"""The CLI side of verified approvals: find the person's key, build the payload, sign it with ssh-keygen.

Where the key comes from, first match wins: ``--key FILE``; ``DRFLOW_SIGNING_KEY`` (a private key path);
the ssh-agent (``SSH_AUTH_SOCK``), using an agent key the people file lists for the person when the file
is readable here; the sandbox's demo key ``keys/<person>`` beside the sandbox's people file (default
``.drflow/sandbox/keys/<person>``). Without any, the answer goes
unsigned, with a warning: a runbook that requires verified approvers refuses it and says how to sign.
drflow never reads a private key itself: ``ssh-keygen -Y sign`` does the signing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
from pydantic import ValidationError

from activities.approvals.requests import REQUEST_NAMESPACE, RequestPayload
from activities.approvals.signatures import NAMESPACE, DecisionPayload, utc_stamp
from activities.approvals.signing import SigningError, sign
from runbooks.model import Approvals
from runbooks.people import DEMO_MARKER, PeopleFileError, load_people_file, people_location
from workers.cli.common import Failure

KEY_ENV = "DRFLOW_SIGNING_KEY"
DEMO_KEYS = Path(".drflow/sandbox/keys")


@dataclass(frozen=True)
class Signer:
    """How this person's key is reached: a private key file, or the agent (with the keys to prefer)."""

    person: str
    key_file: Path | None
    allowed_keys: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return str(self.key_file) if self.key_file is not None else "ssh-agent"

    def sign(self, message: bytes, namespace: str) -> str:
        try:
            return sign(message, self.key_file, namespace=namespace, allowed_keys=self.allowed_keys)
        except SigningError as err:
            raise Failure(f"could not sign as {self.person} with {self.source}: {err}") from err


def person_name(who: str) -> str:
    """People-file names are lowercase: ``--as Bob`` signs as bob."""
    return who.strip().casefold()


def find_signer(
    who: str, key: str | None, approvals: Approvals | None = None, directory: Path | None = None
) -> Signer | None:
    person = person_name(who)
    if key is not None:
        path = Path(key).expanduser()
        if not path.is_file():
            raise Failure(f"--key {key}: no such file")
        return Signer(person, path)
    if os.environ.get(KEY_ENV):
        path = Path(os.environ[KEY_ENV]).expanduser()
        if not path.is_file():
            raise Failure(f"{KEY_ENV}={path}: no such file")
        return Signer(person, path)
    listed = _listed_keys(person, approvals, directory)
    demo = _demo_keys(approvals, directory) / person
    if os.environ.get("SSH_AUTH_SOCK") and (listed or not demo.is_file()):
        return Signer(person, None, tuple(listed))
    if demo.is_file():
        return Signer(person, demo)
    return None


def _demo_keys(approvals: Approvals | None, directory: Path | None) -> Path:
    """The sandbox's demo keys: beside its people file (marked by the sandbox), else the default place."""
    location = people_location(approvals or Approvals(), directory)
    if location is not None and (location.parent / "keys" / DEMO_MARKER).is_file():
        return location.parent / "keys"
    return DEMO_KEYS


def _listed_keys(person: str, approvals: Approvals | None, directory: Path | None) -> list[str]:
    """The person's keys from the people file, when it is readable here (to pick among agent keys)."""
    location = people_location(approvals or Approvals(), directory)
    if location is None or not location.is_file():
        return []
    try:
        people = load_people_file(location)
        return [line for line in people.person(person).keys if line]
    except (PeopleFileError, KeyError):
        return []


def warn_unsigned(what: str) -> None:
    click.echo(
        f"warning: the {what} is not signed (no --key, {KEY_ENV}, ssh-agent or sandbox key found): a runbook "
        "that requires verified approvers refuses it (docs/approvals.md)",
        err=True,
    )


def sign_decision(signer: Signer, **fields: object) -> tuple[str, str]:
    """The canonical decision text and its armored signature."""
    return _signed(signer, DecisionPayload, NAMESPACE, "answer", fields)


def sign_request(signer: Signer, **fields: object) -> tuple[str, str]:
    """The canonical request text (``drflow failover|failback --as``) and its armored signature."""
    return _signed(signer, RequestPayload, REQUEST_NAMESPACE, "request", fields)


def _signed(
    signer: Signer, kind: type[DecisionPayload | RequestPayload], namespace: str, what: str,
    fields: dict[str, object],
) -> tuple[str, str]:  # fmt: skip
    try:
        payload = kind.model_validate(
            {**fields, "person": signer.person, "signed_at": utc_stamp(datetime.now(UTC))}
        )
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        raise Failure(f"cannot sign this {what}: {first['loc']}: {first['msg']}") from err
    message = payload.canonical()
    return message.decode(), signer.sign(message, namespace)
