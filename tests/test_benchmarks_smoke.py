"""Smoke test of the benchmark harness: `benchmarks/run_all.py --quick` runs every scenario.

No timing is asserted: only that the harness runs to the end, exits 0 and prints one JSON
list holding every scenario with its figures. The PostgreSQL scenarios print a `skipped`
row when no server can be started: their figure checks then skip, unless
`TRIOFLOW_REQUIRE_POSTGRES=1` (CI), which makes them fail (and the scripts exit 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_ALL = REPO_ROOT / "benchmarks" / "run_all.py"

# scenario -> the figures its row must carry
EXPECTED_FIGURES: dict[str, tuple[str, ...]] = {
    "floor-chain-100": ("floor_us_per_step",),
    "floor-parallel-100": ("floor_us_per_branch",),
    "floor-foreach-c1": ("floor_us_per_item",),
    "floor-foreach-c16": ("floor_us_per_item",),
    "chain-100": ("us_per_step", "floor_us_per_step", "goal_us", "ratio_to_floor"),
    "parallel-100": ("us_per_branch", "floor_us_per_branch", "goal_us", "ratio_to_floor"),
    "foreach-c1": ("us_per_item", "floor_us_per_item", "goal_us", "ratio_to_floor"),
    "foreach-c16": ("us_per_item", "floor_us_per_item", "goal_us", "ratio_to_floor"),
    "stream-chain-100": (
        "events_per_s",
        "floor_events_per_s",
        "goal_events_per_s",
        "ratio_to_floor",
        "steps_per_s",
    ),
    "stream-writer": ("events_per_s", "floor_events_per_s", "ratio_to_floor"),
    "fanout-100": (
        "deliveries_per_s",
        "floor_deliveries_per_s",
        "goal_deliveries_per_s",
        "ratio_to_floor",
        "shared_log_floor_deliveries_per_s",
    ),
    "sqlite-start-suspend": ("median_ms", "p99_ms", "best_ms", "goal_ms", "create_run_ms"),
    "sqlite-resume-stream": ("median_ms", "p99_ms", "best_ms", "goal_ms"),
    "sqlite-suspended-rss": ("rss_growth_mb", "kb_per_run", "goal_mb"),
    "sqlite-start-1000": ("total_ms", "us_per_run", "memory_total_ms", "goal_ms"),
    "chain-100-sqlite": ("us_per_step", "memory_us_per_step", "ratio_to_memory"),
    "memory-sqlite": (
        "rss_growth_mb_small",
        "rss_growth_mb_large",
        "floor_rss_growth_mb_large",
        "goal_mb",
        "events_per_s_large",
        "floor_events_per_s_large",
        "ratio_to_floor",
    ),
    "slow-subscriber": (
        "wall_s_no_subscriber",
        "wall_s_stalled_subscriber",
        "wall_ratio",
        "peak_rss_mb_no_subscriber",
        "peak_rss_mb_stalled_subscriber",
        "peak_rss_ratio",
    ),
    "bridge-1": (
        "events_per_s",
        "raw_events_per_s",
        "replay_events_per_s",
        "raw_replay_events_per_s",
        "in_process_events_per_s",
        "goal_events_per_s",
        "ratio_to_in_process",
    ),
    "bridge-fanout-100": (
        "deliveries_per_s",
        "client_deliveries_per_s",
        "in_process_deliveries_per_s",
        "goal_deliveries_per_s",
        "ratio_to_in_process",
    ),
    **{
        f"pg-workers-{k}": (
            "runs_per_s",
            "steps_per_s",
            "floor_runs_per_s",
            "ratio_to_floor",
            "db_transactions_per_run",
            "cpu_count",
        )
        for k in (1, 2, 4)
    },
    **{
        f"pg-notify-{mode}": (
            "e2e_p50_ms",
            "e2e_p99_ms",
            "commit_to_deliver_p50_ms",
            "commit_to_deliver_p99_ms",
            "floor_notify_p50_ms",
            "floor_notify_p99_ms",
            "floor_write_read_p50_ms",
            "flush_linger_ms",
        )
        for mode in ("midstep", "snapshot")
    },
    "sqlite-big-output": ("growth_mb", "floor_growth_mb", "goal_mb"),
    "pg-run-transactions": ("transactions", "storage_transactions", "floor_transactions"),
    "pg-recovery": (
        "lease_ttl_s",
        "lease_left_at_kill_s",
        "kill_to_first_restart_s",
        "kill_to_all_restarted_s",
        "kill_to_all_done_s",
        "worker_poll_interval_s",
    ),
}


@pytest.fixture(scope="module")
def quick_results() -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"run_all.py --quick exited {proc.returncode}:\n{proc.stderr}"
    results = json.loads(proc.stdout)
    assert isinstance(results, list)
    return results


def test_quick_run_prints_a_json_list_of_scenario_objects(
    quick_results: list[dict[str, Any]],
) -> None:
    assert quick_results
    assert all(isinstance(row, dict) and "scenario" in row for row in quick_results)
    assert not [row for row in quick_results if "error" in row]


def test_every_scenario_is_present_once(quick_results: list[dict[str, Any]]) -> None:
    names = [row["scenario"] for row in quick_results]
    assert sorted(names) == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("scenario", sorted(EXPECTED_FIGURES))
def test_scenario_reports_its_figures_as_numbers(
    quick_results: list[dict[str, Any]], scenario: str
) -> None:
    row = next(row for row in quick_results if row["scenario"] == scenario)
    if "skipped" in row:
        if os.environ.get("TRIOFLOW_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{scenario} skipped under TRIOFLOW_REQUIRE_POSTGRES=1: {row['skipped']}")
        pytest.skip(f"{scenario}: {row['skipped']}")
    for figure in EXPECTED_FIGURES[scenario]:
        assert isinstance(row.get(figure), int | float), (scenario, figure, row)
