"""References to secrets. A runbook never holds a secret value, only where to find it at run time.

Resolution happens inside activities (``activities.secrets``), so a resolved value never enters a workflow
history, a log line or a report.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

SECRET_REF_PATTERN = r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$"


def _reference_check(problem: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        # the message never repeats the value: it may be the very secret that must not reach a log
        if not isinstance(value, str) or not re.fullmatch(SECRET_REF_PATTERN, value):
            raise ValueError(problem)
        return value

    return check


SecretRef = Annotated[
    str,
    BeforeValidator(
        _reference_check(
            "must be a secret reference (env:VARIABLE or file:/path/to/secret), not an inline value"
        )
    ),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": SECRET_REF_PATTERN,
            "description": "env:VARIABLE or file:/path; never the secret itself",
        }
    ),
]

HeaderRef = Annotated[
    str,
    BeforeValidator(
        _reference_check(
            "a header value must be a secret reference (env:VARIABLE or file:/path/to/secret) holding the "
            "whole value, e.g. 'Bearer ...': a value written here would be copied into every workflow "
            "history, report and log"
        )
    ),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": SECRET_REF_PATTERN,
            "description": "env:VARIABLE or file:/path holding the whole header value; never the value",
        }
    ),
]
"""A health-check header value: always a reference, resolved inside the activity for each request."""
