"""Engine scenario: the peak memory of a run that writes many chunks on SQLite.

One step writes n chunks with `await ctx.writer.write(i)` on `SqliteStorage` (a fresh file
in a temporary directory), run with `run.start()` and nobody subscribing, for n = 100,000
and n = 1,000,000 (--quick: 2,000 and 10,000). The figure is the growth of the resident set
over the run: the process's peak RSS minus its RSS just before `start()` (the memory the
run itself took). Storage writes are slower than the step, so the chunks waiting for
storage would pile up; SPEC §3.0 bounds them (`trioflow._broadcast.MAX_UNSTORED_CHUNKS`,
`MAX_UNSTORED_BYTES`: `writer.write` waits at the bound), so the growth must not depend on
n. Goal: <= 80 MB for both sizes.

Beside it, a raw floor measured the same way: a trio producer task sends n small frozen
attrs events into a memory channel bounded at the same chunk bound to a consumer task that
inserts them, as JSON, into a plain sqlite3 table (WAL, `synchronous=NORMAL`) on a worker
thread, each transaction taking every event waiting in the channel. Its growth and events per second are
what bounded batching to SQLite costs without the engine.

Every case runs in its own Python process (`sys.executable`), so each peak RSS is its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness
import attrs
import trio

import trioflow as tf
from trioflow._broadcast import MAX_UNSTORED_CHUNKS

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (2_000, 10_000)
EXTRA_CHUNKS = 4  # workflow-start, step start, step result, workflow-finish
GOAL_MB = 80.0
CASES = ("engine", "floor")


def build_workflow() -> tf.Workflow:
    return _harness.writer_workflow("bench-memory")


async def measure_engine(n_writes: int, db: Path) -> dict[str, Any]:
    """One run of `n_writes` chunks on SqliteStorage; its wall time and RSS growth."""
    async with tf.SqliteStorage(db) as storage, tf.open_runtime(storage=storage):
        run = await build_workflow().create_run()
        gc.collect()
        rss_before = _harness.current_rss_mb()
        t0 = time.perf_counter()
        result = await run.start(input_data=n_writes)
        wall = time.perf_counter() - t0
        peak = _harness.peak_rss_mb()
        stored = await storage.last_seq(run.run_id)
    if result.status != "success" or result.result != n_writes:
        raise RuntimeError(f"run ended {result.status}: {result.result!r}")
    if stored != n_writes + EXTRA_CHUNKS:
        raise RuntimeError(f"storage holds {stored} chunks, expected {n_writes + EXTRA_CHUNKS}")
    return {"wall_s": wall, "peak_rss_mb": peak, "rss_before_mb": rss_before}


@attrs.frozen
class OutputEvent:
    """The one event the floor's producer sends per write."""

    seq: int
    output: int


def _insert(conn: sqlite3.Connection, rows: list[tuple[int, str]]) -> None:
    with conn:
        conn.executemany("INSERT INTO events (seq, body) VALUES (?, ?)", rows)


async def measure_floor(n_writes: int, db: Path) -> dict[str, Any]:
    """Raw trio + sqlite3: a bounded channel from a producer to a batching writer."""
    conn = sqlite3.connect(db, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    send, receive = trio.open_memory_channel[OutputEvent](MAX_UNSTORED_CHUNKS)
    stored = 0

    async def produce() -> None:
        async with send:
            for i in range(n_writes):
                await send.send(OutputEvent(i + 1, i))

    async def consume() -> None:
        # Like the engine's flusher: each transaction takes every event waiting.
        nonlocal stored
        async with receive:
            async for event in receive:
                batch = [(event.seq, json.dumps({"output": event.output}))]
                while True:
                    try:
                        more = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append((more.seq, json.dumps({"output": more.output})))
                await trio.to_thread.run_sync(_insert, conn, batch)
                stored += len(batch)

    gc.collect()
    rss_before = _harness.current_rss_mb()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        nursery.start_soon(consume)
    wall = time.perf_counter() - t0
    peak = _harness.peak_rss_mb()
    conn.close()
    if stored != n_writes:
        raise RuntimeError(f"floor stored {stored} rows, expected {n_writes}")
    return {"wall_s": wall, "peak_rss_mb": peak, "rss_before_mb": rss_before}


def run_case(case: str, n_writes: int) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its figures."""
    command = [sys.executable, __file__, "--case", case, "--writes", str(n_writes)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} exited {proc.returncode}:\n{proc.stderr}")
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def growth(sample: dict[str, Any]) -> float | None:
    before = sample.get("rss_before_mb")
    return None if before is None else round(sample["peak_rss_mb"] - before, 1)


def run(quick: bool) -> dict[str, Any]:
    small, large = QUICK_SIZES if quick else SIZES
    engine_small = run_case("engine", small)
    engine_large = run_case("engine", large)
    floor_large = run_case("floor", large)
    growth_small, growth_large = growth(engine_small), growth(engine_large)
    events = large + EXTRA_CHUNKS
    figures: dict[str, Any] = {
        "writes_small": small,
        "writes_large": large,
        "rss_growth_mb_small": growth_small,
        "rss_growth_mb_large": growth_large,
        "floor_rss_growth_mb_large": growth(floor_large),
        "goal_mb": GOAL_MB,
        "meets_goal": None
        if growth_small is None or growth_large is None
        else max(growth_small, growth_large) <= GOAL_MB,
        "events_per_s_small": (small + EXTRA_CHUNKS) / engine_small["wall_s"],
        "events_per_s_large": events / engine_large["wall_s"],
        "floor_events_per_s_large": large / floor_large["wall_s"],
        "ratio_to_floor": engine_large["wall_s"] / floor_large["wall_s"] * large / events,
        "peak_rss_mb_large": engine_large["peak_rss_mb"],
        "max_unstored_chunks": MAX_UNSTORED_CHUNKS,
    }
    if not all(math.isfinite(v) for v in figures.values() if isinstance(v, float)):
        raise RuntimeError(f"bad figures: {figures}")
    return _harness.report("memory-sqlite", figures)


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--writes", type=int, required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trioflow-bench-memory-") as tmp:
        db = Path(tmp) / "runs.db"
        measure = measure_engine if args.case == "engine" else measure_floor
        figures = trio.run(measure, args.writes, db)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    if "--case" in sys.argv[1:]:
        child(sys.argv[1:])
    else:
        _harness.cli(globals())
