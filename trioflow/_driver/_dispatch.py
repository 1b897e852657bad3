"""Which module runs which kind of entry and node.
"""

from __future__ import annotations

from typing import Any

import trio

from .._core._graph import (
    BranchEntry,
    Entry,
    ForeachEntry,
    LoopEntry,
    MapEntry,
    ParallelEntry,
    SleepEntry,
    StepEntry,
)
from .._core._plan._node import consumes_resume, settles_when_cancelled
from .._core._plan._records import (
    canceled_result,
)
from .._core._plan._values import (
    Announced,
    NodeResume,
    Outcome,
    StepRun,
    outcome_of,
)
from .._core._resume import ResumeTarget
from .._core._status import StepStatus
from .._effects import now_ms
from .._workflow import Step, WorkflowGraph
from ._block import run_block, run_branch
from ._foreach import run_foreach
from ._level import Level
from ._loop import run_loop
from ._nested import run_nested
from ._step import run_step
from ._timers import run_map, run_sleep

_S = StepStatus



class Dispatch:
    """The level's :class:`~._level.Drive`: each kind of entry to its module."""

    async def run_entry(
        self, level: Level, idx: int, entry: Entry, value: Any, target: ResumeTarget | None, *, restart: bool
    ) -> Outcome:
        if isinstance(entry, StepEntry):
            node = entry.node
            resume = level.node_resume(node.id, target)
            if restart and resume is None:
                resume = level.restart_resume(node.id)
            # (Straight to this drive's run_node: the level's own delegate costs the step
            # path a coroutine frame.)
            run = await self.run_node(
                level, node, value, resume=resume, chunk_id=level.chunk_id(node.id)
            )
            level.settle(node.id, run, [idx])
            return outcome_of(run)
        if isinstance(entry, MapEntry):
            return await run_map(level, idx, entry, value)
        kind, name = entry_span(entry)
        with level.execution.span(kind, name) as span:
            if isinstance(entry, ParallelEntry):
                outcome = await run_block(level,
                    idx,
                    list(entry.nodes),
                    value,
                    target,
                    fail_fast=entry.fail_fast,
                    restart=restart,
                )
            elif isinstance(entry, BranchEntry):
                outcome = await run_branch(level, idx, entry, value, target, restart=restart)
            elif isinstance(entry, LoopEntry):
                outcome = await run_loop(level, idx, entry, value, target, restart=restart)
            elif isinstance(entry, ForeachEntry):
                outcome = await run_foreach(level, idx, entry, value, target, restart=restart)
            else:
                outcome = await run_sleep(level, idx, entry, value)
            if span is not None:
                span.status = outcome.status.value
            return outcome


    async def run_node(
        self,
        level: Level,
        node: Step | WorkflowGraph,
        value: Any,
        *,
        resume: NodeResume | None,
        chunk_id: str,
        emit: bool = True,
        iteration: int = 0,
        foreach_index: int | None = None,
        record: bool = True,
        announced: Announced | None = None,
    ) -> StepRun:
        """Run one node. When it is interrupted by cancellation, its ``canceled`` result is
        recorded at this level (``record``; foreach iterations are recorded by their
        container) before ``trio.Cancelled`` propagates."""
        if announced is None:
            # Here, not in run_step/run_nested: an interrupted node's result keeps its start.
            announced = level.announce(node, value, resume, chunk_id, emit=emit, iteration=iteration)
        try:
            with level.execution.span("workflow_step", "workflow step: '{}'", chunk_id) as span:
                if isinstance(node, WorkflowGraph):
                    run = await run_nested(
                        level,
                        node,
                        value,
                        resume=resume,
                        chunk_id=chunk_id,
                        emit=emit,
                        foreach_index=foreach_index,
                        announced=announced,
                        iteration=iteration,
                    )
                else:
                    run = await run_step(
                        level,
                        node,
                        value,
                        resume=resume,
                        chunk_id=chunk_id,
                        emit=emit,
                        iteration=iteration,
                        announced=announced,
                        foreach_index=foreach_index,
                    )
                if consumes_resume(resume, foreach_index):
                    level.execution.pending_resume = None
                if span is not None:
                    span.status = run.result.status.value
                    if run.result.error is not None:
                        span.error = str(run.result.error)
                return run
        except trio.Cancelled:
            if settles_when_cancelled(
                record=record, resume_interrupted=level.execution.interrupted_resume(resume)
            ):
                # A nested workflow's progress record stays: a restart continues it.
                prior = level.execution.stored.get(level.key_prefix + node.id)
                canceled = canceled_result(value, announced, resume, prior, iteration, now_ms())
                level.settle(node.id, StepRun(result=canceled), [])
            raise


DRIVE = Dispatch()


def entry_span(entry: Entry) -> tuple[str, str]:
    if isinstance(entry, ParallelEntry):
        return "workflow_parallel", "parallel: " + ", ".join(entry.ids)
    if isinstance(entry, BranchEntry):
        return "workflow_conditional", "branch: " + ", ".join(entry.ids)
    if isinstance(entry, LoopEntry):
        return "workflow_loop", f"{entry.kind}: {entry.node.id}"
    if isinstance(entry, ForeachEntry):
        return "workflow_loop", f"foreach: {entry.node.id}"
    if isinstance(entry, SleepEntry):
        return "workflow_sleep", f"sleep: {entry.id}"
    return "workflow_step", entry.ids[0]


