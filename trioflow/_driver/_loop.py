"""dowhile / dountil: one node run again while its condition says so.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from .._core._graph import (
    LoopEntry,
)
from .._core._model import (
    ITERATION_COUNT,
    OLD_ITERATION_COUNT,
)
from .._core._plan._values import (
    Outcome,
    outcome_of,
)
from .._core._resume import ResumeTarget
from .._core._status import StepStatus
from .._effects import call_maybe_async
from .._groups import is_fatal
from ._level import Level

_S = StepStatus


async def run_loop(
    level: Level,
    idx: int,
    entry: LoopEntry,
    value: Any,
    target: ResumeTarget | None,
    *,
    restart: bool,
) -> Outcome:
    node = entry.node
    iteration = 1
    resume = level.node_resume(node.id, target)
    previous = level.results.get(node.id)
    if (resume is not None or restart) and previous is not None:
        meta = previous.metadata or {}
        # Runs stored before the count was named iterationCount spell it iteration_count.
        iteration = int(meta.get(ITERATION_COUNT) or meta.get(OLD_ITERATION_COUNT) or 1)
        if previous.payload is not None:
            value = previous.payload
        if restart and resume is None:
            resume = level.restart_resume(node.id)
    while True:
        run = await level.run_node(
            node, value, resume=resume, chunk_id=level.chunk_id(node.id), iteration=iteration
        )
        resume = None
        if not (run.result.metadata or {}).get(ITERATION_COUNT):
            # Nested workflows record no iteration: the loop needs it to continue
            # counting across a resume.
            run = attrs.evolve(
                run,
                result=attrs.evolve(
                    run.result,
                    metadata={**(run.result.metadata or {}), ITERATION_COUNT: iteration},
                ),
            )
        level.settle(node.id, run, [idx])
        outcome = outcome_of(run)
        if outcome.status is not _S.SUCCESS:
            return outcome
        value = outcome.output
        ctx = level.make_context(
            node.id, level.chunk_id(node.id), value, iteration=iteration, is_condition=True
        )
        try:
            verdict = bool(await call_maybe_async(entry.condition, ctx))
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if is_fatal(exc):
                raise
            return Outcome(_S.FAILED, error=exc)
        again = verdict if entry.kind == "dowhile" else not verdict
        if not again:
            return Outcome(_S.SUCCESS, output=value)
        iteration += 1

