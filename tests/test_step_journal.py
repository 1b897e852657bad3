"""The step journal (SPEC §4): step records stored as rows, written only when they change,
and the migration of databases written before it (SQLite schema v1)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._core._handout import Handout
from trioflow._core._journal import StepJournal
from trioflow._core._model import RunSnapshot
from trioflow._core._status import RunStatus
from trioflow.storage import _sqlite_file
from trioflow.storage.sqlite import SCHEMA_VERSION, SqliteStorage

# --------------------------------------------------------------------------- v1 files


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def _schema(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    return {
        (name, " ".join(sql.split()))
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        )
    }


def v1_schema() -> set[tuple[str, str]]:
    """The schema that version 1 of trioflow's SQLite storage created."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _sqlite_file.MIGRATIONS[0](conn)
        return _schema(conn)
    finally:
        conn.close()


def downgrade_to_v1(path: Path) -> None:
    """Rewrite a current database as schema v1 wrote it: every run's step records inside
    its snapshot JSON (in their order), no step rows, schema version 1."""
    with raw(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        runs = conn.execute("SELECT run_id, snapshot FROM runs").fetchall()
        for run_id, text in runs:
            data = json.loads(text)
            data["steps"] = {
                key: json.loads(record)
                for key, record in conn.execute(
                    "SELECT step_key, record FROM steps WHERE run_id = ? ORDER BY rowid",
                    (run_id,),
                )
            }
            data["step_execution_path"] = [
                step
                for (step,) in conn.execute(
                    "SELECT step_id FROM path WHERE run_id = ? ORDER BY idx", (run_id,)
                )
            ]
            conn.execute(
                "UPDATE runs SET snapshot = ? WHERE run_id = ?",
                (json.dumps(data, separators=(",", ":"), ensure_ascii=False), run_id),
            )
        conn.execute("DROP TABLE steps")
        conn.execute("DROP TABLE path")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
        assert _schema(conn) == v1_schema()


# --------------------------------------------------------------------------- workflows


class Calls:
    def __init__(self) -> None:
        self.items: list[int] = []
        self.steps: list[str] = []
        self.block = True


def workflows(calls: Calls) -> list[tf.Workflow]:
    async def prep(ctx: tf.StepContext) -> dict[str, int]:
        calls.steps.append("prep")
        ctx.set_state({"prepared": 1})
        return {"amount": int(ctx.input_data["amount"]) * 2}

    async def ask(ctx: tf.StepContext) -> dict[str, Any]:
        calls.steps.append("ask")
        if ctx.resume_data is None:
            return await ctx.suspend({"reason": "approve?"})
        return {"amount": ctx.input_data["amount"], "ok": ctx.resume_data["ok"]}

    async def done(ctx: tf.StepContext) -> dict[str, Any]:
        calls.steps.append("done")
        return {"final": ctx.input_data, "state": dict(ctx.state)}

    approval = (
        tf.create_workflow(id="approval")
        .then(tf.create_step(id="prep", execute=prep))
        .then(tf.create_step(id="ask", execute=ask))
        .then(tf.create_step(id="done", execute=done))
        .commit()
    )

    async def item(ctx: tf.StepContext) -> int:
        value = int(ctx.input_data)
        calls.items.append(value)
        if calls.block and value >= 3:
            await trio.sleep_forever()
        return value * 10

    async def total(ctx: tf.StepContext) -> int:
        return sum(ctx.input_data)

    items = (
        tf.create_workflow(id="items")
        .then(tf.create_step(id="first", execute=_const([1, 2, 3, 4, 5])))
        .foreach(tf.create_step(id="item", execute=item), concurrency=2)
        .then(tf.create_step(id="total", execute=total))
        .commit()
    )

    async def one(ctx: tf.StepContext) -> int:
        calls.steps.append("one")
        return int(ctx.input_data) + 1

    async def two(ctx: tf.StepContext) -> int:
        calls.steps.append("two")
        return int(ctx.input_data) * 100

    paced = (
        tf.create_workflow(id="paced")
        .then(tf.create_step(id="one", execute=one))
        .then(tf.create_step(id="two", execute=two))
        .commit()
    )
    return [approval, items, paced]


def _const(value: Any) -> Any:
    async def execute(ctx: tf.StepContext) -> Any:
        return value

    return execute


async def _leave_runs(path: Path, calls: Calls) -> dict[str, str]:
    """A suspended, a crashed (mid-foreach) and a paused run, written by this code."""
    wfs = workflows(calls)
    approval, items, paced = wfs
    async with SqliteStorage(path) as storage:
        async with tf.open_runtime(storage=storage, workflows=wfs) as runtime:
            suspended = await runtime.create_run(approval)
            assert (await suspended.start(input_data={"amount": 21})).status == "suspended"
            paused = await runtime.create_run(paced)
            assert (await paused.start(input_data=1, per_step=True)).status == "paused"
            crashed = await runtime.create_run(items)
            await crashed.stream(input_data=None)
            with trio.fail_after(30):
                while True:
                    await trio.testing.wait_all_tasks_blocked()
                    settled = _settled_items(await storage.load_snapshot(crashed.run_id))
                    if sorted(calls.items) == [1, 2, 3, 4] and settled == [10, 20]:
                        break
            # Items 1 and 2 settled, 3 and 4 hang: leaving the runtime abandons the
            # execution, as a killed process would.
    return {"suspended": suspended.run_id, "crashed": crashed.run_id, "paused": paused.run_id}


def _settled_items(snapshot: RunSnapshot | None) -> list[Any]:
    """The outputs of the foreach items the stored run records as settled."""
    record = (snapshot.steps if snapshot is not None else {}).get("item") or {}
    outcomes = ((record.get("metadata") or {}).get("foreach") or {}).get("outcomes") or []
    return [o.get("output") for o in outcomes if o is not None and o.get("status") == "success"]


async def test_a_v1_database_migrates_and_its_runs_resume_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    calls = Calls()
    ids = await _leave_runs(path, calls)
    async with SqliteStorage(path) as storage:
        before: dict[str, RunSnapshot | None] = {
            name: await storage.load_snapshot(run_id) for name, run_id in ids.items()
        }
    assert before["suspended"] is not None
    assert before["suspended"].step_execution_path == ["prep", "ask"]
    assert {name: s.status for name, s in before.items() if s is not None} == {
        "suspended": "suspended",
        "crashed": "running",
        "paused": "paused",
    }
    downgrade_to_v1(path)
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)

    calls = Calls()
    calls.block = False
    wfs = workflows(calls)
    approval, items, paced = wfs
    async with SqliteStorage(path) as storage:
        for name, run_id in ids.items():
            loaded = await storage.load_snapshot(run_id)
            assert loaded == before[name]
            assert loaded is not None
            assert list(loaded.steps) == list(before[name].steps)  # type: ignore[union-attr]
        with raw(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
            stored = conn.execute("SELECT count(*) FROM steps").fetchone()[0]
            assert stored == sum(len(s.steps) for s in before.values() if s is not None)
            for (text,) in conn.execute("SELECT snapshot FROM runs"):
                assert json.loads(text)["steps"] == {}
                assert json.loads(text)["step_execution_path"] == []

        async with tf.open_runtime(storage=storage, workflows=wfs) as runtime:
            run = await runtime.create_run(approval, run_id=ids["suspended"])
            result = await run.resume(resume_data={"ok": True}, step="ask")
            assert result.status == "success", result
            assert result.result == {
                "final": {"amount": 42, "ok": True},
                "state": {"prepared": 1},
            }
            assert calls.steps == ["ask", "done"]

            run = await runtime.create_run(items, run_id=ids["crashed"])
            with trio.fail_after(30):
                result = await run.restart()
            assert result.status == "success", result
            assert result.result == 150
            # the settled items are kept: exactly the ones that were running run again
            assert sorted(calls.items) == [3, 4, 5]

            calls.steps.clear()
            run = await runtime.create_run(paced, run_id=ids["paused"])
            result = await run.restart()
            assert result.status == "success", result
            assert result.result == 200
            assert calls.steps == ["two"]
            assert result.steps["one"].output == 2


# --------------------------------------------------------------------------- PostgreSQL v2


def _downgrade_pg_to_v2(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn, conn.transaction():
        runs = conn.execute("SELECT run_id, snapshot FROM trioflow_runs").fetchall()
        for run_id, text in runs:
            data = json.loads(text)
            data["steps"] = {
                key: json.loads(record)
                for key, record in conn.execute(
                    "SELECT step_key, record FROM trioflow_steps WHERE run_id = %s ORDER BY ord",
                    (run_id,),
                )
            }
            conn.execute(
                "UPDATE trioflow_runs SET snapshot = %s WHERE run_id = %s",
                (json.dumps(data, separators=(",", ":"), ensure_ascii=False), run_id),
            )
        conn.execute("DROP TABLE trioflow_steps")
        conn.execute("UPDATE trioflow_meta SET value = '2' WHERE key = 'schema_version'")


async def test_a_postgres_v2_database_migrates_and_a_suspended_run_resumes(
    postgres_db: str,
) -> None:
    calls = Calls()
    wfs = workflows(calls)
    approval = wfs[0]
    async with tf.PostgresStorage(postgres_db) as storage:
        async with tf.open_runtime(storage=storage, workflows=wfs) as runtime:
            run = await runtime.create_run(approval)
            assert (await run.start(input_data={"amount": 5})).status == "suspended"
        ordered = RunSnapshot(
            run_id="ordered",
            workflow_id="wf",
            steps={k: {"status": "success", "output": i} for i, k in enumerate("zyx")},
        )
        assert await storage.create_run(ordered)
        before = await storage.load_snapshot(run.run_id)
    await trio.to_thread.run_sync(_downgrade_pg_to_v2, postgres_db)
    async with tf.PostgresStorage(postgres_db) as storage:
        assert await storage.load_snapshot(run.run_id) == before
        loaded = await storage.load_snapshot("ordered")
        assert loaded == ordered
        assert loaded is not None
        assert list(loaded.steps) == ["z", "y", "x"]
        async with tf.open_runtime(storage=storage, workflows=wfs) as runtime:
            again = await runtime.create_run(approval, run_id=run.run_id)
            result = await again.resume(resume_data={"ok": False}, step="ask")
            assert result.status == "success", result
            assert result.result["final"] == {"amount": 10, "ok": False}


# --------------------------------------------------------------------------- the engine's writes


class CheckedSqlite(SqliteStorage):
    """SqliteStorage that reads every snapshot back right after writing it: what it
    returns must be what was written, step order included (the engine names only the
    changed steps)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.changed: list[list[str] | None] = []

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Any] = (),
        *,
        expected_status: Any = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        written = await super().save_snapshot(
            snapshot, events, expected_status=expected_status, changed_steps=changed_steps
        )
        if written:
            self.changed.append(None if changed_steps is None else list(changed_steps))
            loaded = await self.load_snapshot(snapshot.run_id)
            assert loaded == snapshot
            assert list(loaded.steps) == list(snapshot.steps)
        return written


def _step(step_id: str, fn: Any) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> Any:
        return fn(ctx)

    return tf.create_step(id=step_id, execute=execute)


async def test_a_long_chain_writes_one_step_record_per_write(tmp_path: Path) -> None:
    wf = tf.create_workflow(id="chain")
    for i in range(40):
        wf = wf.then(_step(f"s{i}", lambda ctx: int(ctx.input_data) + 1))
    wf = wf.commit()
    storage = CheckedSqlite(tmp_path / "chain.db")
    async with storage, tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
        run = await runtime.create_run(wf)
        result = await run.start(input_data=0)
        assert result.status == "success"
        assert result.result == 40
    # the claim and the first write of the execution store every record; after that each
    # write names the step that settled (the cost does not grow with the steps before it)
    incremental = [c for c in storage.changed if c is not None]
    assert len(incremental) >= 39
    assert max(len(c) for c in incremental) <= 1
    assert sum(c is None for c in storage.changed) <= 2


def _shapes_workflow() -> tf.Workflow:
    """A workflow of every shape: parallel, branch, a loop over a nested workflow (its
    records deleted and written again), foreach over a nested workflow, a suspension."""

    async def ask(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"n": ctx.input_data})
        return {"v": ctx.resume_data["v"]}

    inner = (
        tf.create_workflow(id="inner")
        .then(_step("a", lambda ctx: {"v": ctx.input_data["v"] + 1}))
        .then(_step("b", lambda ctx: {"v": ctx.input_data["v"] * 2}))
        .commit()
    )
    asking = tf.create_workflow(id="asking").then(tf.create_step(id="ask", execute=ask)).commit()
    per_item = tf.create_workflow(id="per-item").then(_step("double", lambda c: c.input_data * 2))
    return (
        tf.create_workflow(id="shapes")
        .then(_step("start", lambda ctx: {"v": 1}))
        .parallel([_step("p1", lambda ctx: 1), _step("p2", lambda ctx: 2)])
        .branch([(lambda ctx: True, _step("yes", lambda ctx: {"v": 1}))])
        .map(lambda ctx: {"v": 1})
        .dountil(inner, lambda ctx: ctx.input_data["v"] > 20)
        .map(lambda ctx: [1, 2, 3])
        .foreach(per_item.commit(), concurrency=2)
        .map(lambda ctx: 5)
        .then(asking)
        .commit()
    )


async def test_every_shape_reads_back_what_the_engine_wrote(tmp_path: Path) -> None:
    wf = _shapes_workflow()
    storage = CheckedSqlite(tmp_path / "shapes.db")
    async with storage, tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
        run = await runtime.create_run(wf)
        result = await run.start(input_data=None)
        assert result.status == "suspended", result
        result = await run.resume(resume_data={"v": 7})
        assert result.status == "success", result
        assert result.result == {"ask": {"v": 7}} or result.result == {"v": 7}
    assert any(c for c in storage.changed if c is not None)


async def test_the_testing_wrappers_pass_the_changed_steps_on(tmp_path: Path) -> None:
    """FaultyStorage and ClockGuardStorage (the crash-point harness) hand the engine's
    ``changed_steps`` to the storage they wrap, so crash tests exercise journaled writes;
    what FaultyStorage acknowledges is still the whole snapshot."""
    from trioflow.testing import ClockGuardStorage, FaultyStorage

    wf = tf.create_workflow(id="chain")
    for i in range(6):
        wf = wf.then(_step(f"s{i}", lambda ctx: int(ctx.input_data) + 1))
    wf = wf.commit()
    inner = CheckedSqlite(tmp_path / "wrapped.db")
    faulty = FaultyStorage(inner)
    storage = ClockGuardStorage(faulty)
    async with inner, tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
        run = await runtime.create_run(wf, run_id="wrapped")
        result = await run.start(input_data=0)
        assert result.result == 6
        stored = await inner.load_snapshot("wrapped")
    assert [c for c in inner.changed if c is not None] != []
    assert max(len(c) for c in inner.changed if c is not None) <= 1
    acked = faulty.acknowledged("wrapped").snapshot
    assert acked is not None
    assert stored is not None
    assert acked == stored
    assert list(acked.steps) == [f"s{i}" for i in range(6)]


class RecordingSqlite(SqliteStorage):
    """Records, per write, the status it expected and the steps it named as changed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[tuple[Any, list[str] | None]] = []

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Any] = (),
        *,
        expected_status: Any = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        self.writes.append(
            (expected_status, None if changed_steps is None else list(changed_steps))
        )
        return await super().save_snapshot(
            snapshot, events, expected_status=expected_status, changed_steps=changed_steps
        )


async def test_claims_and_cancels_name_no_changed_step(tmp_path: Path) -> None:
    """The start and resume claims and the cancel of a suspended run change no step
    record: they say so (``changed_steps=()``), and only each execution's first write
    stores every record."""

    async def ask(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({})
        return ctx.resume_data

    wf = (
        tf.create_workflow(id="ask")
        .then(_step("first", lambda ctx: 1))
        .then(tf.create_step(id="ask", execute=ask))
        .commit()
    )
    storage = RecordingSqlite(tmp_path / "claims.db")
    async with storage, tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
        resumed = await runtime.create_run(wf)
        assert (await resumed.start(input_data=0)).status == "suspended"
        assert (await resumed.resume(resume_data={"v": 1})).status == "success"
        canceled = await runtime.create_run(wf)
        assert (await canceled.start(input_data=0)).status == "suspended"
        await canceled.cancel()
        snapshot = await storage.load_snapshot(canceled.run_id)
        assert snapshot is not None
        assert snapshot.status == "canceled"
        assert list(snapshot.steps) == ["first", "ask"]
    claims = [
        c for expected, c in storage.writes if expected in (RunStatus.PENDING, RunStatus.SUSPENDED)
    ]
    # start, resume, start, cancel
    assert claims == [[], [], [], []]
    assert [c for _, c in storage.writes].count(None) == 3  # the three executions


# --------------------------------------------------------------------------- MemoryStorage


class Untouchable(dict[str, Any]):
    """A step record the strict-JSON check must not walk."""

    def values(self) -> Any:
        raise AssertionError("a record not named in changed_steps was checked")


def _snap(status: RunStatus, steps: dict[str, Any]) -> RunSnapshot:
    return RunSnapshot(
        run_id="r", workflow_id="wf", status=status, created_at=1, updated_at=1, steps=steps
    )


async def test_memory_storage_checks_only_the_named_step_records() -> None:
    storage = tf.MemoryStorage()
    first = {"status": "success", "output": 1}
    assert await storage.create_run(_snap(RunStatus.PENDING, {"a": first}))
    # A record not named is taken as stored (the caller's promise): the check does not
    # walk it, so its cost does not grow with the steps settled before.
    steps: dict[str, Any] = {"a": Untouchable(first), "b": {"status": "success", "output": 2}}
    assert await storage.save_snapshot(_snap(RunStatus.RUNNING, steps), changed_steps=["b"])
    # A named record that is not strict JSON is refused, naming the step; nothing stored.
    bad = {**steps, "c": {"status": "success", "output": float("nan")}}
    with pytest.raises(tf.StorageError, match=r"snapshot of run 'r', step 'c'"):
        await storage.save_snapshot(_snap(RunStatus.RUNNING, bad), changed_steps=["c"])
    loaded = await storage.load_snapshot("r")
    assert loaded is not None
    assert list(loaded.steps) == ["a", "b"]
    with pytest.raises(TypeError, match="not a str"):
        await storage.save_snapshot(_snap(RunStatus.RUNNING, steps), changed_steps="b")


async def test_memory_storage_checks_every_new_record_of_a_whole_write() -> None:
    storage = tf.MemoryStorage()
    assert await storage.create_run(_snap(RunStatus.PENDING, {}))
    bad = {"a": {"status": "success", "output": float("inf")}}
    with pytest.raises(tf.StorageError, match=r"step 'a'"):
        await storage.save_snapshot(_snap(RunStatus.RUNNING, bad))
    with pytest.raises(tf.StorageError, match=r"step 'a'"):
        await storage.create_run(attrs.evolve(_snap(RunStatus.PENDING, bad), run_id="other"))


# --------------------------------------------------------------------------- handing out


def test_handout_reuses_only_replicas_nobody_holds() -> None:
    journal = StepJournal()
    path: list[str] = []
    handout = Handout()
    journal["a"] = {"v": 1}
    path.append("a")
    first, first_path = handout.take(journal, journal.take_changed(), path)
    assert first == {"a": {"v": 1}}
    assert first is not journal
    kept = json.dumps([first, first_path])
    journal["b"] = {"v": 2}
    path.append("b")
    second, second_path = handout.take(journal, journal.take_changed(), path)
    # ``first`` is still held here: it was not touched, the write got another dict
    assert second is not first
    assert json.dumps([first, first_path]) == kept
    assert list(second.items()) == list(journal.items())
    assert second_path == path
    assert second_path is not path
    handed = {id(first), id(second)}
    del first, first_path, second, second_path
    journal["a"] = {"v": 3}
    del journal["b"]
    journal["c"] = {"v": 4}
    path.append("c")
    third, third_path = handout.take(journal, journal.take_changed(), path)
    assert list(third.items()) == list(journal.items())
    assert third_path == path
    # nobody holds the earlier dicts any more: one of them was brought up to date
    assert id(third) in handed


def test_handout_replays_each_write_as_storage_applies_it() -> None:
    # a key deleted in one write and added again in a later one moves to the end, as it
    # does in the journal (and in storage): replicas replay write by write
    journal = StepJournal({"x": {"v": 0}})
    handout = Handout()
    path: list[str] = []
    held = []
    ops: list[Any] = [
        ("set", "a"),
        ("set", "b"),
        ("del", "a"),
        ("set", "c"),
        ("set", "a"),
        ("set", "x"),
        ("del", "c"),
        ("set", "d"),
        ("set", "c"),
    ]
    for i, (op, key) in enumerate(ops):
        if op == "set":
            journal[key] = {"v": i}
        else:
            del journal[key]
        steps, _ = handout.take(journal, journal.take_changed(), path)
        assert list(steps.items()) == list(journal.items()), (i, op, key)
        if i % 3 == 0:
            held.append((steps, json.dumps(list(steps.items()))))
        del steps
    for steps, text in held:
        assert json.dumps(list(steps.items())) == text


async def test_snapshots_handed_to_storage_never_change(tmp_path: Path) -> None:
    """Every snapshot the engine hands to storage stays as it was handed, also while the
    engine hands later writes the dicts of snapshots storage let go; and each equals the
    journal at its write, step order included."""

    class Keeping(SqliteStorage):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.kept: list[tuple[RunSnapshot, str]] = []
            self.count = 0

        async def save_snapshot(
            self,
            snapshot: RunSnapshot,
            events: Sequence[Any] = (),
            *,
            expected_status: Any = None,
            changed_steps: Collection[str] | None = None,
        ) -> bool:
            self.count += 1
            if self.count % 3 == 0:  # keep some, let the others go
                text = json.dumps([list(snapshot.steps.items()), snapshot.step_execution_path])
                self.kept.append((snapshot, text))
            return await super().save_snapshot(
                snapshot, events, expected_status=expected_status, changed_steps=changed_steps
            )

    checked = 0
    take = Handout.take

    def checking(self: Handout, steps: Any, changed: Any, path: list[str]) -> Any:
        nonlocal checked
        handed, handed_path = take(self, steps, changed, path)
        assert list(handed.items()) == list(steps.items())
        assert handed_path == path
        checked += 1
        return handed, handed_path

    wf = _shapes_workflow()
    storage = Keeping(tmp_path / "kept.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Handout, "take", checking)
        async with storage, tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
            for _ in range(2):
                run = await runtime.create_run(wf)
                assert (await run.start(input_data=None)).status == "suspended"
                assert (await run.resume(resume_data={"v": 7})).status == "success"
    assert checked > 20
    assert len(storage.kept) > 5
    for snapshot, text in storage.kept:
        assert json.dumps([list(snapshot.steps.items()), snapshot.step_execution_path]) == text
