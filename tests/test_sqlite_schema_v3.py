"""SQLite schema v3 (issue 15): a file that may hold a ``blobs`` table (large values stored
once, trioflow/storage/_blobs.py) is version 3, so a trioflow that knows only v2 (and would
read such a value as ``null``) refuses it; a v2 file migrates to v3 (an empty step) and its
runs resume.

Skipped until ``trioflow.storage._sqlite_file.MIGRATIONS`` has its v3 step."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import trioflow as tf
from trioflow.storage import _sqlite_file
from trioflow.storage.sqlite import SCHEMA_VERSION, SqliteStorage

pytestmark = pytest.mark.skipif(
    SCHEMA_VERSION < 3, reason="SQLite schema v3 (an empty migration step) is not in yet"
)


def approval() -> tf.Workflow:
    async def ask(ctx: Any) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"why": "approve"})
        return {"ok": ctx.resume_data["ok"], "input": ctx.input_data}

    return tf.create_workflow(id="approve").then(tf.create_step(id="ask", execute=ask)).commit()


def set_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def test_a_v2_file_migrates_to_v3_and_its_suspended_run_resumes(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    wf = approval()
    async with SqliteStorage(path) as storage:
        async with tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
            run = await runtime.create_run(wf)
            assert (await run.start(input_data=7)).status == "suspended"
        before = await storage.load_snapshot(run.run_id)
    # v3 adds no table of its own (blobs are created when first needed): a v2 file is
    # this one with the version set back.
    set_version(path, 2)
    async with SqliteStorage(path) as storage:
        assert user_version(path) == SCHEMA_VERSION == 3
        assert await storage.load_snapshot(run.run_id) == before
        async with tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
            again = await runtime.create_run(wf, run_id=run.run_id)
            result = await again.resume(resume_data={"ok": True}, step="ask")
            assert result.status == "success", result
            assert result.result == {"ok": True, "input": 7}


async def test_a_trioflow_knowing_only_v2_refuses_a_v3_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    async with SqliteStorage(path):
        pass
    monkeypatch.setattr(_sqlite_file, "MIGRATIONS", _sqlite_file.MIGRATIONS[:2])
    with pytest.raises(tf.StorageError, match="newer"):
        async with SqliteStorage(path):
            pass  # pragma: no cover
    assert user_version(path) == 3
