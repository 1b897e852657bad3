"""The public :class:`Workflow`: the graph of ``trioflow._workflow`` plus ``create_run()``.

``create_run()`` reaches the run API (the innermost open runtime, and the :class:`Run` it
returns), which sits above the driver; the driver runs the graph-only base class. Defining
the run methods here, in the run-API layer, keeps every import arrow pointing down
(SPEC §0).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import attrs

from ._run import Run
from ._runtime import current_runtime
from ._workflow import RetryConfig, WorkflowGraph


@attrs.define(eq=False, kw_only=True, repr=False)
class Workflow(WorkflowGraph):
    """An ordered graph of entries. Build it with the chained methods, then ``commit()``;
    then ``await workflow.create_run()`` inside ``open_runtime()``.

    A Workflow is itself usable as a step (a nested workflow), keyed by its id.
    """

    async def create_run(self, *, run_id: str | None = None, resource_id: str | None = None) -> Run:
        """A :class:`Run` of this workflow in the innermost open runtime.

        With the ``run_id`` of a stored run, the Run is bound to it (this is how another
        process resumes a run). Raises :class:`NoRuntimeError` outside ``open_runtime()``.
        Cancelling it before the run is stored stores nothing; after, the stored
        ``pending`` run stays (a later ``create_run(run_id=...)`` binds to it).
        """
        return await current_runtime().create_run(self, run_id=run_id, resource_id=resource_id)

    async def create_run_async(
        self, *, run_id: str | None = None, resource_id: str | None = None
    ) -> Run:
        """Deprecated alias of :meth:`create_run` (cancelling it is the same)."""
        warnings.warn(
            "create_run_async() is deprecated; use create_run()", DeprecationWarning, stacklevel=2
        )
        return await self.create_run(run_id=run_id, resource_id=resource_id)


def create_workflow(
    *,
    id: str,
    input_schema: Any = None,
    output_schema: Any = None,
    state_schema: Any = None,
    retry_config: RetryConfig | None = None,
    validate_inputs: bool = True,
    emit_step_events: bool = True,
    on_start: Callable[..., Any] | None = None,
    on_finish: Callable[..., Any] | None = None,
    on_error: Callable[..., Any] | None = None,
    description: str | None = None,
) -> Workflow:
    """Create an empty :class:`Workflow`; add entries with ``then``/``parallel``/…"""
    return Workflow(
        id=id,
        input_schema=input_schema,
        output_schema=output_schema,
        state_schema=state_schema,
        retry_config=retry_config if retry_config is not None else RetryConfig(),
        validate_inputs=validate_inputs,
        emit_step_events=emit_step_events,
        on_start=on_start,
        on_finish=on_finish,
        on_error=on_error,
        description=description,
    )
