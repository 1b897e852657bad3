"""MemoryStorage: the in-process backend (tests, and the default of ``open_runtime``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import trio

from .._core._chunks import Chunk
from .._core._model import RunInfo, RunSnapshot
from .._core._status import RunStatus


class MemoryStorage:
    """Keeps snapshots and event logs in dicts. Every method is a checkpoint and atomic
    with respect to cancellation (the change happens entirely or not at all)."""

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
    ) -> bool:
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
