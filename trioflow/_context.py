"""What a step sees: StepContext, RequestContext and the writer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, cast

import trio

from ._broadcast import EventLog, data_size
from ._core._chunks import StepOutputPayload, WorkflowStepOutput
from ._core._errors import NotJsonError, ValidationError
from ._core._graph import get_path
from ._core._json import JsonValueError, id_text_problem
from ._core._model import Usage
from ._core._serde import to_jsonable, to_strict_jsonable, validate
from .tracing._spans import current_span


class StepExecution(Protocol):
    """What a step's context reads of the execution running it (the driver's Execution)."""

    run_id: str
    resource_id: str | None
    request_context: RequestContext
    log: EventLog
    writers_closed: bool
    done: trio.Event

    def request_cancel(self, reason: str) -> None: ...

    def add_usage(self, usage: Usage) -> None: ...


class StepWorkflow(Protocol):
    @property
    def id(self) -> str: ...


class StepLevel(Protocol):
    """What a step's context reads of the workflow level it runs in (the driver's Level):
    declared here so that the context never imports the driver that creates it."""

    @property
    def execution(self) -> StepExecution: ...

    @property
    def workflow(self) -> StepWorkflow: ...

    @property
    def input(self) -> Any: ...

    def step_output(self, step_id: str) -> Any: ...

    def idempotency_key(
        self, node_id: str, foreach_index: int | None, iteration: int, resumes: int
    ) -> str: ...


class RequestContext(MutableMapping[str, Any]):
    """The run's mutable key/value context, persisted across suspend/resume.

    Values must be strict JSON once converted (they are stored with the run): setting
    one that is not (``NaN``, bytes, an object) raises :class:`~trioflow.NotJsonError`
    naming ``request_context.<key>`` and leaves the context as it was, so a step doing it
    fails with that error. ``get_path("user.id")`` reads nested values.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(data) if data is not None else {}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        # Refused here, where the step that sets it fails, rather than at the next write
        # of the run, where the whole execution would fail with a StorageError.
        where = f"request_context.{key}"
        if not isinstance(key, str):
            raise NotJsonError("Request context", where, "keys must be str")
        try:
            to_strict_jsonable(value)
        except JsonValueError as exc:
            path = f"{where}.{exc.path}" if exc.path and exc.path[0] != "[" else where + exc.path
            raise NotJsonError("Request context value", path, exc.reason) from None
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"RequestContext({self._data!r})"

    def get_path(self, path: str, default: Any = None) -> Any:
        """The value at a dotted ``path`` (``"user.id"``), or ``default``."""
        try:
            return get_path(self._data, path)
        except (KeyError, IndexError):
            return default

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy of the context."""
        return dict(to_jsonable(self._data))


def coerce_request_context(value: RequestContext | Mapping[str, Any] | None) -> RequestContext:
    if value is None:
        return RequestContext()
    if isinstance(value, RequestContext):
        return value
    if isinstance(value, Mapping):
        # As RequestContext refuses them in a step: a key that is not a str would read
        # back differently after a resume in another process (JSON keys are strings).
        bad = [key for key in value if not isinstance(key, str)]
        if bad:
            raise ValidationError(
                "Invalid request context:", [("", f"key {key!r} is not a string") for key in bad]
            )
        return RequestContext(value)
    raise TypeError(f"request_context must be a RequestContext or a dict, got {value!r}")


class Writer:
    """``ctx.writer``: streams output from inside a step into the run's log."""

    __slots__ = ("_level", "_step_name")

    def __init__(self, level: StepLevel, step_name: str) -> None:
        self._level = level
        self._step_name = step_name

    async def write(self, obj: Any) -> None:
        """Emit a ``workflow-step-output`` chunk (``from_="USER"``) carrying ``obj``.

        ``obj`` must be strict JSON once converted (attrs instances, enums and datetimes
        are converted): otherwise :class:`trioflow._core._json.JsonValueError` (a
        ValueError naming the path) is raised here and nothing is published. While the
        run's chunks waiting for storage are at their bound (8,192 chunks or 16 MiB), this
        waits until storage commits some. A checkpoint: cancellation of the run is delivered here, and
        a cancelled call publishes nothing. RuntimeError once the run's execution is
        ending (its steps are over) or has ended: a writer kept past its step.
        """
        data = to_strict_jsonable(obj)
        log = self._open_log()
        await log.wait_for_room()
        self._open_log()
        log.publish(
            WorkflowStepOutput(
                run_id=log.run_id,
                seq=log.next_seq,
                payload=StepOutputPayload(
                    output=data, step_name=self._step_name, run_id=log.run_id
                ),
            ),
            size=data_size(data),
        )

    async def custom(self, type: str, data: Any) -> None:
        """Emit a :class:`DataChunk`; ``type`` is the full name and must start with
        ``data-`` (else ValueError). ``data`` must be strict JSON, as for :meth:`write`,
        which this waits and checkpoints as."""
        if not isinstance(type, str) or not type.startswith("data-"):
            raise ValueError(f"a custom chunk type must start with 'data-', got {type!r}")
        value = to_strict_jsonable(data)
        log = self._open_log()
        await log.wait_for_room()
        self._open_log()
        log.publish_data(type, value, size=data_size(value))

    def _open_log(self) -> EventLog:
        """The run's log, or RuntimeError once the execution this step ran in is ending
        (its steps are over and its final snapshot is being written) or has ended:
        a writer kept past its step (a leaked ``ctx``, a task outliving the step) must
        not put chunks after the execution's ``workflow-finish``."""
        execution = self._level.execution
        if execution.writers_closed or execution.done.is_set():
            raise RuntimeError(
                f"step {self._step_name!r} wrote after its run's execution ended "
                "(a writer is valid only while its step runs)"
            )
        return execution.log


class StepContext:
    """The argument of every step's ``execute(ctx)`` (and of conditions, map functions
    and sleep functions, which get the same view without ``suspend``/``set_state``).

    Cancellation reaches a running step at its next trio checkpoint as ``trio.Cancelled``;
    a step that must finish cleanup uses ``trio.CancelScope(shield=True)``.
    """

    __slots__ = (
        "_bail_value",
        "_bailed",
        "_is_condition",
        "_key",
        "_key_args",
        "_level",
        "_new_state",
        "_resume_labels",
        "_state_schema",
        "_step_name",
        "_suspend_payload",
        "_suspend_schema",
        "_suspended",
        "_writer",
        "input_data",
        "iteration_count",
        "resume_data",
        "retry_count",
        "state",
        "step_id",
        "suspend_data",
        "tracing_context",
    )

    def __init__(
        self,
        level: StepLevel,
        *,
        step_id: str,
        step_name: str,
        input_data: Any,
        state: Any,
        resume_data: Any = None,
        suspend_data: Any = None,
        retry_count: int = 0,
        iteration_count: int = 0,
        suspend_schema: Any = None,
        state_schema: Any = None,
        is_condition: bool = False,
        key_args: tuple[str, int | None, int, int] | None = None,
    ) -> None:
        self._level = level
        self.step_id = step_id
        # Built when first read: most steps never read it.
        self._key: str | None = None
        self._key_args = key_args
        self.input_data = input_data
        # A private copy: mutating ctx.state in place must not leak into the workflow state.
        self.state = dict(state) if type(state) is dict else state
        self.resume_data = resume_data
        self.suspend_data = suspend_data
        self.retry_count = retry_count
        self.iteration_count = iteration_count
        self._step_name = step_name
        self._writer: Writer | None = None
        self.tracing_context: Any = current_span.get(None)
        self._suspend_schema = suspend_schema
        self._state_schema = state_schema
        self._is_condition = is_condition
        self._suspended = False
        self._suspend_payload: Any = None
        self._resume_labels: list[str] = []
        self._bailed = False
        self._bail_value: Any = None
        self._new_state: Any = None

    @property
    def writer(self) -> Writer:
        """Streams output from this step into the run's log (see :class:`Writer`)."""
        if self._writer is None:
            self._writer = Writer(self._level, self._step_name)
        return self._writer

    # identity
    @property
    def idempotency_key(self) -> str:
        """Names this execution of this step: the run id, then the step's path with, at
        every depth, the foreach index, the loop iteration and the resume count, e.g.
        ``run-1/digest[2].fetch``, ``run-1/body#3.poll``, ``run-1/approve@1``. The same
        when a crash makes the step run again (``restart()``) and across retries of a
        failing attempt; different for a loop iteration or a resume. For making side
        effects exactly-once (pass it to the other system as its idempotency key)."""
        if self._key is None:
            node_id, foreach_index, iteration, resumes = self._key_args or (
                self.step_id,
                None,
                self.iteration_count,
                0,
            )
            self._key = self._level.idempotency_key(node_id, foreach_index, iteration, resumes)
        return self._key

    @property
    def run_id(self) -> str:
        return self._level.execution.run_id

    @property
    def workflow_id(self) -> str:
        return self._level.workflow.id

    @property
    def resource_id(self) -> str | None:
        return self._level.execution.resource_id

    @property
    def request_context(self) -> RequestContext:
        return self._level.execution.request_context

    def get_init_data(self) -> Any:
        """The workflow input (of this workflow level)."""
        return self._level.input

    def get_step_result(self, step: Any) -> Any:
        """``step``'s output if it succeeded, else None (``step``: a Step, Workflow or id)."""
        step_id = step if isinstance(step, str) else getattr(step, "id", None)
        if not isinstance(step_id, str):
            raise TypeError(
                f"get_step_result() takes a Step, a Workflow or a step id, got {step!r}"
            )
        return self._level.step_output(step_id)

    def set_state(self, new_state: Any) -> None:
        """Shallow-merge ``new_state`` into the workflow state when this step ends
        (discarded if the step fails, kept if it suspends). The last call wins."""
        if self._is_condition:
            raise RuntimeError("set_state() is not available in a condition")
        self._new_state = new_state

    async def suspend(
        self, payload: Any = None, *, resume_label: str | Sequence[str] | None = None
    ) -> None:
        """Mark this step suspended; returns None (idiom: ``return await ctx.suspend()``).

        ``payload`` is validated by the step's ``suspend_schema`` (ValidationError raised
        here when invalid). ``resume_label`` (a str or a list of str) lets ``resume(label=)``
        find this step.
        """
        if self._is_condition:
            raise RuntimeError("suspend() is not available in a condition")
        if self._suspend_schema is not None:
            payload = validate(payload, self._suspend_schema, "Invalid suspend data:")
        labels = None if resume_label is None else _resume_labels(resume_label)
        await trio.lowlevel.checkpoint()
        self._suspended = True
        self._suspend_payload = payload
        if labels is not None:
            self._resume_labels = labels

    def bail(self, result: Any) -> None:
        """End this step with ``result`` and the whole workflow with success and
        ``result``; later entries and not-yet-started foreach items do not run."""
        if self._is_condition:
            return
        self._bailed = True
        self._bail_value = result

    def abort(self) -> None:
        """Cancel the whole run (same as ``run.cancel()``): the step is interrupted at its
        next checkpoint."""
        self._level.execution.request_cancel("aborted by a step")

    def record_usage(self, usage: Usage) -> None:
        """Add token usage to the run's totals."""
        if not isinstance(usage, Usage):
            raise TypeError(f"record_usage() takes a tf.Usage, got {usage!r}")
        self._level.execution.add_usage(usage)


def _resume_labels(resume_label: object) -> list[str]:
    """``suspend(resume_label=...)`` as a list of labels, or ValueError saying what was
    expected (checked before the step is marked suspended)."""
    if isinstance(resume_label, str):
        labels: list[object] = [resume_label]
    elif isinstance(resume_label, list | tuple):
        labels = list(resume_label)
    else:
        raise ValueError(
            f"resume_label must be a str or a list of str, got {resume_label!r} "
            f"({type(resume_label).__name__})"
        )
    for label in labels:
        if not isinstance(label, str) or not label:
            raise ValueError(f"resume_label must be a non-empty str, got {label!r}")
        problem = id_text_problem(label)
        if problem is not None:
            raise ValueError(f"resume_label {label!r} {problem}")
    return cast("list[str]", labels)
