"""Running one step: its attempts, retries and timeout, and the result it settles with.
"""

from __future__ import annotations

from typing import Any

import trio

from .._context import StepContext
from .._core._errors import (
    NonRetryableError,
    NotJsonError,
    StepTimeoutError,
    TripwireError,
    ValidationError,
)
from .._core._json import plainly_json
from .._core._model import (
    ITERATION_COUNT,
    RESUME_COUNT,
    StepResult,
    TripwireInfo,
)
from .._core._plan._records import (
    not_json,
    resume_count,
    tripwire_metadata,
)
from .._core._plan._values import (
    Announced,
    Label,
    NodeResume,
    StepRun,
)
from .._core._serde import (
    _safe_text,
    validate,
)
from .._core._status import StepStatus
from .._effects import now_ms
from .._groups import is_cancellation, is_fatal
from .._workflow import Step
from ._level import Level

_S = StepStatus


async def run_step(
    level: Level,
    node: Step,
    value: Any,
    *,
    resume: NodeResume | None,
    chunk_id: str,
    emit: bool,
    iteration: int,
    announced: Announced | None = None,
    foreach_index: int | None = None,
) -> StepRun:
    if announced is None:
        announced = level.announce(node, value, resume, chunk_id, emit=emit, iteration=iteration)
    emit = emit and level.emits
    call_id = announced.call_id
    metadata = {ITERATION_COUNT: iteration} if iteration else None
    resume_data = None
    suspend_data = None
    resumes = 0
    if resume is not None:
        stored = resume.stored or {}
        if "payload" in stored:
            value = stored["payload"]
        suspend_data = stored.get("suspend_payload")
        resume_data = resume.data
        resumes = resume_count(stored) + 1
        metadata = {**(metadata or {}), RESUME_COUNT: resumes}
    key_args = (node.id, foreach_index, iteration, resumes)
    attempt = 0
    base: dict[str, Any] = {
        "payload": value,
        "started_at": announced.started_at,
        "metadata": metadata,
        "resume_payload": resume_data if resume is not None else None,
        "resumed_at": announced.resumed_at,
    }

    def settle(result: StepResult, run: StepRun | None = None) -> StepRun:
        if emit:
            level.emit_settled(chunk_id, result, call_id)
        return run if run is not None else StepRun(result=result)

    def failed(error: BaseException, tripwire: TripwireInfo | None = None) -> StepRun:
        result = StepResult(
            status=_S.FAILED, error=error, ended_at=now_ms(), retry_count=attempt, **base
        )
        return settle(result, StepRun(result=result, tripwire=tripwire))

    step_input = value
    if node.input_schema is not None and level.workflow.validate_inputs:
        try:
            step_input = validate(value, node.input_schema, "Invalid step input:")
        except ValidationError as exc:
            return failed(exc)
    if resume is not None and node.resume_schema is not None and level.workflow.validate_inputs:
        try:
            resume_data = validate(resume_data, node.resume_schema, "Invalid resume data:")
        except ValidationError as exc:
            return failed(exc)

    retries = node.retries if node.retries is not None else level.workflow.retry_config.attempts
    delay = level.workflow.retry_config.delay
    while True:
        ctx = StepContext(
            level,
            step_id=node.id,
            step_name=chunk_id,
            input_data=step_input,
            state=level.state,
            resume_data=resume_data,
            suspend_data=suspend_data,
            retry_count=attempt,
            iteration_count=iteration,
            suspend_schema=node.suspend_schema,
            state_schema=node.state_schema,
            key_args=key_args,
        )
        try:
            output = await call_with_timeout(node, ctx)
        except trio.Cancelled:
            if emit:
                emit_canceled(level, chunk_id, call_id, base)
            raise
        except TripwireError as exc:
            info = TripwireInfo(
                reason=_safe_text(str(exc.reason)),
                retry=bool(exc.retry),
                metadata=tripwire_metadata(exc.metadata),
                step_id=node.id,
            )
            return failed(exc, info)
        except NonRetryableError as exc:
            return failed(exc)
        except Exception as exc:
            if attempt < retries:
                attempt += 1
                if delay > 0:
                    await trio.sleep(delay)
                continue
            return failed(exc)
        except BaseException as exc:
            if is_fatal(exc):
                if is_cancellation(exc) and emit:
                    # The step's own nursery was cancelled: a group of Cancelled.
                    emit_canceled(level, chunk_id, call_id, base)
                raise
            # SystemExit, GeneratorExit, any BaseException subclass: this step's
            # failure (not retried), never the runtime's end.
            return failed(exc)
        break

    ended_at = now_ms()
    if ctx._new_state is not None or ctx._suspended or ctx._bailed or not plainly_json(output):
        not_json = not_json_produced(ctx, output)
        if not_json is not None:
            return failed(not_json)
    try:
        if ctx._new_state is not None:
            level.apply_state(ctx._new_state, node.state_schema)
    except (TypeError, ValidationError) as exc:
        return failed(exc)
    if ctx._suspended:
        result = StepResult(
            status=_S.SUSPENDED,
            suspend_payload=ctx._suspend_payload,
            suspend_output=output,
            suspended_at=ended_at,
            retry_count=attempt,
            **base,
        )
        run = StepRun(result=result, labels=[Label(n, []) for n in ctx._resume_labels])
        return settle(result, run)
    if ctx._bailed:
        result = StepResult(
            status=_S.SUCCESS,
            output=ctx._bail_value,
            ended_at=ended_at,
            retry_count=attempt,
            **base,
        )
        return settle(result, StepRun(result=result, bailed=True))
    result = StepResult(
        status=_S.SUCCESS, output=output, ended_at=ended_at, retry_count=attempt, **base
    )
    return settle(result)

def emit_canceled(level: Level, chunk_id: str, call_id: str | None, base: dict[str, Any]) -> None:
    result = StepResult(status=_S.CANCELED, ended_at=now_ms(), **base)
    level.emit_settled(chunk_id, result, call_id)



def not_json_produced(ctx: StepContext, output: Any) -> NotJsonError | None:
    """What a step produced that cannot be stored: the step fails with it (SPEC §0)."""
    if ctx._new_state is None and not ctx._suspended and not ctx._bailed:
        # The step path: a plain output, checked without building anything.
        return not_json("Step output", output)
    checks: list[tuple[str, Any]] = []
    if ctx._new_state is not None:
        checks.append(("State update", ctx._new_state))
    if ctx._suspended:
        checks.append(("Suspend payload", ctx._suspend_payload))
        checks.append(("Step output", output))
    elif ctx._bailed:
        checks.append(("Bail value", ctx._bail_value))
    else:
        checks.append(("Step output", output))
    for what, value in checks:
        problem = not_json(what, value)
        if problem is not None:
            return problem
    return None




async def call_with_timeout(node: Step, ctx: StepContext) -> Any:
    """Run one attempt; a timeout becomes StepTimeoutError (also when the step swallowed
    the cancellation, which voids trio's own TooSlowError)."""
    if node.timeout is None:
        return await node.execute(ctx)
    scope = trio.CancelScope(deadline=trio.current_time() + node.timeout)
    try:
        with scope:
            output = await node.execute(ctx)
    except Exception as exc:
        if scope.cancel_called:
            raise StepTimeoutError(node.id, node.timeout) from exc
        raise
    if scope.cancel_called:
        raise StepTimeoutError(node.id, node.timeout)
    return output


