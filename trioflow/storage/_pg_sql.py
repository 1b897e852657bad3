"""PostgreSQL statements and the small helpers around them (no connection, no trio).

Each write is one statement: the compare-and-set, the lease bookkeeping, the events and
the notifications sit in one ``UPDATE ... WHERE`` with CTEs, so PostgreSQL re-checks the
conditions against the newest row version when writers race. A write NOTIFYs the events
channel only while the run's ``followed_until`` is in the future (read from that newest
row version): a process following the run sets it (:mod:`._pg_listen`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .._core._chunks import Chunk
from .._core._errors import LeaseLostError
from .._core._serde import to_wire
from .._core._status import RunStatus
from ._json import dumps_strict, loads_strict
from ._pg_steps import RETURNING_STEPS, SAVE_STEPS_CTES, replace_steps, snapshot_from_load
from ._protocol import ClaimedRun
from ._steps import StepWrites

if TYPE_CHECKING:
    import psycopg

#: Statuses of a run that is executing somewhere: they hold a lease.
EXECUTING: Final = frozenset({RunStatus.RUNNING.value, RunStatus.WAITING.value})
#: The longest wait between two attempts of a run whose executions die of errors.
MAX_RETRY_DELAY: Final = 300.0
EVENTS_CHANNEL: Final = "trioflow_events"
CANCEL_CHANNEL: Final = "trioflow_cancel"
QUEUE_CHANNEL: Final = "trioflow_queue"


def dump_chunk(chunk: Chunk) -> str:
    return dumps_strict(to_wire(chunk), f"event seq {chunk.seq} of run {chunk.run_id!r}")


def allowed_statuses(expected: RunStatus | Sequence[RunStatus] | None) -> list[str] | None:
    if expected is None:
        return None
    if isinstance(expected, str):
        return [RunStatus(expected).value]
    return [RunStatus(s).value for s in expected]


def redacted_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable dsn>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


def check_consecutive(run_id: str, seqs: list[int]) -> None:
    for offset, seq in enumerate(seqs):
        if seq != seqs[0] + offset:
            raise ValueError(
                f"run {run_id}: event seq {seq} does not follow {seqs[0] + offset - 1}"
            )


SAVE_SQL: Final = (
    """
WITH upd AS (
    UPDATE trioflow_runs SET
        status = %(status)s,
        updated_at = %(updated)s,
        snapshot = %(data)s,
        last_seq = last_seq + %(nseq)s,
        queued = queued AND %(status)s = 'pending',
        lease_owner = CASE WHEN %(claim)s THEN %(me)s
                           WHEN %(release)s THEN NULL ELSE lease_owner END,
        lease_expires_at = CASE WHEN %(claim)s THEN now() + make_interval(secs => %(ttl)s)
                                WHEN %(release)s THEN NULL ELSE lease_expires_at END,
        fencing_token = fencing_token + CASE WHEN %(claim)s THEN 1 ELSE 0 END,
        attempts = CASE WHEN %(status)s IN ('running', 'waiting') THEN attempts ELSE 0 END,
        retry_at = CASE WHEN %(status)s IN ('running', 'waiting') THEN retry_at END
    WHERE run_id = %(run)s
      AND (%(allowed)s::text[] IS NULL OR status = ANY(%(allowed)s::text[]))
      AND (%(fence)s::bigint IS NULL OR fencing_token = %(fence)s::bigint)
      AND (%(nseq)s = 0 OR last_seq = %(first)s - 1)
      AND (NOT %(claim)s OR lease_owner IS NULL OR lease_owner = %(me)s
           OR lease_expires_at < now())
    RETURNING fencing_token, followed_until > now() AS followed
)"""
    + SAVE_STEPS_CTES
    + """, ins AS (
    INSERT INTO trioflow_events (run_id, seq, chunk)
    SELECT %(run)s, s, c FROM unnest(%(seqs)s::bigint[], %(texts)s::text[]) AS t(s, c)
    WHERE EXISTS (SELECT 1 FROM upd)
), notified AS (
    SELECT pg_notify(%(events_channel)s, %(run)s) FROM upd WHERE %(nseq)s > 0 AND followed
    UNION ALL
    SELECT pg_notify(%(cancel_channel)s, %(run)s) FROM upd WHERE %(notify_cancel)s
)
SELECT (SELECT count(*) FROM upd) > 0, (SELECT fencing_token FROM upd),
       (SELECT count(*) FROM notified)
"""
)

APPEND_SQL: Final = """
WITH upd AS (
    UPDATE trioflow_runs SET last_seq = %(last)s
    WHERE run_id = %(run)s AND last_seq = %(first)s - 1
      AND (%(fence)s::bigint IS NULL OR fencing_token = %(fence)s::bigint)
    RETURNING followed_until > now() AS followed
), ins AS (
    INSERT INTO trioflow_events (run_id, seq, chunk)
    SELECT %(run)s, s, c FROM unnest(%(seqs)s::bigint[], %(texts)s::text[]) AS t(s, c)
    WHERE EXISTS (SELECT 1 FROM upd)
), notified AS (
    SELECT pg_notify(%(channel)s, %(run)s) FROM upd WHERE followed
)
SELECT (SELECT count(*) FROM upd) > 0, (SELECT count(*) FROM notified)
"""

#: Claim up to LIMIT runnable runs: queued pending ones, and executing ones whose lease
#: lapsed; ``SKIP LOCKED`` so concurrent workers never claim the same run.
CLAIM_SQL: Final = (
    """
WITH candidates AS (
    SELECT run_id FROM trioflow_runs
    WHERE workflow_id = ANY(%s)
      AND status IN ('pending', 'running', 'waiting')
      AND ((status = 'pending' AND queued
            AND (lease_owner IS NULL OR lease_expires_at < now()))
           OR (status <> 'pending' AND (lease_expires_at IS NULL
                                        OR lease_expires_at < now())))
      AND (retry_at IS NULL OR retry_at <= now())
    ORDER BY updated_at
    LIMIT %s
    FOR UPDATE SKIP LOCKED
)
UPDATE trioflow_runs AS r
SET lease_owner = %s,
    lease_expires_at = now() + make_interval(secs => %s),
    fencing_token = r.fencing_token + 1
FROM candidates c WHERE r.run_id = c.run_id
RETURNING r.run_id, r.snapshot, r.queued, r.fencing_token, r.attempts,
          r.last_error, """
    + RETURNING_STEPS
)


#: Marks runs followed (see _pg_listen) for ``ttl`` seconds from now, never shortening
#: another process's mark; returns the runs found.
FOLLOW_SQL: Final = """
UPDATE trioflow_runs
SET followed_until = greatest(followed_until, now() + make_interval(secs => %s))
WHERE run_id = ANY(%s::text[])
RETURNING run_id
"""


def mark_followed(conn: psycopg.Connection[Any], run_ids: list[str], ttl: float) -> list[str]:
    return [str(row[0]) for row in conn.execute(FOLLOW_SQL, (ttl, run_ids)).fetchall()]


def explain_refused_save(
    conn: psycopg.Connection[Any],
    run_id: str,
    *,
    fence: int | None,
    allowed: list[str] | None,
    seqs: list[int],
) -> None:
    """SAVE_SQL wrote nothing: raise LeaseLostError (fenced out) or ValueError (``seqs``
    do not continue the log); return when it was a refusal (no such run, another stored
    status, a claim refused because another process holds a live lease)."""
    found = conn.execute(
        "SELECT status, last_seq, fencing_token FROM trioflow_runs WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    if found is None:
        return
    stored_status, last_seq, token = found
    if fence is not None and token != fence:
        raise LeaseLostError(
            f"run {run_id}: this process's lease was lost (fencing token "
            f"{fence}, now {token}); another process continues the run"
        )
    if allowed is not None and stored_status not in allowed:
        return
    if seqs and seqs[0] != last_seq + 1:
        raise ValueError(f"run {run_id}: event seq {seqs[0]} does not follow {last_seq}")


def explain_refused_append(
    conn: psycopg.Connection[Any], run_id: str, *, fence: int | None, seqs: list[int]
) -> None:
    """APPEND_SQL wrote nothing: return when the run is not stored, else raise
    LeaseLostError (fenced out) or ValueError (``seqs`` do not continue the log)."""
    found = conn.execute(
        "SELECT last_seq, fencing_token FROM trioflow_runs WHERE run_id = %s", (run_id,)
    ).fetchone()
    if found is None:
        return
    if fence is not None and found[1] != fence:
        raise LeaseLostError(
            f"run {run_id}: this process's lease was lost; another process continues the run"
        )
    raise ValueError(f"run {run_id}: event seq {seqs[0]} does not follow {found[0]}")


# --- the jobs of the queue and the leases (each runs on a worker thread) -------------------


def insert_run(
    conn: psycopg.Connection[Any],
    params: tuple[Any, ...],
    *,
    queued: bool,
    run_id: str,
    steps: StepWrites,
) -> bool:
    cur = conn.execute(
        "INSERT INTO trioflow_runs (run_id, workflow_id, resource_id, status, "
        "created_at, updated_at, snapshot, queued) VALUES (%s, %s, %s, %s, %s, %s, "
        "%s, %s) ON CONFLICT (run_id) DO NOTHING",
        params,
    )
    if cur.rowcount != 1:
        return False
    replace_steps(conn, run_id, steps, fresh=True)
    if queued:
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, run_id))
    return True


ClaimRow = tuple[str, str, bool, int, int, str | None, list[Any], list[Any]]


def claim_rows(
    conn: psycopg.Connection[Any], ids: list[str], limit: int, *, owner: str, ttl: float
) -> list[ClaimRow]:
    return [
        (str(run), str(snap), bool(queued), int(token), int(attempts), error, keys, records)
        for run, snap, queued, token, attempts, error, keys, records in conn.execute(
            CLAIM_SQL, (ids, limit, owner, ttl)
        ).fetchall()
    ]


def claimed_run(row: ClaimRow, where: str) -> ClaimedRun:
    run_id, text, queued, token, attempts, error, keys, records = row
    return ClaimedRun(
        snapshot=snapshot_from_load(text, keys, records, where, run_id),
        queued=queued,
        fencing_token=token,
        attempts=attempts,
        last_error=(
            loads_strict(error, f"{where}: the last error of run {run_id!r}")
            if error is not None
            else None
        ),
    )


def record_failed(
    conn: psycopg.Connection[Any], run_id: str, fence: int, *, text: str, retry_delay: float
) -> int:
    row = conn.execute(
        "UPDATE trioflow_runs SET attempts = attempts + 1, last_error = %s, "
        "retry_at = now() + make_interval(secs => "
        "least(%s * power(2, attempts)::float8, %s)), "
        "lease_owner = NULL, lease_expires_at = NULL "
        "WHERE run_id = %s AND fencing_token = %s RETURNING attempts",
        (text, retry_delay, MAX_RETRY_DELAY, run_id, fence),
    ).fetchone()
    return int(row[0]) if row is not None else 0


def release_one(conn: psycopg.Connection[Any], run_id: str, fence: int, *, unqueue: bool) -> None:
    conn.execute(
        "UPDATE trioflow_runs SET lease_owner = NULL, lease_expires_at = NULL, "
        "queued = queued AND NOT %s WHERE run_id = %s AND fencing_token = %s",
        (unqueue, run_id, fence),
    )
    # Idle workers take the run over now rather than at their next poll.
    conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, run_id))


def release_all(conn: psycopg.Connection[Any], held: dict[str, int]) -> None:
    conn.execute(
        "UPDATE trioflow_runs AS r SET lease_owner = NULL, lease_expires_at = NULL "
        "FROM unnest(%s::text[], %s::bigint[]) AS h(run_id, token) "
        "WHERE r.run_id = h.run_id AND r.fencing_token = h.token",
        (list(held), list(held.values())),
    )
    conn.execute("SELECT pg_notify(%s, '')", (QUEUE_CHANNEL,))


def renew(
    conn: psycopg.Connection[Any], held: dict[str, int], *, ttl: float
) -> list[tuple[str, str]]:
    return [
        (str(run), str(stat))
        for run, stat in conn.execute(
            "UPDATE trioflow_runs AS r "
            "SET lease_expires_at = now() + make_interval(secs => %s) "
            "FROM unnest(%s::text[], %s::bigint[]) AS h(run_id, token) "
            "WHERE r.run_id = h.run_id AND r.fencing_token = h.token "
            "RETURNING r.run_id, r.status",
            (ttl, list(held), list(held.values())),
        ).fetchall()
    ]
