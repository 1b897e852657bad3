"""PostgreSQL workers (issue 8): recovery time after a worker process is killed.

`pg-recovery`: two worker processes (`_pgbench.py worker`, `lease_ttl=2`, the default
`worker_poll_interval=1`) share R runs (20; --quick: 6) of a 4-step workflow whose steps
each sleep 0.5 s. Worker A starts first with capacity R/2 and claims R/2 runs; worker B
starts with the default capacity 64 (room to take A's runs over) and claims the rest. Once every run is
executing, A is killed with SIGKILL. This process then polls the runs A held (every 10 ms)
and reports, from the kill (`failed_to_begin_on_survivor` counts B's claims of them that
could not begin: each costs another poll interval):

- `kill_to_first_restart_s`: until the first of them executes again on B, i.e. B wrote to
  its log (its lease lapsed and B's next claim round took it and restarted it: bounded below by the lease time left at the kill,
  `lease_left_at_kill_s`, which is at most `lease_ttl` and at least 2/3 of it since leases
  are renewed every ttl/3, and above by that plus B's poll interval: no notification says
  that a lease lapsed);
- `kill_to_all_restarted_s`: until all of them execute again on B;
- `kill_to_all_done_s`: until all of them ended `success` on B. The difference,
  `restart_to_done_s`, is the work left: the interrupted step runs again (at-least-once)
  and the steps after it.

Median over 3 trials (--quick: 1), each on a fresh database; every trial checks that all
R runs ended `success` having run every step.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import _harness
import _pgbench
import trio

RUNS = 20
QUICK_RUNS = 6
TRIALS = 3
QUICK_TRIALS = 1
STEP_S = 0.5
LEASE_TTL = 2.0
WORKER_POLL = 1.0
#: The default worker_capacity: room to spare after taking A's runs over.
SURVIVOR_CAPACITY = 64
POLL = 0.01
TIMEOUT = 60.0
SCENARIOS = ["pg-recovery"]


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {TIMEOUT} s: {what}")
        time.sleep(POLL)


def held_by(dsn: str, owner: str) -> int:
    rows = _pgbench.query(
        dsn,
        "SELECT count(*) FROM trioflow_runs WHERE lease_owner = %s AND status = 'running'",
        owner,
    )
    return int(rows[0][0])


def trial(server: str, n_runs: int) -> dict[str, Any]:
    import psycopg

    half = n_runs // 2
    with _pgbench.fresh_database(server) as dsn, _pgbench.children() as kids:
        a = _pgbench.start_worker(
            dsn, "sleepy", capacity=half, lease_ttl=LEASE_TTL, poll=WORKER_POLL
        )
        kids.append(a)
        a_owner = a.expect("ready ")
        a.send("go")
        a.expect("started")
        workflow = _pgbench.build_sleepy()
        trio.run(_pgbench.enqueue_runs, dsn, workflow, [{"sleep": STEP_S}] * n_runs)
        wait_until(lambda: held_by(dsn, a_owner) == half, "A holds its runs")

        b = _pgbench.start_worker(
            dsn, "sleepy", capacity=SURVIVOR_CAPACITY, lease_ttl=LEASE_TTL, poll=WORKER_POLL
        )
        kids.append(b)
        b_owner = b.expect("ready ")
        b.send("go")
        b.expect("started")
        wait_until(lambda: held_by(dsn, b_owner) == n_runs - half, "B holds the rest")

        held = _pgbench.query(
            dsn,
            "SELECT run_id, extract(epoch FROM lease_expires_at - now())::float8, last_seq "
            "FROM trioflow_runs WHERE lease_owner = %s AND status = 'running'",
            a_owner,
        )
        a.proc.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        a.proc.wait()
        held_ids = [str(run_id) for run_id, _, _ in held]
        lease_left = [float(left) for _, left, _ in held]
        seq_at_kill = {str(run_id): int(seq) for run_id, _, seq in held}

        first_restart: float | None = None
        all_restarted: float | None = None
        all_done: float | None = None
        deadline = time.monotonic() + TIMEOUT
        with psycopg.connect(dsn, autocommit=True) as conn:
            while all_done is None:
                rows = conn.execute(
                    "SELECT run_id, status, last_seq FROM trioflow_runs WHERE run_id = ANY(%s)",
                    (held_ids,),
                ).fetchall()
                now = time.perf_counter() - killed
                # Executing again: B wrote to the run's log (a claim that fails to begin
                # writes nothing).
                taken = [
                    status == "success" or seq > seq_at_kill[run_id] for run_id, status, seq in rows
                ]
                if first_restart is None and any(taken):
                    first_restart = now
                if all_restarted is None and all(taken):
                    all_restarted = now
                if all(status == "success" for _, status, _ in rows):
                    all_done = now
                if time.monotonic() > deadline:
                    raise TimeoutError(f"A's runs not done within {TIMEOUT} s: {rows}")
                time.sleep(POLL)
        wait_until(
            lambda: (
                _pgbench.query(dsn, "SELECT count(*) FROM trioflow_runs WHERE status = 'success'")[
                    0
                ][0]
                == n_runs
            ),
            "all runs done",
        )
        b_stats = json.loads(b.finish("stats ") or "{}")
        finished = _pgbench.query(
            dsn,
            "SELECT count(*) FROM trioflow_runs WHERE status = 'success' "
            "AND (snapshot::jsonb -> 'result' ->> 'n')::int = %s",
            _pgbench.SLEEPY_STEPS,
        )
        if finished[0][0] != n_runs:
            raise RuntimeError(f"{finished[0][0]} of {n_runs} runs completed every step")
        step_starts = _pgbench.query(
            dsn,
            "SELECT count(*) FROM trioflow_events WHERE run_id = ANY(%s) "
            "AND chunk LIKE '%%\"workflow-step-start\"%%'",
            held_ids,
        )[0][0]
    assert first_restart is not None
    assert all_restarted is not None
    return {
        "runs_held_by_killed_worker": len(held_ids),
        "restarted_by_survivor": b_stats.get("restarted"),
        "failed_to_begin_on_survivor": b_stats.get("failed_to_begin"),
        "lease_left_at_kill_s": max(lease_left),
        "kill_to_first_restart_s": first_restart,
        "kill_to_all_restarted_s": all_restarted,
        "kill_to_all_done_s": all_done,
        "restart_to_done_s": all_done - all_restarted,
        "steps_started_again_per_run": step_starts / len(held_ids) - _pgbench.SLEEPY_STEPS,
    }


def measure(server: str, quick: bool) -> list[dict[str, Any]]:
    n_runs = QUICK_RUNS if quick else RUNS
    trials = [trial(server, n_runs) for _ in range(QUICK_TRIALS if quick else TRIALS)]
    timed = (
        "lease_left_at_kill_s",
        "kill_to_first_restart_s",
        "kill_to_all_restarted_s",
        "kill_to_all_done_s",
        "restart_to_done_s",
        "steps_started_again_per_run",
    )
    figures: dict[str, Any] = {key: statistics.median(t[key] for t in trials) for key in timed}
    figures.update({f"{key}_trials": [round(t[key], 3) for t in trials] for key in timed})
    return [
        _harness.report(
            "pg-recovery",
            {
                **figures,
                "lease_ttl_s": LEASE_TTL,
                "lease_renewal_s": LEASE_TTL / 3,
                "worker_poll_interval_s": WORKER_POLL,
                "survivor_capacity": SURVIVOR_CAPACITY,
                "runs": n_runs,
                "runs_held_by_killed_worker": [t["runs_held_by_killed_worker"] for t in trials],
                "restarted_by_survivor": [t["restarted_by_survivor"] for t in trials],
                "failed_to_begin_on_survivor": [t["failed_to_begin_on_survivor"] for t in trials],
                "steps_per_run": _pgbench.SLEEPY_STEPS,
                "step_s": STEP_S,
                "trials": len(trials),
                "postgres_version": _pgbench.server_version(server),
                **_pgbench.machine(),
                "peak_rss_mb": _harness.peak_rss_mb(),
            },
        )
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    return _pgbench.run_with_server(SCENARIOS, lambda server: measure(server, quick))


if __name__ == "__main__":
    _harness.cli(globals())
