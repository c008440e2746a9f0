"""Markdown, JSON and HTML renderings of an audit timeline, each redacted before anything is written.

Markdown and HTML are two renderings of one list of blocks (headings, paragraphs, lists, tables), so they
never disagree; the JSON is the timeline itself plus the regulation mapping. Everything shown comes from the
history, so rendering the same history twice gives the same bytes (the Markdown is golden-file tested).

This module is the public face: it redacts, then writes. The blocks and their Markdown/HTML writers are in
``workers.audit.blocks``, the report's sections in ``workers.audit.sections`` and the regulation mapping in
``workers.audit.regulations``.
"""

from __future__ import annotations

import json

from runbooks.model import StrictModel
from workers.audit.blocks import to_html, to_markdown
from workers.audit.model import Timeline
from workers.audit.redact import redact_json
from workers.audit.regulations import RegulatoryEvidence, regulatory_evidence
from workers.audit.sections import document

REPORT_FORMAT = "drflow-audit-report/1"


class AuditReport(StrictModel):
    """The JSON rendering: the timeline and the regulation mapping."""

    format: str = REPORT_FORMAT
    timeline: Timeline
    regulatory_evidence: list[RegulatoryEvidence]


def redact_timeline(timeline: Timeline) -> Timeline:
    """The timeline with every secret-looking value replaced; references (``file:``/``env:``) stay."""
    return Timeline.model_validate(redact_json(timeline.model_dump(mode="json")))


def render_markdown(timeline: Timeline) -> str:
    return to_markdown(document(redact_timeline(timeline)))


def render_html(timeline: Timeline) -> str:
    safe = redact_timeline(timeline)
    return to_html(document(safe), f"Audit record: {safe.workflow_type} {safe.workflow_id}")


def render_json(timeline: Timeline) -> str:
    safe = redact_timeline(timeline)
    report = AuditReport(timeline=safe, regulatory_evidence=regulatory_evidence(safe))
    return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def render_ndjson(timeline: Timeline) -> str:
    """One SIEM event per line (``workers.audit.siem``); imported late, siem builds on this module."""
    from workers.audit.siem import render_ndjson as ndjson

    return ndjson(timeline)


RENDERERS = {"md": render_markdown, "json": render_json, "html": render_html, "ndjson": render_ndjson}
