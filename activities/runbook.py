"""Reading the runbook is I/O, so workflows get it from this activity; the result carries its digest."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from activities.heartbeat import beating
from runbooks.loader import LoadedRunbook, RunbookError, UnknownServiceError, find_runbook
from runbooks.model import Approvals, StrictModel
from runbooks.people import PeopleFileError, PeopleSnapshot, people_for


class LoadRunbookRequest(StrictModel):
    service: str


class LoadPeopleRequest(StrictModel):
    """The approvals of the runbook the run holds (not of the file now on disk, which may have changed)."""

    service: str
    approvals: Approvals


class LoadedPeople(StrictModel):
    snapshot: PeopleSnapshot | None = Field(
        default=None, description="None: the runbook uses no people file (approvers are unverified strings)"
    )


class RunbookActivities:
    """Bound to the worker's runbooks directory (``--runbooks`` / ``DRFLOW_RUNBOOKS``)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    @activity.defn(name="load_runbook")
    def load_runbook(self, request: LoadRunbookRequest) -> LoadedRunbook:
        with beating():
            try:
                return find_runbook(request.service, self._directory)
            except UnknownServiceError as err:
                raise ApplicationError(str(err), type=ErrorType.UNKNOWN_SERVICE, non_retryable=True) from err
            except RunbookError as err:
                raise ApplicationError(
                    f"runbook for {request.service} is invalid:\n{err}",
                    type=ErrorType.INVALID_RUNBOOK,
                    non_retryable=True,
                ) from err

    @activity.defn(name="load_people")
    def load_people(self, request: LoadPeopleRequest) -> LoadedPeople:
        """The people file as this gate will use it; a broken or mismatched file fails without retries."""
        with beating():
            try:
                return LoadedPeople(snapshot=people_for(request.service, request.approvals, self._directory))
            except PeopleFileError as err:
                raise ApplicationError(
                    f"the people file for {request.service} cannot be used:\n{err}",
                    type=ErrorType.INVALID_RUNBOOK,
                    non_retryable=True,
                ) from err
