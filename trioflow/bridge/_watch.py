"""``watch-runs``: a live run list, one watcher task per server however many clients watch.

Two sources of status changes:

- runs executing in this process: their in-process hub (``RunHub.wait_changed``) says at
  once when an execution starts or ends, so such a change reaches watchers promptly (the
  bridge's own start/resume/cancel follow their run at once; other runs are found by the
  poll below and followed from then on);
- runs changed by other processes (workers, ``trioflow resume`` in another terminal):
  ``Runtime.list_runs`` polled with a backoff (``POLL_MIN`` doubling to ``POLL_MAX`` while
  nothing changes, back to ``POLL_MIN`` after a change or a poke). Nothing is polled while
  no client watches.

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

from .._core._status import TERMINAL, RunStatus
from .._runtime import RunHub, Runtime
from . import _protocol as p

logger = logging.getLogger("trioflow.bridge")

#: Bounds (seconds) of the storage poll that finds changes made by other processes.
POLL_MIN: Final = 0.05
POLL_MAX: Final = 2.0
#: Runs read per poll (newest first): changes to older runs are seen once they are among
#: the newest ``POLL_LIMIT`` (or through their hub, when they execute here).
POLL_LIMIT: Final = p.MAX_LIST_LIMIT


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
        """Read the newest runs from storage; tell watchers what changed (True: any)."""
        async with self._lock:
            infos = await self.runtime.list_runs(limit=POLL_LIMIT)
            changed = False
            first = not self._baseline
            for info in infos:
                status = str(info.status)
                updated = int(info.updated_at)
                known = self._known.get(info.run_id)
                if known is None:
                    self._known[info.run_id] = _Known(info.workflow_id, status, updated)
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
            self._baseline = True
            return changed

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
            self._known[run_id] = _Known(workflow_id, status, updated)
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
