"""The workflow sandbox that drflow's workers and replayers share.

Update validators verify SSH signatures with ``cryptography``, whose Rust extension imports
``cryptography.exceptions`` lazily when a check fails. Inside the sandbox that import would load the
extension a second time, which aborts the process (tried: "Fatal Python error: Aborted" on the first
bad signature). Passing the whole package through gives workflows the worker's one copy. It is safe
here: ``cryptography`` keeps no state a workflow could leak between runs, and the verifiers are pure.

The runner also makes a start with the wrong number of arguments fail the run at once
(``OneInputRunner``).
"""

from __future__ import annotations

import json
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.start_input import ARGUMENT_COUNT

PASSED_THROUGH = ("cryptography",)


class OneInputRunner(SandboxedWorkflowRunner):
    """The sandbox, with every one-argument workflow guarded against a start of none or several.

    The SDK calls the workflow with as many arguments as the start carried, so an empty start form or
    ``temporal workflow start`` without ``--input`` is a ``TypeError`` in the workflow's constructor: a
    workflow *task* failure, retried for ever while the run shows Running. The guard replaces such a start's
    arguments, in the activation only (the history keeps what was sent), by one object that
    ``StartInput`` turns into the run's non-retryable failure, naming the count and the fields. The rewrite
    depends only on the start event, so a replay takes the same path.
    """

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        instance = super().create_instance(det)
        arg_types = det.defn.arg_types
        return instance if arg_types is None or len(arg_types) != 1 else _OneInput(instance)


class _OneInput(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance) -> None:
        self._inner = inner

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        for job in act.jobs:
            if job.HasField("initialize_workflow"):
                arguments = job.initialize_workflow.arguments
                if len(arguments) != 1:
                    marker = json.dumps({ARGUMENT_COUNT: len(arguments)}).encode()
                    del arguments[:]
                    arguments.append(Payload(metadata={"encoding": b"json/plain"}, data=marker))
        return self._inner.activate(act)

    def get_serialization_context(self, command_info: Any) -> Any:
        return self._inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> Any:
        return self._inner.get_external_store_context(command_info)

    def get_info(self) -> Any:
        return self._inner.get_info()

    def get_thread_id(self) -> int | None:
        return self._inner.get_thread_id()


def workflow_runner() -> SandboxedWorkflowRunner:
    """For every ``Worker`` and ``Replayer``: a worker and its replays must see the same sandbox."""
    return OneInputRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH))
