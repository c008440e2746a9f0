"""Resolve a runbook's secret reference at the moment of use, inside an activity.

The value is returned to the caller only: never logged, never part of an activity input or result, so it
cannot reach a workflow history, a report or the Temporal UI.
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType


def resolve_secret(reference: str) -> str:
    kind, _, where = reference.partition(":")
    if kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise ApplicationError(
                f"secret {reference} is not set in the worker's environment",
                type=ErrorType.SECRET_UNAVAILABLE,
            )
        return value
    if kind == "file":
        try:
            return Path(where).read_text().strip()
        except OSError as err:
            raise ApplicationError(
                f"secret {reference} cannot be read by the worker: {err.strerror or err}",
                type=ErrorType.SECRET_UNAVAILABLE,
            ) from None
    raise ApplicationError(
        f"unsupported secret reference {reference!r}", type=ErrorType.SECRET_UNAVAILABLE, non_retryable=True
    )
