"""Parallel entries and branches: nodes run concurrently, one outcome from all of them.

The decisions (which branches run, fail_fast, the outcome) are the planner's
(``_core/_plan/_block.py``); this module keeps the nursery, the cancel scopes, the
condition calls and the progress writes.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from .._core._graph import BranchEntry
from .._core._plan._block import (
    BlockPlan,
    BranchCancelled,
    BranchSettled,
    CancelOthers,
    PersistProgress,
    SettleBranch,
    arms_chosen_before,
    branch_record_key,
    choose_arms,
    select_branches,
)
from .._core._plan._values import (
    Announced,
    NodeResume,
    Outcome,
    StepRun,
)
from .._core._resume import ResumeTarget
from .._core._status import StepStatus
from .._effects import call_maybe_async, now_ms
from .._groups import is_fatal, unwrap_groups
from ._level import Level

_S = StepStatus


logger = logging.getLogger("trioflow")


async def run_block(
    level: Level,
    idx: int,
    nodes: list[Any],
    value: Any,
    target: ResumeTarget | None,
    *,
    fail_fast: bool,
    restart: bool,
    considered: list[int] | None = None,
) -> Outcome:
    """Run ``nodes`` concurrently (a parallel entry, or the chosen arms of a branch).

    Cancelling it cancels the running branches; each records its ``canceled`` result."""
    node_ids = [node.id for node in nodes]
    positions = considered if considered is not None else list(range(len(nodes)))
    plan = BlockPlan(
        idx=idx,
        node_ids=node_ids,
        positions=positions,
        to_run=select_branches(level, node_ids, positions, target, restart=restart),
        fail_fast=fail_fast,
        payload=value,
        previous=level.results,
    )
    # Made before any branch starts: fail_fast also cancels a branch trio has not started.
    scopes = {run.position: trio.CancelScope() for run in plan.to_run}

    def apply(action: SettleBranch | CancelOthers) -> None:
        if isinstance(action, SettleBranch):
            level.settle(action.node_id, action.run, list(action.entry_path))
            return
        for other, scope in scopes.items():
            if other != action.position:
                scope.cancel(reason=action.reason)

    async def branch(b: int, resume: NodeResume | None, announced: Announced | None) -> None:
        node = nodes[b]
        if announced is None:
            announced = level.announce(node, value, resume, level.chunk_id(node.id))
        run: StepRun | None = None
        with scopes[b]:
            run = await level.run_node(
                node, value, resume=resume, chunk_id=level.chunk_id(node.id), announced=announced
            )
        if run is not None:
            actions = plan.branch_settled(BranchSettled(position=b, run=run))
        else:
            cancelled = BranchCancelled(position=b, started_at=announced.started_at, now=now_ms())
            actions = plan.branch_cancelled(cancelled)
        # In the planner's order: a failing branch is persisted before it cancels the
        # others, outside its cancel scope (its settled result is not interrupted).
        for action in actions:
            if isinstance(action, PersistProgress):
                await level.execution.persist_progress()
            else:
                apply(action)

    if not plan.to_run:
        # Nothing runs (a restart after every branch succeeded): still a checkpoint.
        await trio.lowlevel.checkpoint()
    elif not plan.concurrent:
        only = plan.to_run[0]
        await branch(only.position, only.resume, None)
    else:
        announced = [
            level.announce(nodes[r.position], value, r.resume, level.chunk_id(node_ids[r.position]))
            for r in plan.to_run
        ]
        # A cancelled nursery raises a group of Cancelled: unwrapped, so that the
        # ``except trio.Cancelled`` of an enclosing nested workflow settles it.
        with unwrap_groups():
            async with trio.open_nursery() as nursery:
                for r, note in zip(plan.to_run, announced, strict=True):
                    nursery.start_soon(branch, r.position, r.resume, note)
    return plan.outcome()


async def run_branch(
    level: Level,
    idx: int,
    entry: BranchEntry,
    value: Any,
    target: ResumeTarget | None,
    *,
    restart: bool,
) -> Outcome:
    nodes = list(entry.nodes)
    record_key = branch_record_key(level.key_prefix, idx)
    ran = arms_chosen_before(
        level.execution.stored.get(record_key),
        [node.id for node in nodes],
        level.results,
        resuming=target is not None,
        restart=restart,
    )
    if ran is not None:
        # Conditions are not evaluated again: the arms chosen then (or, without that
        # record, the arms that ran) are the branch.
        return await run_block(
            level, idx, nodes, value, target, fail_fast=False, restart=restart, considered=ran
        )
    truth = [False] * len(nodes)

    # A sync condition, even one that raises, costs no checkpoint (as in call_maybe_async):
    # the entry loop checkpoints between entries.
    async def evaluate(b: int) -> None:  # noqa: ASYNC910
        ctx = level.make_context(
            nodes[b].id, level.chunk_id(nodes[b].id), value, is_condition=True
        )
        try:
            truth[b] = bool(await call_maybe_async(entry.conditions[b], ctx))
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if is_fatal(exc):
                raise
            logger.warning(
                "branch condition for %r raised; treated as false",
                nodes[b].id,
                exc_info=True,
            )
            truth[b] = False

    if len(nodes) == 1:
        await evaluate(0)
    else:
        with unwrap_groups():
            async with trio.open_nursery() as nursery:
                for b in range(len(nodes)):
                    nursery.start_soon(evaluate, b)
    arms = choose_arms(truth)
    # Stored with the next snapshot: a restart runs the arms chosen now, it does not
    # evaluate the conditions again.
    level.execution.stored[record_key] = arms.record
    if not arms.chosen:
        return Outcome(_S.SUCCESS, output={})
    return await run_block(
        level, idx, nodes, value, None, fail_fast=False, restart=False, considered=arms.chosen
    )
