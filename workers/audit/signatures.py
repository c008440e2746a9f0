"""Re-verifying every signature a run recorded, offline, from its history alone.

A signed request, approval, vote or operator decision carries its payload and an SSHSIG signature that
embeds the signer's public key, so no people file is needed to check that the key signed that payload.
What is checked, for each record of the final report that claims a proven identity:

- the signature verifies over the recorded ``signed`` text, in the namespace of its kind;
- the key in the signature is the record's ``key``;
- the signed payload is bound to this run and says what the record says (gate or step, decision, plan
  checksum, person or Slack user, gateway);
- the Update (or the start) that delivered it carried exactly that payload and signature.

The source of truth is the history: the accepted Updates' inputs, the start input and the run's result.
Payloads are read as plain JSON, like the rest of the audit, so an older history still checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

from pydantic import Field
from temporalio.client import WorkflowHistory

from activities.approvals.attestations import ATTESTATION_NAMESPACE, AttestationPayload
from activities.approvals.requests import REQUEST_NAMESPACE, RequestPayload
from activities.approvals.signatures import (
    NAMESPACE,
    SIGNED_ANSWER,
    UPDATE_OF_RECORD,
    DecisionPayload,
    SignatureRefused,
    check_signature,
    parse_armored,
    parse_canonical,
)
from runbooks.model import StrictModel
from workers.audit.events import EventPass
from workers.audit.evidence import as_str as _str
from workers.audit.formatting import identity_words
from workers.audit.history import decode_payloads
from workers.audit.model import UpdateRecord

GATE_UPDATES: Final = ("approve", "reject", "accept_data_loss")
NOT_ANSWERS: Final = ("expired", "skipped-in-emergency")  # gate records no person sent
PROVEN: Final = ("ssh-key", "slack-gateway")

Kind = Literal["request", "approval", "decision"]
Status = Literal["verified", "unverified", "failed"]


class SignatureCheck(StrictModel):
    """One record re-checked: the request, one approval or vote, or one operator decision."""

    kind: Kind
    subject: str = Field(description="the gate, the failed step, or the run for a request")
    decision: str
    person: str | None
    identity: str | None = Field(description="as recorded; None for a run without a people file")
    key: str | None = None
    gateway: str | None = None
    channel: str | None = None
    people_sha256: str | None = None
    event_id: int | None = Field(default=None, description="the Update-accepted (or start) event")
    status: Status
    problems: list[str] = Field(default_factory=list)

    def line(self) -> str:
        mark = {"verified": "ok      ", "unverified": "unproven", "failed": "FAILED  "}[self.status]
        what = "request" if self.kind == "request" else f"{self.kind} {self.subject}"
        head = f"  {mark} {what}: {self.decision} by {self.person or '-'}"
        detail = [
            identity_words(self.identity, self.key, self.gateway)
            if self.decision not in NOT_ANSWERS
            else "no person answered"
        ]
        if self.channel:
            detail.append(f"via {self.channel}")
        if self.event_id is not None:
            detail.append(f"event {self.event_id}")
        text = f"{head} ({', '.join(detail)})"
        return text + (f": {'; '.join(self.problems)}" if self.problems else "")


class SignatureAudit(StrictModel):
    """Every signature of one run, re-checked; ``ok`` is False when any of them fails."""

    workflow_id: str
    run_id: str
    checks: list[SignatureCheck] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="failures tied to no report record")
    notes: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.status != "failed" for c in self.checks)

    def lines(self) -> list[str]:
        count = {s: sum(c.status == s for c in self.checks) for s in ("verified", "unverified", "failed")}
        head = (
            f"signatures {'OK' if self.ok else 'FAILED'}: {self.workflow_id} (run {self.run_id}): "
            f"{count['verified']} verified, {count['unverified']} not proven, "
            f"{count['failed'] + len(self.problems)} failed"
        )
        return [
            head,
            *(c.line() for c in self.checks),
            *(f"  problem: {p}" for p in self.problems),
            *(f"  note: {n}" for n in self.notes),
        ]


# ------------------------------------------------------------------------------------------ the checks
def _record_check(kind: Kind, record: dict[str, Any], subject: str, decision: str) -> SignatureCheck:
    identity = _str(record.get("identity"))
    return SignatureCheck(
        kind=kind,
        subject=subject,
        decision=decision,
        person=_str(record.get("person")) or _str(record.get("by")),
        identity=identity,
        key=_str(record.get("key")),
        gateway=_str(record.get("gateway")),
        channel=_str(record.get("channel")),
        people_sha256=_str(record.get("people_sha256")),
        status="verified" if identity in PROVEN else "unverified",
    )


def _verify_signed(record: dict[str, Any], namespace: str) -> list[str]:
    """The signature verifies over the recorded text with the recorded key; problems in words."""
    signed, armored = _str(record.get("signed")), _str(record.get("signature"))
    if signed is None or armored is None:
        return [f"claims identity {record.get('identity')} but records no signed payload and signature"]
    try:
        sig = parse_armored(armored)
        check_signature(sig, signed.encode(), namespace)
    except SignatureRefused as err:
        return [f"the signature does not verify ({err.code}): {err}"]
    if sig.fingerprint != record.get("key"):
        return [f"signed with key {sig.fingerprint}, but the record says key {record.get('key')}"]
    return []


def _bound(payload: StrictModel, expected: dict[str, Any]) -> list[str]:
    problems = []
    for field, wanted in expected.items():
        signed = getattr(payload, field)
        if signed != wanted:
            problems.append(f"the signed payload says {field} {signed!r}, the record {wanted!r}")
    return problems


def _check_answer(
    check: SignatureCheck,
    record: dict[str, Any],
    update: UpdateRecord | None,
    binding: dict[str, Any],
) -> SignatureCheck:
    """An approval, vote or decision record against its signature and the Update that delivered it."""
    problems: list[str] = []
    args = update.args if update is not None and isinstance(update.args, dict) else {}
    sent_signed, sent_signature = _str(args.get("signed")), _str(args.get("signature"))
    if check.identity in PROVEN:
        namespace = NAMESPACE if check.identity == "ssh-key" else ATTESTATION_NAMESPACE
        problems += _verify_signed(record, namespace)
        if not problems:
            signed = str(record["signed"])
            try:
                if check.identity == "ssh-key":
                    payload: StrictModel = parse_canonical(DecisionPayload, signed, "decision")
                    problems += _bound(payload, {**binding, "person": check.person})
                else:
                    payload = parse_canonical(AttestationPayload, signed, "Slack attestation")
                    expected = {**binding, "gateway": check.gateway}
                    if update is not None:
                        expected["slack_user"] = _str(args.get("approver")) or _str(args.get("operator"))
                    problems += _bound(payload, expected)
            except SignatureRefused as err:
                problems.append(f"the signed text is not a drflow payload ({err.code}): {err}")
        if update is None:
            problems.append("no accepted Update in the history delivered this answer")
        elif (sent_signed, sent_signature) != (record.get("signed"), record.get("signature")):
            problems.append(
                f"the record's signed payload or signature differs from what Update {update.name} "
                f"(event {update.accepted_event_id}) carried"
            )
    elif sent_signed is not None and check.identity == "unverified":
        problems.append("the Update was signed, but the record says its identity was not verified")
    status: Status = "failed" if problems else check.status
    return check.model_copy(
        update={
            "problems": problems,
            "status": status,
            "event_id": update.accepted_event_id if update is not None else None,
        }
    )


def _check_request(
    record: dict[str, Any], request: Any, workflow_id: str, workflow_type: str
) -> SignatureCheck:
    check = _record_check("request", record, workflow_id, "requested")
    check = check.model_copy(update={"event_id": 1})
    if check.identity not in PROVEN:
        return check
    start = request if isinstance(request, dict) else {}
    problems = _verify_signed(record, REQUEST_NAMESPACE)
    if not problems:
        try:
            payload = parse_canonical(RequestPayload, str(record["signed"]), "request")
        except SignatureRefused as err:
            problems.append(f"the signed text is not a drflow request ({err.code}): {err}")
        else:
            expected: dict[str, Any] = {
                "kind": workflow_type.lower(),
                "workflow_id": workflow_id,
                "person": check.person,
                **{f: start.get(f) for f in ("service", "target", "home", "mode", "reason")},
            }
            problems += _bound(payload, expected)
    if (start.get("signed"), start.get("signature")) != (record.get("signed"), record.get("signature")):
        problems.append("the record's signed request or signature differs from what the start carried")
    return check.model_copy(update={"problems": problems, "status": "failed" if problems else "verified"})


def _check_update_alone(update: UpdateRecord, workflow_id: str, run_id: str) -> SignatureCheck:
    """A signed Update without its report record: the signature, and that it is bound to this run."""
    args = update.args if isinstance(update.args, dict) else {}
    check = SignatureCheck(
        kind="decision" if update.name == "decide" else "approval",
        subject=update.gate or _str(args.get("step")) or "(open gate)",
        decision=update.decision or update.name,
        person=update.by,
        identity=None,
        channel=update.channel,
        event_id=update.accepted_event_id,
        status="unverified",
    )
    signed, armored = _str(args.get("signed")), _str(args.get("signature"))
    if signed is None or armored is None:
        return check
    attested = check.channel == "slack"
    namespace = ATTESTATION_NAMESPACE if attested else NAMESPACE
    kind: type[StrictModel] = AttestationPayload if attested else DecisionPayload
    try:
        sig = parse_armored(armored)
        check_signature(sig, signed.encode(), namespace)
        payload = parse_canonical(kind, signed, "signed answer")
    except SignatureRefused as err:
        return check.model_copy(update={"status": "failed", "problems": [f"({err.code}) {err}"]})
    problems = _bound(payload, {"workflow_id": workflow_id, "run_id": run_id})
    return check.model_copy(
        update={
            "identity": "slack-gateway" if attested else "ssh-key",
            "key": sig.fingerprint,
            "gateway": getattr(payload, "gateway", None),
            "person": getattr(payload, "person", None) or update.by,
            "subject": getattr(payload, "gate", None) or getattr(payload, "failed_step", None),
            "status": "failed" if problems else "verified",
            "problems": problems,
        }
    )


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def check_signatures(
    *,
    workflow_id: str,
    run_id: str,
    workflow_type: str,
    request: Any,
    updates: Sequence[UpdateRecord],
    report: Any,
) -> SignatureAudit:
    """Re-check the run's signatures. Pure: plain data in (as the history decodes it), verdicts out.

    Gate answers and decisions are paired with the Updates that delivered them in the order they were
    accepted, as the workflow records them (a vote at once, the gate's last answer when the gate closes).
    """
    checks: list[SignatureCheck] = []
    problems: list[str] = []
    notes: list[str] = []
    answered = [u for u in updates if u.status != "failed"]
    gate_updates = [u for u in answered if u.name in GATE_UPDATES]
    decide_updates = [u for u in answered if u.name == "decide"]
    if not isinstance(report, dict):
        notes.append(
            "the run has no final report (still open, or it failed): each signed Update is checked on its "
            "own, without a record to compare it with"
        )
        checks = [_check_update_alone(u, workflow_id, run_id) for u in gate_updates + decide_updates]
        return SignatureAudit(workflow_id=workflow_id, run_id=run_id, checks=checks, notes=notes)
    requester = report.get("requester")
    if isinstance(requester, dict):
        checks.append(_check_request(requester, request, workflow_id, workflow_type))
    elif isinstance(request, dict) and request.get("signed"):
        notes.append("the request is signed, but the run used no people file: it was not verified")
    base = {"workflow_id": workflow_id, "run_id": run_id}
    approvals = _dicts(report.get("approvals"))
    answers = [a for a in approvals if a.get("decision") not in NOT_ANSWERS]
    for index, record in enumerate(answers):
        gate, decision = str(record.get("gate")), str(record.get("decision"))
        update = gate_updates[index] if index < len(gate_updates) else None
        check = _record_check("approval", record, gate, decision)
        signed_answer = SIGNED_ANSWER.get(UPDATE_OF_RECORD.get(decision, ""), decision)
        binding = {
            **base, "gate": gate, "failed_step": None, "decision": signed_answer,
            "plan_checksum": record.get("plan_checksum"),
        }  # fmt: skip
        check = _check_answer(check, record, update, binding)
        if update is not None and UPDATE_OF_RECORD.get(decision) != update.name:
            check = check.model_copy(
                update={
                    "status": "failed",
                    "problems": [
                        *check.problems,
                        f"recorded as {decision}, but the Update was {update.name}",
                    ],
                }
            )
        checks.append(check)
    for record in approvals:
        if record.get("decision") in NOT_ANSWERS:
            check = _record_check("approval", record, str(record.get("gate")), str(record.get("decision")))
            checks.append(check.model_copy(update={"person": None}))
    decisions = [d for d in _dicts(report.get("decisions")) if d.get("decision") != "expired"]
    for index, record in enumerate(decisions):
        step, decision = str(record.get("step")), str(record.get("decision"))
        update = decide_updates[index] if index < len(decide_updates) else None
        binding = {**base, "gate": None, "failed_step": step, "decision": decision, "plan_checksum": None}
        check = _check_answer(_record_check("decision", record, step, decision), record, update, binding)
        checks.append(check)
    for sent, recorded in ((gate_updates, answers), (decide_updates, decisions)):
        for update in sent[len(recorded) :]:
            signed = isinstance(update.args, dict) and bool(update.args.get("signed"))
            text = f"Update {update.name} (event {update.accepted_event_id}) has no record in the report"
            if signed and update.status == "completed":
                problems.append(text)
            else:
                notes.append(text)
    return SignatureAudit(
        workflow_id=workflow_id, run_id=run_id, checks=checks, problems=problems, notes=notes
    )


def signatures_of(history: WorkflowHistory) -> SignatureAudit:
    """``check_signatures`` over a recorded history."""
    records = EventPass(history).build()
    start = records.start
    if start is None:
        raise ValueError("the history has no WorkflowExecutionStarted event: it is not a workflow history")
    attrs = start.workflow_execution_started_event_attributes
    return check_signatures(
        workflow_id=attrs.workflow_id or history.workflow_id,
        run_id=history.run_id,
        workflow_type=attrs.workflow_type.name,
        request=decode_payloads(attrs.input),
        updates=sorted(records.updates.values(), key=lambda u: u.accepted_event_id),
        report=records.result,
    )
