"""The shape of storage costs behind issue 15's figures, held by tests (no timing).

- A large value reaches SQLite five times for one step output (the step's record, its
  result chunk, the next step's start chunk, result chunk and record): it must be stored
  once (``trioflow.storage._blobs``), read back whole, and deleted with the last run
  using it.
- The benchmark scenarios added for the issue run (``--quick``) and print their figures.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import trioflow as tf
from trioflow.storage import _blobs

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
SIZE = 1024 * 1024  # 1 MiB: far above _blobs.THRESHOLD


async def big(ctx: tf.StepContext) -> Any:
    return {"text": "y" * SIZE, "n": ctx.input_data}


async def take_len(ctx: tf.StepContext) -> int:
    return len(ctx.input_data["text"])


async def plus_one(ctx: tf.StepContext) -> int:
    return int(ctx.input_data) + 1


def big_then_steps(workflow_id: str = "big-then-steps") -> tf.Workflow:
    return (
        tf.create_workflow(id=workflow_id)
        .then(tf.create_step(id="big", execute=big))
        .then(tf.create_step(id="take_len", execute=take_len))
        .then(tf.create_step(id="plus_one", execute=plus_one))
        .commit()
    )


def stored_text_chars(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        total = 0
        for sql in (
            "SELECT sum(length(snapshot)) FROM runs",
            "SELECT sum(length(record)) FROM steps",
            "SELECT sum(length(chunk)) FROM events",
        ):
            total += conn.execute(sql).fetchone()[0] or 0
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "blobs" in names:
            total += conn.execute("SELECT sum(length(value)) FROM blobs").fetchone()[0] or 0
        return total


def blob_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "blobs" not in names:
            return 0
        return int(conn.execute("SELECT count(*) FROM blobs").fetchone()[0])


async def test_a_large_step_output_is_stored_once_and_read_back_whole(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    workflow = big_then_steps()
    async with tf.SqliteStorage(db) as storage, tf.open_runtime(storage=storage):
        run = await workflow.create_run()
        result = await run.start(input_data=7)
        assert result.status == "success"
        assert result.result == SIZE + 1

        # Stored once (the record, 3 chunks and the next record hold it otherwise).
        assert stored_text_chars(db) < 1.2 * SIZE
        assert blob_count(db) == 1

        # Read back: the snapshot's records and every chunk carry the whole value.
        snapshot = await storage.load_snapshot(run.run_id)
        assert snapshot is not None
        assert snapshot.steps["big"]["output"] == {"text": "y" * SIZE, "n": 7}
        assert snapshot.steps["take_len"]["payload"] == {"text": "y" * SIZE, "n": 7}
        wire = [tf.to_wire(chunk) for chunk in await storage.read_events(run.run_id)]
        carrying = [
            w for w in wire if "y" * 100 in json.dumps(w.get("payload", {}), ensure_ascii=False)
        ]
        assert len(carrying) == 3
        for w in carrying:
            payload = w["payload"]
            value = payload.get("output") if payload.get("id") == "big" else payload["payload"]
            assert value == {"text": "y" * SIZE, "n": 7}



async def test_rows_without_large_values_are_stored_as_before(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    step = tf.create_step(id="plus_one", execute=plus_one)
    workflow = tf.create_workflow(id="small").then(step).commit()
    async with tf.SqliteStorage(db) as storage, tf.open_runtime(storage=storage):
        run = await workflow.create_run()
        assert (await run.start(input_data=1)).result == 2
    with sqlite3.connect(db) as conn:
        texts = [row[0] for row in conn.execute("SELECT record FROM steps")]
        texts += [row[0] for row in conn.execute("SELECT chunk FROM events")]
        texts += [row[0] for row in conn.execute("SELECT snapshot FROM runs")]
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert texts
    assert not [t for t in texts if t.startswith(_blobs.MARK)]
    assert "blobs" not in names  # created by the first write that needs it


async def test_a_blob_shared_by_two_runs_is_deleted_with_the_last_one(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    workflow = big_then_steps()
    async with tf.SqliteStorage(db) as storage, tf.open_runtime(storage=storage) as runtime:
        first = await workflow.create_run()
        second = await workflow.create_run()
        assert (await first.start(input_data=1)).status == "success"
        assert (await second.start(input_data=1)).status == "success"
        assert blob_count(db) == 1  # the same value: one blob
        assert await runtime.delete_run(first.run_id)
        assert blob_count(db) == 1
        snapshot = await storage.load_snapshot(second.run_id)
        assert snapshot is not None
        assert snapshot.steps["big"]["output"]["text"] == "y" * SIZE
        assert await runtime.delete_run(second.run_id)
        assert blob_count(db) == 0


async def test_a_missing_blob_is_a_storage_error_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    workflow = big_then_steps()
    async with tf.SqliteStorage(db) as storage, tf.open_runtime(storage=storage):
        run = await workflow.create_run()
        assert (await run.start(input_data=1)).status == "success"
    with sqlite3.connect(db) as conn:
        (digest,) = conn.execute("SELECT hash FROM blobs").fetchone()
        conn.execute("DELETE FROM blobs")
    async with tf.SqliteStorage(db) as storage:
        with pytest.raises(tf.StorageError, match=f"blob {digest}.*missing"):
            await storage.load_snapshot(run.run_id)
        with pytest.raises(tf.StorageError, match=f"blob {digest}.*missing"):
            await storage.read_events(run.run_id)


def test_split_text_puts_back_exactly_the_value() -> None:
    value = {
        "type": "workflow-step-result",
        "payload": {"id": "s", "output": ["z" * _blobs.THRESHOLD, 1], "small": "é"},
        "seq": 3,
    }
    split = _blobs.dumps_split(value, "a test value", chunk=True)
    assert split.text.startswith(_blobs.MARK)
    assert len(split.blobs) == 1
    conn = sqlite3.connect(":memory:")
    try:
        _blobs.store(conn, "r", split.blobs)
        assert _blobs.restore(conn, split.text, "a test value") == value
    finally:
        conn.close()


# --------------------------------------------------------------------------- benchmarks


def run_bench(*argv: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_bench_storage_big_output_prints_its_growth() -> None:
    (row,) = run_bench("bench_storage.py", "--big-output", "--quick")
    assert row["scenario"] == "sqlite-big-output"
    for figure in ("growth_mb", "floor_growth_mb", "goal_mb", "ratio_to_floor"):
        assert isinstance(row[figure], int | float), (figure, row)
    assert row["meets_goal"] is True


def test_bench_postgres_transactions_prints_its_counts() -> None:
    (row,) = run_bench("bench_postgres_workers.py", "--transactions")
    assert row["scenario"] == "pg-run-transactions"
    if "skipped" in row:
        if os.environ.get("TRIOFLOW_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"skipped under TRIOFLOW_REQUIRE_POSTGRES=1: {row['skipped']}")
        pytest.skip(row["skipped"])
    for figure in ("transactions", "queued_transactions", "floor_transactions"):
        assert isinstance(row[figure], int), (figure, row)
    assert row["calls"]["save_snapshot"] >= 1


async def test_small_reads_of_an_idle_sqlite_storage_run_without_a_thread_hop(
    tmp_path: Path,
) -> None:
    # A hop to the reader thread and back costs more than the read (mostly waiting for
    # the GIL to come back): load_snapshot and last_seq run inline once the reader is open.
    step = tf.create_step(id="plus_one", execute=plus_one)
    workflow = tf.create_workflow(id="reads").then(step).commit()
    async with tf.SqliteStorage(tmp_path / "runs.db") as storage, tf.open_runtime(
        storage=storage
    ):
        run = await workflow.create_run()
        assert (await run.start(input_data=1)).result == 2
        await storage.read_events(run.run_id)  # opens the reader's connection
        submitted: list[object] = []
        reader = storage._reader
        submit = reader._submit
        reader._submit = lambda job: (submitted.append(job), submit(job))[1]  # type: ignore[method-assign]
        snapshot = await storage.load_snapshot(run.run_id)
        assert snapshot is not None
        assert snapshot.status == "success"
        assert await storage.last_seq(run.run_id) > 0
        assert submitted == []
        assert [c.seq for c in await storage.read_events(run.run_id, limit=1)] == [1]
        assert len(submitted) == 1  # read_events (any size) still goes to the thread
