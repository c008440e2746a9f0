"""Reading the runbook is I/O, so workflows get it from this activity; the result carries its digest."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from runbooks.loader import LoadedRunbook, RunbookError, UnknownServiceError, find_runbook
from runbooks.model import StrictModel


class LoadRunbookRequest(StrictModel):
    service: str


class RunbookActivities:
    """Bound to the worker's runbooks directory (``--runbooks`` / ``DRFLOW_RUNBOOKS``)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    @activity.defn(name="load_runbook")
    def load_runbook(self, request: LoadRunbookRequest) -> LoadedRunbook:
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
