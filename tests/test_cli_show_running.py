"""`trioflow show` of a run whose process died mid-step (SIGKILL) says which steps were
running: their start is in the stored log, their result is not (the snapshot is written
only when entries settle, so it cannot say it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import trio
from _children import kill, spawn_child, until

import trioflow as tf

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import sys, trio, trioflow as tf

    async def quick(ctx):
        return 1

    async def slow(ctx):
        await trio.sleep_forever()

    wf = (
        tf.create_workflow(id="stops")
        .then(tf.create_step(id="quick", execute=quick))
        .parallel([tf.create_step(id="slow", execute=slow), tf.create_step(id="other", execute=slow)])
        .commit()
    )

    async def main():
        async with tf.open_runtime(storage=tf.SqliteStorage(sys.argv[1])) as rt:
            run = await rt.create_run(wf, run_id="r1")
            await run.start()

    trio.run(main)
    """
)


def _show(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "trioflow", "show", "r1", "--db", str(db), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_show_names_the_steps_running_when_the_process_died(tmp_path: Path) -> None:
    (tmp_path / "child.py").write_text(CHILD, encoding="utf-8")
    db = tmp_path / "runs.db"
    async with trio.open_nursery() as nursery:
        child = await spawn_child(nursery, tmp_path, str(db), "runner", [])
        storage = tf.SqliteStorage(db)
        try:
            started: set[str] = set()

            async def both_started() -> None:
                while {"slow", "other"} - started:
                    # Another process writes the log: polling it is the only way to know.
                    await trio.sleep(0.01)
                    if db.exists():
                        events = await storage.read_events("r1")
                        started.update(
                            c.payload.id for c in events if c.type == "workflow-step-start"
                        )

            await both_started()
        finally:
            await storage.aclose()
        await kill(child)
        await until(lambda: child.done.is_set())

    shown = await trio.to_thread.run_sync(_show, db)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "status    running" in lines, shown.stdout
    running = [line.split()[1] for line in lines if line.startswith("running ")]
    assert running == ["slow", "other"], shown.stdout

    as_json = json.loads((await trio.to_thread.run_sync(_show, db, "--json")).stdout)
    assert [item["id"] for item in as_json["running"]] == ["slow", "other"]
    assert all(isinstance(item["startedAt"], int) for item in as_json["running"])
