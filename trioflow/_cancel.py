"""Cancelling a run that executes nowhere in this process: written to storage."""

from __future__ import annotations

import attrs

from ._core._chunks import Chunk
from ._core._model import Usage
from ._core._plan._run import ending_chunks
from ._core._plan._values import Outcome
from ._core._status import TERMINAL, RunStatus, StepStatus
from ._effects import now_ms
from ._hub import RunHub, result_from_snapshot
from .storage import Storage
from .storage._protocol import save_changed_steps


async def cancel_stored(storage: Storage, hub: RunHub) -> None:
    """Store the cancel of ``hub``'s run, which has no execution here: a suspended (or
    pending) run ends ``canceled`` with its chunks; one executing in another process is
    stored ``canceled`` and that process ends it. A finished run is left as is. If an
    execution starts here meanwhile, it is cancelled instead. Retried while the stored
    status keeps changing under it (RuntimeError after 10 tries). Cancelling this call
    leaves the run as the last completed write stored it.
    """
    run_id = hub.run_id
    for _ in range(10):
        snapshot = await storage.load_snapshot(run_id)
        if snapshot is None or snapshot.status in TERMINAL:
            return
        if hub.execution is not None:
            hub.execution.request_cancel("run.cancel()")
            await hub.execution.done.wait()
            return
        if snapshot.status in (RunStatus.RUNNING, RunStatus.WAITING):
            # Executing in another process (or dead): that process owns the log. Store
            # the cancel; its next write sees it and it ends the run canceled itself.
            canceled_here = attrs.evolve(
                snapshot, status=RunStatus.CANCELED, updated_at=now_ms()
            )
            # Steps are left as stored: the owner may have stored more since the load.
            if await save_changed_steps(
                storage,
                canceled_here,
                (),
                expected_status=snapshot.status,
                changed_steps=(),
            ):
                hub.status = RunStatus.CANCELED
                return
            continue
        async with hub.write_lock:
            log = hub.log
            await log.sync_with_storage()
            events: list[Chunk] = log.take_unflushed()
            canceled, finish = ending_chunks(
                run_id, log.next_seq, RunStatus.CANCELED, Outcome(StepStatus.CANCELED), Usage()
            )
            updated = attrs.evolve(
                snapshot,
                status=RunStatus.CANCELED,
                suspended_paths={},
                last_seq=finish.seq,
                updated_at=now_ms(),
            )
            ok = await save_changed_steps(
                storage,
                updated,
                [*events, canceled, finish],
                expected_status=snapshot.status,
                changed_steps=(),
            )
            if ok:
                log.publish_stored(canceled)
                log.publish_stored(finish)
        if ok:
            hub.ended_outside(result_from_snapshot(updated))
            return
        if events:
            # Nothing was written: the chunks we took still need storing.
            await storage.append_events(run_id, events)
            hub.log.mark_stored(events[-1].seq)
    raise RuntimeError(f"could not cancel run {run_id}: its status keeps changing")
