"""One step's plan: its input, its attempts, and the result it settles with (pure).

The trio driver (``_driver/_step.py``) builds a :class:`StepPlan` from the node's settings
and its resume, runs attempts of the user's code, and reports what each attempt did; the
plan answers with what to do. Time is passed in (``now``, epoch ms); nothing here awaits.

Rules:

- **Inputs.** A resumed step runs on its stored input (``payload``) and sees its stored
  suspend payload. When the workflow validates inputs, the input is checked against the
  step's ``input_schema`` and (resuming) the resume data against its ``resume_schema``; a
  failure (``ValidationError``) fails the step before any attempt (:attr:`rejection`).
- **Attempts.** An attempt that raises:

  - ``TripwireError``: the step fails with a tripwire (reason, retry flag, metadata made
    strict JSON, never a failure of its own); never retried.
  - ``NonRetryableError``: the step fails; never retried.
  - any other ``Exception`` (``StepTimeoutError`` included): retried while fewer than
    ``retries`` retries were made (the node's ``retries``, else the workflow's
    ``retry_config.attempts``), after ``retry_config.delay`` seconds; then the step fails.
  - a ``BaseException`` that is not an ``Exception`` (``SystemExit``, ``GeneratorExit``,
    user subclasses): the step fails, not retried. (``trio.Cancelled`` and
    ``KeyboardInterrupt`` never reach the plan: the driver lets them propagate and asks
    :meth:`StepPlan.cancelled` for the ``canceled`` result when it was a cancellation.)

- **What an attempt returned.** Checked in this order, the first failure failing the step:
  every value produced is strict JSON (state update, then suspend payload and output, or
  bail value, or output: ``NotJsonError`` naming which); the state update merges into the
  workflow state (``TypeError``/``ValidationError``). Then the step is ``suspended`` (with
  its resume labels), or bailed (``success`` with the bail value), or ``success``.
- **Results.** Every result carries the step's input, start, resume data and resume time,
  its metadata (loop iteration, resume count) and how many retries were made. The plan
  says whether the settled chunk is published (``emit``).
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from .._errors import (
    NonRetryableError,
    NotJsonError,
    StepTimeoutError,
    TripwireError,
    ValidationError,
)
from .._json import plainly_json
from .._model import ITERATION_COUNT, RESUME_COUNT, StepResult, TripwireInfo
from .._serde import _safe_text, validate
from .._status import StepStatus
from ._records import not_json, resume_count, tripwire_metadata
from ._values import Announced, Label, NodeResume, StepRun, merge_state

_S = StepStatus


class StepSettings(Protocol):
    """What the plan reads of a step node (``trioflow.Step``)."""

    @property
    def id(self) -> str: ...
    @property
    def input_schema(self) -> Any: ...
    @property
    def resume_schema(self) -> Any: ...
    @property
    def state_schema(self) -> Any: ...
    @property
    def retries(self) -> int | None: ...
    @property
    def timeout(self) -> float | None: ...


class RetrySettings(Protocol):
    @property
    def attempts(self) -> int: ...
    @property
    def delay(self) -> float: ...


class WorkflowSettings(Protocol):
    """What the plan reads of the workflow the step runs in (``trioflow.Workflow``)."""

    @property
    def retry_config(self) -> RetrySettings: ...
    @property
    def validate_inputs(self) -> bool: ...
    @property
    def state_schema(self) -> Any: ...


# --- events ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StepEffects:
    """What a returned attempt asked for besides its output (reported only when it asked
    for something: the plain step path reports ``None``)."""

    #: The ``set_state()`` update, None when there was none.
    new_state: Any = None
    suspended: bool = False
    suspend_payload: Any = None
    resume_labels: list[str] = attrs.field(factory=list)
    bailed: bool = False
    bail_value: Any = None


# --- actions ---------------------------------------------------------------------------


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


#: :attr:`Settle.state` when the workflow state stays as it is.
UNCHANGED: Any = _Unchanged()


# Not frozen: one is built per step on the hot path, and attrs' frozen __init__ (through
# object.__setattr__) costs four times a plain one (0.7 vs 0.17 us, bench_chain).
@attrs.define(kw_only=True)
class Settle:
    """The step is done: record ``run``; publish its settled chunk when ``emit``; when
    ``state`` is not :data:`UNCHANGED`, it is the workflow's new state. (Treat as
    immutable.)"""

    run: StepRun
    emit: bool
    state: Any = UNCHANGED


@attrs.frozen(kw_only=True)
class Retry:
    """Run another attempt, after ``delay`` seconds (0: at once)."""

    delay: float


# --- the plan --------------------------------------------------------------------------


class StepPlan:
    """One step's run: what its attempts see, and what each reported event leads to."""

    __slots__ = (
        "attempt",
        "delay",
        "emit",
        "key_args",
        "metadata",
        "payload",
        "rejection",
        "resume_data",
        "resume_payload",
        "resumed_at",
        "retries",
        "started_at",
        "state_schema",
        "step_id",
        "step_input",
        "suspend_data",
        "timeout",
    )

    def __init__(
        self,
        node: StepSettings,
        workflow: WorkflowSettings,
        value: Any,
        resume: NodeResume | None,
        announced: Announced,
        iteration: int,
        foreach_index: int | None,
        emit: bool,
    ) -> None:
        # Positional: built once per step on the hot path.
        self.step_id = node.id
        self.emit = emit
        retry_config = workflow.retry_config
        retries = node.retries
        self.retries = retries if retries is not None else retry_config.attempts
        self.delay = retry_config.delay
        self.timeout = node.timeout
        schema = node.state_schema
        self.state_schema = schema if schema is not None else workflow.state_schema
        #: Retries made so far (the next attempt's ``ctx.retry_count``).
        self.attempt = 0
        self.started_at = announced.started_at
        self.resumed_at = announced.resumed_at
        metadata = {ITERATION_COUNT: iteration} if iteration else None
        resumes = 0
        if resume is None:
            self.suspend_data: Any = None
            self.resume_data: Any = None
        else:
            stored = resume.stored or {}
            if "payload" in stored:
                value = stored["payload"]
            self.suspend_data = stored.get("suspend_payload")
            self.resume_data = resume.data
            resumes = resume_count(stored) + 1
            metadata = {**(metadata or {}), RESUME_COUNT: resumes}
        self.payload = value
        self.metadata = metadata
        #: The resume data as the result records it (before validation).
        self.resume_payload = self.resume_data
        #: The step's ``ctx.idempotency_key`` parts.
        self.key_args = (node.id, foreach_index, iteration, resumes)
        self.step_input = value
        #: Why the step fails before its first attempt (invalid input or resume data).
        self.rejection: BaseException | None = None
        if workflow.validate_inputs and (
            node.input_schema is not None or (resume is not None and node.resume_schema is not None)
        ):
            self._validate(node, resume is not None)

    def _validate(self, node: StepSettings, resuming: bool) -> None:
        try:
            if node.input_schema is not None:
                self.step_input = validate(self.payload, node.input_schema, "Invalid step input:")
            if resuming and node.resume_schema is not None:
                self.resume_data = validate(
                    self.resume_data, node.resume_schema, "Invalid resume data:"
                )
        except ValidationError as exc:
            self.rejection = exc

    # --- results -----------------------------------------------------------------------

    def _result(self, status: StepStatus, **fields: Any) -> StepResult:
        return StepResult(
            status=status,
            payload=self.payload,
            started_at=self.started_at,
            metadata=self.metadata,
            resume_payload=self.resume_payload,
            resumed_at=self.resumed_at,
            **fields,
        )

    def failed(
        self, error: BaseException, now: int, tripwire: TripwireInfo | None = None
    ) -> Settle:
        result = self._result(_S.FAILED, error=error, ended_at=now, retry_count=self.attempt)
        return Settle(run=StepRun(result=result, tripwire=tripwire), emit=self.emit)

    # --- events ------------------------------------------------------------------------

    def rejected(self, now: int) -> Settle:
        """The step's input or resume data was invalid (:attr:`rejection`)."""
        assert self.rejection is not None
        return self.failed(self.rejection, now)

    def timed_out(self) -> StepTimeoutError:
        """The error of an attempt that ran past the step's ``timeout`` (also when the step
        swallowed the cancellation)."""
        assert self.timeout is not None
        return StepTimeoutError(self.step_id, self.timeout)

    def raised(self, exc: BaseException, now: int) -> Retry | Settle:
        """An attempt raised ``exc`` (never a cancellation or ``KeyboardInterrupt``)."""
        if isinstance(exc, TripwireError):
            info = TripwireInfo(
                reason=_safe_text(str(exc.reason)),
                retry=bool(exc.retry),
                metadata=tripwire_metadata(exc.metadata),
                step_id=self.step_id,
            )
            return self.failed(exc, now, info)
        if (
            isinstance(exc, Exception)
            and not isinstance(exc, NonRetryableError)
            and self.attempt < self.retries
        ):
            self.attempt += 1
            return Retry(delay=self.delay)
        return self.failed(exc, now)

    def cancelled(self, now: int) -> StepResult:
        """The step was interrupted by cancellation: the ``canceled`` result its settled
        chunk reports (published when :attr:`emit`)."""
        return self._result(_S.CANCELED, ended_at=now)

    def returned(
        self, output: Any, effects: StepEffects | None, now: int, state: Any
    ) -> Settle:
        """An attempt returned ``output``, having asked for ``effects``; ``state`` is the
        workflow state it may update."""
        if effects is not None:
            return self._returned_with(output, effects, now, state)
        if not plainly_json(output):
            problem = not_json("Step output", output)
            if problem is not None:
                return self.failed(problem, now)
        # The hot path, spelled out (no keyword dict per step).
        result = StepResult(
            status=_S.SUCCESS,
            output=output,
            payload=self.payload,
            started_at=self.started_at,
            ended_at=now,
            metadata=self.metadata,
            resume_payload=self.resume_payload,
            resumed_at=self.resumed_at,
            retry_count=self.attempt,
        )
        return Settle(run=StepRun(result=result), emit=self.emit)

    def _returned_with(self, output: Any, effects: StepEffects, now: int, state: Any) -> Settle:
        problem = not_json_produced(output, effects)
        if problem is not None:
            return self.failed(problem, now)
        new_state = UNCHANGED
        if effects.new_state is not None:
            try:
                new_state = merge_state(state, effects.new_state, self.state_schema)
            except (TypeError, ValidationError) as exc:
                return self.failed(exc, now)
        attempt = self.attempt
        if effects.suspended:
            result = self._result(
                _S.SUSPENDED,
                suspend_payload=effects.suspend_payload,
                suspend_output=output,
                suspended_at=now,
                retry_count=attempt,
            )
            labels = [Label(name, []) for name in effects.resume_labels]
            run = StepRun(result=result, labels=labels)
        elif effects.bailed:
            result = self._result(
                _S.SUCCESS, output=effects.bail_value, ended_at=now, retry_count=attempt
            )
            run = StepRun(result=result, bailed=True)
        else:
            result = self._result(_S.SUCCESS, output=output, ended_at=now, retry_count=attempt)
            run = StepRun(result=result)
        return Settle(run=run, emit=self.emit, state=new_state)


def not_json_produced(output: Any, effects: StepEffects) -> NotJsonError | None:
    """The first value a step produced that cannot be stored (SPEC §0 strict JSON)."""
    checks: list[tuple[str, Any]] = []
    if effects.new_state is not None:
        checks.append(("State update", effects.new_state))
    if effects.suspended:
        checks.append(("Suspend payload", effects.suspend_payload))
        checks.append(("Step output", output))
    elif effects.bailed:
        checks.append(("Bail value", effects.bail_value))
    else:
        checks.append(("Step output", output))
    for what, value in checks:
        problem = not_json(what, value)
        if problem is not None:
            return problem
    return None
