"""SQLite storage under hostile conditions (issue 12, "SQLite and storage errors"; SPEC §4):
several processes opening one new file at once, read-only files and directories, a full
disk, rows that are not JSON, a corrupt data page, values that are not strict JSON.

The read-only tests need a user that the permission bits stop: as root (where chmod stops
nothing) the reading child process drops to ``nobody`` (uid 65534) before it opens the file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._core import _chunks as ch
from trioflow._core._model import RunSnapshot
from trioflow.storage import _sqlite_file as sqlite_file
from trioflow.storage import sqlite as sqlite_module
from trioflow.storage.sqlite import SqliteStorage

S = tf.RunStatus
NOBODY = 65534


def snap(run_id: str, status: tf.RunStatus = S.PENDING, **fields: Any) -> RunSnapshot:
    return RunSnapshot(run_id=run_id, workflow_id="wf", status=status, created_at=1, **fields)


def outs(run_id: str, first: int, count: int, size: int = 0) -> list[ch.Chunk]:
    return [
        ch.WorkflowStepOutput(
            run_id=run_id,
            seq=seq,
            payload=ch.StepOutputPayload(output={"n": seq, "pad": "x" * size}, step_name="s"),
        )
        for seq in range(first, first + count)
    ]


# Plain file access, kept out of the async tests' bodies (ASYNC240).
def read(path: Path) -> bytes:
    return path.read_bytes()


def chmod(path: Path, mode: int) -> None:
    path.chmod(mode)


def raw_execute(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def make_file(path: Path, events: int = 3, size: int = 0) -> None:
    async with SqliteStorage(path) as storage:
        await storage.create_run(snap("kept", state={"v": 1}))
        await storage.append_events("kept", outs("kept", 1, events, size))


# --------------------------------------------------------------------------- 8 processes, one new file


def _opener(barrier: Any, directory: str, rounds: int, name: int, results: Any) -> None:
    # A child process: every round, all children open the same new file at once (the
    # whole storage, threads included: a bare synchronous open hardly ever loses the race).
    failures: list[str] = []
    for index in range(rounds):
        barrier.wait()
        path = os.path.join(directory, f"round-{index}.db")

        async def open_and_write(path: str = path, index: int = index) -> None:
            async with SqliteStorage(path, timeout=30) as storage:
                assert await storage.create_run(snap(f"{name}-{index}"))

        try:
            trio.run(open_and_write)
        except Exception as exc:
            failures.append(f"round {index}: {exc!r}")
    results.put(failures)


def _open_concurrently(directory: Path, processes: int, rounds: int) -> list[str]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    children = [
        context.Process(target=_opener, args=(barrier, str(directory), rounds, i, results))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    failures = [failure for _ in children for failure in results.get(timeout=120)]
    for child in children:
        child.join(30)
    return failures


async def test_eight_processes_opening_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Before the fix, `PRAGMA journal_mode = WAL` answered "database is locked" in a few
    # of every 100 opens (about one round in 100 failed), whatever the timeout.
    rounds = 100
    failures = await trio.to_thread.run_sync(_open_concurrently, tmp_path, 8, rounds)
    assert failures == []
    for index in (0, rounds - 1):
        rows = raw_execute(tmp_path / f"round-{index}.db", "SELECT count(*) FROM runs")
        assert rows == [(8,)]


class BusyWalSwitch(sqlite3.Connection):
    """A connection whose first ``PRAGMA journal_mode = WAL`` calls answer SQLITE_BUSY at
    once, as SQLite does (without the busy handler) when another process is switching the
    same new file at that moment."""

    failures = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.replace(" ", "").upper() == "PRAGMAJOURNAL_MODE=WAL" and BusyWalSwitch.failures:
            BusyWalSwitch.failures -= 1
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = 5  # SQLITE_BUSY
            error.sqlite_errorname = "SQLITE_BUSY"
            raise error
        return super().execute(sql, *args)


def connect_with(factory: type[sqlite3.Connection]) -> Callable[..., sqlite3.Connection]:
    def connect(self: SqliteStorage, target: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        uri = bool(args[0]) if args else bool(kwargs.get("uri", False))
        return sqlite3.connect(
            target, timeout=self._timeout, isolation_level=None, uri=uri, factory=factory
        )

    return connect


async def test_busy_wal_switch_is_retried_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqliteStorage, "_connect", connect_with(BusyWalSwitch))
    monkeypatch.setattr(BusyWalSwitch, "failures", 3)
    async with SqliteStorage(tmp_path / "runs.db", timeout=30) as storage:
        assert await storage.create_run(snap("r"))
    assert BusyWalSwitch.failures == 0
    # past the timeout, the error says the file is locked and for how long it waited
    monkeypatch.setattr(BusyWalSwitch, "failures", 1_000_000)
    with pytest.raises(tf.StorageError, match=r"locked by another connection.*timeout of 0 s"):
        await SqliteStorage(tmp_path / "other.db", timeout=0).open()


# --------------------------------------------------------------------------- read-only files


READER = """
import json, os, sys, trio
import trioflow as tf
from trioflow._core._model import RunSnapshot
from trioflow.storage.sqlite import SqliteStorage

if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)

async def main():
    out = {}
    async with SqliteStorage(sys.argv[1]) as storage:
        out["runs"] = [r.run_id for r in await storage.list_runs()]
        snapshot = await storage.load_snapshot("kept")
        out["state"] = snapshot.state
        out["events"] = [c.seq for c in await storage.read_events("kept")]
        try:
            await storage.create_run(RunSnapshot(run_id="new", workflow_id="wf", created_at=2))
            out["write"] = "written"
        except tf.StorageError as exc:
            out["write"] = str(exc)
    print(json.dumps(out))

trio.run(main)
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that ``nobody`` can reach (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="trioflow-ro-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


def read_as_unprivileged(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", READER, str(path)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def assert_reads_and_refuses_writes(db: Path) -> None:
    before = read(db)
    names = sorted(p.name for p in db.parent.iterdir())
    out = read_as_unprivileged(db)
    assert out["runs"] == ["kept"]
    assert out["state"] == {"v": 1}
    assert out["events"] == [1, 2, 3]
    assert "read-only" in out["write"], out["write"]
    assert str(db) in out["write"]
    assert read(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == names


@pytest.mark.parametrize("what", ["directory", "file", "both"])
async def test_read_only_database_is_readable_and_writes_say_read_only(
    shared_dir: Path, what: str
) -> None:
    db = shared_dir / "runs.db"
    await make_file(db)
    if what in ("file", "both"):
        chmod(db, 0o444)
    if what in ("directory", "both"):
        chmod(shared_dir, 0o555)
    await trio.to_thread.run_sync(assert_reads_and_refuses_writes, db)


async def test_new_database_in_a_read_only_directory_says_read_only(shared_dir: Path) -> None:
    chmod(shared_dir, 0o555)
    script = (
        "import os, sys, trio\n"
        "from trioflow.storage.sqlite import SqliteStorage\n"
        "if os.geteuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n"
        "try:\n    trio.run(SqliteStorage(sys.argv[1]).open)\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = await trio.run_process(
        [sys.executable, "-c", script, str(shared_dir / "new.db")], capture_stdout=True
    )
    message = done.stdout.decode()
    assert message.startswith("StorageError"), message
    assert "read-only" in message or "cannot be opened" in message, message


# --------------------------------------------------------------------------- full disk, lock timeout


async def test_full_disk_is_a_storage_error_saying_so(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "runs.db") as storage:
        await storage.create_run(snap("r"))
        pages = await storage._writer.call(
            lambda conn: conn.execute("PRAGMA page_count").fetchall()[0][0], sqlite_module._READ
        )
        # SQLite answers SQLITE_FULL at max_page_count, as on a full disk.
        await storage._writer.call(
            lambda conn: conn.execute(f"PRAGMA max_page_count = {pages + 1}").fetchall(),
            sqlite_module._READ,
        )
        with pytest.raises(tf.StorageError, match="the disk is full"):
            await storage.append_events("r", outs("r", 1, 50, size=1000))
        assert list(await storage.read_events("r")) == []
        assert await storage.last_seq("r") == 0


async def test_lock_timeout_names_the_lock_and_the_timeout(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    async with SqliteStorage(db, timeout=0) as storage:
        await storage.create_run(snap("r"))
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(tf.StorageError, match="locked by another connection") as info:
                await storage.create_run(snap("s"))
            assert "busy timeout of 0 s" in str(info.value)
        finally:
            other.close()


# --------------------------------------------------------------------------- rows that are not JSON


async def test_snapshot_row_that_is_not_json_is_a_storage_error(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    await make_file(db)
    raw_execute(db, "UPDATE runs SET snapshot = '{\"runId\": ' WHERE run_id = 'kept'")
    async with SqliteStorage(db) as storage:
        with pytest.raises(tf.StorageError, match="snapshot of run 'kept' is not valid JSON"):
            await storage.load_snapshot("kept")


async def test_snapshot_row_of_the_wrong_shape_is_a_storage_error(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    await make_file(db)
    async with SqliteStorage(db) as storage:
        for text in ("[1, 2]", '{"runId": 5}', "NaN"):
            raw_execute(db, "UPDATE runs SET snapshot = ? WHERE run_id = 'kept'", (text,))
            with pytest.raises(tf.StorageError, match="snapshot of run 'kept'"):
                await storage.load_snapshot("kept")


async def test_event_row_that_is_not_json_is_a_storage_error(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    await make_file(db)
    raw_execute(db, "UPDATE events SET chunk = 'not json' WHERE run_id = 'kept' AND seq = 2")
    async with SqliteStorage(db) as storage:
        with pytest.raises(tf.StorageError, match="event seq 2 of run 'kept' is not valid JSON"):
            await storage.read_events("kept")
        assert [c.seq for c in await storage.read_events("kept", limit=1)] == [1]
    raw_execute(db, "UPDATE events SET chunk = '{\"type\": 1}' WHERE run_id = 'kept' AND seq = 2")
    async with SqliteStorage(db) as storage:
        with pytest.raises(tf.StorageError, match="event seq 2 of run 'kept' is not a valid chunk"):
            await storage.read_events("kept")


# --------------------------------------------------------------------------- strict JSON on write


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "\ud800"])
async def test_values_that_are_not_strict_json_are_never_stored(tmp_path: Path, bad: Any) -> None:
    db = tmp_path / "runs.db"
    async with SqliteStorage(db) as storage:
        with pytest.raises(tf.StorageError, match=r"refused to store the snapshot of run 'a'.*x"):
            await storage.create_run(snap("a", state={"x": bad}))
        assert await storage.load_snapshot("a") is None
        assert await storage.create_run(snap("r"))
        with pytest.raises(tf.StorageError, match="refused to store the snapshot of run 'r'"):
            await storage.save_snapshot(snap("r", S.RUNNING, state={"x": [bad]}))
        event = ch.WorkflowStepOutput(
            run_id="r", seq=1, payload=ch.StepOutputPayload(output={"y": bad}, step_name="s")
        )
        with pytest.raises(tf.StorageError, match="refused to store event seq 1 of run 'r'"):
            await storage.append_events("r", [event])
        assert await storage.load_snapshot("r") == snap("r")
        assert await storage.last_seq("r") == 0
    texts = raw_execute(db, "SELECT snapshot FROM runs") + raw_execute(
        db, "SELECT chunk FROM events"
    )
    for (text,) in texts:
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} was stored"))


# --------------------------------------------------------------------------- corruption


def corrupt_events_page(db: Path) -> None:
    """Overwrite the body of the events table's root page (not the schema page) with
    garbage, as a bad sector or a stray write would."""
    page_size, root = (
        raw_execute(db, "PRAGMA page_size")[0][0],
        raw_execute(db, "SELECT rootpage FROM sqlite_master WHERE name = 'events'")[0][0],
    )
    assert root > 1
    data = bytearray(read(db))
    start = (root - 1) * page_size
    data[start : start + page_size] = bytes([0xA5]) * page_size
    db.write_bytes(bytes(data))


async def test_file_with_a_corrupt_page_is_found_at_open_and_never_written(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    await make_file(db, events=200, size=200)
    corrupt_events_page(db)
    before = read(db)
    async with SqliteStorage(db) as storage:
        # what is still readable is read
        loaded = await storage.load_snapshot("kept")
        assert loaded is not None
        assert loaded.state == {"v": 1}
        with pytest.raises(tf.StorageError, match="refuses writes: the database file is corrupt"):
            await storage.create_run(snap("new"))
        with pytest.raises(tf.StorageError, match="corrupt"):
            await storage.read_events("kept")
    assert read(db) == before


async def test_corruption_reported_later_stops_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file too large for the check at open: corruption is found when SQLite reports it.
    monkeypatch.setattr(sqlite_file, "QUICK_CHECK_LIMIT", 0)
    db = tmp_path / "runs.db"
    await make_file(db, events=200, size=200)
    corrupt_events_page(db)
    async with SqliteStorage(db) as storage:
        with pytest.raises(tf.StorageError, match=r"corrupt.*refuses every write"):
            await storage.read_events("kept")
        before = read(db)
        with pytest.raises(tf.StorageError, match="refuses writes: the database file is corrupt"):
            await storage.create_run(snap("new"))
        with pytest.raises(tf.StorageError, match="refuses writes"):
            await storage.save_snapshot(snap("kept", S.RUNNING))
        loaded = await storage.load_snapshot("kept")
        assert loaded is not None
        assert loaded.status == S.PENDING
    assert read(db) == before


async def test_corruption_found_inside_a_group_commit_writes_nothing_of_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_file, "QUICK_CHECK_LIMIT", 0)
    db = tmp_path / "runs.db"
    await make_file(db, events=200, size=200)
    corrupt_events_page(db)
    async with SqliteStorage(db) as storage:
        entered, gate = threading.Event(), threading.Event()

        def block(conn: Any) -> None:
            entered.set()
            gate.wait(10)

        errors: dict[str, BaseException] = {}

        async def attempt(name: str, write: Callable[[], Awaitable[object]]) -> None:
            try:
                await write()
            except tf.StorageError as exc:
                errors[name] = exc

        async with trio.open_nursery() as nursery:
            # Hold the writer thread so that both writes are executed in one group: the
            # append reads the corrupt page, the create after it must not be committed.
            nursery.start_soon(storage._writer.call, block, sqlite_module._READ)
            await trio.to_thread.run_sync(entered.wait, 10)
            nursery.start_soon(
                attempt, "append", lambda: storage.append_events("kept", outs("kept", 201, 1))
            )
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(attempt, "create", lambda: storage.create_run(snap("new")))
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert "corrupt" in str(errors["append"])
        assert "refuses writes: the database file is corrupt" in str(errors["create"])
        assert await storage.load_snapshot("new") is None
