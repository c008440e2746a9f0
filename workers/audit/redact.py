"""Redaction of secret-looking values in everything the audit renders or archives.

Runbooks only hold secret *references* (``env:NAME``, ``file:/path``), and those stay visible: an auditor
needs to know where a credential came from. What is removed is anything that looks like a secret value:
the value of a key named like a credential, the password in a URL (``postgresql://user:pass@``), libpq and
query-string ``password=...`` pairs, bearer tokens, well-known token shapes (Slack, AWS access key ids,
JWTs, PEM private keys) and long base64 blobs labelled as a secret. Redaction maps strings to strings, so a
redacted history still decodes into the same models and still replays.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

REDACTED = "[REDACTED]"

# Key names (normalised: lower case, no separators) whose string values are secrets unless they are
# references. Substring match, so ``db_password``, ``clientSecret`` and ``slack_bot_token`` count.
_SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    "signingkey",
    "credential",
    "authorization",
)
_REFERENCE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:\S+)$")

_KEY_WORDS = r"(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s]+):([^@/\s]+)@"), rf"\1:{REDACTED}@"),
    # PEM private keys, whole block
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
        REDACTED,
    ),
    # Authorization headers
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"), rf"\1 {REDACTED}"),
    (re.compile(r"(?i)\b(basic)\s+(?=[A-Za-z0-9+/]*\d)[A-Za-z0-9+/]{12,}={0,2}"), rf"\1 {REDACTED}"),
    # token shapes: Slack, AWS access key ids, GitHub, JWTs (Temporal Cloud API keys are JWTs)
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), REDACTED),
    (re.compile(r"\bxapp-[A-Za-z0-9\-]{10,}"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), REDACTED),
    # a long base64 blob labelled as a secret: `secret "c2VjcmV0..."`, `tsig key: ...`
    (
        re.compile(
            r"(?i)\b(secret|tsig[ _\-]?key|private[ _\-]?key|signing[ _\-]?key|hmac[ _\-]?key)"
            r"([\"'\s:=]+)(?!env:|file:)[A-Za-z0-9+/]{16,}={0,2}"
        ),
        rf"\1\2{REDACTED}",
    ),
)
# key=value / key: value inside free text (libpq DSNs, query strings, error bodies); references survive
_PAIR = re.compile(rf"(?i)\b([\w\-]*{_KEY_WORDS}[\w\-]*)([\"']?\s*[:=]\s*)([\"']?)([^\s\"'&;,]+)")


def is_secret_key(key: str) -> bool:
    normalised = re.sub(r"[^a-z0-9]", "", key.lower())
    return any(part in normalised for part in _SECRET_KEY_PARTS)


def is_reference(value: str) -> bool:
    return bool(_REFERENCE.match(value.strip()))


def redact_text(text: str) -> str:
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)

    def pair(match: re.Match[str]) -> str:
        key, sep, quote, value = match.groups()
        if is_reference(value) or value == REDACTED:
            return match.group(0)
        return f"{key}{sep}{quote}{REDACTED}"

    return _PAIR.sub(pair, text)


def redact_json(value: Any) -> Any:
    """Redact decoded JSON: secret-named keys lose their (non-reference) values; strings are scanned."""
    if isinstance(value, dict):
        redacted: dict[str, Any] = {}
        for key, item in value.items():
            if (
                isinstance(key, str)
                and is_secret_key(key)
                and isinstance(item, str)
                and item
                and not is_reference(item)
            ):
                redacted[key] = REDACTED
            else:
                redacted[key] = redact_json(item)
        return redacted
    if isinstance(value, list):
        return [redact_json(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


_JSON_ENCODING = base64.b64encode(b"json/plain").decode()


def redact_history(history: dict[str, Any]) -> dict[str, Any]:
    """Redact a history in Temporal's JSON form (``WorkflowHistory.to_json_dict()``).

    JSON payloads are decoded, redacted and re-encoded (only when something changed, so untouched payloads
    keep their exact bytes); every other string (failure messages, stack traces) is scanned as text.
    """
    result = _redact_history_node(history)
    assert isinstance(result, dict)
    return result


def _redact_history_node(node: Any) -> Any:
    if isinstance(node, dict):
        if _is_payload(node):
            return _redact_payload(node)
        return {key: _redact_history_node(item) for key, item in node.items()}
    if isinstance(node, list):
        return [_redact_history_node(item) for item in node]
    if isinstance(node, str):
        return redact_text(node)
    return node


def _is_payload(node: dict[str, Any]) -> bool:
    return isinstance(node.get("metadata"), dict) and "encoding" in node["metadata"]


def _redact_payload(payload: dict[str, Any]) -> dict[str, Any]:
    if payload["metadata"].get("encoding") != _JSON_ENCODING or not isinstance(payload.get("data"), str):
        return payload  # binary or encrypted payloads are kept as they are: nothing readable to redact
    raw = base64.b64decode(payload["data"])
    try:
        decoded = json.loads(raw)
    except ValueError:
        return payload
    redacted = redact_json(decoded)
    if redacted == decoded:
        return payload
    data = json.dumps(redacted, separators=(",", ":"), ensure_ascii=False).encode()
    return {**payload, "data": base64.b64encode(data).decode()}
