"""A fault-injecting storage wrapper: fail or interrupt the k-th durable write, and keep
account of what the storage acknowledged, so that what it returns after the crash can be
checked against what it promised before it (:func:`durability_problems`)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Literal

import attrs

from .._core._chunks import Chunk
from .._core._model import RunInfo, RunSnapshot
from .._core._serde import snapshot_to_json, to_wire
from .._core._status import RunStatus
from ..storage import Storage
from ..storage._protocol import save_changed_steps


class SimulatedCrash(BaseException):
    """Raised by :class:`FaultyStorage` to stand for the process dying at a write.

    A BaseException, like the real thing: the engine does not record it as a step error;
    the execution stops where it was and the storage stays as the crash left it (every
    later write of the dead "process" raises it too, so nothing of it is stored).
    """


class FaultyStorage:
    """Wraps a storage and crashes at its ``crash_at``-th durable write (1-based).

    ``mode="before"``: the write does not happen (the process died before it);
    ``mode="after"``: the write happens, then the crash (died right after it).
    Writes are ``create_run``, ``save_snapshot`` and ``append_events``. The wrapper says it
    is durable, so the engine writes to it as it would to SQLite. ``writes`` counts every
    write attempted; ``crashed`` tells whether the crash happened;
    :meth:`acknowledged` tells what the inner storage acknowledged for a run (a durable
    storage must return all of it after the crash).
    """

    durable = True

    def __init__(
        self,
        inner: Storage,
        *,
        crash_at: int | None = None,
        mode: Literal["before", "after"] = "before",
    ) -> None:
        if crash_at is not None and crash_at < 1:
            raise ValueError(f"crash_at counts from 1, got {crash_at}")
        self.inner = inner
        self.crash_at = crash_at
        self.mode = mode
        self.writes = 0
        self.crashed = False
        self.crashed_process = False
        self._started = itertools.count()
        # Per run: the last snapshot write the inner storage acknowledged (start order,
        # snapshot), the snapshot writes started after it that got no answer (in flight, or
        # failed: storage may hold any of them), and every acknowledged chunk by seq.
        self._acked: dict[str, tuple[int, RunSnapshot]] = {}
        self._unanswered: dict[str, dict[int, RunSnapshot]] = {}
        self._acked_events: dict[str, dict[int, Chunk]] = {}

    def acknowledged(self, run_id: str) -> Acknowledged:
        """What the inner storage acknowledged for ``run_id`` so far."""
        acked = self._acked.get(run_id)
        return Acknowledged(
            snapshot=acked[1] if acked is not None else None,
            unconfirmed=tuple(self._unanswered.get(run_id, {}).values()),
            events=tuple(c for _, c in sorted(self._acked_events.get(run_id, {}).items())),
        )

    async def _snapshot_write(
        self, snapshot: RunSnapshot, write: Callable[[], Awaitable[bool]]
    ) -> bool:
        run_id = snapshot.run_id
        number = next(self._started)
        unanswered = self._unanswered.setdefault(run_id, {})
        unanswered[number] = snapshot
        # An exception leaves the write unanswered: the storage may or may not hold it.
        written = await write()
        if not written:
            del unanswered[number]  # refused: the storage says it holds nothing of it
            return written
        self._acked[run_id] = (number, snapshot)
        for earlier in [n for n in unanswered if n <= number]:
            del unanswered[earlier]
        return written

    def _ack_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        acked = self._acked_events.setdefault(run_id, {})
        for chunk in events:
            acked[chunk.seq] = chunk

    def disarm(self) -> None:
        """No more crashes (the "next process" uses the same storage)."""
        self.crash_at = None
        self.crashed_process = False

    def _dead(self) -> None:
        # After the crash the "process" is dead: a task of it that was about to write
        # (e.g. waiting for the write lock) must not get to. Reads stay allowed: the test
        # inspecting what the crash left behind is not that process.
        if self.crashed_process:
            raise SimulatedCrash("the process crashed: no more storage calls")

    def _before(self) -> bool:
        self._dead()
        self.writes += 1
        hit = self.crash_at is not None and self.writes == self.crash_at
        if hit and self.mode == "before":
            self.crashed = self.crashed_process = True
            raise SimulatedCrash(f"crash before durable write {self.writes}")
        return hit

    def _after(self, hit: bool) -> None:
        if hit:
            self.crashed = self.crashed_process = True
            raise SimulatedCrash(f"crash after durable write {self.writes}")

    async def create_run(self, snapshot: RunSnapshot) -> bool:
        hit = self._before()
        created = await self._snapshot_write(snapshot, lambda: self.inner.create_run(snapshot))
        self._after(hit)
        return created

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        hit = self._before()
        # Acknowledged is the whole snapshot the engine passed, whatever part of it the
        # inner storage rewrites: after the crash it must return all of it.
        saved = await self._snapshot_write(
            snapshot,
            lambda: save_changed_steps(
                self.inner,
                snapshot,
                events,
                expected_status=expected_status,
                changed_steps=changed_steps,
            ),
        )
        if saved:
            self._ack_events(snapshot.run_id, events)
        self._after(hit)
        return saved

    async def append_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        hit = self._before()
        await self.inner.append_events(run_id, events)
        self._ack_events(run_id, events)
        self._after(hit)

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        return await self.inner.load_snapshot(run_id)

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[Chunk]:
        return await self.inner.read_events(run_id, from_seq=from_seq, limit=limit)

    async def last_seq(self, run_id: str) -> int:
        return await self.inner.last_seq(run_id)

    async def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: RunStatus | None = None,
        resource_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        return await self.inner.list_runs(
            workflow_id=workflow_id,
            status=status,
            resource_id=resource_id,
            limit=limit,
            offset=offset,
        )

    async def delete_run(self, run_id: str) -> bool:
        return await self.inner.delete_run(run_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- what a storage acknowledged, and what it returns after a crash ---------------------


@attrs.frozen(kw_only=True)
class Acknowledged:
    """What a storage acknowledged for one run before a crash: the last snapshot write it
    acknowledged (``snapshot``), the snapshot writes started after that one that got no
    answer (``unconfirmed``: in flight at the crash, or failed; it may hold any of them),
    and every chunk of an acknowledged write (``events``)."""

    snapshot: RunSnapshot | None = None
    unconfirmed: tuple[RunSnapshot, ...] = ()
    events: tuple[Chunk, ...] = ()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _snapshot_view(snapshot: RunSnapshot | None) -> str:
    if snapshot is None:
        return "no snapshot"
    finished = sorted(k for k, v in snapshot.steps.items() if v.get("status") == "success")
    return (
        f"status {str(snapshot.status)!r}, succeeded steps {finished}, last_seq {snapshot.last_seq}"
    )


def _snapshot_key(snapshot: RunSnapshot) -> str:
    return _canonical(snapshot_to_json(snapshot))


def durability_problems(
    acknowledged: Acknowledged, snapshot: RunSnapshot | None, events: Sequence[Chunk]
) -> list[str]:
    """How what storage returns after a crash (``snapshot``, the stored ``events``)
    differs from what it ``acknowledged`` before it: the stored snapshot must be the last
    acknowledged one (or one of the writes that got no answer), and every acknowledged
    chunk must be stored, unchanged, at its seq. Empty when nothing was lost."""
    problems: list[str] = []
    promised = acknowledged.snapshot
    if promised is not None:
        allowed = {_snapshot_key(s) for s in (promised, *acknowledged.unconfirmed)}
        if snapshot is None or _snapshot_key(snapshot) not in allowed:
            problems.append(
                f"storage lost an acknowledged snapshot write: it acknowledged "
                f"{_snapshot_view(promised)}; after the crash it returned "
                f"{_snapshot_view(snapshot)}"
            )
    stored = {c.seq: c for c in events}
    lost = [c.seq for c in acknowledged.events if c.seq not in stored]
    changed = [
        c.seq
        for c in acknowledged.events
        if c.seq in stored and _canonical(to_wire(c)) != _canonical(to_wire(stored[c.seq]))
    ]
    if lost:
        problems.append(f"storage lost acknowledged chunks: seqs {lost}")
    if changed:
        problems.append(f"storage returned acknowledged chunks changed: seqs {changed}")
    return problems
