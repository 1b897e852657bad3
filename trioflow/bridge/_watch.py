"""``watch-runs``: a live run list, one watcher task per server however many clients watch.

Two sources of status changes:

- runs executing in this process: their in-process hub (``RunHub.wait_changed``) says at
  once when an execution starts or ends, so such a change reaches watchers promptly (the
  bridge's own start/resume/cancel follow their run at once; other runs are found by the
  poll below and followed from then on);
- runs changed by other processes (workers, ``trioflow resume`` in another terminal):
  storage polled with a backoff (``POLL_MIN`` doubling to ``POLL_MAX`` while nothing
  changes, back to ``POLL_MIN`` after a change or a poke). Nothing is polled while no
  client watches.

What a poll reads, whatever the number of stored runs (``Runtime.list_runs`` in pages of
``POLL_LIMIT``): every run in a status it can still leave (one filtered query per open
status: only a run that is not terminal can change), and the newest runs down to
``NEW_RUN_MARGIN_MS`` before the newest run the previous poll saw (runs created and
finished between two polls). A run it knew open that is in none of these lists has ended
(or moved between two of the queries): its snapshot says its status. Terminal runs older
than that margin are forgotten: they can never change again.

A stored row older than what a hub already said (by ``updatedAt``) never takes a status
back, so a watcher sees each status once, in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import attrs
import trio

from .._core._model import RunInfo
from .._core._status import TERMINAL, RunStatus
from .._runtime import RunHub, Runtime
from . import _protocol as p

logger = logging.getLogger("trioflow.bridge")

#: Bounds (seconds) of the storage poll that finds changes made by other processes.
POLL_MIN: Final = 0.05
POLL_MAX: Final = 2.0
#: Runs read per storage query (a poll pages through as many as it needs).
POLL_LIMIT: Final = p.MAX_LIST_LIMIT
#: The statuses a stored run can still leave (a terminal run never changes again).
OPEN: Final = tuple(status for status in RunStatus if status not in TERMINAL)
#: How much earlier (milliseconds) than the newest run already seen a new run may be dated
#: (another process's clock, a creating transaction committed late): the new-run scan
#: reads down to there.
NEW_RUN_MARGIN_MS: Final = 10_000


def now_ms() -> int:
    return int(time.time() * 1000)


class Watcher(Protocol):
    """A connection's ``watch-runs``: its filters and where its messages go."""

    workflow_id: str | None
    status: RunStatus | None

    def push(self, message: dict[str, Any]) -> None: ...


@attrs.define
class _Known:
    workflow_id: str
    status: str
    updated_at: int
    created_at: int


def matches(watcher: Watcher, workflow_id: str, status: str, before: str | None) -> bool:
    """Whether a change concerns ``watcher``: its workflow, and its status filter matched
    the run before or after the change (so a run leaving the filtered status is told)."""
    if watcher.workflow_id is not None and watcher.workflow_id != workflow_id:
        return False
    wanted = watcher.status
    return wanted is None or wanted.value in (status, before)


@attrs.define(eq=False)
class RunWatcher:
    """A connection's ``watch-runs``: its filters and the ``run-status`` messages waiting
    for room in the send buffer (the newest per run: a slow client gets the latest
    status of each run, never an unbounded backlog)."""

    workflow_id: str | None
    status: RunStatus | None
    pending: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    ready: trio.Event = attrs.field(factory=trio.Event)

    def push(self, message: dict[str, Any]) -> None:
        self.pending.pop(message["runId"], None)  # re-inserted last: order of changes
        self.pending[message["runId"]] = message
        self.ready.set()


class RunWatch:
    """The server's run-status watcher: :meth:`run` it in the server's nursery."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        poll_min: float = POLL_MIN,
        poll_max: float = POLL_MAX,
        hub_of: Callable[[str], RunHub | None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.watchers: set[Watcher] = set()
        self._known: dict[str, _Known] = {}
        #: The new-run scan reads down to this ``created_at`` (None: not scanned yet).
        self._horizon: int | None = None
        self._followed: set[str] = set()
        self._poke = trio.Event()
        self._baseline = False
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._hub_of = hub_of if hub_of is not None else self._runtime_hub

    def _runtime_hub(self, run_id: str) -> RunHub | None:
        # Runtime has no public "hub of a run" accessor: the hubs of runs alive in this
        # process are in its weak map (read only).
        hubs = getattr(self.runtime, "_hubs", None)
        hub = hubs.get(run_id) if hubs is not None else None
        return hub if isinstance(hub, RunHub) else None

    # --- watchers ---------------------------------------------------------------------

    async def add(self, watcher: Watcher) -> None:
        """Start telling ``watcher`` about changes (after a first poll, so that what it
        lists next is the base the changes apply to)."""
        if not self._baseline:
            await self.poll()
        else:
            await trio.lowlevel.checkpoint()
        self.watchers.add(watcher)
        self.poke()

    def remove(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def poke(self) -> None:
        """Poll again now (something changed here, e.g. a bridge start/resume/cancel)."""
        self._poke.set()

    def follow(self, run_id: str, workflow_id: str, hub: RunHub | None = None) -> None:
        """Follow a run executing (or about to execute) in this process: each change of
        its hub is sent at once."""
        hub = hub if hub is not None else self._hub_of(run_id)
        if hub is None or run_id in self._followed or self._nursery is None:
            self.poke()
            return
        self._followed.add(run_id)
        self._nursery.start_soon(self._follow, run_id, workflow_id, hub)
        self.poke()

    # --- tasks ------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll while anyone watches (until cancelled; a failing poll is logged and
        retried)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            delay = self.poll_min
            while True:
                if not self.watchers:
                    self._baseline = False  # nobody listened: changes since are unknown
                    self._poke = trio.Event()
                    await self._poke.wait()
                    continue
                try:
                    changed = await self.poll()
                except Exception as exc:
                    logger.warning("trioflow bridge: watch-runs poll failed: %s", exc)
                    changed = False
                delay = self.poll_min if changed else min(self.poll_max, delay * 2)
                self._poke = trio.Event()
                with trio.move_on_after(delay):
                    await self._poke.wait()
                    delay = self.poll_min

    async def poll(self) -> bool:
        """Read every run that can still change from storage (and the new ones); tell
        watchers what changed (True: any)."""
        async with self._lock:
            first = not self._baseline
            horizon = self._horizon
            rows = await self._read_rows()
            changed = False
            for info in rows.values():
                if self._apply(info, first=first, horizon=horizon):
                    changed = True
            if await self._settle_vanished(rows, first=first):
                changed = True
            self._forget_old()
            self._baseline = True
            return changed

    async def _read_rows(self) -> dict[str, RunInfo]:
        """Every open run, and the newest runs down to the horizon (the later row of a run
        read twice: it moved between two queries)."""
        rows: dict[str, RunInfo] = {}
        newest = await self._read_newest()
        open_runs = await self._read_open()
        for info in newest + open_runs:
            seen = rows.get(info.run_id)
            if seen is None or info.updated_at >= seen.updated_at:
                rows[info.run_id] = info
        return rows

    async def _read_newest(self) -> list[RunInfo]:
        """The newest runs, pages down to the horizon; it then moves to
        ``NEW_RUN_MARGIN_MS`` before the newest of them."""
        found: list[RunInfo] = []
        bound = self._horizon
        while True:
            page = await self.runtime.list_runs(limit=POLL_LIMIT, offset=len(found))
            if page and bound is None:
                bound = page[0].created_at - NEW_RUN_MARGIN_MS
            found += page
            if len(page) < POLL_LIMIT or bound is None or page[-1].created_at < bound:
                break
        if found:
            newest = found[0].created_at - NEW_RUN_MARGIN_MS
            self._horizon = newest if self._horizon is None else max(self._horizon, newest)
        return found

    async def _read_open(self) -> list[RunInfo]:
        found: list[RunInfo] = []
        for status in OPEN:
            offset = 0
            while True:
                page = await self.runtime.list_runs(status=status, limit=POLL_LIMIT, offset=offset)
                found += page
                offset += len(page)
                if len(page) < POLL_LIMIT:
                    break
        return found  # noqa: ASYNC910 - OPEN is not empty: the loop awaits

    def _apply(self, info: RunInfo, *, first: bool, horizon: int | None) -> bool:
        """Take a stored row in (True: a change was told)."""
        status = str(info.status)
        updated = int(info.updated_at)
        known = self._known.get(info.run_id)
        changed = False
        if known is None:
            if horizon is not None and info.status in TERMINAL and info.created_at < horizon:
                # Ended before the watch knew it, or forgotten after it ended: nothing new.
                return False
            self._known[info.run_id] = _Known(info.workflow_id, status, updated, info.created_at)
            if not first:
                changed = True
                self._emit(info.run_id, info.workflow_id, status, updated, None)
        elif known.status != status and updated >= known.updated_at:
            before = known.status
            known.status, known.updated_at = status, updated
            changed = True
            self._emit(info.run_id, info.workflow_id, status, updated, before)
        if info.status not in TERMINAL and info.run_id not in self._followed:
            hub = self._hub_of(info.run_id)
            if hub is not None and self._nursery is not None:
                self._followed.add(info.run_id)
                self._nursery.start_soon(self._follow, info.run_id, info.workflow_id, hub)
        return changed

    async def _settle_vanished(self, rows: dict[str, RunInfo], *, first: bool) -> bool:
        """Runs known open that no query returned: they ended (or moved while the queries
        ran); their snapshots say how."""
        await trio.lowlevel.checkpoint()
        changed = False
        for run_id, known in list(self._known.items()):
            if run_id in rows or known.status in TERMINAL:
                continue
            snapshot = await self.runtime.storage.load_snapshot(run_id)
            if snapshot is None:  # deleted (or not stored yet: a hub still follows it)
                if run_id not in self._followed:
                    self._known.pop(run_id, None)
                continue
            info = RunInfo(
                run_id=run_id,
                workflow_id=snapshot.workflow_id,
                resource_id=snapshot.resource_id,
                status=snapshot.status,
                created_at=snapshot.created_at,
                updated_at=snapshot.updated_at,
            )
            if self._apply(info, first=first, horizon=None):
                changed = True
        return changed

    def _forget_old(self) -> None:
        """Terminal runs created before the horizon never change and are never taken for
        new again (:meth:`_apply`): the watch's memory stays the open and the recent runs."""
        horizon = self._horizon
        if horizon is None:
            return
        for run_id, known in list(self._known.items()):
            old = known.status in TERMINAL and known.created_at < horizon
            if old and run_id not in self._followed:
                del self._known[run_id]

    async def _follow(self, run_id: str, workflow_id: str, hub: RunHub) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self._seen(run_id, workflow_id, str(hub.status))
            while hub.status not in TERMINAL:
                await hub.wait_changed()
                self._seen(run_id, workflow_id, str(hub.status))
        finally:
            self._followed.discard(run_id)

    def _seen(self, run_id: str, workflow_id: str, status: str) -> None:
        """A status a hub reports (this process's truth, newer than any stored row)."""
        known = self._known.get(run_id)
        updated = now_ms()
        if known is None:
            # Created no later than now (the creation time only decides when to forget it).
            self._known[run_id] = _Known(workflow_id, status, updated, updated)
            self._emit(run_id, workflow_id, status, updated, None)
            return
        if known.status == status:
            return
        before = known.status
        known.status, known.updated_at = status, max(updated, known.updated_at)
        self._emit(run_id, workflow_id, status, known.updated_at, before)

    def _emit(
        self, run_id: str, workflow_id: str, status: str, updated_at: int, before: str | None
    ) -> None:
        message = p.run_status(run_id, workflow_id, status, updated_at)
        for watcher in list(self.watchers):
            if matches(watcher, workflow_id, status, before):
                watcher.push(message)
