"""The planner of dowhile / dountil loops (pure, trio-free).

Rules:

- Start. A fresh loop runs its body at iteration 1 with the entry's input. A loop whose
  body is resumed, or re-entered by a restart, continues from the body's stored result:
  its iteration (``iterationCount``; runs stored before the count was named so spell it
  ``iteration_count``) and its input (the stored payload). On a restart, a body whose
  stored result is a success finished that iteration: it does not run again, the loop
  goes on with its condition on the stored output. Otherwise a restarted body that is a
  nested workflow continues from its stored header.
- Each iteration's result carries its iteration count (nested workflows record none of
  their own for the loop to read back).
- After the body: anything but success ends the loop with that outcome. After a
  success the condition is evaluated on the body's output: dowhile goes again while it
  is true, dountil until it is true; a condition that raises fails the loop. Going again
  is the next iteration with the body's output as input.
- Between iterations of a nested-workflow body, its finished iteration is stored before
  the next one starts (durable storage), without the inner records the next iteration
  replaces, so a crash re-runs only what was running.
"""

from __future__ import annotations

from typing import Any

import attrs

from .._model import ITERATION_COUNT, OLD_ITERATION_COUNT, StepResult
from .._status import StepStatus
from ._values import Outcome, StepRun, outcome_of

_S = StepStatus


@attrs.frozen(kw_only=True)
class LoopStart:
    """Where a loop begins: the iteration, its input, and whether the body continues
    from its stored record (``continued``) or has already finished that iteration
    (``settled``: go on with the condition on ``value``)."""

    iteration: int
    value: Any
    continued: bool = False
    settled: bool = False


@attrs.frozen(kw_only=True)
class Evaluate:
    """The body succeeded: evaluate the condition on ``value``."""

    value: Any


@attrs.frozen(kw_only=True)
class Again:
    """Run the body again: ``iteration`` with ``value`` as its input."""

    iteration: int
    value: Any


@attrs.frozen(kw_only=True)
class Stop:
    """The loop is over."""

    outcome: Outcome


def stored_iteration(result: StepResult) -> int:
    meta = result.metadata or {}
    return int(meta.get(ITERATION_COUNT) or meta.get(OLD_ITERATION_COUNT) or 1)


def loop_start(
    value: Any, previous: StepResult | None, *, resuming: bool, restart: bool
) -> LoopStart:
    if not (resuming or restart) or previous is None:
        return LoopStart(iteration=1, value=value)
    iteration = stored_iteration(previous)
    if restart and not resuming and previous.status is _S.SUCCESS:
        return LoopStart(iteration=iteration, value=previous.output, settled=True)
    if previous.payload is not None:
        value = previous.payload
    return LoopStart(iteration=iteration, value=value, continued=restart and not resuming)


def stamp_iteration(run: StepRun, iteration: int) -> StepRun:
    if (run.result.metadata or {}).get(ITERATION_COUNT):
        return run
    metadata = {**(run.result.metadata or {}), ITERATION_COUNT: iteration}
    return attrs.evolve(run, result=attrs.evolve(run.result, metadata=metadata))


def body_settled(run: StepRun) -> Evaluate | Stop:
    outcome = outcome_of(run)
    if outcome.status is not _S.SUCCESS:
        return Stop(outcome=outcome)
    return Evaluate(value=outcome.output)


def condition_returned(kind: str, verdict: bool, iteration: int, value: Any) -> Again | Stop:
    again = verdict if kind == "dowhile" else not verdict
    if not again:
        return Stop(outcome=Outcome(_S.SUCCESS, output=value))
    return Again(iteration=iteration + 1, value=value)


def condition_raised(exc: BaseException) -> Stop:
    return Stop(outcome=Outcome(_S.FAILED, error=exc))


def finished_iteration_keys(stored_keys: list[str], key_prefix: str, body_id: str) -> list[str]:
    """The inner records of a nested-workflow body's finished iteration, which the next
    iteration replaces: dropped before that iteration is stored."""
    prefix = f"{key_prefix}{body_id}."
    return [k for k in stored_keys if k.startswith(prefix)]
