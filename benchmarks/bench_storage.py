"""Durable storage scenarios: SqliteStorage on a file in a temporary directory (issue 4).

- `sqlite-start-suspend`: `await run.start()` of a one-step workflow whose step suspends,
  until it returns `suspended` (the run created beforehand, untimed; `create_run_ms` is
  reported apart). Median and p99 over 300 runs (--quick: 20). Goal: median <= 0.35 ms.
- `sqlite-resume-stream`: `await run.resume_stream(...)` of one of those suspended runs and
  iterating the returned stream to its end (the resumed step returns at once; the run ends
  `success`). Median and p99 over the same runs. Goal: median <= 0.5 ms.
- `sqlite-suspended-rss`: in a child process, the resident set size after creating and
  suspending 1,000 runs (one after the other) minus the RSS before them, each measured after
  `gc.collect()`, once 50 warm-up runs have suspended (--quick: 50 runs). Nothing of a
  suspended run needs to stay in memory. Goal: <= 5 MB.
- `sqlite-start-1000`: 1,000 tasks in one nursery, each `create_run()` + `start()` of a
  one-step workflow, all started at once: wall ms until every run ended `success` (median
  over 5 repeats, a fresh database each; --quick: 50 runs, 1 repeat). Goal: <= 150 ms.
  Beside it, the same with MemoryStorage (`memory_total_ms`): the engine without storage.
- `chain-100-sqlite`: the 100-step chain of bench_chain.py with SqliteStorage beside
  MemoryStorage, in the same process: us per step of each and their ratio (a durable run
  writes a snapshot after every step). With it, the durable chain at 100, 1,000 and
  10,000 steps (`sqlite_us_per_step_<n>`) beside the raw-trio floor and a raw sqlite3
  insert floor (see `_durable_chain.py`). Goal: <= 150 us/step at 100 and at 10,000.
  `python bench_storage.py --chain [--quick]` prints that row alone.

- `sqlite-big-output` (`--big-output` alone, issue 15): a step returning a 50 MB string
  (--quick: 5 MB), then 5 steps (the first takes it as input and returns its length), on a
  fresh database: how much the file grew (database + WAL, in MB) when the run ended, and
  once the storage closed (its last checkpoint folds the WAL into the database). Beside it
  the floor: the same text inserted once into a raw sqlite3 WAL file. Goal: <= 60 MB
  (before large values were stored once: ~300 MB, ~350 MB before the step journal).

Every timed run is checked (status and result) so a broken run is never benchmarked.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _durable_chain
import _harness
import bench_chain
import bench_floor
import trio

import trioflow as tf

LATENCY_RUNS = 300
START_GOAL_MS = 0.35
RESUME_GOAL_MS = 0.5
RSS_RUNS = 1_000
RSS_WARMUP = 50
RSS_GOAL_MB = 5.0
CONCURRENT_RUNS = 1_000
CONCURRENT_REPEATS = 5
CONCURRENT_GOAL_MS = 150.0
RESUME_DATA = {"approved": True}


async def ask(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"question": "approve?"})
    return ctx.resume_data


def build_suspend_workflow() -> tf.Workflow:
    step = tf.create_step(id="ask", execute=ask)
    return tf.create_workflow(id="bench-suspend").then(step).commit()


# Deliberately checkpoint-free (flake8-async ASYNC910): the trivial step measured.
async def add_one(ctx: tf.StepContext) -> int:
    return int(ctx.input_data) + 1


def build_one_step_workflow() -> tf.Workflow:
    step = tf.create_step(id="add_one", execute=add_one)
    return tf.create_workflow(id="bench-one-step").then(step).commit()


def p99(timing: _harness.Timing) -> float:
    samples = sorted(timing.samples)
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def latency_figures(timing: _harness.Timing, goal_ms: float, **extra: Any) -> dict[str, Any]:
    median_ms = timing.median * 1e3
    figures: dict[str, Any] = {
        "median_ms": median_ms,
        "p99_ms": p99(timing) * 1e3,
        "best_ms": timing.best * 1e3,
        "goal_ms": goal_ms,
        "meets_goal": median_ms <= goal_ms,
        "repeats": len(timing.samples),
    }
    figures.update(extra)
    figures["peak_rss_mb"] = _harness.peak_rss_mb()
    return figures


async def latencies(quick: bool) -> list[dict[str, Any]]:
    """start -> suspended, then resume_stream -> success on the same runs."""
    runs = 20 if quick else LATENCY_RUNS
    warmup = 5
    workflow = build_suspend_workflow()
    create_samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            tf.SqliteStorage(Path(tmp) / "runs.db") as storage,
            tf.open_runtime(storage=storage) as _runtime,
        ):
            suspended: list[tf.Run] = []

            async def new_run() -> tf.Run:
                t0 = time.perf_counter()
                run = await workflow.create_run()
                create_samples.append(time.perf_counter() - t0)
                return run

            async def start(run: tf.Run) -> None:
                result = await run.start(input_data=None)
                if result.status != "suspended":
                    raise RuntimeError(f"start ended {result.status}: {result.error!r}")

            async def keep(run: tf.Run) -> None:
                suspended.append(run)
                await trio.lowlevel.checkpoint()

            start_timing = await _harness.time_async(
                start, repeats=runs, warmup=warmup, setup=new_run, teardown=keep
            )

            async def next_suspended() -> tf.Run:
                await trio.lowlevel.checkpoint()
                return suspended.pop()

            async def resume_stream(run: tf.Run) -> None:
                out = await run.resume_stream(resume_data=RESUME_DATA)
                async for _chunk in out:
                    pass
                result = await out.result()
                if result.status != "success" or result.result != RESUME_DATA:
                    raise RuntimeError(f"resume ended {result.status}: {result.error!r}")

            resume_timing = await _harness.time_async(
                resume_stream, repeats=runs, warmup=warmup, setup=next_suspended
            )
    create_ms = statistics.median(create_samples) * 1e3
    return [
        _harness.report(
            "sqlite-start-suspend",
            latency_figures(start_timing, START_GOAL_MS, create_run_ms=create_ms),
        ),
        _harness.report("sqlite-resume-stream", latency_figures(resume_timing, RESUME_GOAL_MS)),
    ]


async def start_at_once(n_runs: int, db: Path | None) -> float:
    """Seconds until `n_runs` runs, each created and started by its own task, all ended
    (on SqliteStorage at `db`, or on MemoryStorage when `db` is None)."""
    workflow = build_one_step_workflow()
    statuses: list[str] = []

    async def one(i: int) -> None:
        run = await workflow.create_run()
        result = await run.start(input_data=i)
        if result.result == i + 1:
            statuses.append(result.status)

    async with contextlib.AsyncExitStack() as stack:
        storage = None if db is None else await stack.enter_async_context(tf.SqliteStorage(db))
        await stack.enter_async_context(tf.open_runtime(storage=storage))
        # Open the database (and warm the code paths) before the clock starts.
        await one(-1)
        statuses.clear()
        gc.collect()
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n_runs):
                nursery.start_soon(one, i)
        elapsed = time.perf_counter() - t0
    if statuses.count("success") != n_runs:
        raise RuntimeError(f"{n_runs - statuses.count('success')} runs did not succeed")
    return elapsed


async def concurrent_starts(quick: bool) -> dict[str, Any]:
    n_runs = 50 if quick else CONCURRENT_RUNS
    repeats = 1 if quick else CONCURRENT_REPEATS
    samples: list[float] = []
    memory_samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):  # interleaved, so drift on the machine hits both alike
            samples.append(await start_at_once(n_runs, Path(tmp) / f"runs-{repeat}.db"))
            memory_samples.append(await start_at_once(n_runs, None))
    median_ms = statistics.median(samples) * 1e3
    memory_ms = statistics.median(memory_samples) * 1e3
    return _harness.report(
        "sqlite-start-1000",
        {
            "runs": n_runs,
            "total_ms": median_ms,
            "best_total_ms": min(samples) * 1e3,
            "us_per_run": median_ms * 1e3 / n_runs,
            "memory_total_ms": memory_ms,
            "ratio_to_memory": median_ms / memory_ms if memory_ms > 0 else None,
            "goal_ms": CONCURRENT_GOAL_MS,
            "meets_goal": median_ms <= CONCURRENT_GOAL_MS,
            "repeats": repeats,
            "peak_rss_mb": _harness.peak_rss_mb(),
        },
    )


async def chain_beside_memory(quick: bool) -> dict[str, Any]:
    steps = bench_chain.STEPS
    repeats = bench_floor.repeat_count(quick, 20)
    workflow = bench_chain.build_workflow(steps)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            tf.SqliteStorage(Path(tmp) / "runs.db") as storage,
            tf.open_runtime(storage=storage) as runtime,
        ):
            sqlite = await _harness.time_workflow_runs(
                runtime, workflow, input_data=0, expected=steps, repeats=repeats
            )
    async with tf.open_runtime() as runtime:
        memory = await _harness.time_workflow_runs(
            runtime, workflow, input_data=0, expected=steps, repeats=repeats
        )
    sqlite_us, sqlite_best = sqlite.start.per(steps)
    memory_us, memory_best = memory.start.per(steps)
    return _harness.report(
        f"chain-{steps}-sqlite",
        {
            "us_per_step": sqlite_us,
            "best_us_per_step": sqlite_best,
            "memory_us_per_step": memory_us,
            "best_memory_us_per_step": memory_best,
            "ratio_to_memory": sqlite_us / memory_us if memory_us > 0 else None,
            "create_run_us": sqlite.create_run_us,
            "memory_create_run_us": memory.create_run_us,
            "steps": steps,
            "repeats": repeats,
            **await _durable_chain.durable_chain(quick),
            "peak_rss_mb": _harness.peak_rss_mb(),
        },
    )


# --- RSS of suspended runs (child process) ---------------------------------------------------


async def measure_rss(n_runs: int, warmup: int) -> dict[str, Any]:
    """Child process: RSS growth over creating and suspending `n_runs` runs."""
    workflow = build_suspend_workflow()

    async def suspend_one() -> None:
        run = await workflow.create_run()
        result = await run.start(input_data=None)
        if result.status != "suspended":
            raise RuntimeError(f"start ended {result.status}: {result.error!r}")

    with tempfile.TemporaryDirectory() as tmp:
        async with (
            tf.SqliteStorage(Path(tmp) / "runs.db") as storage,
            tf.open_runtime(storage=storage) as runtime,
        ):
            for _ in range(warmup):
                await suspend_one()
            gc.collect()
            before = _harness.current_rss_mb()
            for _ in range(n_runs):
                await suspend_one()
            gc.collect()
            after = _harness.current_rss_mb()
            stored = await runtime.list_runs(status="suspended", limit=n_runs + warmup + 1)
    if len(stored) != n_runs + warmup:
        raise RuntimeError(f"{len(stored)} suspended runs stored, expected {n_runs + warmup}")
    if before is None or after is None:
        raise RuntimeError("RSS is only measured on Linux (/proc/self/statm)")
    return {"rss_before_mb": before, "rss_after_mb": after}


def suspended_rss(quick: bool) -> dict[str, Any]:
    n_runs = 50 if quick else RSS_RUNS
    command = [sys.executable, __file__, "--rss-runs", str(n_runs)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child exited {proc.returncode}:\n{proc.stderr}")
    child: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = child["rss_after_mb"] - child["rss_before_mb"]
    return _harness.report(
        "sqlite-suspended-rss",
        {
            "runs": n_runs,
            "rss_growth_mb": growth,
            "kb_per_run": growth * 1024 / n_runs,
            "rss_before_mb": child["rss_before_mb"],
            "rss_after_mb": child["rss_after_mb"],
            "goal_mb": RSS_GOAL_MB,
            "meets_goal": growth <= RSS_GOAL_MB,
            "peak_rss_mb": _harness.peak_rss_mb(),
        },
    )


# --- one large output (issue 15) -----------------------------------------------------------

BIG_OUTPUT_MB = 50
BIG_OUTPUT_GOAL_MB = 60.0
MB = 1024 * 1024


async def big_output(ctx: tf.StepContext) -> str:
    await trio.lowlevel.checkpoint()
    return "x" * (int(ctx.input_data) * MB)


# Deliberately checkpoint-free (flake8-async ASYNC910): trivial steps after the big one.
async def length_or_next(ctx: tf.StepContext) -> int:
    value = ctx.input_data
    return len(value) if isinstance(value, str) else int(value) + 1


def build_big_output_workflow() -> tf.Workflow:
    workflow = tf.create_workflow(id="bench-big-output").then(
        tf.create_step(id="big", execute=big_output)
    )
    for i in range(5):
        workflow = workflow.then(tf.create_step(id=f"after{i}", execute=length_or_next))
    return workflow.commit()


def file_mb(db: Path) -> float:
    """The database file and its WAL, in MB (0 for what does not exist)."""
    files = (db, db.with_name(db.name + "-wal"))
    return sum(path.stat().st_size for path in files if path.exists()) / MB


def raw_insert_growth_mb(db: Path, size_mb: int) -> float:
    """The floor: the text stored once by raw sqlite3 (WAL, synchronous=NORMAL), measured
    once the connection closed (its WAL folded into the database)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE t (v TEXT)")
        before = file_mb(db)
        conn.execute("INSERT INTO t VALUES (?)", (json.dumps("x" * (size_mb * MB)),))
    finally:
        conn.close()
    return file_mb(db) - before


async def big_output_growth(quick: bool) -> dict[str, Any]:
    size_mb = 5 if quick else BIG_OUTPUT_MB
    workflow = build_big_output_workflow()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "runs.db"
        async with tf.SqliteStorage(db) as storage, tf.open_runtime(storage=storage):
            before = file_mb(db)
            run = await workflow.create_run()
            t0 = time.perf_counter()
            result = await run.start(input_data=size_mb)
            elapsed = time.perf_counter() - t0
            at_end = file_mb(db) - before
        closed = file_mb(db) - before
        floor = raw_insert_growth_mb(Path(tmp) / "floor.db", size_mb)
    if result.status != "success" or result.result != size_mb * MB + 4:
        raise RuntimeError(f"big-output run ended {result.status}: {result.error!r}")
    growth = max(at_end, closed)
    return _harness.report(
        "sqlite-big-output",
        {
            "output_mb": size_mb,
            "steps_after": 5,
            "growth_mb": growth,
            "growth_mb_at_end": at_end,
            "growth_mb_closed": closed,
            "floor_growth_mb": floor,
            "ratio_to_floor": growth / floor if floor > 0 else None,
            "goal_mb": BIG_OUTPUT_GOAL_MB * size_mb / BIG_OUTPUT_MB,
            "meets_goal": growth <= BIG_OUTPUT_GOAL_MB * size_mb / BIG_OUTPUT_MB,
            "run_s": elapsed,
            "peak_rss_mb": _harness.peak_rss_mb(),
        },
    )


def run(quick: bool) -> list[dict[str, Any]]:
    rows = trio.run(latencies, quick)
    rows.append(suspended_rss(quick))
    rows.append(trio.run(concurrent_starts, quick))
    rows.append(trio.run(chain_beside_memory, quick))
    return rows


def rss_child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-runs", type=int, required=True)
    args = parser.parse_args(argv)
    figures = trio.run(measure_rss, args.rss_runs, RSS_WARMUP)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    if "--rss-runs" in sys.argv[1:]:
        rss_child(sys.argv[1:])
    elif "--chain" in sys.argv[1:]:
        trio.run(chain_beside_memory, "--quick" in sys.argv[1:])
    elif "--big-output" in sys.argv[1:]:
        trio.run(big_output_growth, "--quick" in sys.argv[1:])
    else:
        _harness.cli(globals())
