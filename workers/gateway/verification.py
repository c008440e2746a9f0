"""Is a request to the Request URL Slack's own, fresh and new? Checked before its payload is trusted.

Slack signs ``v0:<timestamp>:<body>`` with the app's signing secret (HMAC-SHA256, ``X-Slack-Signature``);
a timestamp more than ``max_age_seconds`` old, or a signature seen within that window (a replay), is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why an HTTP request was refused; ``authentic`` when Slack did sign it (its payload can be trusted)."""

    reason: str
    authentic: bool
    tell: str | None = None


class RecentSignatures:
    """Signatures seen within the freshness window: a second delivery of the same bytes is a replay."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen_before(self, signature: str, now: float) -> bool:
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - self._window:
                self._seen.popitem(last=False)
            if signature in self._seen:
                return True
            self._seen[signature] = now
            return False


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
    return "v0=" + digest.hexdigest()


class RequestVerifier:
    """The signature first (so a refusal knows whether the payload is Slack's), then age, then replay."""

    def __init__(self, signing_secret: str | None, max_age_seconds: float) -> None:
        self._secret = signing_secret
        self._max_age = max_age_seconds
        self._recent = RecentSignatures(max_age_seconds)

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> Refusal | None:
        """None when the request may be handled; ``headers`` with lower-case names."""
        secret = self._secret
        assert secret is not None
        stamp = headers.get("x-slack-request-timestamp")
        given = headers.get("x-slack-signature")
        if not stamp or not given:
            return Refusal("missing X-Slack-Request-Timestamp or X-Slack-Signature", authentic=False)
        try:
            sent = int(stamp)
        except ValueError:
            return Refusal("X-Slack-Request-Timestamp is not a number", authentic=False)
        if not hmac.compare_digest(signature(secret, stamp, body), given):
            return Refusal("invalid X-Slack-Signature", authentic=False)
        if abs(now - sent) > self._max_age:
            return Refusal(
                "request timestamp older than 5 minutes",
                authentic=True,
                tell=":no_entry: Your click reached drflow more than 5 minutes after Slack sent it "
                "(check the gateway's clock); it was refused and nothing changed. Click again.",
            )
        if self._recent.seen_before(given, now):
            return Refusal(
                "replayed request (signature seen before)",
                authentic=True,
                tell=":no_entry: A repeated copy of your click was refused (replayed request); "
                "nothing changed by it.",
            )
        return None
