"""Write a drill's report where auditors find it: JSON for machines, Markdown for people."""

from __future__ import annotations

import os
from pathlib import Path

from temporalio import activity

from activities.heartbeat import beating
from runbooks.model import StrictModel

REPORTS_ENV = "DRFLOW_DRILL_REPORTS"
DEFAULT_REPORTS = ".drflow/drills"


class DrillReportFiles(StrictModel):
    service: str
    drill_id: str
    json_text: str
    markdown: str


class WrittenReport(StrictModel):
    paths: list[str]


def reports_dir() -> Path:
    return Path(os.environ.get(REPORTS_ENV) or DEFAULT_REPORTS)


@activity.defn(name="write_drill_report")
def write_drill_report(files: DrillReportFiles) -> WrittenReport:
    """Idempotent: the same drill id writes the same two files again."""
    with beating():
        folder = reports_dir() / files.service
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for suffix, text in ((".json", files.json_text), (".md", files.markdown)):
            path = folder / f"{files.drill_id}{suffix}"
            temporary = path.with_suffix(suffix + ".tmp")
            temporary.write_text(text)
            temporary.replace(path)
            written.append(str(path))
        return WrittenReport(paths=written)
