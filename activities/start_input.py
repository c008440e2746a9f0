"""The input of a workflow a person can start: invalid input fails the run at once and says why.

The SDK decodes a workflow's start argument before any workflow code runs. A ``ValidationError`` raised there
is a *workflow task* failure, retried for ever ("Failed decoding arguments", the run shows Running), although
the same bytes can never validate. ``StartInput`` turns it into a non-retryable ``ApplicationError`` instead,
which the SDK lets through its decoding unwrapped and records as the run's failure: the run ends Failed and
the Web UI shows the message, one line per field path with what the field allows.

Only the decoding of a payload inside a workflow (pydantic's JSON mode in the workflow sandbox) does this:
code that builds a request in Python, the CLI, activities and tests still get pydantic's ``ValidationError``.
A valid input decodes to the same value as before, so no command changes and stored histories replay.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError, ValidationInfo, ValidatorFunctionWrapHandler, model_validator
from pydantic_core import ErrorDetails
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from runbooks.model import StrictModel

ARGUMENT_COUNT = "__drflow_argument_count__"
"""What ``workflows.runner`` puts in place of a start that did not carry exactly one argument (none, from an
empty start form or ``temporal workflow start`` without ``--input``; two, from ``--input`` twice): the SDK
would otherwise call the workflow with the wrong number of arguments, a ``TypeError`` retried for ever."""


class StartInput(StrictModel):
    """A request model that is a workflow's start argument (``Failover``, ``Failback``, ``Drill``, ...)."""

    @model_validator(mode="wrap")
    @classmethod
    def _fail_the_run_on_invalid_input(
        cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        """In a workflow, an invalid payload fails the run (non-retryable) rather than its task, for ever."""
        if isinstance(data, dict) and ARGUMENT_COUNT in data and _in_workflow():
            raise ApplicationError(
                argument_count_message(cls, data[ARGUMENT_COUNT]),
                type=ErrorType.INVALID_INPUT, non_retryable=True,
            )  # fmt: skip
        try:
            return handler(data)
        except ValidationError as err:
            if info.mode != "json" or not _in_workflow():
                raise
            raise ApplicationError(
                invalid_input_message(cls, err), type=ErrorType.INVALID_INPUT, non_retryable=True
            ) from None


def _in_workflow() -> bool:
    """The start argument is decoded in the sandbox before the workflow's event loop runs, so before
    ``in_workflow()`` is true; drflow's workers and replayers always run the sandbox
    (``workflows.runner``)."""
    return workflow.in_workflow() or workflow.unsafe.in_sandbox()


def argument_count_message(model: type[StrictModel], count: object) -> str:
    got = "no input" if count == 0 else f"{count} inputs"
    return (
        f"invalid input for {model.__name__}: {got}; the workflow takes exactly one input, a JSON object "
        f"with the fields {', '.join(model.model_fields)}"
    )


def invalid_input_message(model: type[StrictModel], err: ValidationError) -> str:
    """pydantic's errors as an operator reads them: ``mode: Input should be 'planned' or ...``."""
    fields = ", ".join(model.model_fields)
    lines = [
        f"{_path(e)}: unknown field (a typo? the fields are {fields})"
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1
        else f"{_path(e)}: {e['msg']}"
        for e in err.errors(include_url=False, include_input=False)
    ]
    return f"invalid input for {model.__name__}: " + "; ".join(lines)


def _path(error: ErrorDetails) -> str:
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(input)"
