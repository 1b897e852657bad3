"""Running a nested workflow as a step: a child level, its header, its progress record.

The decisions (where it starts, which records a fresh run replaces, its progress record,
its result) are the planner's: ``trioflow._core._plan._nested``.
"""

from __future__ import annotations

from typing import Any

import trio

from .._core._plan import _nested as plan
from .._core._plan._values import Announced, NodeResume, StepRun
from .._core._serde import to_jsonable
from .._effects import now_ms
from .._workflow import WorkflowGraph
from ._level import Level


async def run_nested(
    level: Level,
    node: WorkflowGraph,
    value: Any,
    *,
    resume: NodeResume | None,
    chunk_id: str,
    emit: bool,
    foreach_index: int | None,
    announced: Announced | None = None,
    iteration: int = 0,
) -> StepRun:
    """Run ``node`` as one of ``level``'s nodes. Cancelled: its ``canceled`` result is
    published (its progress record stays, for restart) and ``trio.Cancelled`` propagates."""
    if announced is None:
        announced = level.announce(node, value, resume, chunk_id, emit=emit)
    emit = emit and level.emits
    keys = plan.nested_keys(
        parent_key_prefix=level.key_prefix,
        parent_key_scope=level.key_scope,
        node_id=node.id,
        chunk_id=chunk_id,
        foreach_index=foreach_index,
        iteration=iteration,
    )
    opening = plan.open_nested(value, resume, announced)
    if opening.fresh:
        fresh = plan.fresh_input(opening, node.input_schema, node.validate_inputs, now_ms())
        if fresh.failed is not None:
            # A schedule point only: a cancel here would leave the node without a result.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return _finish(level, chunk_id, fresh.failed, announced, emit)
        sub = _fresh_level(level, node, keys, fresh.input)
        start = plan.FRESH_START
    else:
        sub = _continued_level(level, node, keys, opening.header)
        start = plan.continue_start(sub, resume, len(node.entries))
    execution = level.execution
    if plan.keeps_progress(execution.durable):
        _track_progress(sub, keys, opening, iteration)
    settled = False
    try:
        outcome = await sub.run(
            start.entry,
            sub.input if opening.fresh else sub.active_input,
            start.target,
            restart=start.restart,
        )
        settled = True
    except trio.Cancelled:
        if emit:
            canceled = plan.canceled(opening, now_ms())
            level.emit_settled(chunk_id, canceled, announced.call_id)
        raise
    finally:
        refresh = execution.live_records.pop(keys.record_key, None)
        if refresh is not None:
            if settled and plan.drops_progress_when_settled(foreach_index):
                execution.stored.pop(keys.record_key, None)
            else:
                # The last progress record stays until the step's own result replaces
                # it (an interrupted execution keeps it, for restart).
                execution.stored[keys.record_key] = refresh()
    if plan.merges_state(outcome):
        level.apply_state(sub.state, None)
    run = plan.nested_result(outcome, sub, opening, iteration=iteration, now=now_ms())
    return _finish(level, chunk_id, run, announced, emit)


def _finish(
    level: Level, chunk_id: str, run: StepRun, announced: Announced, emit: bool
) -> StepRun:
    if emit:
        level.emit_settled(chunk_id, run.result, announced.call_id)
    return run


def _fresh_level(level: Level, node: WorkflowGraph, keys: plan.NestedKeys, input: Any) -> Level:
    stored = level.execution.stored
    for key in plan.replaced_keys(list(stored), keys):
        del stored[key]
    return level.child(
        node,
        key_prefix=keys.key_prefix,
        chunk_prefix=keys.chunk_prefix,
        input=input,
        state=level.state,
        key_scope=keys.key_scope,
    )


def _continued_level(
    level: Level, node: WorkflowGraph, keys: plan.NestedKeys, header: dict[str, Any] | None
) -> Level:
    assert header is not None
    sub = level.child(
        node,
        key_prefix=keys.key_prefix,
        chunk_prefix=keys.chunk_prefix,
        input=header.get("input"),
        state=header.get("state"),
        header=header,
        key_scope=keys.key_scope,
    )
    sub.state = plan.continued_state(sub.state, level.state)
    return sub


def _track_progress(
    sub: Level, keys: plan.NestedKeys, opening: plan.NestedOpening, iteration: int
) -> None:
    """Durable storage: every write while the nested workflow runs stores where it is, so
    a crash re-runs only its unfinished entry and a restart continues it."""
    payload_json = to_jsonable(opening.payload)

    def progress_record() -> dict[str, Any]:
        return plan.progress_record(
            payload_json=payload_json,
            started_at=opening.started_at,
            header=sub.header(),
            iteration=iteration,
        )

    execution = sub.execution
    execution.live_records[keys.record_key] = progress_record
    sub.on_entry_done = execution.persist_progress
