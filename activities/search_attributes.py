"""drflow's search attributes: how the Web UI and the CLI find a service's runs, and what kind each is.

They live at the bottom layer because activities start workflows too (the lock, the archive) and set them
at start; workflows upsert them only when a starter did not (a run started from the Web UI form).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

SERVICE_ATTR = SearchAttributeKey.for_keyword("DrflowService")
KIND_ATTR = SearchAttributeKey.for_keyword("DrflowKind")
STEP_ATTR = SearchAttributeKey.for_keyword("DrflowStep")
SEARCH_ATTRIBUTES = (SERVICE_ATTR, KIND_ATTR, STEP_ATTR)


def run_attributes(service: str, kind: str, step: str) -> TypedSearchAttributes:
    """What a starter (CLI, lock activity) sets at start, so the run needs no upsert of its own."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(SERVICE_ATTR, service),
            SearchAttributePair(KIND_ATTR, kind),
            SearchAttributePair(STEP_ATTR, step),
        ]
    )
