"""MemoryStorage: the in-process backend (tests, and the default of ``open_runtime``)."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import trio

from .._core._chunks import Chunk, DataChunk, WorkflowStepOutput
from .._core._json import plainly_json
from .._core._model import RunInfo, RunSnapshot
from .._core._serde import converter, to_wire
from .._core._status import RunStatus
from ._json import dumps_strict

#: Snapshot fields that hold data, checked at every write that changes them.
_RUN_FIELDS = (
    "input",
    "state",
    "request_context",
    "result",
    "error",
    "tripwire",
    "active_input",
    "resume",
)


def _plain(value: Any) -> bool:
    """True when ``value`` is certainly strict JSON without walking it: the values a step
    result's record or a chunk holds in the common case (ids, counts, timestamps, short
    texts, None). False means "check it properly"."""
    return type(value) not in _CONTAINERS and plainly_json(value)


_CONTAINERS = (dict, list, tuple)


def check_snapshot(
    snapshot: RunSnapshot,
    previous: RunSnapshot | None,
    changed_steps: Collection[str] | None = None,
) -> None:
    """StorageError naming the path when what ``snapshot`` changes since ``previous`` is
    not strict JSON (as SQLite and PostgreSQL refuse it). Step records and run fields
    that are the very objects already stored are not checked again, and values that are
    plainly JSON are not serialized: the check costs what the write changes. With
    ``changed_steps`` (and a ``previous``), only those step records are looked at: the
    caller promises the others are stored as they are (see ``Storage.save_snapshot``),
    so the check does not grow with the steps settled before."""
    what = f"the snapshot of run {snapshot.run_id!r}"
    for name in _RUN_FIELDS:
        value = getattr(snapshot, name)
        if previous is not None and value is getattr(previous, name):
            continue
        if not _plain(value) and value != {}:
            dumps_strict(converter.unstructure(value), f"{what}, field {name}")
    steps = snapshot.steps
    if previous is None:
        _check_records(what, steps, steps, {})
    elif changed_steps is None:
        _check_records(what, steps, steps, previous.steps)
    elif isinstance(changed_steps, str):
        raise TypeError("changed_steps must be a collection of step keys, not a str")
    else:
        _check_records(what, changed_steps, steps, previous.steps)


def _check_records(
    what: str,
    keys: Iterable[str],
    steps: Mapping[str, dict[str, Any]],
    before: Mapping[str, dict[str, Any]],
) -> None:
    for key in keys:
        record = steps.get(key)
        if record is None or before.get(key) is record:
            continue  # deleted, or the very record already stored
        for value in record.values():
            # The kinds a record holds most first (this loop runs per step).
            if value is None or (type(value) is str and value.isascii()):
                continue
            if not _plain(value):
                dumps_strict(record, f"{what}, step {key!r}")
                break


def check_events(run_id: str, events: Sequence[Chunk]) -> None:
    """StorageError naming the chunk and the path when data a step wrote into a chunk
    (``writer.write``, ``writer.custom``) is not strict JSON. Every other value a chunk
    carries is a copy of what the run's snapshot holds (a step's input, output, error,
    suspend payload, the run's result and tripwire), which :func:`check_snapshot` checks
    when that snapshot is written: checking each copy again would cost more than the
    rest of the write (a 100-step chain: 4 us per step on top of 18)."""
    value: Any
    for chunk in events:
        if isinstance(chunk, WorkflowStepOutput):
            value = chunk.payload.output
        elif isinstance(chunk, DataChunk):
            value = chunk.data
        else:
            continue
        if not _plain(value):
            dumps_strict(to_wire(chunk), f"event seq {chunk.seq} of run {run_id!r}")


class MemoryStorage:
    """Keeps snapshots and event logs in dicts. Every method is a checkpoint and atomic
    with respect to cancellation (the change happens entirely or not at all).

    Like the SQL backends, it refuses a snapshot or chunk that is not strict JSON with a
    :class:`~trioflow.StorageError` naming the path, and then stores nothing of that
    write. The check looks only at what a write changes (see :func:`check_snapshot`), so
    it stays cheap on the engine's hot path.
    """

    durable = False

    def __init__(self) -> None:
        self._snapshots: dict[str, RunSnapshot] = {}
        self._events: dict[str, list[Chunk]] = {}
        self._order: dict[str, int] = {}
        self._counter = itertools.count()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this MemoryStorage is closed")

    async def create_run(self, snapshot: RunSnapshot) -> bool:
        await trio.lowlevel.checkpoint()
        self._check_open()
        if snapshot.run_id in self._snapshots:
            return False
        check_snapshot(snapshot, None)
        self._snapshots[snapshot.run_id] = snapshot
        self._events[snapshot.run_id] = []
        self._order[snapshot.run_id] = next(self._counter)
        return True

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._snapshots.get(run_id)

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        # The snapshot (its steps included) is kept whole: changed_steps only narrows
        # the strict-JSON check.
        await trio.lowlevel.checkpoint()
        self._check_open()
        current = self._snapshots.get(snapshot.run_id)
        if current is None:
            return False
        if expected_status is not None:
            allowed = (
                (expected_status,) if isinstance(expected_status, RunStatus) else expected_status
            )
            if current.status not in allowed:
                return False
        check_snapshot(snapshot, current, changed_steps)
        check_events(snapshot.run_id, events)
        self._append(snapshot.run_id, events)
        self._snapshots[snapshot.run_id] = snapshot
        return True

    def _append(self, run_id: str, events: Sequence[Chunk]) -> None:
        if not events:
            return
        log = self._events.setdefault(run_id, [])
        expected = len(log) + 1
        for offset, event in enumerate(events):
            if event.seq != expected + offset:
                raise ValueError(
                    f"run {run_id}: event seq {event.seq} does not follow {expected + offset - 1}"
                )
        log.extend(events)

    async def append_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        if run_id in self._snapshots:
            check_events(run_id, events)
            self._append(run_id, events)

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[Chunk]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        log = self._events.get(run_id, [])
        start = max(from_seq, 1) - 1
        end = len(log) if limit is None else min(len(log), start + limit)
        return log[start:end]

    async def last_seq(self, run_id: str) -> int:
        await trio.lowlevel.checkpoint()
        self._check_open()
        return len(self._events.get(run_id, ()))

    async def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: RunStatus | None = None,
        resource_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        rows = [
            s
            for s in self._snapshots.values()
            if (workflow_id is None or s.workflow_id == workflow_id)
            and (status is None or s.status == status)
            and (resource_id is None or s.resource_id == resource_id)
        ]
        rows.sort(key=lambda s: (s.created_at, self._order[s.run_id]), reverse=True)
        return [
            RunInfo(
                run_id=s.run_id,
                workflow_id=s.workflow_id,
                resource_id=s.resource_id,
                status=s.status,
                created_at=s.created_at,
                updated_at=s.updated_at,
            )
            for s in rows[offset : offset + limit]
        ]

    async def delete_run(self, run_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._events.pop(run_id, None)
        self._order.pop(run_id, None)
        return self._snapshots.pop(run_id, None) is not None

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._closed = True
