"""A fault-injecting storage wrapper: fail or interrupt the k-th durable write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from .._core._chunks import Chunk
from .._core._model import RunInfo, RunSnapshot
from .._core._status import RunStatus
from ..storage import Storage


class SimulatedCrash(BaseException):
    """Raised by :class:`FaultyStorage` to stand for the process dying at a write.

    A BaseException, like the real thing: the engine does not record it as a step error,
    it tears the runtime down.
    """


class FaultyStorage:
    """Wraps a storage and crashes at its ``crash_at``-th durable write (1-based).

    ``mode="before"``: the write does not happen (the process died before it);
    ``mode="after"``: the write happens, then the crash (died right after it).
    Writes are ``create_run``, ``save_snapshot`` and ``append_events``. The wrapper says it
    is durable, so the engine writes to it as it would to SQLite. ``writes`` counts every
    write attempted; ``crashed`` tells whether the crash happened.
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
        created = await self.inner.create_run(snapshot)
        self._after(hit)
        return created

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
    ) -> bool:
        hit = self._before()
        saved = await self.inner.save_snapshot(snapshot, events, expected_status=expected_status)
        self._after(hit)
        return saved

    async def append_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        hit = self._before()
        await self.inner.append_events(run_id, events)
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
