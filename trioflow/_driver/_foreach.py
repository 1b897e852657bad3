"""foreach: a node run once per item, ``concurrency`` lanes without a task per item.

The planner (``_core._plan._foreach``) decides which items run and how the foreach ends;
this module runs the lanes, publishes the chunks and persists progress.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from .._core._chunks import WorkflowStepProgress
from .._core._graph import ForeachEntry
from .._core._plan._foreach import ForeachPlan, Settle, foreach_input, not_a_list
from .._core._plan._nested import item_progress_key
from .._core._plan._values import Outcome, StepRun
from .._core._resume import ResumeTarget
from .._effects import now_ms
from .._groups import unwrap_groups
from .._workflow import Step, WorkflowGraph
from ._level import Level


async def run_foreach(
    level: Level,
    idx: int,
    entry: ForeachEntry,
    value: Any,
    target: ResumeTarget | None,
    *,
    restart: bool,
) -> Outcome:
    node = entry.node
    chunk_id = level.chunk_id(node.id)
    execution = level.execution
    resume = level.node_resume(node.id, target)
    stored = (
        execution.stored.get(level.key_prefix + node.id)
        if (resume is not None or restart)
        else None
    )
    value = foreach_input(value, stored)
    plan = ForeachPlan(
        items=value if isinstance(value, list) else [],
        stored=stored,
        resume=resume,
        resume_token=execution.resume_token,
        chunk_id=chunk_id,
        emit=level.emits,
        now=now_ms(),
        item_progress=_item_progress(level, node) if (resume or restart) else None,
    )
    failed = not_a_list(value, plan.started_at, now_ms())
    if failed is not None:
        if plan.emit:
            level.emit_start(
                chunk_id, call_id=None, payload=value, started_at=plan.started_at, resume=None
            )
        # Settles without running anything, as a step whose input fails validation (no
        # cancel point here, as before the planner: a cancel is not made to win over it).
        return _settle(level, node.id, idx, plan, failed)  # noqa: ASYNC910

    if plan.emit:
        level.emit_start(
            chunk_id,
            call_id=None,
            payload=plan.items,
            started_at=plan.started_at,
            resume=resume,
            resumed_at=plan.resumed_at,
        )
    workers = min(entry.concurrency, plan.lanes_wanted)
    try:
        if workers == 1:
            await _lane(level, entry, plan)
        elif workers > 1:
            # A cancelled nursery raises a group of Cancelled: unwrapped, so that
            # the ``except trio.Cancelled`` below settles the foreach.
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    for _ in range(workers):
                        nursery.start_soon(_lane, level, entry, plan)
    except trio.Cancelled:
        canceled = plan.cancelled(now_ms())
        if plan.emit:
            level.emit_settled(chunk_id, canceled, None)
        level.settle(node.id, StepRun(result=canceled), [idx])
        if execution.interrupted_resume(resume):
            # The runtime stopped during this resume: the foreach stays suspended, and
            # restart() replays the resume on the items it had not finished.
            level.suspended_paths[node.id] = [idx]
        raise
    # With no item to run (all settled or staying suspended) the foreach settles at once,
    # with no cancel point, as before the planner; otherwise every item ran in a lane.
    return _settle(level, node.id, idx, plan, plan.outcome(now_ms()))  # noqa: ASYNC910


def _item_progress(level: Level, node: Step | WorkflowGraph) -> Callable[[int], Any] | None:
    """The progress records foreach items of a nested workflow left (durable storage)."""
    if not isinstance(node, WorkflowGraph) or not level.execution.durable:
        return None
    stored, prefix = level.execution.stored, level.key_prefix
    return lambda i: stored.get(item_progress_key(prefix, node.id, i))


def _settle(level: Level, node_id: str, idx: int, plan: ForeachPlan, settle: Settle) -> Outcome:
    if plan.emit:
        level.emit_settled(plan.chunk_id, settle.result, None)
    level.settle(node_id, settle.run, [idx])
    return settle.outcome


# A lane that finds no item left (another lane took the last, or one stopped the foreach)
# ends at once: every item taken has its run_node and a cancel point after it.
async def _lane(level: Level, entry: ForeachEntry, plan: ForeachPlan) -> None:  # noqa: ASYNC910
    """One of ``concurrency`` lanes: a sliding window without a task per item, each lane
    taking the next item as soon as its current one settles (taking is synchronous)."""
    node = entry.node
    execution = level.execution
    log = execution.log
    key = level.key_prefix + node.id
    items = plan.items
    chunk_id = plan.chunk_id
    durable = execution.durable
    # Bound once: this loop is the per-item path (bench_foreach.py).
    take, item_settled, run_node = plan.take, plan.item_settled, level.run_node
    done = 0
    while (item := take()) is not None:
        index, item_resume = item
        run = await run_node(
            node,
            items[index],
            resume=item_resume,
            chunk_id=chunk_id,
            emit=False,
            foreach_index=index,
            record=False,
        )
        _, chunk, _ = item_settled(index, run)
        if chunk is not None:
            level.publish(WorkflowStepProgress, chunk)
        if durable:
            execution.stored[key] = plan.progress_record()
            await execution.persist_progress()
        # Items whose steps never checkpoint must not make the run uncancellable (a cancel
        # point per item) nor starve other tasks (a schedule point every few items: a full
        # checkpoint per item would double the cost of an item). Each item adds a progress
        # chunk: past the bound of chunks waiting for storage (SPEC §3.0), the next item
        # waits until storage commits some.
        done += 1
        if not log.has_room():
            await log.wait_for_room()
        elif done % 32:
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await trio.lowlevel.checkpoint()
