"""Signed decisions: a canonical payload, signed by ``ssh-keygen -Y sign -n drflow-approval``, verified here.

A decision binds one run, one gate (or failed step), one answer and the full plan checksum, so a signature
cannot be replayed on another run, gate or plan; ``signed_at`` bounds how long it can be replayed on the same
one. The SSHSIG framing (PROTOCOL.sshsig in OpenSSH) is parsed here, about a hundred lines; every signature
check is ``cryptography``'s. docs/approvals.md says why not the ``sshsig`` package.

Everything here is pure and deterministic: no I/O, no clock (the caller passes ``now``), no randomness, so a
Temporal workflow's Update validator may call it and replays get the same answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final, Literal, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import Field, ValidationError, model_validator

from runbooks.model import Gate, Name, StrictModel
from runbooks.people import People, Person, UnknownApproverError, fingerprint_of_blob

NAMESPACE: Final = "drflow-approval"
PAYLOAD_VERSION: Final = 1
MAX_AGE = timedelta(minutes=10)
MAX_AHEAD = timedelta(minutes=2)
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
MAGIC = b"SSHSIG"
SSHSIG_VERSION = 1
HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
ECDSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "ecdsa-sha2-nistp256": hashes.SHA256,
    "ecdsa-sha2-nistp384": hashes.SHA384,
    "ecdsa-sha2-nistp521": hashes.SHA512,
}
RSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "rsa-sha2-512": hashes.SHA512,
    "rsa-sha2-256": hashes.SHA256,
}

GateDecision = Literal["approve", "reject", "accept-data-loss"]
StepDecision = Literal["retry", "skip", "abort"]
# The gate Updates and the answer each one signs; the decision a gate record keeps and its Update. One table
# each for the workflow, the CLI, the gateway and the audit.
SIGNED_ANSWER: Final[dict[str, GateDecision]] = {
    "approve": "approve", "reject": "reject", "accept_data_loss": "accept-data-loss"
}  # fmt: skip
UPDATE_OF_RECORD: Final = {
    "approved": "approve",
    "rejected": "reject",
    "data-loss-accepted": "accept_data_loss",
}


# --- refusals: one class each, so validators and tests can tell them apart


class SignatureRefused(ValueError):
    """A signed decision that must not count; ``code`` is stable, for reports and the Update's reply."""

    code: ClassVar[str] = "refused"


class MalformedSignature(SignatureRefused):
    code = "malformed-signature"


class UnsupportedSignature(SignatureRefused):
    code = "unsupported-signature"


class MalformedPayload(SignatureRefused):
    code = "malformed-payload"


class WrongNamespace(SignatureRefused):
    code = "wrong-namespace"


class BadSignature(SignatureRefused):
    code = "bad-signature"


class UnknownSigner(SignatureRefused):
    code = "unknown-person"


class KeyNotListed(SignatureRefused):
    code = "key-not-listed"


class KeyRevoked(SignatureRefused):
    code = "key-revoked"


class PayloadMismatch(SignatureRefused):
    code = "payload-mismatch"


class PlanMismatch(PayloadMismatch):
    """Signed for another plan than the one open: the checksums, so the workflow can say stale or wrong."""

    def __init__(self, message: str, signed: str | None, current: str | None) -> None:
        super().__init__(message)
        self.signed, self.current = signed, current


class OutsideWindow(SignatureRefused):
    code = "outside-window"


# --- the payload


SIGNED_AT_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


class SignedPayload(StrictModel):
    """What every signed payload shares: one canonical text, and the moment it was signed."""

    signed_at: str = Field(pattern=SIGNED_AT_PATTERN, description="ISO 8601 UTC, seconds")

    def canonical(self) -> bytes:
        """The exact bytes signed: JSON, sorted keys, no spaces, ASCII, unset fields left out."""
        return canonical_json(self)

    def signed_time(self) -> datetime:
        return datetime.strptime(self.signed_at, STAMP_FORMAT).replace(tzinfo=UTC)


class AnswerPayload(SignedPayload):
    """An answer to one gate or one failed step: a person's decision, or a gateway's attested click."""

    workflow_id: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    gate: Gate | None = Field(
        default=None, description="the approval gate answered (approve/reject/data loss)"
    )
    failed_step: str | None = Field(
        default=None, min_length=1, description="the failed step `decide` answers"
    )
    decision: GateDecision | StepDecision
    plan_checksum: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="the full plan checksum the person saw; required for a gate, absent for a failed step",
    )

    @model_validator(mode="after")
    def _gate_or_step(self) -> AnswerPayload:
        if (self.gate is None) == (self.failed_step is None):
            raise ValueError("a decision answers exactly one of gate or failed_step")
        if self.gate is not None and self.decision not in ("approve", "reject", "accept-data-loss"):
            raise ValueError(f"{self.decision!r} answers a failed step, not a gate")
        if self.failed_step is not None and self.decision not in ("retry", "skip", "abort"):
            raise ValueError(f"{self.decision!r} answers a gate, not a failed step")
        if self.decision == "accept-data-loss" and self.gate != "data-loss":
            raise ValueError("accept-data-loss answers only the data-loss gate")
        if self.gate is not None and self.plan_checksum is None:
            raise ValueError("a gate's answer binds the full plan checksum")
        return self


class DecisionPayload(AnswerPayload):
    """What a person signs. Versioned; ``namespace`` repeats the SSHSIG one so the text alone says its use."""

    version: Literal[1] = PAYLOAD_VERSION
    namespace: Literal["drflow-approval"] = NAMESPACE
    person: Name


def utc_stamp(moment: datetime) -> str:
    """``signed_at`` for a moment: UTC, whole seconds, ``Z``."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no time zone: pass an aware one")
    return moment.astimezone(UTC).strftime(STAMP_FORMAT)


class Binding(StrictModel):
    """What an answer is bound to, known independently of its signature: the run, what is open, the answer."""

    workflow_id: str
    run_id: str
    gate: Gate | None = None
    failed_step: str | None = None
    decision: GateDecision | StepDecision
    plan_checksum: str | None = None


class Expected(Binding):
    """A person's decision: the binding and who claims to answer."""

    person: str


class VerifiedDecision(StrictModel):
    """A decision that counts: who signed it, with which key, when."""

    person: str
    fingerprint: str
    signed_at: str
    payload: DecisionPayload | None = None


# --- SSHSIG framing (PROTOCOL.sshsig)


class _Reader:
    """SSH wire format (RFC 4251 section 5): big-endian uint32 and length-prefixed strings."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise MalformedSignature("the signature blob is truncated")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError as err:
            raise MalformedSignature("a name in the signature blob is not ASCII") from err

    def done(self) -> None:
        if self.at != len(self.data):
            raise MalformedSignature("trailing bytes after the signature")


def ssh_string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


class SshSignature(StrictModel):
    """The fields of an SSHSIG blob; ``public_key`` is the SSH wire encoding of the signer's key."""

    public_key: bytes
    namespace: str
    hash_algorithm: str
    signature_algorithm: str
    signature: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_blob(self.public_key)


def parse_armored(armored: str) -> SshSignature:
    """Parse ``-----BEGIN SSH SIGNATURE-----`` text as ``ssh-keygen -Y sign`` writes it, strictly."""
    lines = [line.strip() for line in armored.strip().splitlines()]
    if len(lines) < 3 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise MalformedSignature(f"expected an armored SSH signature ({ARMOR_BEGIN} ... {ARMOR_END})")
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error as err:
        raise MalformedSignature(f"the signature is not valid base64: {err}") from err
    reader = _Reader(blob)
    if reader.take(len(MAGIC)) != MAGIC:
        raise MalformedSignature("not an SSHSIG signature (magic preamble missing)")
    version = reader.uint32()
    if version != SSHSIG_VERSION:
        raise UnsupportedSignature(f"SSHSIG version {version}; only version {SSHSIG_VERSION} exists")
    public_key = reader.string()
    namespace = reader.text()
    reader.string()  # reserved: ssh-keygen writes it empty and leaves it out of the signed data
    hash_algorithm = reader.text()
    signature = _Reader(reader.string())
    reader.done()
    signature_algorithm = signature.text()
    raw = signature.string()
    signature.done()
    return SshSignature(
        public_key=public_key,
        namespace=namespace,
        hash_algorithm=hash_algorithm,
        signature_algorithm=signature_algorithm,
        signature=raw,
    )


def signed_data(namespace: str, hash_algorithm: str, message: bytes) -> bytes:
    """What the key actually signs: the SSHSIG preamble, the namespace and the message's digest."""
    digest = HASHES[hash_algorithm](message).digest()
    return (
        MAGIC
        + ssh_string(namespace.encode())
        + ssh_string(b"")
        + ssh_string(hash_algorithm.encode())
        + ssh_string(digest)
    )


def check_signature(sig: SshSignature, message: bytes, namespace: str = NAMESPACE) -> None:
    """Whether the key in the blob signed this message in this namespace (who that key is: not here)."""
    if sig.namespace != namespace:
        raise WrongNamespace(f"signed for namespace {sig.namespace!r}, not {namespace!r}")
    if sig.hash_algorithm not in HASHES:
        raise UnsupportedSignature(f"hash {sig.hash_algorithm!r}; PROTOCOL.sshsig allows sha256 and sha512")
    key_type = _Reader(sig.public_key).text()
    try:
        key = load_ssh_public_key(f"{key_type} {base64.b64encode(sig.public_key).decode()}".encode())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise UnsupportedSignature(f"signer key {key_type!r} is not supported: {err}") from err
    data = signed_data(namespace, sig.hash_algorithm, message)
    algorithm = sig.signature_algorithm
    try:
        if isinstance(key, ed25519.Ed25519PublicKey) and algorithm == "ssh-ed25519":
            key.verify(sig.signature, data)
        elif isinstance(key, rsa.RSAPublicKey) and algorithm in RSA_HASHES:
            key.verify(sig.signature, data, padding.PKCS1v15(), RSA_HASHES[algorithm]())
        elif (
            isinstance(key, ec.EllipticCurvePublicKey) and algorithm == key_type and algorithm in ECDSA_HASHES
        ):
            pair = _Reader(sig.signature)
            r = int.from_bytes(pair.string(), "big", signed=True)
            s = int.from_bytes(pair.string(), "big", signed=True)
            pair.done()
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(ECDSA_HASHES[algorithm]()))
        else:
            raise UnsupportedSignature(f"signature algorithm {algorithm!r} with a {key_type} key")
    except InvalidSignature as err:
        raise BadSignature("the signature does not match the decision (altered, or another message)") from err


# --- the decision


def parse_payload(message: bytes | str) -> DecisionPayload:
    """The signed text must be canonical, so one decision has exactly one signed form."""
    return parse_canonical(DecisionPayload, message, "decision")


P = TypeVar("P", bound=StrictModel)


def canonical_json(model: StrictModel) -> bytes:
    """JSON with sorted keys, no spaces, ASCII and unset fields left out: one text per payload."""
    data = model.model_dump(exclude_none=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def parse_canonical(kind: type[P], message: bytes | str, what: str) -> P:
    raw = message.encode() if isinstance(message, str) else message
    try:
        payload = kind.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = "".join(f"{part}: " for part in first["loc"])
        text = str(first["msg"]).removeprefix("Value error, ")
        raise MalformedPayload(f"not a drflow {what}: {where}{text}") from err
    if canonical_json(payload) != raw:
        raise MalformedPayload(f"the {what} is not in canonical form (sorted keys, no spaces)")
    return payload


def verify_decision(
    message: bytes | str,
    armored: str,
    *,
    expected: Expected,
    people: People,
    now: datetime,
    max_age: timedelta = MAX_AGE,
    max_ahead: timedelta = MAX_AHEAD,
) -> VerifiedDecision:
    """Check a signed decision from signature to meaning; raises a ``SignatureRefused`` subclass.

    Order: the framing and the signature first (so nothing unauthenticated is interpreted), then whether the
    key is this person's, then whether the decision is for what is open now, then its age.
    """
    sig, payload = signed_payload(DecisionPayload, message, armored, NAMESPACE, "decision", now)
    person = signing_person(people, payload.person, sig.fingerprint)
    compare(payload, expected, ("person", *BOUND_FIELDS))
    check_window(payload.signed_time(), payload.signed_at, now, max_age, max_ahead)
    return VerifiedDecision(
        person=person.name, fingerprint=sig.fingerprint, signed_at=payload.signed_at, payload=payload
    )


def signed_payload(
    kind: type[P], message: bytes | str, armored: str, namespace: str, what: str, now: datetime
) -> tuple[SshSignature, P]:
    """The framing and the signature first, so nothing unauthenticated is interpreted; then the payload."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime (the workflow's workflow.now())")
    sig = parse_armored(armored)
    raw = message.encode() if isinstance(message, str) else message
    check_signature(sig, raw, namespace)
    return sig, parse_canonical(kind, raw, what)


def signing_person(people: People, name: str, key: str) -> Person:
    """The person a signature claims, when the key is listed for them and not revoked."""
    try:
        person = people.person(name)
    except UnknownApproverError as err:
        raise UnknownSigner(f"{name!r} is not in the people file") from err
    if key in person.revoked_keys:
        raise KeyRevoked(f"key {key} of {person.name!r} is revoked")
    if not people.key_allowed(person.name, key):
        raise KeyNotListed(f"key {key} is not one of {person.name!r}'s keys in the people file")
    return person


BOUND_FIELDS = ("workflow_id", "run_id", "gate", "failed_step", "decision", "plan_checksum")


def compare(payload: object, expected: object, fields: tuple[str, ...]) -> None:
    """Each bound field must be what is open now; a changed plan says which plan is current."""
    for field in fields:
        signed, wanted = getattr(payload, field), getattr(expected, field)
        if signed == wanted:
            continue
        if field == "plan_checksum":
            raise PlanMismatch(
                f"the plan changed since it was signed (signed for plan {signed}); the current plan is "
                f"{wanted}: read it (drflow status) and answer again",
                signed,
                wanted,
            )
        raise PayloadMismatch(f"signed for {field} {signed!r}, but this is {field} {wanted!r}")


def check_window(
    signed_at: datetime, stamp: str, now: datetime, max_age: timedelta, max_ahead: timedelta
) -> None:
    if signed_at < now - max_age:
        raise OutsideWindow(f"signed at {stamp}, more than {max_age} before {utc_stamp(now)}")
    if signed_at > now + max_ahead:
        raise OutsideWindow(f"signed at {stamp}, more than {max_ahead} after {utc_stamp(now)}")
