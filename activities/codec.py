"""Payload encryption: an AES-256-GCM ``PayloadCodec`` with the key id in each payload's metadata.

Why: on a shared or hosted Temporal (Temporal Cloud) a history holds the runbook's hosts, addresses and
plans. With the codec on, Temporal stores only ciphertext; the worker, the CLI, the gateway, the codec
server and the audit commands hold the keys and see plaintext.

Keys come from secret references only (``DRFLOW_CODEC_KEYS="2025=env:DRFLOW_KEY_2025,2024=file:/run/k"``),
each holding 32 random bytes written as 64 hex digits or standard base64 (44 characters). New payloads are
encrypted with ``DRFLOW_CODEC_KEY_ID`` (optional when only one key is listed); any listed id decrypts, so a
key is rotated by adding the new id, making it current, and dropping the old id once nothing needs it.

A payload without the encrypted encoding passes through decoding unchanged: unencrypted histories recorded
before the codec was turned on still replay and render. The module lives in ``activities`` because the
archive activity decodes the histories it fetches; it imports nothing from the layers above.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)
from temporalio.exceptions import ApplicationError

from activities.secrets import resolve_secret

KEYS_ENV = "DRFLOW_CODEC_KEYS"
KEY_ID_ENV = "DRFLOW_CODEC_KEY_ID"
ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
_AAD_PREFIX = b"drflow-codec/1:"  # binds the ciphertext to its key id: a relabelled payload fails to open
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class CodecError(ValueError):
    """The codec settings are wrong, or a payload cannot be decrypted; the message says what to fix."""


@dataclass(frozen=True)
class CodecKeys:
    """The keys by id, and the id new payloads are encrypted with. Never printed: ``repr`` hides the keys."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)

    @classmethod
    def parse(cls, spec: str, current: str | None = None) -> CodecKeys:
        """``kid=env:VAR,kid2=file:/path`` and the current id; each reference resolved now."""
        keys: dict[str, bytes] = {}
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            key_id, sep, reference = item.partition("=")
            key_id, reference = key_id.strip(), reference.strip()
            if not sep or not _KEY_ID.fullmatch(key_id):
                raise CodecError(
                    f"{KEYS_ENV}: each entry is KEY_ID=env:VARIABLE or KEY_ID=file:/path (key ids: letters, "
                    "digits, . _ -)"
                )
            if key_id in keys:
                raise CodecError(f"{KEYS_ENV}: key id {key_id!r} is listed twice")
            keys[key_id] = _read_key(key_id, reference)
        if not keys:
            raise CodecError(f"{KEYS_ENV} lists no key")
        if current is None:
            if len(keys) > 1:
                raise CodecError(
                    f"{KEYS_ENV} lists {len(keys)} keys: set {KEY_ID_ENV} to the one new payloads use "
                    f"(one of {', '.join(sorted(keys))})"
                )
            current = next(iter(keys))
        if current not in keys:
            raise CodecError(
                f"{KEY_ID_ENV}={current} is not among the keys of {KEYS_ENV} ({', '.join(sorted(keys))})"
            )
        return cls(current=current, keys=keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CodecKeys | None:
        """The keys the environment configures; None when the codec is off (``DRFLOW_CODEC_KEYS`` unset)."""
        env = os.environ if env is None else env
        spec = env.get(KEYS_ENV, "").strip()
        current = env.get(KEY_ID_ENV, "").strip() or None
        if not spec:
            if current:
                raise CodecError(f"{KEY_ID_ENV} is set but {KEYS_ENV} is not: list the keys too")
            return None
        return cls.parse(spec, current)


def _read_key(key_id: str, reference: str) -> bytes:
    if not (reference.startswith("env:") or reference.startswith("file:")):
        raise CodecError(
            f"{KEYS_ENV}: the key {key_id!r} must be a secret reference (env:VARIABLE or file:/path), "
            "not an inline value"
        )
    try:
        text = resolve_secret(reference).strip()
    except ApplicationError as err:
        raise CodecError(f"{KEYS_ENV}: key {key_id!r}: {err.message}") from None
    if _HEX_KEY.fullmatch(text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        # never the value itself: it may be (part of) the key
        raise CodecError(
            f"{KEYS_ENV}: key {key_id!r} ({reference}) is not {KEY_BYTES} bytes as 64 hex digits or base64 "
            "(make one with `openssl rand -base64 32`)"
        )
    return raw


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over the whole serialized payload; metadata keeps only the encoding and the key id."""

    def __init__(self, keys: CodecKeys) -> None:
        self.keys = keys
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys.items()}

    @property
    def key_id(self) -> str:
        return self.keys.current

    def encrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") == ENCODING:
            return payload  # already encrypted (a payload handed back unchanged): never twice
        key_id = self.keys.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce, payload.SerializeToString(), _AAD_PREFIX + key_id.encode()
        )
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # recorded without the codec: plain as it is
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CodecError(
                f"a payload is encrypted with key id {key_id or '(none)'!r}, which {KEYS_ENV} does not list "
                f"(listed: {', '.join(sorted(self._ciphers))}): add that key to decrypt it"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, _AAD_PREFIX + key_id.encode())
        except InvalidTag:
            raise CodecError(
                f"a payload encrypted with key id {key_id!r} does not open with the key listed under that "
                "id: the key is wrong, or the payload was changed"
            ) from None
        inner = Payload()
        try:
            inner.ParseFromString(plain)
        except DecodeError as err:
            raise CodecError(f"a payload with key id {key_id!r} decrypts to no payload: {err}") from None
        return inner

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]


def converter_for(codec: PayloadCodec | None) -> DataConverter:
    """drflow's data converter, with the codec when one is configured.

    With a codec, failure messages and stack traces are moved into an encoded attribute too: an activity's
    error names the host it could not reach, and that must not stay in clear either.
    """
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def codec_from_env(env: Mapping[str, str] | None = None) -> EncryptionCodec | None:
    keys = CodecKeys.from_env(env)
    return EncryptionCodec(keys) if keys is not None else None


def converter_from_env(env: Mapping[str, str] | None = None) -> DataConverter:
    """The data converter every drflow Client, Worker and Replayer uses; raises ``CodecError``."""
    return converter_for(codec_from_env(env))


# ------------------------------------------------------------------------------------------ histories
def _messages(message: Message) -> Iterator[Message]:
    """``message`` and every message nested in it, depth first."""
    yield message
    for descriptor, value in message.ListFields():
        kind = descriptor.message_type
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE or kind is None:
            continue
        if kind.GetOptions().map_entry:
            value_field = kind.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    yield from _messages(item)
        elif descriptor.is_repeated:
            for item in value:
                yield from _messages(item)
        else:
            yield from _messages(value)


def encrypted_key_ids(history: WorkflowHistory) -> set[str]:
    """The key ids of the encrypted payloads in ``history``; empty for a history recorded in clear."""
    return {
        m.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        for event in history.events
        for m in _messages(event)
        if isinstance(m, Payload) and m.metadata.get("encoding") == ENCODING
    }


async def decode_history(history: WorkflowHistory, codec: PayloadCodec | None) -> WorkflowHistory:
    """A copy of ``history`` with every payload decoded: as if it had been recorded without the codec.

    ``fetch_history`` returns payloads as Temporal stores them; timelines, redaction, signature checks and
    archives read payloads directly, so they are given this copy. Encoded failure attributes are put back
    into the failure's message and stack trace. A history with nothing encrypted comes back as it is;
    encrypted payloads without a codec raise ``CodecError`` naming the key ids needed.
    """
    needed = encrypted_key_ids(history)
    if not needed:
        return history
    if codec is None:
        raise CodecError(
            f"the history holds payloads encrypted with key id {', '.join(sorted(needed))}: set {KEYS_ENV} "
            "(and the secrets it names) to read it"
        )
    events = [copy.deepcopy(event) for event in history.events]
    for event in events:
        nested = list(_messages(event))
        payloads = [m for m in nested if isinstance(m, Payload) and m.metadata.get("encoding") == ENCODING]
        for payload, plain in zip(payloads, await codec.decode(payloads), strict=True):
            payload.CopyFrom(plain)
        for failure in (m for m in nested if isinstance(m, Failure) and m.HasField("encoded_attributes")):
            _restore_failure(failure)
    return WorkflowHistory(history.workflow_id, events)


def _restore_failure(failure: Failure) -> None:
    try:
        attributes = pydantic_data_converter.payload_converter.from_payload(failure.encoded_attributes)
    except (ValueError, TypeError, KeyError, RuntimeError):
        return
    if not isinstance(attributes, dict):
        return
    message, stack = attributes.get("message"), attributes.get("stack_trace")
    if isinstance(message, str):
        failure.message = message
    if isinstance(stack, str):
        failure.stack_trace = stack
    failure.ClearField("encoded_attributes")
