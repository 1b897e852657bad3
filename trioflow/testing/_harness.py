"""Driving runs to their end, and the crash-point harness.

* :func:`run_on_mock_clock` runs an async function under ``trio.run`` with an autojumping
  :class:`trio.testing.MockClock` (sleeps take no real time): the way to call the harness
  from a sync hypothesis ``@given`` test.
* :class:`ClockGuardStorage` keeps the mock clock from jumping while a storage call waits
  on another thread (SQLite), so virtual time only passes where the workflow sleeps.
* :func:`drive_run` brings a stored run to its end from whatever storage holds
  (``pending`` -> start, ``running``/``waiting``/``paused`` -> restart, ``suspended`` ->
  resume, finished -> the stored result): the recovery loop of a process that boots.
* :func:`check_crash_points` crashes a run at every durable write (before and after it),
  recovers it with :func:`drive_run` in a "new process" (a new runtime on the same
  storage), and checks that the outcome, the step results and the event log equal an
  uninterrupted run's (:func:`compare_recovered`, in ``_compare``). Steps that were
  running at the crash may run twice: the report names them.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Literal, TypeVar

import attrs
import trio
import trio.testing

import trioflow as tf

from .._groups import leaves
from ..storage._protocol import save_changed_steps
from ._compare import CrashState as CrashState
from ._compare import RunRecord as RunRecord
from ._compare import _json as _json
from ._compare import compare_recovered as compare_recovered
from ._compare import outcome_view as outcome_view
from ._compare import settled_view as settled_view
from ._faults import FaultyStorage, SimulatedCrash
from ._reference import ResumeRequest

T = TypeVar("T")

#: ``resumer(k, state)``: how to resume the run's k-th suspension (0-based), or None to
#: leave it suspended. ``state`` is the stored :class:`trioflow.RunState`.
Resumer = Callable[[int, tf.RunState], ResumeRequest | None]


def run_on_mock_clock(
    async_fn: Callable[..., Awaitable[T]],
    *args: Any,
    autojump_threshold: float = 0,
    **kwargs: Any,
) -> T:
    """``trio.run(async_fn, *args, **kwargs)`` on a fresh autojumping MockClock: sleeps and
    timeouts take no real time. Use it from sync tests (one fresh clock per hypothesis
    example)."""
    clock = trio.testing.MockClock(autojump_threshold=autojump_threshold)
    return trio.run(functools.partial(async_fn, **kwargs), *args, clock=clock)


class ClockGuardStorage:
    """Wraps a storage so that an autojumping MockClock does not jump while a call of it
    is in flight.

    A storage that works on another thread (SQLite) leaves every trio task blocked while
    the thread works; an autojumping clock would then jump to the next deadline, firing
    timeouts that real time would never reach. Around each call this wrapper sets the
    clock's ``autojump_threshold`` to infinity, and restores it when no call is left in
    flight. Without a MockClock (or outside trio) it only forwards.
    """

    def __init__(self, inner: Any, clock: trio.testing.MockClock | None = None) -> None:
        self.inner = inner
        self._clock = clock
        self._in_flight = 0
        self._saved = 0.0

    @property
    def durable(self) -> bool:
        return bool(self.inner.durable)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _clock_now(self) -> trio.testing.MockClock | None:
        if self._clock is not None:
            return self._clock
        try:
            clock = trio.lowlevel.current_clock()
        except RuntimeError:
            return None
        return clock if isinstance(clock, trio.testing.MockClock) else None

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        clock = self._clock_now()
        if clock is None:
            return await fn(*args, **kwargs)
        if self._in_flight == 0:
            self._saved = clock.autojump_threshold
            clock.autojump_threshold = math.inf
        self._in_flight += 1
        try:
            return await fn(*args, **kwargs)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                clock.autojump_threshold = self._saved

    async def create_run(self, snapshot: Any) -> bool:
        return await self._call(self.inner.create_run, snapshot)

    async def load_snapshot(self, run_id: str) -> Any:
        return await self._call(self.inner.load_snapshot, run_id)

    async def save_snapshot(
        self,
        snapshot: Any,
        events: Sequence[Any] = (),
        *,
        expected_status: Any = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        return await self._call(
            save_changed_steps,
            self.inner,
            snapshot,
            events,
            expected_status=expected_status,
            changed_steps=changed_steps,
        )

    async def append_events(self, run_id: str, events: Sequence[Any]) -> None:
        await self._call(self.inner.append_events, run_id, events)

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[Any]:
        return await self._call(self.inner.read_events, run_id, from_seq=from_seq, limit=limit)

    async def last_seq(self, run_id: str) -> int:
        return await self._call(self.inner.last_seq, run_id)

    async def list_runs(self, **kwargs: Any) -> list[tf.RunInfo]:
        return await self._call(self.inner.list_runs, **kwargs)

    async def delete_run(self, run_id: str) -> bool:
        return await self._call(self.inner.delete_run, run_id)

    async def aclose(self) -> None:
        await self._call(self.inner.aclose)


# --- counting step executions ----------------------------------------------------------


class StepCounter:
    """A tracer that counts step executions by chunk id (``"nested.inner"``; a foreach
    item counts for its container's id), over every runtime it is given to."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def span_started(self, span: Any) -> None:
        if span.kind == "workflow_step":
            name = span.name
            prefix = "workflow step: '"
            if name.startswith(prefix) and name.endswith("'"):
                self.counts[name[len(prefix) : -1]] += 1

    def span_ended(self, span: Any) -> None:
        pass


# --- driving a run ------------------------------------------------------------------


async def _first_suspended_iteration(storage: Any, run_id: str, step: Any) -> int | None:
    snapshot = await storage.load_snapshot(run_id)
    if snapshot is None or not step:
        return None
    stored = snapshot.steps.get(step[0] if isinstance(step, list | tuple) else str(step)) or {}
    outcomes = ((stored.get("metadata") or {}).get("foreach") or {}).get("outcomes") or []
    for i, outcome in enumerate(outcomes):
        if outcome and outcome.get("status") == "suspended":
            return i
    return None


def resume_with(*requests: ResumeRequest | Any) -> Resumer:
    """A resumer that answers the k-th suspension with the k-th request (the last one
    again when they run out). A plain value stands for ``ResumeRequest(resume_data=v)``."""
    normalized = [
        r if isinstance(r, ResumeRequest) else ResumeRequest(resume_data=r) for r in requests
    ]
    if not normalized:
        raise ValueError("resume_with() needs at least one request")

    def resumer(k: int, _: tf.RunState) -> ResumeRequest:
        return normalized[min(k, len(normalized) - 1)]

    return resumer


async def _suspensions_so_far(storage: Any, run_id: str) -> int:
    events = await storage.read_events(run_id)
    return sum(
        1
        for c in events
        if c.type == "workflow-finish" and c.payload.workflow_status == "suspended"
    )


async def drive_run(
    workflow: tf.Workflow,
    *,
    storage: Any,
    run_id: str,
    input_data: Any = None,
    initial_state: Any = None,
    resumer: Resumer | None = None,
    counter: StepCounter | None = None,
    max_executions: int = 100,
) -> RunRecord:
    """Bring the stored run ``run_id`` to its end, in a runtime of its own on ``storage``
    (left open): start it if it is pending (or not stored yet), restart it if it was
    executing, resume it when suspended (as ``resumer`` says; without one, or when it
    returns None, the run is left suspended), and return the stored result once it has
    finished.

    This is what a process that boots does with a run it finds in storage, so calling it
    again after a crash continues the run.
    """
    counter = counter if counter is not None else StepCounter()
    executions: list[tf.WorkflowResult] = []
    async with tf.open_runtime(storage=storage, tracer=counter) as rt:
        run = await workflow.create_run(run_id=run_id)
        result: tf.WorkflowResult | None = None
        for _ in range(max_executions):
            state = await rt.get_run_state(run_id)
            if state.status == "pending":
                result = await run.start(input_data=input_data, initial_state=initial_state)
            elif state.status in ("running", "waiting", "paused"):
                result = await run.restart()
            elif state.status == "suspended":
                request = None
                if resumer is not None:
                    k = await _suspensions_so_far(storage, run_id)
                    request = resumer(max(k - 1, 0), state)
                if request is None:
                    result = _result_from_state(state)
                    break
                try:
                    result = await run.resume(**request.kwargs())
                except tf.StepNotSuspendedError:
                    # After a crash the interrupted resume may already have taken effect (a
                    # foreach item durably recorded as resumed and finished is not resumed
                    # again): answer the iteration that is suspended now instead.
                    kwargs = request.kwargs()
                    if kwargs.get("for_each_index") is None:
                        raise
                    kwargs["for_each_index"] = await _first_suspended_iteration(
                        storage, run_id, kwargs.get("step")
                    )
                    result = await run.resume(**kwargs)
            elif state.status == "canceled":
                result = _result_from_state(state)
                break
            else:
                result = await run.restart()
                break
            executions.append(result)
            if result.status not in ("suspended", "running", "waiting", "paused"):
                break
        else:
            raise AssertionError(f"run {run_id} did not finish in {max_executions} executions")
        assert result is not None
        events = list(await storage.read_events(run_id))
    return RunRecord(
        result=result, events=events, executions=executions, steps_executed=counter.counts
    )


def _result_from_state(state: tf.RunState) -> tf.WorkflowResult:
    """The WorkflowResult a stored run describes (for runs not executed here)."""
    return tf.WorkflowResult(
        status=state.status,
        result=state.result,
        error=state.error,
        steps=dict(state.steps),
        input=state.input,
        state=state.state,
        suspended=[list(p) for p in state.suspended],
        run_id=state.run_id,
    )


# --- the crash-point harness ------------------------------------------------------------


class CrashPointMismatch(AssertionError):
    """A run recovered after a crash differs from the uninterrupted run."""


@attrs.frozen(kw_only=True)
class CrashPoint:
    """One crash: at durable write ``write`` (``mode`` before/after it). ``crashed`` is
    False when the run ended before reaching that write. ``reran`` names the steps that
    executed more often than in the uninterrupted run (chunk id -> extra executions)."""

    write: int
    mode: str
    crashed: bool
    record: RunRecord
    reran: dict[str, int]
    problems: list[str]


@attrs.frozen(kw_only=True)
class CrashPointReport:
    """Every crash point of a run: ``writes`` durable writes in the uninterrupted run
    (``reference``), one :class:`CrashPoint` per (write, mode)."""

    writes: int
    reference: RunRecord
    points: list[CrashPoint]

    @property
    def reran(self) -> dict[tuple[int, str], dict[str, int]]:
        """The crash points where some step ran again, with those steps."""
        return {(p.write, p.mode): p.reran for p in self.points if p.reran}

    def failures(self) -> list[CrashPoint]:
        return [p for p in self.points if p.problems]

    def summary(self) -> str:
        lines = [f"{self.writes} durable writes, {len(self.points)} crash points"]
        for p in self.points:
            status = "ok" if not p.problems else "MISMATCH"
            extra = f" reran {p.reran}" if p.reran else ""
            lines.append(f"  write {p.write} {p.mode}: {status}{extra}")
            lines.extend(f"      {problem}" for problem in p.problems)
        return "\n".join(lines)


def _is_simulated_crash(exc: BaseException) -> bool:
    """``exc`` is the simulated process death: a SimulatedCrash, or a group of them (every
    task of the dying process that wrote got one) with nothing else but the Cancelled of
    the tasks torn down with it."""
    found = leaves(exc)
    return any(isinstance(e, SimulatedCrash) for e in found) and all(
        isinstance(e, SimulatedCrash | trio.Cancelled) for e in found
    )


StorageFactory = Callable[[], Any]


async def crash_and_recover(
    workflow: tf.Workflow,
    *,
    write: int | None,
    mode: Literal["before", "after"] = "before",
    input_data: Any = None,
    initial_state: Any = None,
    resumer: Resumer | None = None,
    storage_factory: StorageFactory = tf.MemoryStorage,
    run_id: str = "crash-run",
) -> tuple[RunRecord, FaultyStorage, CrashState]:
    """Drive a run on a storage that crashes at durable write ``write`` (None: never),
    then, in a new runtime on the same storage, drive it to its end. Returns the record,
    the faulty storage (``writes``, ``crashed``) and what storage held at the crash."""
    inner = storage_factory()
    faulty = FaultyStorage(inner, crash_at=write, mode=mode)
    storage = ClockGuardStorage(faulty)
    counter = StepCounter()
    at_crash = CrashState()
    drive: dict[str, Any] = {
        "storage": storage,
        "run_id": run_id,
        "input_data": input_data,
        "initial_state": initial_state,
        "resumer": resumer,
        "counter": counter,
    }
    try:
        crashed = False
        try:
            record = await drive_run(workflow, **drive)
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if not _is_simulated_crash(exc):
                raise
            crashed = True
        if crashed:
            assert faulty.crashed
            at_crash = CrashState(
                events=list(await inner.read_events(run_id)),
                snapshot=await inner.load_snapshot(run_id),
                acknowledged=faulty.acknowledged(run_id),
            )
            faulty.disarm()
            record = await drive_run(workflow, **drive)
    finally:
        with trio.CancelScope(shield=True):
            await faulty.aclose()
    return record, faulty, at_crash


async def check_crash_points(
    workflow: tf.Workflow,
    *,
    input_data: Any = None,
    initial_state: Any = None,
    resumer: Resumer | None = None,
    storage_factory: StorageFactory = tf.MemoryStorage,
    modes: Sequence[Literal["before", "after"]] = ("before", "after"),
    writes: Sequence[int] | None = None,
    run_id: str = "crash-run",
    raise_on_mismatch: bool = True,
    strict_log: bool = False,
) -> CrashPointReport:
    """Crash a run of ``workflow`` at every durable write and check each recovery.

    First the run is driven to its end without a crash (the reference; ``resumer``
    answers its suspensions). Then, for every durable write k of that run (or the given
    ``writes``) and every mode, a fresh storage from ``storage_factory`` crashes at write
    k (:class:`FaultyStorage`: the process "dies" before or after the write), and a new
    runtime on that storage continues the run with :func:`drive_run`. Each recovered run
    must satisfy :func:`compare_recovered`: the same status, result, error, state and step
    results as the reference, a log with the same settled chunks and workflow-finish
    statuses (repeats only by steps that ran again; none at all with ``strict_log``), no
    re-run of a step the stored snapshot had recorded as finished, and no acknowledged
    write lost: after the crash, storage returns the last snapshot and every chunk it
    acknowledged before it (a storage that acknowledges a write it has not made durable
    is reported here even when the run recovers).

    Returns the :class:`CrashPointReport`; with ``raise_on_mismatch`` (default) a
    :class:`CrashPointMismatch` listing every mismatching crash point is raised instead.
    Run it under an autojumping MockClock (the ``trioflow_clock`` fixture, pytest-trio's
    ``autojump_clock``, or :func:`run_on_mock_clock`): each crash point re-runs the
    workflow, sleeps included.
    """
    kwargs: dict[str, Any] = {
        "input_data": input_data,
        "initial_state": initial_state,
        "resumer": resumer,
        "storage_factory": storage_factory,
        "run_id": run_id,
    }
    reference, storage, _ = await crash_and_recover(workflow, write=None, **kwargs)
    total = storage.writes
    points: list[CrashPoint] = []
    for k in writes if writes is not None else range(1, total + 1):
        for mode in modes:
            record, faulty, at_crash = await crash_and_recover(
                workflow, write=k, mode=mode, **kwargs
            )
            problems, reran = compare_recovered(
                reference, record, at_crash=at_crash, workflow=workflow, strict_log=strict_log
            )
            points.append(
                CrashPoint(
                    write=k,
                    mode=mode,
                    crashed=faulty.crashed,
                    record=record,
                    reran=reran,
                    problems=problems,
                )
            )
    report = CrashPointReport(writes=total, reference=reference, points=points)
    if raise_on_mismatch and report.failures():
        raise CrashPointMismatch(report.summary())
    return report
