"""Defining steps and workflows (pure builders: nothing here touches trio)."""

from __future__ import annotations

import datetime as _dt
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs

from ._core._errors import EmptyWorkflowError, TrioflowError, WorkflowNotCommittedError
from ._core._graph import (
    BranchEntry,
    Entry,
    ForeachEntry,
    LoopEntry,
    MapEntry,
    MapSource,
    ParallelEntry,
    SleepEntry,
    StepEntry,
    check_id,
    entry_nodes,
)
from ._core._json import id_text_problem

if TYPE_CHECKING:
    from ._context import StepContext

Execute = Callable[["StepContext"], Awaitable[Any]]
Condition = Callable[["StepContext"], Any]

#: The deepest chain of workflows nested in one another (the top-level workflow is level 0,
#: a workflow used as its step level 1, …). Each level costs the engine a few frames of the
#: Python stack, so a much deeper chain would overflow it mid-run.
MAX_NESTING_DEPTH = 50

# Bumped by every change to any workflow's graph: a Workflow remembers the value at which
# its whole graph (nested workflows included) was last checked.
_graph_epoch = 0


class WorkflowGraphError(TrioflowError, ValueError):
    """A workflow graph that cannot run: it contains itself (directly or through other
    workflows), or nests workflows deeper than :data:`MAX_NESTING_DEPTH` levels. Raised by
    ``commit()``, and by ``create_run()``/``start()`` when a nested workflow changed after
    that, before anything is stored."""


@attrs.frozen(kw_only=True)
class RetryConfig:
    """Workflow-wide retry policy: ``attempts`` extra tries, ``delay`` seconds apart."""

    attempts: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))


def _check_timeout(_: object, __: object, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {value!r}")


def _check_retries(_: object, __: object, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 0):
        raise ValueError(f"retries must be an int >= 0, got {value!r}")


def _stored_id(kind: str, value: object) -> str:
    """``check_id``, and an id every backend stores alike (no NUL, no lone surrogate)."""
    checked = check_id(kind, value)
    problem = id_text_problem(checked)
    if problem is not None:
        raise ValueError(f"{kind} id {checked!r} {problem}")
    return checked


def _check_step_id(_: object, __: object, value: str) -> None:
    _stored_id("step", value)


def _check_workflow_id(_: object, __: object, value: str) -> None:
    _stored_id("workflow", value)


def _check_execute(_: object, __: object, value: Execute) -> None:
    if not callable(value):
        raise TypeError(f"execute must be an async function, got {value!r}")
    # A plain ``def`` would fail at its first run with "object int can't be used in
    # 'await' expression"; say so here. (Callable objects and partials are trusted.)
    if inspect.isfunction(value) and not inspect.iscoroutinefunction(value):
        raise TypeError(
            f"execute must be an async function (async def), got the plain function "
            f"{value.__qualname__!r}"
        )


@attrs.frozen(kw_only=True, eq=False)
class Step:
    """One unit of work: ``async def execute(ctx) -> output``. Build with
    :func:`create_step` or :func:`step`."""

    id: str = attrs.field(validator=_check_step_id)
    execute: Execute = attrs.field(validator=_check_execute)
    input_schema: Any = None
    output_schema: Any = None
    resume_schema: Any = None
    suspend_schema: Any = None
    state_schema: Any = None
    retries: int | None = attrs.field(default=None, validator=_check_retries)
    timeout: float | None = attrs.field(default=None, validator=_check_timeout)
    description: str | None = None
    metadata: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Step {self.id!r}>"


def create_step(
    *,
    id: str,
    execute: Execute,
    input_schema: Any = None,
    output_schema: Any = None,
    resume_schema: Any = None,
    suspend_schema: Any = None,
    state_schema: Any = None,
    retries: int | None = None,
    timeout: float | None = None,
    description: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Step:
    """Create a :class:`Step`. ``execute`` is ``async def execute(ctx) -> output``."""
    return Step(
        id=id,
        execute=execute,
        input_schema=input_schema,
        output_schema=output_schema,
        resume_schema=resume_schema,
        suspend_schema=suspend_schema,
        state_schema=state_schema,
        retries=retries,
        timeout=timeout,
        description=description,
        metadata=dict(metadata) if metadata is not None else None,
    )


def step(
    *,
    id: str,
    input_schema: Any = None,
    output_schema: Any = None,
    resume_schema: Any = None,
    suspend_schema: Any = None,
    state_schema: Any = None,
    retries: int | None = None,
    timeout: float | None = None,
    description: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Callable[[Execute], Step]:
    """Decorator form of :func:`create_step`: ``@step(id="x") async def x(ctx): ...``."""

    def decorate(fn: Execute) -> Step:
        return create_step(
            id=id,
            execute=fn,
            input_schema=input_schema,
            output_schema=output_schema,
            resume_schema=resume_schema,
            suspend_schema=suspend_schema,
            state_schema=state_schema,
            retries=retries,
            timeout=timeout,
            description=description or fn.__doc__,
            metadata=metadata,
        )

    return decorate


def _check_node(value: object) -> Any:
    if isinstance(value, Step | WorkflowGraph):
        return value
    raise TypeError(f"expected a Step or a Workflow, got {value!r}")


_W = TypeVar("_W", bound="WorkflowGraph")


@attrs.define(eq=False, kw_only=True)
class WorkflowGraph:
    """An ordered graph of entries. Build it with the chained methods, then ``commit()``.

    A workflow is itself usable as a step (a nested workflow), keyed by its id.

    This is the graph alone: what the driver runs and what nests. The public
    :class:`trioflow.Workflow` (``trioflow._runnable``) adds ``create_run()``, which reaches
    the run API above the driver; keeping it out of this class keeps the import graph
    acyclic (SPEC §0).
    """

    id: str = attrs.field(validator=_check_workflow_id)
    input_schema: Any = None
    output_schema: Any = None
    state_schema: Any = None
    retry_config: RetryConfig = attrs.field(factory=RetryConfig)
    validate_inputs: bool = True
    emit_step_events: bool = True
    on_start: Callable[..., Any] | None = None
    on_finish: Callable[..., Any] | None = None
    on_error: Callable[..., Any] | None = None
    description: str | None = None
    entries: list[Entry] = attrs.field(factory=list)
    committed: bool = False
    # Nested workflows use these like a step does.
    resume_schema: Any = None
    suspend_schema: Any = None
    retries: int | None = None
    timeout: float | None = None
    _graph_checked_at: int = attrs.field(default=-1, init=False, repr=False)

    def __repr__(self) -> str:
        return f"<Workflow {self.id!r} ({len(self.entries)} entries)>"

    def _add(self: _W, entry: Entry) -> _W:
        global _graph_epoch
        self.entries.append(entry)
        self.committed = False
        _graph_epoch += 1
        return self

    def then(self: _W, node: Step | WorkflowGraph) -> _W:
        """Run ``node`` with the previous entry's output as input."""
        return self._add(StepEntry(_check_node(node)))

    def parallel(self: _W, nodes: Sequence[Step | WorkflowGraph], *, fail_fast: bool = False) -> _W:
        """Run every node at once on the same input; output ``{id: output}``.

        By default every branch runs to completion and the first failure is reported after
        all settle; ``fail_fast=True`` cancels the siblings of the first failing branch.
        """
        if not nodes:
            raise ValueError("parallel() needs at least one step")
        return self._add(ParallelEntry(tuple(_check_node(n) for n in nodes), fail_fast))

    def branch(self: _W, branches: Sequence[tuple[Condition, Step | WorkflowGraph]]) -> _W:
        """Run **every** node whose condition is true (a raising condition is false);
        output ``{id: output}`` of those that ran, ``{}`` when none."""
        if not branches:
            raise ValueError("branch() needs at least one (condition, step) pair")
        conditions: list[Condition] = []
        nodes: list[Any] = []
        for pair in branches:
            condition, node = pair
            if not callable(condition):
                raise TypeError(f"branch condition must be callable, got {condition!r}")
            conditions.append(condition)
            nodes.append(_check_node(node))
        return self._add(BranchEntry(tuple(conditions), tuple(nodes)))

    def dowhile(self: _W, node: Step | WorkflowGraph, condition: Condition) -> _W:
        """Run ``node`` at least once, again while ``condition`` is true."""
        return self._loop(node, condition, "dowhile")

    def dountil(self: _W, node: Step | WorkflowGraph, condition: Condition) -> _W:
        """Run ``node`` at least once, again until ``condition`` is true."""
        return self._loop(node, condition, "dountil")

    def _loop(
        self: _W,
        node: Step | WorkflowGraph,
        condition: Condition,
        kind: Literal["dowhile", "dountil"],
    ) -> _W:
        if not callable(condition):
            raise TypeError(f"loop condition must be callable, got {condition!r}")
        return self._add(LoopEntry(_check_node(node), condition, kind))

    def foreach(self: _W, node: Step | WorkflowGraph, *, concurrency: int = 1) -> _W:
        """Run ``node`` once per item of the previous output (a list), at most
        ``concurrency`` at once; output is the list of outputs in input order."""
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"foreach concurrency must be an int >= 1, got {concurrency!r}")
        return self._add(ForeachEntry(_check_node(node), concurrency))

    def map(
        self: _W,
        fn_or_mapping: Callable[..., Any] | Mapping[str, MapSource],
        *,
        id: str | None = None,
    ) -> _W:
        """Build the next input: ``fn(ctx)``, or a dict from ``from_step``/``from_init``/
        ``from_context``/``const`` sources. The id defaults to ``map_<position>``."""
        entry_id = _stored_id("map", id) if id is not None else f"map_{len(self.entries)}"
        if callable(fn_or_mapping):
            return self._add(MapEntry(entry_id, fn=fn_or_mapping))
        if isinstance(fn_or_mapping, Mapping):
            from ._core._graph import Const, FromContext, FromInit, FromStep

            for key, source in fn_or_mapping.items():
                if not isinstance(source, FromStep | FromInit | FromContext | Const):
                    raise TypeError(
                        f"map source for {key!r} must be from_step/from_init/from_context/"
                        f"const, got {source!r}"
                    )
            return self._add(MapEntry(entry_id, mapping=dict(fn_or_mapping)))
        raise TypeError(f"map() takes a function or a mapping, got {fn_or_mapping!r}")

    def sleep(
        self: _W,
        seconds: float | _dt.timedelta | Callable[..., Any],
        *,
        id: str | None = None,
    ) -> _W:
        """Wait, passing the input through. Interrupted at once by cancel."""
        entry_id = _stored_id("sleep", id) if id is not None else f"sleep_{len(self.entries)}"
        if isinstance(seconds, _dt.timedelta):
            seconds = seconds.total_seconds()
        if not callable(seconds):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError(f"sleep needs seconds >= 0, got {seconds!r}")
            seconds = float(seconds)
        return self._add(SleepEntry(entry_id, seconds=seconds))

    def sleep_until(
        self: _W, when: _dt.datetime | Callable[..., Any], *, id: str | None = None
    ) -> _W:
        """Wait until an aware datetime (or ``fn(ctx) -> datetime``), passing the input
        through. A naive datetime is a ValueError here."""
        entry_id = (
            _stored_id("sleep_until", id) if id is not None else f"sleep_until_{len(self.entries)}"
        )
        if isinstance(when, _dt.datetime):
            if when.tzinfo is None or when.utcoffset() is None:
                raise ValueError(
                    "sleep_until needs an aware datetime (with tzinfo), got a naive one"
                )
        elif not callable(when):
            raise TypeError(f"sleep_until takes a datetime or a function, got {when!r}")
        return self._add(SleepEntry(entry_id, until=when))

    def commit(self: _W) -> _W:
        """Freeze the graph: a run can only be created from a committed workflow.

        Raises :class:`WorkflowGraphError` (a ValueError) when the workflow contains itself
        (``a -> b -> a``) or nests workflows deeper than :data:`MAX_NESTING_DEPTH`.
        """
        self.check_graph()
        self.committed = True
        return self

    def check_graph(self) -> None:
        """Raise :class:`WorkflowGraphError` when the graph, nested workflows included,
        contains a cycle or nests too deep. Cheap when nothing changed since the last
        check."""
        if self._graph_checked_at != _graph_epoch:
            _check_graph(self)
            self._graph_checked_at = _graph_epoch

    def check_runnable(self) -> None:
        if not self.entries:
            raise EmptyWorkflowError(
                "Execution flow of workflow is not defined. Add steps to the workflow via "
                ".then(), .branch(), etc."
            )
        if not self.committed:
            raise WorkflowNotCommittedError(
                "Uncommitted step flow changes detected. Call .commit() to register the steps."
            )
        self.check_graph()  # a nested workflow may have changed since this one's commit()


def _nested_workflows(workflow: WorkflowGraph) -> list[WorkflowGraph]:
    return [node for node in entry_nodes(workflow.entries) if isinstance(node, WorkflowGraph)]


def _chain(workflows: Sequence[WorkflowGraph]) -> str:
    ids = [w.id for w in workflows]
    if len(ids) > 8:
        ids = [*ids[:3], f"... ({len(ids) - 5} more)", *ids[-2:]]
    return " -> ".join(ids)


def _check_graph(root: WorkflowGraph) -> None:
    """Depth-first over the nested workflows (by identity, iteratively: the graph may be
    deeper than the Python stack): a workflow met again on the current path is a cycle;
    ``heights`` remembers how many levels nest below each finished one."""
    heights: dict[int, int] = {}
    path: list[WorkflowGraph] = [root]
    children: list[list[WorkflowGraph]] = [_nested_workflows(root)]
    positions: list[int] = [0]
    while path:
        if positions[-1] == len(children[-1]):
            done = path.pop()
            below = children.pop()
            positions.pop()
            heights[id(done)] = max((heights[id(c)] + 1 for c in below), default=0)
            continue
        child = children[-1][positions[-1]]
        positions[-1] += 1
        if any(w is child for w in path):
            start = next(i for i, w in enumerate(path) if w is child)
            raise WorkflowGraphError(
                f"workflow {child.id!r} contains itself: {_chain([*path[start:], child])}"
            )
        deepest = len(path) + heights.get(id(child), 0)
        if deepest > MAX_NESTING_DEPTH:
            raise WorkflowGraphError(
                f"workflow {root.id!r} nests workflows more than {MAX_NESTING_DEPTH} levels "
                f"deep ({_chain([*path, child])}{' -> ...' if id(child) in heights else ''}); "
                f"at most {MAX_NESTING_DEPTH} levels are supported"
            )
        if id(child) not in heights:
            path.append(child)
            children.append(_nested_workflows(child))
            positions.append(0)
