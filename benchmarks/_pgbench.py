"""Shared by the `bench_postgres_*.py` scripts (issue 8): a PostgreSQL server, a fresh
database per measurement, the worker child process and line-based talk with children.

Server: `$TRIOFLOW_BENCH_POSTGRES_DSN` when set (every measurement creates its own database
there and drops it afterwards), else a throwaway private server started with
`trioflow.testing._pgserver.start_local_postgres()` and stopped at the end. When neither
works, a script prints one row per scenario carrying a `skipped` reason and exits 0, or 1
when `$TRIOFLOW_REQUIRE_POSTGRES=1` (CI: a benchmark must never pass by skipping).

Worker child: `python benchmarks/_pgbench.py worker --dsn DSN --workflow NAME --capacity N
[--lease-ttl S] [--poll S] [--pool-size N]` opens a `PostgresStorage` (connects, creates the
tables), prints `ready <owner_id>`, waits for a `go` line on stdin, opens
`open_runtime(storage=..., workflows=[wf], worker=True, worker_capacity=N)`, prints
`started`, and works until stdin closes; then it prints `stats {...}` (its worker
statistics) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import _harness
import trio

import trioflow as tf

DSN_ENV = "TRIOFLOW_BENCH_POSTGRES_DSN"
REQUIRE_ENV = "TRIOFLOW_REQUIRE_POSTGRES"
HERE = Path(__file__).resolve()
#: Steps of the `chain10` workflow (issue 8: "10-step workflows").
CHAIN_STEPS = 10
#: Steps of the `sleepy` workflow; each sleeps `input["sleep"]` seconds.
SLEEPY_STEPS = 4
CHILD_TIMEOUT = 60.0


class Unavailable(Exception):
    """No PostgreSQL server to benchmark against (the message says why)."""


# --- workflows (the worker child registers them by name) --------------------------------


# Deliberately checkpoint-free (flake8-async ASYNC910): the trivial step measured.
async def add_one(ctx: tf.StepContext) -> int:
    return int(ctx.input_data) + 1


def build_chain10() -> tf.Workflow:
    workflow = tf.create_workflow(id="pg-chain10")
    for i in range(CHAIN_STEPS):
        workflow = workflow.then(tf.create_step(id=f"s{i}", execute=add_one))
    return workflow.commit()


async def sleep_then_count(ctx: tf.StepContext) -> dict[str, Any]:
    data = dict(ctx.input_data)
    await trio.sleep(float(data["sleep"]))
    data["n"] = int(data.get("n", 0)) + 1
    return data


def build_sleepy() -> tf.Workflow:
    workflow = tf.create_workflow(id="pg-sleepy")
    for i in range(SLEEPY_STEPS):
        workflow = workflow.then(tf.create_step(id=f"sleep{i}", execute=sleep_then_count))
    return workflow.commit()


WORKFLOWS: dict[str, Callable[[], tf.Workflow]] = {
    "chain10": build_chain10,
    "sleepy": build_sleepy,
}


# --- server and databases ------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The conninfo of a server's maintenance database; Unavailable when there is none."""
    try:
        import psycopg  # noqa: F401  - optional dependency
    except ImportError:
        raise Unavailable("psycopg is not installed (pip install -e '.[postgres]')") from None
    configured = os.environ.get(DSN_ENV)
    if configured:
        yield configured
        return
    from trioflow.testing._pgserver import start_local_postgres

    try:
        server = start_local_postgres()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"could not start a private PostgreSQL server: {exc}") from None
    try:
        yield server.dsn
    finally:
        server.stop()


@contextlib.contextmanager
def fresh_database(server_dsn: str) -> Iterator[str]:
    """A new empty database on the server (dropped on exit); yields its conninfo."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"bench_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_dsn, dbname=name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def query(dsn: str, text: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement on a fresh autocommit connection; its rows."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text.encode(), params)
        return cur.fetchall() if cur.description else []


def server_version(dsn: str) -> str:
    return str(query(dsn, "SHOW server_version")[0][0])


def machine() -> dict[str, Any]:
    """What every row says about where it ran (the figures depend on the core count)."""
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "server": "TRIOFLOW_BENCH_POSTGRES_DSN" if os.environ.get(DSN_ENV) else "private",
    }


def skip_all(scenarios: Sequence[str], reason: str) -> NoReturn:
    """Print a `skipped` row per scenario and exit (status 1 when CI requires PostgreSQL)."""
    required = os.environ.get(REQUIRE_ENV) == "1"
    for name in scenarios:
        _harness.report(name, {"skipped": reason, "required": required})
    if required:
        print(f"{REQUIRE_ENV}=1 and PostgreSQL is unavailable: {reason}", file=sys.stderr)
    sys.exit(1 if required else 0)


def run_with_server(
    scenarios: Sequence[str], measure: Callable[[str], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """`measure(server_dsn)` with a server, or `skip_all` without one."""
    try:
        with postgres_server() as dsn:
            return measure(dsn)
    except Unavailable as exc:
        skip_all(scenarios, str(exc))


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (`pct` in 0..100) of non-empty `samples`."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- child processes (parent side, synchronous) -------------------------------------------


class Child:
    """A child Python process talked to in lines (stdin: commands, stdout: replies)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str, timeout: float = CHILD_TIMEOUT) -> str:
        """The rest of the next stdout line starting with `prefix` (other lines are copied
        to stderr)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = self._buffer[:newline].decode()
                self._buffer = self._buffer[newline + 1 :]
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
                print(f"[child {self.pid}] {line}", file=sys.stderr)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"child {self.pid}: no {prefix!r} line within {timeout} s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                data = os.read(fd, 65536)
                if not data:
                    code = self.proc.wait()
                    raise RuntimeError(f"child {self.pid} exited ({code}) before {prefix!r}")
                self._buffer += data

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def finish(self, prefix: str | None = None, timeout: float = CHILD_TIMEOUT) -> str | None:
        """Close stdin (the child's cue to stop), optionally read its `prefix` line, and
        wait for it to exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        reply = self.expect(prefix, timeout) if prefix is not None else None
        code = self.proc.wait(timeout)
        if code != 0:
            raise RuntimeError(f"child {self.pid} exited with status {code}")
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put started children in; whichever are still alive are killed on exit."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()
            for stream in (child.proc.stdin, child.proc.stdout):
                if stream is not None:
                    stream.close()


def start_worker(
    dsn: str,
    workflow: str,
    *,
    capacity: int,
    lease_ttl: float = 15.0,
    poll: float = 1.0,
    pool_size: int = 8,
) -> Child:
    return Child(
        [
            str(HERE),
            "worker",
            "--dsn",
            dsn,
            "--workflow",
            workflow,
            "--capacity",
            str(capacity),
            "--lease-ttl",
            str(lease_ttl),
            "--poll",
            str(poll),
            "--pool-size",
            str(pool_size),
        ]
    )


async def enqueue_runs(
    dsn: str, workflow: tf.Workflow, inputs: Sequence[Any], *, concurrency: int = 8
) -> list[str]:
    """Queue one run per input (no worker here); their ids in input order."""
    ids: list[str] = [""] * len(inputs)
    limiter = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            ids[i] = await runtime.enqueue(workflow, input_data=inputs[i])

    async with (
        tf.PostgresStorage(dsn, pool_size=concurrency) as storage,
        tf.open_runtime(storage=storage, workflows=[workflow]) as runtime,
        trio.open_nursery() as nursery,
    ):
        for i in range(len(inputs)):
            nursery.start_soon(one, i)
    return ids


# --- child processes (child side, trio) ---------------------------------------------------


class StdinLines:
    """Lines from this process's stdin, read without blocking trio."""

    def __init__(self) -> None:
        self._stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self._buffer = b""

    async def readline(self) -> str | None:
        """The next line without its newline; None at end of input."""
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(4096)
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def worker_main(args: argparse.Namespace) -> None:
    workflow = WORKFLOWS[args.workflow]()
    stdin = StdinLines()
    storage = tf.PostgresStorage(args.dsn, lease_ttl=args.lease_ttl, pool_size=args.pool_size)
    try:
        async with storage:  # connects and creates the tables
            print(f"ready {storage.owner_id}", flush=True)
            if await stdin.readline() != "go":
                return
            async with tf.open_runtime(
                storage=storage,
                workflows=[workflow],
                worker=True,
                worker_capacity=args.capacity,
                worker_poll_interval=args.poll,
            ) as runtime:
                print("started", flush=True)
                await stdin.readline()  # any line, or end of input: stop
                assert runtime.worker is not None
                stats = runtime.worker.statistics()
            print(
                "stats "
                + json.dumps(
                    {
                        "started": stats.started,
                        "restarted": stats.restarted,
                        "failed_to_begin": stats.failed_to_begin,
                    }
                ),
                flush=True,
            )
    finally:
        await stdin.aclose()


def child_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="_pgbench.py")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--dsn", required=True)
    worker.add_argument("--workflow", choices=sorted(WORKFLOWS), required=True)
    worker.add_argument("--capacity", type=int, required=True)
    worker.add_argument("--lease-ttl", type=float, default=15.0)
    worker.add_argument("--poll", type=float, default=1.0)
    worker.add_argument("--pool-size", type=int, default=8)
    args = parser.parse_args(argv)
    trio.run(worker_main, args)


if __name__ == "__main__":
    child_cli(sys.argv[1:])
