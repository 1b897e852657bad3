"""dowhile / dountil: one node run again while its condition says so.

The decisions (the iteration to continue from, again or stop, the iteration stamped on
each result) are the planner's: ``trioflow._core._plan._loop``.
"""

from __future__ import annotations

from typing import Any

import trio

from .._core._graph import LoopEntry
from .._core._plan import _loop as plan
from .._core._plan._values import Outcome
from .._core._resume import ResumeTarget
from .._effects import call_maybe_async
from .._groups import is_fatal
from .._workflow import WorkflowGraph
from ._level import Level


async def run_loop(
    level: Level,
    idx: int,
    entry: LoopEntry,
    value: Any,
    target: ResumeTarget | None,
    *,
    restart: bool,
) -> Outcome:
    """Run the loop entry ``idx``. Cancelled: the running iteration is cancelled (its
    ``canceled`` result recorded) and ``trio.Cancelled`` propagates."""
    node = entry.node
    resume = level.node_resume(node.id, target)
    start = plan.loop_start(
        value, level.results.get(node.id), resuming=resume is not None, restart=restart
    )
    if start.continued:
        resume = level.restart_resume(node.id)
    again = plan.Again(iteration=start.iteration, value=start.value)
    if start.settled:
        # A restart after the body's iteration was stored as finished: its condition.
        decided = await _condition(level, entry, start.iteration, start.value)
        if isinstance(decided, plan.Stop):
            return decided.outcome
        again = decided
    while True:
        iteration = again.iteration
        run = await level.run_node(
            node, again.value, resume=resume, chunk_id=level.chunk_id(node.id), iteration=iteration
        )
        resume = None
        run = plan.stamp_iteration(run, iteration)
        level.settle(node.id, run, [idx])
        settled = plan.body_settled(run)
        if isinstance(settled, plan.Stop):
            return settled.outcome
        decided = await _condition(level, entry, iteration, settled.value)
        if isinstance(decided, plan.Stop):
            return decided.outcome
        again = decided
        if isinstance(node, WorkflowGraph) and level.execution.durable:
            await _store_finished_iteration(level, node.id)


async def _condition(
    level: Level, entry: LoopEntry, iteration: int, value: Any
) -> plan.Again | plan.Stop:
    node_id = entry.node.id
    ctx = level.make_context(
        node_id, level.chunk_id(node_id), value, iteration=iteration, is_condition=True
    )
    try:
        verdict = bool(await call_maybe_async(entry.condition, ctx))
    except trio.Cancelled:
        raise
    except BaseException as exc:
        if is_fatal(exc):
            raise
        # A schedule point only: the condition may have raised before awaiting anything,
        # and a cancel here must not turn its failure into a cancellation.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return plan.condition_raised(exc)
    return plan.condition_returned(entry.kind, verdict, iteration, value)


async def _store_finished_iteration(level: Level, node_id: str) -> None:
    """Store the body's finished iteration (durable storage) without the inner records
    the next iteration replaces, so a crash from here on does not run it again."""
    execution = level.execution
    stored = execution.stored
    for key in plan.finished_iteration_keys(list(stored), level.key_prefix, node_id):
        del stored[key]
    await execution.persist_progress()
