"""Engine scenario: a subscriber that never reads, on a run of 1,000,000 chunks.

One step writes 1,000,000 chunks with `await ctx.writer.write(i)` (--quick: 5,000), run with
`run.start()` in two cases:

- `none`: nobody subscribes;
- `stalled`: before the run starts, a task attaches `run.observe_stream(from_seq=1)` and then
  never reads it while the run executes (it holds the subscription open until `start()`
  returns). Afterwards, untimed and after peak RSS is taken, it reads the whole log, to check
  that it lost nothing (n + 4 chunks: the outputs plus `workflow-start`, the step's start and
  result, `workflow-finish`).

Each case runs in its own Python process (`sys.executable`), so each peak RSS is that case's
own; the full run starts 2 processes per case, interleaved (--quick: 1). Figures: the best
wall time of `run.start()` in each case and their ratio (stalled / none), each case's
highest peak RSS and growth of RSS over the run (peak minus the RSS just before the run: the
memory the run itself took), and the peak RSS ratio. The point: a subscriber that never
reads neither slows the run nor makes it keep more in memory (ratios close to 1). The run
uses the default `MemoryStorage`, which keeps every chunk of the log for the run's lifetime,
so the growth is that log in both cases; what a stalled subscriber must not add is a buffer
of its own.

There is no raw-trio floor here: the reference is the same run without a subscriber.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from typing import Any

import _harness
import trio
import trio.testing

import trioflow as tf

WRITES = 1_000_000
QUICK_WRITES = 5_000
EXTRA_CHUNKS = 4  # workflow-start, step start, step result, workflow-finish
CASES = ("none", "stalled")
REPEATS = 2  # processes per case (full run); --quick: 1


def build_workflow() -> tf.Workflow:
    return _harness.writer_workflow("bench-slow-subscriber")


async def measure_case(case: str, n_writes: int) -> dict[str, Any]:
    """Child process: one run of `n_writes` chunks, with or without a stalled subscriber."""
    figures: dict[str, Any] = {"case": case, "writes": n_writes}
    received: list[int] = []
    async with tf.open_runtime():
        run = await build_workflow().create_run()
        run_ended = trio.Event()

        async def stalled_subscriber(subscription: tf.Subscription) -> None:
            async with subscription:
                await run_ended.wait()  # attached, never reading while the run executes
                received.append(sum([1 async for _chunk in subscription]))

        async with trio.open_nursery() as nursery:
            if case == "stalled":
                nursery.start_soon(stalled_subscriber, run.observe_stream(from_seq=1))
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            rss_before = _harness.current_rss_mb()
            t0 = time.perf_counter()
            result = await run.start(input_data=n_writes)
            figures["wall_s"] = time.perf_counter() - t0
            figures["peak_rss_mb"] = _harness.peak_rss_mb()
            if rss_before is not None:
                figures["rss_growth_mb"] = round(figures["peak_rss_mb"] - rss_before, 1)
            run_ended.set()
    if result.status != "success" or result.result != n_writes:
        raise RuntimeError(f"run ended {result.status}: {result.result!r}")
    if case == "stalled" and received != [n_writes + EXTRA_CHUNKS]:
        raise RuntimeError(f"stalled subscriber read {received}, expected {n_writes + 4}")
    return figures


def run_case(case: str, n_writes: int) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its figures."""
    command = [sys.executable, __file__, "--case", case, "--writes", str(n_writes)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} exited {proc.returncode}:\n{proc.stderr}")
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def run(quick: bool) -> dict[str, Any]:
    n_writes = QUICK_WRITES if quick else WRITES
    repeats = 1 if quick else REPEATS
    samples: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for _ in range(repeats):  # interleaved, so drift on the machine hits both cases alike
        for case in CASES:
            samples[case].append(run_case(case, n_writes))
    wall = {case: min(sample["wall_s"] for sample in samples[case]) for case in CASES}
    peak = {case: max(sample["peak_rss_mb"] for sample in samples[case]) for case in CASES}
    figures: dict[str, Any] = {
        "writes": n_writes,
        "repeats": repeats,
        "wall_s_no_subscriber": wall["none"],
        "wall_s_stalled_subscriber": wall["stalled"],
        "wall_ratio": wall["stalled"] / wall["none"],
        "events_per_s_no_subscriber": (n_writes + EXTRA_CHUNKS) / wall["none"],
        "events_per_s_stalled_subscriber": (n_writes + EXTRA_CHUNKS) / wall["stalled"],
        "peak_rss_mb_no_subscriber": peak["none"],
        "peak_rss_mb_stalled_subscriber": peak["stalled"],
        "peak_rss_ratio": peak["stalled"] / peak["none"],
    }
    if all("rss_growth_mb" in sample for case in CASES for sample in samples[case]):
        for case, label in (("none", "no_subscriber"), ("stalled", "stalled_subscriber")):
            growth = max(sample["rss_growth_mb"] for sample in samples[case])
            figures[f"rss_growth_mb_{label}"] = growth
    return _harness.report("slow-subscriber", figures)


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--writes", type=int, required=True)
    args = parser.parse_args(argv)
    figures = trio.run(measure_case, args.case, args.writes)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    if "--case" in sys.argv[1:]:
        child(sys.argv[1:])
    else:
        _harness.cli(globals())
