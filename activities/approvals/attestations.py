"""Slack gateway attestations: "Slack user U.. clicked <decision> on run X, gate G, plan P at T", signed.

Slack proves a click to the gateway (its request signature); the gateway proves it to the workflow with
its own Ed25519 key, in the same SSHSIG format as people's decisions, under its own namespace, so an
attestation is never mistaken for a person's signature and ``ssh-keygen -Y verify`` checks both. The
workflow then maps the Slack user to one person of the people file. Signing happens in the gateway
process with ``cryptography`` (the gateway holds the key as a secret reference; no ssh-agent there).
"""

from __future__ import annotations

import base64
import textwrap
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
)
from pydantic import Field

from activities.approvals.signatures import (
    ARMOR_BEGIN,
    ARMOR_END,
    BOUND_FIELDS,
    MAGIC,
    MAX_AGE,
    MAX_AHEAD,
    SSHSIG_VERSION,
    AnswerPayload,
    Binding,
    GateDecision,
    StepDecision,
    UnknownSigner,
    check_window,
    compare,
    signed_data,
    signed_payload,
    ssh_string,
    utc_stamp,
)
from runbooks.model import Gate, Name, StrictModel
from runbooks.people import People, Person, fingerprint_of_blob

ATTESTATION_NAMESPACE: Final = "drflow-slack-attestation"


class AttestationPayload(AnswerPayload):
    """What the gateway signs for one click."""

    version: Literal[1] = 1
    namespace: Literal["drflow-slack-attestation"] = ATTESTATION_NAMESPACE
    gateway: Name = Field(description="the gateway's name in the people file")
    slack_user: str = Field(pattern=r"^[UW][A-Z0-9]+$")


class ExpectedClick(Binding):
    """A click: the binding and the Slack user who clicked, as Slack told the gateway."""

    slack_user: str


class VerifiedClick(StrictModel):
    person: str
    slack_user: str
    gateway: str
    fingerprint: str
    signed_at: str


class Ed25519Signer:
    """An Ed25519 key held in-process (OpenSSH private key text from a secret reference) signing SSHSIG.

    Shared by the Slack gateway (attestations) and the worker (archive manifests): one signing path, each
    use under its own namespace, so a signature made for one use never verifies for another.
    """

    def __init__(self, name: str, private_key_text: str, namespace: str, what: str = "the key") -> None:
        try:
            key = load_ssh_private_key(private_key_text.encode(), password=None)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{what} is not an unencrypted OpenSSH private key: {err}") from err
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{what} must be ed25519 (ssh-keygen -t ed25519)")
        self.name = name
        self.namespace = namespace
        self._key = key
        line = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
        self.public_key_line = line
        self._public_blob = base64.b64decode(line.split()[1])

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_blob(self._public_blob)

    def sign_bytes(self, message: bytes) -> str:
        """An armored SSHSIG signature, the same bytes layout ``ssh-keygen -Y sign`` writes."""
        signature = self._key.sign(signed_data(self.namespace, "sha512", message))
        blob = (
            MAGIC
            + SSHSIG_VERSION.to_bytes(4, "big")
            + ssh_string(self._public_blob)
            + ssh_string(self.namespace.encode())
            + ssh_string(b"")
            + ssh_string(b"sha512")
            + ssh_string(ssh_string(b"ssh-ed25519") + ssh_string(signature))
        )
        body = "\n".join(textwrap.wrap(base64.b64encode(blob).decode(), 70))
        return f"{ARMOR_BEGIN}\n{body}\n{ARMOR_END}\n"


class GatewaySigner(Ed25519Signer):
    """The gateway's Ed25519 key, from the OpenSSH private key text its secret reference resolves to."""

    def __init__(self, name: str, private_key_text: str) -> None:
        super().__init__(name, private_key_text, ATTESTATION_NAMESPACE, "the gateway key")

    def sign(self, payload: AttestationPayload) -> str:
        return self.sign_bytes(payload.canonical())

    def attest(
        self,
        *,
        workflow_id: str,
        run_id: str,
        decision: GateDecision | StepDecision,
        slack_user: str,
        now: datetime,
        gate: Gate | None = None,
        failed_step: str | None = None,
        plan_checksum: str | None = None,
    ) -> tuple[str, str]:
        """The payload text and its signature, ready for the Update's ``signed`` and ``signature``."""
        payload = AttestationPayload(
            gateway=self.name, workflow_id=workflow_id, run_id=run_id, gate=gate, failed_step=failed_step,
            decision=decision, plan_checksum=plan_checksum, slack_user=slack_user, signed_at=utc_stamp(now),
        )  # fmt: skip
        return payload.canonical().decode(), self.sign(payload)


def is_attestation(message: str) -> bool:
    """Cheap routing before verification: which verifier a signed Update goes to (both then check all)."""
    return f'"namespace":"{ATTESTATION_NAMESPACE}"' in message


def verify_attestation(
    message: bytes | str,
    armored: str,
    *,
    expected: ExpectedClick,
    people: People,
    now: datetime,
    max_age: timedelta = MAX_AGE,
    max_ahead: timedelta = MAX_AHEAD,
) -> VerifiedClick:
    """Signature by a trusted gateway key, then the click's binding, age, and its one person."""
    sig, payload = signed_payload(
        AttestationPayload, message, armored, ATTESTATION_NAMESPACE, "Slack attestation", now
    )
    gateway = people.gateway_for(sig.fingerprint)
    if gateway is None:
        raise UnknownSigner(
            f"the attestation is signed by key {sig.fingerprint}, "
            "which is no trusted gateway of the people file"
        )
    if gateway.name != payload.gateway:
        raise UnknownSigner(f"signed by gateway {gateway.name!r} but claims {payload.gateway!r}")
    compare(payload, expected, ("slack_user", *BOUND_FIELDS))
    check_window(payload.signed_time(), payload.signed_at, now, max_age, max_ahead)
    person = slack_person(people, payload.slack_user)
    return VerifiedClick(
        person=person.name, slack_user=payload.slack_user, gateway=gateway.name,
        fingerprint=sig.fingerprint, signed_at=payload.signed_at,
    )  # fmt: skip


def slack_person(people: People, slack_user: str) -> Person:
    person = people.person_for_slack(slack_user)
    if person is None:
        raise UnknownSigner(
            "your Slack account is not in the people file, so it cannot approve: ask the service owner to "
            "add your Slack user id to your entry"
        )
    return person
