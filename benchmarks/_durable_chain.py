"""The durable chain at several lengths (issue 15: the step journal), for bench_storage.py.

A chain of N one-line steps on SqliteStorage (a file in a temporary directory): µs per step
at N = 100, 1,000 and 10,000 (--quick: 100 and 300). Before the step journal every write
rewrote every earlier result, so the cost per step grew with N (quadratic in all); with it
the per-step cost should not depend on N. Beside it, in the same process:

- the raw-trio chain floor (bench_floor.chain_floor_us),
- a raw sqlite3 floor: one WAL transaction (``synchronous=NORMAL``) per step inserting one
  ~150-byte row, inline on the calling thread (``sqlite_insert_floor_us``) and with one
  ``trio.to_thread.run_sync`` hop per transaction (``sqlite_thread_insert_floor_us``),
  which is what a durable step must at least cost while writes leave the trio thread.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness
import bench_chain
import bench_floor
import trio

import trioflow as tf

GOAL_US = 150.0
LENGTHS = (100, 1_000, 10_000)
QUICK_LENGTHS = (100, 300)
FLOOR_ROWS = 2_000
_ROW = '{"status":"success","output":41,"payload":40,"started_at":1733300000000,"ended_at":1733300000001}'


def _floor_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE steps (run_id TEXT, step_key TEXT, record TEXT, UNIQUE (run_id, step_key))")
    return conn


def _insert(conn: sqlite3.Connection, i: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO steps VALUES ('r', ?, ?)", (f"s{i}", _ROW))
    conn.execute("COMMIT")


async def sqlite_floors(tmp: Path, rows: int) -> tuple[float, float]:
    """(inline, one thread hop) µs per one-row write transaction."""
    conn = _floor_connection(tmp / "floor.db")
    try:
        t0 = time.perf_counter()
        for i in range(rows):
            _insert(conn, i)
        inline = (time.perf_counter() - t0) / rows * 1e6
        t0 = time.perf_counter()
        for i in range(rows, 2 * rows):
            await trio.to_thread.run_sync(_insert, conn, i)
        hop = (time.perf_counter() - t0) / rows * 1e6
    finally:
        conn.close()
    return inline, hop


async def chain_us_per_step(tmp: Path, steps: int, repeats: int) -> float:
    workflow = bench_chain.build_workflow(steps)
    async with (
        tf.SqliteStorage(tmp / f"chain-{steps}.db") as storage,
        tf.open_runtime(storage=storage) as runtime,
    ):
        timings = await _harness.time_workflow_runs(
            runtime, workflow, input_data=0, expected=steps, repeats=repeats
        )
    return timings.start.per(steps)[0]


async def durable_chain(quick: bool) -> dict[str, Any]:
    lengths = QUICK_LENGTHS if quick else LENGTHS
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for steps in lengths:
            repeats = 1 if quick or steps >= 10_000 else (3 if steps >= 1_000 else 10)
            figures[f"sqlite_us_per_step_{steps}"] = await chain_us_per_step(tmp, steps, repeats)
        inline, hop = await sqlite_floors(tmp, 200 if quick else FLOOR_ROWS)
    first, last = (figures[f"sqlite_us_per_step_{n}"] for n in (lengths[0], lengths[-1]))
    figures.update(
        {
            "floor_us_per_step": await bench_floor.chain_floor_us(
                bench_chain.STEPS, repeats=bench_floor.repeat_count(quick, 30)
            ),
            "sqlite_insert_floor_us": inline,
            "sqlite_thread_insert_floor_us": hop,
            "growth_longest_to_shortest": last / first if first > 0 else None,
            "goal_us": GOAL_US,
            "meets_goal": max(first, last) <= GOAL_US,
        }
    )
    return figures
