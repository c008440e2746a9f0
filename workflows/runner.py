"""The workflow sandbox that drflow's workers and replayers share.

Update validators verify SSH signatures with ``cryptography``, whose Rust extension imports
``cryptography.exceptions`` lazily when a check fails. Inside the sandbox that import would load the
extension a second time, which aborts the process (tried: "Fatal Python error: Aborted" on the first
bad signature). Passing the whole package through gives workflows the worker's one copy. It is safe
here: ``cryptography`` keeps no state a workflow could leak between runs, and the verifiers are pure.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

PASSED_THROUGH = ("cryptography",)


def workflow_runner() -> SandboxedWorkflowRunner:
    """For every ``Worker`` and ``Replayer``: a worker and its replays must see the same sandbox."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
    )
