"""Harness shared by the real-process tests (tests/test_processes.py on SQLite,
tests/test_postgres_processes.py on PostgreSQL): child processes running the test's
``child.py``, polling for files they write, and checks of a stored event log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

import trioflow as tf

REPO_ROOT = Path(__file__).resolve().parent.parent


@attrs.define
class Child:
    """A child process started by :func:`spawn_child`; ``done`` is set once it exited."""

    name: str
    process: trio.Process
    done: trio.Event
    completed: subprocess.CompletedProcess[bytes] | None = None

    def stderr(self) -> str:
        return "" if self.completed is None else self.completed.stderr.decode(errors="replace")

    def output(self) -> dict[str, Any]:
        """The JSON object the child printed; fails with its stderr if it did not exit 0."""
        assert self.completed is not None, f"{self.name} has not exited"
        assert self.completed.returncode == 0, (
            f"{self.name} exited {self.completed.returncode}:\n{self.stderr()}"
        )
        lines = self.completed.stdout.decode().strip().splitlines()
        assert lines, f"{self.name} printed nothing:\n{self.stderr()}"
        out: dict[str, Any] = json.loads(lines[-1])
        return out


async def spawn_child(
    nursery: trio.Nursery,
    directory: Path,
    database: str,
    name: str,
    args: Sequence[str],
    *,
    barrier: bool = False,
) -> Child:
    """Start ``directory/child.py DATABASE *args`` as process ``name`` (``TF_CHILD``).
    Cancelling ``nursery`` kills it (trio.run_process kills its process when cancelled)."""
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
        ),
        "TF_CHILD": name,
    }
    if barrier:
        child_env["TF_BARRIER"] = "1"
    done = trio.Event()
    holder: list[Child] = []

    # task_status goes to run_process, which reports the started Process.
    async def runner(*, task_status: trio.TaskStatus[trio.Process]) -> None:  # noqa: ASYNC114,ASYNC128
        try:
            completed = await trio.run_process(
                [sys.executable, str(directory / "child.py"), database, *args],
                cwd=str(directory),
                env=child_env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                task_status=task_status,
            )
            holder[0].completed = completed
        finally:
            done.set()

    process: trio.Process = await nursery.start(runner)
    child = Child(name, process, done)
    holder.append(child)
    return child


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (files written by other processes: nothing to wait on)."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def wait_until_exists(directory: Path, *names: str) -> None:
    await until(lambda: all((directory / name).exists() for name in names))


async def kill(child: Child) -> None:
    """SIGKILL ``child`` and check that this is how it ended."""
    os.kill(child.process.pid, signal.SIGKILL)
    await child.done.wait()
    assert child.completed is not None
    assert child.completed.returncode == -signal.SIGKILL, child.stderr()


def assert_contiguous(events: Sequence[tf.Chunk]) -> None:
    seqs = [chunk.seq for chunk in events]
    assert seqs == list(range(1, len(events) + 1)), seqs


def count_types(events: Sequence[tf.Chunk], type_: str) -> int:
    return sum(1 for c in events if c.type == type_)


def finish_statuses(events: Sequence[tf.Chunk]) -> list[str]:
    return [str(c.payload.workflow_status) for c in events if isinstance(c, tf.WorkflowFinish)]


def step_results(events: Sequence[tf.Chunk]) -> Counter[str]:
    return Counter(chunk.payload.id for chunk in events if isinstance(chunk, tf.WorkflowStepResult))
