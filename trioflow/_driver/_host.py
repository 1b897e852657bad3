"""What an execution uses of the layer above it (the run API's Runtime and RunHub),
declared here as protocols so that the driver never imports that layer."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import trio

from .._broadcast import EventLog
from .._core._model import WorkflowResult
from .._core._status import RunStatus
from .._workflow import WorkflowGraph
from ..storage import Storage


class ExecutionHost(Protocol):
    """What an execution uses of the runtime that spawns it (the run API's Runtime):
    declared here so that the driver never imports the layer above it."""

    @property
    def tracer(self) -> Any: ...

    @property
    def storage(self) -> Storage: ...

    def finishing_scope(self) -> contextlib.AbstractContextManager[trio.CancelScope]: ...

    async def run_callbacks(self, workflow: WorkflowGraph, result: WorkflowResult) -> None:
        """``on_finish``/``on_error`` of ``workflow`` (exceptions logged, not raised)."""
        ...


class ExecutionHub(Protocol):
    """What an execution uses of its run's in-process hub (the run API's RunHub)."""

    log: EventLog
    write_lock: trio.Lock
    status: RunStatus

    # (``Any``: the Execution, which imports this module.)
    def execution_started(self, execution: Any) -> None: ...

    def execution_ended(self, execution: Any) -> None: ...
