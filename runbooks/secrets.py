"""References to secrets. A runbook never holds a secret value, only where to find it at run time.

Resolution happens inside activities (``activities.secrets``), so a resolved value never enters a workflow
history, a log line or a report.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

SECRET_REF_PATTERN = r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$"


def _check_reference(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(SECRET_REF_PATTERN, value):
        raise ValueError(
            "must be a secret reference (env:VARIABLE or file:/path/to/secret), not an inline value"
        )
    return value


SecretRef = Annotated[
    str,
    BeforeValidator(_check_reference),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": SECRET_REF_PATTERN,
            "description": "env:VARIABLE or file:/path; never the secret itself",
        }
    ),
]
