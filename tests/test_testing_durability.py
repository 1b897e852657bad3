"""trioflow.testing finds storages and harness blind spots that a crash exposes: a storage
that acknowledges a snapshot write and loses it at the crash is reported by the default
crash-point harness (not only with ``strict_log``), and a storage's raw error during
concurrent resumes is a clear ``ModelMismatch`` ("exactly one must win"), not an
exception group escaping from the harness."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow._core._chunks import Chunk
from trioflow._core._model import RunSnapshot
from trioflow._core._status import RunStatus
from trioflow.testing import (
    CrashPointMismatch,
    FaultPlan,
    GeneratedWorkflow,
    ModelMismatch,
    RunPlan,
    StepSpec,
    ThenSpec,
    WorkflowSpec,
    check_against_model,
    check_crash_points,
)


class WriteBackStorage(tf.MemoryStorage):
    """A storage with a write-back cache that syncs only status changes: a snapshot of a
    run that stays ``running`` (progress inside the run) is acknowledged, its chunks are
    stored, but the snapshot itself stays in memory the crash loses. Without a crash a
    later status change supersedes it, so an uninterrupted run looks fine."""

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
    ) -> bool:
        current = await self.load_snapshot(snapshot.run_id)
        if (
            current is not None
            and current.status == snapshot.status == RunStatus.RUNNING
            and (expected_status is None or RunStatus.RUNNING in _statuses(expected_status))
        ):
            await self.append_events(snapshot.run_id, events)
            return True  # acknowledged, never written
        return await super().save_snapshot(snapshot, events, expected_status=expected_status)


def _statuses(expected: RunStatus | Sequence[RunStatus]) -> Sequence[RunStatus]:
    return (expected,) if isinstance(expected, RunStatus) else expected


async def plus_one(ctx: tf.StepContext) -> int:
    await trio.sleep(1)
    return int(ctx.input_data) + 1


def chain() -> tf.Workflow:
    builder = tf.create_workflow(id="chain")
    for name in ("a", "b", "c"):
        builder = builder.then(tf.create_step(id=name, execute=plus_one))
    return builder.commit()


async def test_the_write_back_storage_passes_an_uninterrupted_run(autojump_clock: Any) -> None:
    async with tf.open_runtime(storage=WriteBackStorage()):
        run = await chain().create_run()
        result = await run.start(input_data=0)
    assert result.status == "success"
    assert result.result == 3


async def test_a_lost_acknowledged_snapshot_is_reported_by_default(autojump_clock: Any) -> None:
    # The runs recover (the steps are idempotent): only comparing what storage holds after
    # the crash with what it acknowledged before it shows the loss.
    with pytest.raises(CrashPointMismatch) as caught:
        await check_crash_points(chain(), input_data=0, storage_factory=WriteBackStorage)
    message = str(caught.value)
    assert "storage lost an acknowledged snapshot write" in message
    assert "'a'" in message  # the acknowledged snapshot recorded step a as finished


async def test_a_sound_storage_loses_nothing_at_any_crash_point(autojump_clock: Any) -> None:
    report = await check_crash_points(chain(), input_data=0)
    assert report.points
    assert not report.failures()


class ClaimFailsStorage(tf.MemoryStorage):
    """A storage whose resume claim (a compare-and-set from ``suspended``) fails with a
    raw error, as a disk I/O error would."""

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
    ) -> bool:
        if expected_status is RunStatus.SUSPENDED:
            await trio.lowlevel.checkpoint()
            raise OSError("disk I/O error")
        return await super().save_snapshot(snapshot, events, expected_status=expected_status)


async def test_a_raw_storage_error_in_concurrent_resumes_is_a_model_mismatch(
    autojump_clock: Any,
) -> None:
    generated = GeneratedWorkflow(
        WorkflowSpec(id="wf", entries=(ThenSpec(node=StepSpec(id="a", action="suspend")),))
    )
    with pytest.raises(ModelMismatch) as caught:
        await check_against_model(
            generated,
            RunPlan(input_data={"x": 1}),
            FaultPlan(concurrent_resumes=3),
            storage_factory=ClaimFailsStorage,
        )
    message = str(caught.value)
    assert "3 concurrent resumes: 0 won" in message
    assert "OSError: disk I/O error" in message
    assert "exactly one must win" in message
