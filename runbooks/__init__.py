"""Runbook model, loader and examples: what a service's failover looks like, as validated data."""

from runbooks.loader import (
    LoadedRunbook,
    Problem,
    RunbookError,
    UnknownServiceError,
    find_runbook,
    load_runbook_file,
)
from runbooks.model import Runbook

__all__ = [
    "LoadedRunbook",
    "Problem",
    "Runbook",
    "RunbookError",
    "UnknownServiceError",
    "find_runbook",
    "load_runbook_file",
]
