"""Signed requests: ``drflow failover --as alice`` proves that alice asked, so separation of duties holds.

The run id does not exist before the start, so a request binds what the person asked instead: the
workflow id (one run per service at a time), the service, the kind, where to, the mode and the reason.
Its own namespace keeps a request signature from ever counting as an approval.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final, Literal

from pydantic import Field

from activities.approvals.signatures import (
    MAX_AGE,
    MAX_AHEAD,
    SignedPayload,
    VerifiedDecision,
    check_window,
    compare,
    signed_payload,
    signing_person,
)
from runbooks.model import Name, StrictModel
from runbooks.people import People

REQUEST_NAMESPACE: Final = "drflow-request"
RequestKind = Literal["failover", "failback"]


class RequestPayload(SignedPayload):
    version: Literal[1] = 1
    namespace: Literal["drflow-request"] = REQUEST_NAMESPACE
    kind: RequestKind
    workflow_id: str = Field(min_length=1)
    service: str = Field(min_length=1)
    target: str | None = Field(default=None, description="failover: the region to fail over to")
    home: str | None = Field(default=None, description="failback: the region traffic returns to, if named")
    mode: str | None = Field(default=None, description="failover: planned, emergency or drill")
    reason: str = Field(min_length=1)
    person: Name


class ExpectedRequest(StrictModel):
    kind: RequestKind
    workflow_id: str
    service: str
    target: str | None = None
    home: str | None = None
    mode: str | None = None
    reason: str
    person: str


REQUEST_FIELDS = ("person", "kind", "workflow_id", "service", "target", "home", "mode", "reason")


def verify_request(
    message: bytes | str,
    armored: str,
    *,
    expected: ExpectedRequest,
    people: People,
    now: datetime,
    max_age: timedelta = MAX_AGE,
    max_ahead: timedelta = MAX_AHEAD,
) -> VerifiedDecision:
    """As ``verify_decision``: signature, the person's listed and unrevoked key, the binding, the age."""
    sig, payload = signed_payload(RequestPayload, message, armored, REQUEST_NAMESPACE, "request", now)
    person = signing_person(people, payload.person, sig.fingerprint)
    compare(payload, expected, REQUEST_FIELDS)
    check_window(payload.signed_time(), payload.signed_at, now, max_age, max_ahead)
    return VerifiedDecision(person=person.name, fingerprint=sig.fingerprint, signed_at=payload.signed_at)
