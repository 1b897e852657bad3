"""Parallel entries and branches: nodes run concurrently, one outcome from all of them.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from .._core._graph import (
    BranchEntry,
)
from .._core._model import (
    StepResult,
    TripwireInfo,
)
from .._core._plan._values import (
    Announced,
    NodeResume,
    Outcome,
    StepRun,
)
from .._core._resume import ResumeTarget
from .._core._status import StepStatus, combine_branch_statuses
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
    """Run ``nodes`` concurrently (a parallel entry, or the chosen arms of a branch)."""
    positions = considered if considered is not None else list(range(len(nodes)))
    runs: dict[int, StepRun] = {}
    failures: list[int] = []
    to_run: list[tuple[int, NodeResume | None]] = []
    if target is not None:
        for b in positions:
            resume = level.node_resume(nodes[b].id, target)
            if resume is not None:
                to_run.append((b, resume))
    elif restart:
        for b in positions:
            previous = level.results.get(nodes[b].id)
            if previous is None or previous.status is not _S.SUCCESS:
                to_run.append((b, level.restart_resume(nodes[b].id)))
    else:
        to_run = [(b, None) for b in positions]

    scopes: dict[int, trio.CancelScope] = {}

    async def branch(b: int, resume: NodeResume | None, announced: Announced | None) -> None:
        node = nodes[b]
        if announced is None:
            announced = level.announce(node, value, resume, level.chunk_id(node.id))
        with trio.CancelScope() as scope:
            scopes[b] = scope
            run = await level.run_node(
                node,
                value,
                resume=resume,
                chunk_id=level.chunk_id(node.id),
                announced=announced,
            )
            runs[b] = run
            level.settle(node.id, run, [idx, b])
            if len(to_run) > 1:
                await level.execution.persist_progress()
            if run.result.status is _S.FAILED:
                failures.append(b)
                if fail_fast:
                    for other, other_scope in scopes.items():
                        if other != b:
                            other_scope.cancel(reason=f"fail_fast: {node.id} failed")
        if scope.cancelled_caught:
            canceled = StepResult(
                status=_S.CANCELED,
                payload=value,
                started_at=announced.started_at,
                ended_at=now_ms(),
            )
            runs[b] = StepRun(result=canceled)
            level.settle(node.id, runs[b], [idx, b])

    if len(to_run) == 1:
        await branch(*to_run[0], None)
    else:
        announced = [
            level.announce(nodes[b], value, resume, level.chunk_id(nodes[b].id))
            for b, resume in to_run
        ]
        # A cancelled nursery raises a group of Cancelled: unwrapped, so that the
        # ``except trio.Cancelled`` of an enclosing nested workflow settles it.
        with unwrap_groups():
            async with trio.open_nursery() as nursery:
                for (b, resume), note in zip(to_run, announced, strict=True):
                    nursery.start_soon(branch, b, resume, note)

    statuses: list[StepStatus] = []
    output: dict[str, Any] = {}
    tripwire: TripwireInfo | None = None
    for b in positions:
        node = nodes[b]
        run_b = runs.get(b)
        result = run_b.result if run_b is not None else level.results.get(node.id)
        if result is None:
            continue
        if run_b is not None and run_b.tripwire is not None:
            tripwire = tripwire or run_b.tripwire
        statuses.append(result.status)
        if result.status is _S.SUCCESS:
            output[node.id] = result.output
    status = combine_branch_statuses(statuses, canceled=False)
    if status is _S.FAILED:
        if failures:
            # All branches have settled: the lowest failing branch is reported, so the
            # outcome does not depend on which task trio finished first.
            first_failed = runs[min(failures)].result
        else:
            first_failed = next(
                r for n in nodes if (r := level.results.get(n.id)) and r.status is _S.FAILED
            )
        if tripwire is not None:
            return Outcome(_S.TRIPWIRE, error=first_failed.error, tripwire=tripwire)
        return Outcome(_S.FAILED, error=first_failed.error)
    if status is _S.SUCCESS:
        bail = next((r for r in runs.values() if r.bailed), None)
        if bail is not None:
            return Outcome(_S.BAILED, output=bail.result.output)
    return Outcome(status, output=output if status is _S.SUCCESS else None)

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
    record_key = f"{level.key_prefix}@branch{idx}"
    chosen_before = (level.execution.stored.get(record_key) or {}).get("metadata", {})
    if target is not None or (restart and chosen_before):
        # Conditions are not evaluated again: the arms chosen then (or, without that
        # record, the arms that ran) are the branch.
        ran = chosen_before.get("chosen") or [
            b for b, node in enumerate(nodes) if node.id in level.results
        ]
        return await run_block(level,
            idx, nodes, value, target, fail_fast=False, restart=restart, considered=ran
        )
    truth = [False] * len(nodes)

    async def evaluate(b: int) -> None:
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
    chosen = [b for b in range(len(nodes)) if truth[b]]
    # Stored with the next snapshot: a restart runs the arms chosen now, it does not
    # evaluate the conditions again (engine records are keyed "@...", never step ids).
    level.execution.stored[record_key] = {"status": "success", "metadata": {"chosen": chosen}}
    if not chosen:
        return Outcome(_S.SUCCESS, output={})
    return await run_block(level,
        idx, nodes, value, None, fail_fast=False, restart=False, considered=chosen
    )

