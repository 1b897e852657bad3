"""The storage protocol every backend implements (Memory, SQLite, later PostgreSQL).

A backend holds, per run, one snapshot (:class:`RunSnapshot`) and the append-only event
log keyed by ``(run_id, seq)``. Writes that change a run's status go through
:meth:`Storage.save_snapshot` with ``expected_status``: a compare-and-set, which is how
exactly one resume wins a suspension, also across processes. A snapshot and the chunks
that describe it are written in one transaction.

Optional capabilities, looked up with ``getattr`` (PostgresStorage has them): a run queue
and leases for workers (``claim_runnable``, ``release_lease``, ``watch_queue``, ...), and
``record_failed_attempt(run_id, error, *, retry_delay) -> int``, which counts an
execution that died of an error, stores the error, releases the lease and keeps workers
off the run for a doubling backoff; the runtime fails the run after
``open_runtime(worker_max_attempts=...)`` such attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._core._chunks import Chunk
from .._core._model import RunInfo, RunSnapshot
from .._core._status import RunStatus


@runtime_checkable
class Storage(Protocol):
    #: Whether what is written survives the process. The engine writes a snapshot after
    #: every top-level entry only to durable storage (so a killed process loses at most the
    #: entry that was running); non-durable storage gets the snapshots that matter in
    #: process: claims, waiting, suspension, the end, and an interrupted execution.
    durable: bool

    async def create_run(self, snapshot: RunSnapshot) -> bool:
        """Insert ``snapshot`` unless a run with its id exists. True when inserted."""
        ...

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        """The stored snapshot, or None."""
        ...

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
    ) -> bool:
        """Replace the run's snapshot and append ``events``, atomically.

        With ``expected_status``, only when the stored status is (one of) it; otherwise
        nothing is written and the result is False. Without a stored run: False.
        """
        ...

    async def append_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        """Append chunks (consecutive ``seq``) to the run's log."""
        ...

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[Chunk]:
        """Chunks with ``seq >= from_seq``, in order, at most ``limit``."""
        ...

    async def last_seq(self, run_id: str) -> int:
        """The highest stored ``seq`` of the run (0 when none)."""
        ...

    async def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: RunStatus | None = None,
        resource_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs matching every given filter, newest first."""
        ...

    async def delete_run(self, run_id: str) -> bool:
        """Remove the snapshot and the log. True when something was deleted."""
        ...

    async def aclose(self) -> None:
        """Release resources; the storage is unusable afterwards."""
        ...
