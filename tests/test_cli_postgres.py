"""The ``trioflow`` command line on PostgreSQL (issue 8): ``--db postgresql://...`` for
every command, and ``trioflow worker`` executing runs queued by another process."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf

pytest.importorskip("rich", reason="the CLI needs the 'cli' extra (rich)")

ROOT = Path(__file__).resolve().parent.parent

FLOWS = textwrap.dedent(
    """
    import trioflow as tf


    async def check(ctx):
        if ctx.resume_data is None:
            return await ctx.suspend({"reason": "needs approval"})
        return {"order": ctx.input_data["id"], "approved": ctx.resume_data["approved"]}


    approval = tf.create_workflow(id="approval").then(
        tf.create_step(id="check", execute=check)
    ).commit()


    async def double(ctx):
        return ctx.input_data * 2


    doubler = tf.create_workflow(id="doubler").then(
        tf.create_step(id="double", execute=double)
    ).commit()
    """
)


def as_uri(conninfo: str) -> str:
    """The libpq conninfo of the fixture as a ``postgresql://`` URI (what --db takes)."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    user = quote(params.pop("user", ""))
    dbname = quote(params.pop("dbname", ""))
    return f"postgresql://{user}@/{dbname}?{urlencode(params)}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(FLOWS)
    return tmp_path


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    out.pop("TRIOFLOW_DB", None)
    return out


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        cwd=workdir,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_resume_and_list_on_postgres(workdir: Path, postgres_db: str) -> None:
    db = as_uri(postgres_db)
    started = cli(
        workdir, "run", "flows:approval", "--db", db, "--json", "--input", '{"id": "o-1"}'
    )
    assert started.returncode == 3, started.stderr
    body = json.loads(started.stdout.splitlines()[-1])
    run_id = body["runId"]
    assert body["status"] == "suspended"
    resumed = cli(workdir, "resume", run_id, "--db", db, "--data", '{"approved": true}', "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[-1])["result"] == {
        "order": "o-1",
        "approved": True,
    }
    listed = cli(workdir, "runs", "--db", db, "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert [(r["runId"], r["status"]) for r in runs] == [(run_id, "success")]


def test_worker_needs_postgres(workdir: Path) -> None:
    proc = cli(workdir, "worker", "flows", "--db", str(workdir / "local.db"))
    assert proc.returncode == 2
    assert "postgresql://" in proc.stderr


@contextmanager
def spawn_worker(workdir: Path, db: str) -> Iterator[subprocess.Popen[str]]:
    """``trioflow worker flows --db DB --json``, interrupted (Ctrl-C) at the end."""
    with subprocess.Popen(
        [sys.executable, "-m", "trioflow", "worker", "flows", "--db", db, "--json"],
        cwd=workdir,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            yield worker
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGINT)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()


def import_flows(workdir: Path) -> Any:
    sys.path.insert(0, str(workdir))
    try:
        return importlib.import_module("flows")
    finally:
        sys.path.remove(str(workdir))
        sys.modules.pop("flows", None)


async def test_worker_executes_runs_queued_by_another_process(
    workdir: Path, postgres_db: str
) -> None:
    flows = import_flows(workdir)
    with spawn_worker(workdir, as_uri(postgres_db)) as worker:
        assert worker.stdout is not None
        ready = await trio.to_thread.run_sync(worker.stdout.readline)
        assert json.loads(ready)["workflows"] == ["approval", "doubler"], ready
        async with (
            tf.PostgresStorage(postgres_db) as storage,
            tf.open_runtime(storage=storage, workflows=[flows.doubler]) as rt,
        ):
            run_ids = [await rt.enqueue("doubler", input_data=n) for n in range(3)]
            with trio.fail_after(30):  # noqa: ASYNC912 - three runs are followed
                for run_id in run_ids:
                    run = await rt.create_run("doubler", run_id=run_id)
                    async with run.observe_stream() as sub:
                        async for _ in sub:
                            pass
            results = [(await rt.get_run_state(r)).result for r in run_ids]
        assert results == [0, 2, 4]
        # What systemd, docker stop and Kubernetes send: a clean stop.
        worker.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(worker.wait)
        assert code == 0
