"""Value classes of results and stored runs (pure data, trio-free)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._status import RunStatus, StepStatus


@attrs.frozen(kw_only=True)
class Usage:
    """Token usage, summed over a run's steps (nested workflows included)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens
            + other.cache_creation_input_tokens,
        )


@attrs.frozen(kw_only=True)
class SerializedError:
    """An exception as stored data: message, class name, its public attributes (``extra``)
    and the cause chain. No traceback. Extra attributes read as attributes too
    (``err.status_code``)."""

    message: str
    name: str
    extra: dict[str, Any] = attrs.field(factory=dict)
    cause: SerializedError | None = None

    def __getattr__(self, item: str) -> Any:
        # Only reached when normal lookup fails: expose the original exception's fields.
        if item.startswith("__"):
            raise AttributeError(item)
        extra = object.__getattribute__(self, "extra")
        try:
            return extra[item]
        except KeyError:
            raise AttributeError(item) from None

    def __str__(self) -> str:
        return self.message


@attrs.frozen(kw_only=True)
class TripwireInfo:
    reason: str
    retry: bool = False
    metadata: dict[str, Any] | None = None
    step_id: str | None = None


@attrs.frozen(kw_only=True)
class StepResult:
    """What one step did. Timestamps are integer epoch milliseconds."""

    status: StepStatus
    output: Any = None
    payload: Any = None
    started_at: int | None = None
    ended_at: int | None = None
    error: BaseException | SerializedError | None = None
    suspend_payload: Any = None
    suspend_output: Any = None
    suspended_at: int | None = None
    resume_payload: Any = None
    resumed_at: int | None = None
    metadata: dict[str, Any] | None = None
    #: How many times the step was retried in this execution before it settled (0 when
    #: its first attempt settled it); trioflow's own, Mastra has no such field.
    retry_count: int = 0


#: The key of a loop body's iteration in ``StepResult.metadata`` (engine metadata is named
#: in camelCase, as Mastra names it on the wire and in results).
ITERATION_COUNT = "iterationCount"
#: How runs stored before trioflow named it that way spell it.
OLD_ITERATION_COUNT = "iteration_count"
#: Keys of a stored step result's metadata that are the engine's own bookkeeping (foreach
#: outcomes, a nested workflow's position): resume and restart read them from the stored
#: run; they never appear in chunks or in public results.
BOOKKEEPING_KEYS = frozenset({"foreach", "nested", "resumeCount"})
#: The bookkeeping key of a stored step result that counts the resumes it has had: part of
#: its ``ctx.idempotency_key``, read back when it is resumed again (or a crash replays the
#: resume).
RESUME_COUNT = "resumeCount"


def public_metadata(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """A step result's metadata as users see it: no bookkeeping, the loop count as
    ``iterationCount`` (also for runs stored with ``iteration_count``); None when empty."""
    if not metadata:
        return None
    out = {
        (ITERATION_COUNT if key == OLD_ITERATION_COUNT else key): value
        for key, value in metadata.items()
        if key not in BOOKKEEPING_KEYS
    }
    return out or None


def public_step_result(result: StepResult) -> StepResult:
    """``result`` without the engine's bookkeeping in its metadata."""
    metadata = result.metadata
    if not metadata:
        return result
    public = public_metadata(metadata)
    return result if public == metadata else attrs.evolve(result, metadata=public)


@attrs.frozen(kw_only=True)
class WorkflowResult:
    """The outcome of one execution of a run (start, resume, restart)."""

    status: RunStatus
    result: Any = None
    error: BaseException | SerializedError | None = None
    steps: dict[str, StepResult] = attrs.field(factory=dict)
    input: Any = None
    state: Any = None
    suspended: list[list[str]] = attrs.field(factory=list)
    suspend_payload: dict[str, Any] = attrs.field(factory=dict)
    tripwire: TripwireInfo | None = None
    run_id: str = ""
    trace_id: str = ""
    step_execution_path: list[str] = attrs.field(factory=list)
    #: Every settled step at every depth, by qualified key: top-level steps by id (as in
    #: ``steps``), steps of nested workflows as ``"nested.inner"``, foreach items as
    #: ``"step[2]"`` and steps of a nested workflow in foreach item 2 as
    #: ``"nested[2].inner"``. A loop body keeps its last iteration. Left out of ``repr``
    #: and ``==`` (``steps`` says what the run did at its own level).
    all_steps: Mapping[str, StepResult] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen(kw_only=True)
class RunInfo:
    """A row of :meth:`Runtime.list_runs`."""

    run_id: str
    workflow_id: str
    resource_id: str | None
    status: RunStatus
    created_at: int
    updated_at: int


@attrs.frozen(kw_only=True)
class RunState:
    """Everything stored about a run, as :meth:`Runtime.get_run_state` returns it."""

    run_id: str
    workflow_id: str
    resource_id: str | None
    status: RunStatus
    input: Any
    state: Any
    steps: dict[str, StepResult]
    suspended: list[list[str]]
    result: Any
    error: SerializedError | None
    created_at: int
    updated_at: int
    #: Every settled step at every depth, by qualified key (see ``WorkflowResult.all_steps``).
    all_steps: Mapping[str, StepResult] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen(kw_only=True)
class ResumeLabel:
    """Where a ``resume_label`` points: a step path and, in foreach, one iteration."""

    path: list[str]
    foreach_index: int | None = None


@attrs.frozen(kw_only=True)
class RunSnapshot:
    """The stored state of a run: JSON-ready values only.

    ``steps`` maps a *qualified key* to a stored step result (a dict): top-level steps by
    id, steps of nested workflows as ``"nested.inner"``, of a nested workflow inside
    foreach iteration 2 as ``"nested[2].inner"``. ``suspended_paths`` maps a top-level
    step id to its entry path (``[entry]`` or ``[entry, branch]``).
    """

    run_id: str
    workflow_id: str
    resource_id: str | None = None
    status: RunStatus = RunStatus.PENDING
    input: Any = None
    state: Any = None
    steps: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    suspended_paths: dict[str, list[int]] = attrs.field(factory=dict)
    resume_labels: dict[str, ResumeLabel] = attrs.field(factory=dict)
    request_context: dict[str, Any] = attrs.field(factory=dict)
    trace_id: str | None = None
    span_id: str | None = None
    result: Any = None
    error: SerializedError | None = None
    tripwire: TripwireInfo | None = None
    step_execution_path: list[str] = attrs.field(factory=list)
    active_entry: int | None = None
    active_input: Any = None
    #: The resume being executed (``{"path", "data", "foreach_index"}``), stored with the
    #: claim so that a restart after a crash continues that resume, not a fresh attempt.
    resume: dict[str, Any] | None = None
    #: The highest ``seq`` of the run's log stored together with (or before) this snapshot.
    last_seq: int = 0
    usage: Usage = attrs.field(factory=Usage)
    created_at: int = 0
    updated_at: int = 0
