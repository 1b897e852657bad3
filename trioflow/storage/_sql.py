"""SQL shared by the SQL backends (SQLite and PostgreSQL differ only in placeholders)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._core._errors import StorageError
from .._core._model import RunInfo
from .._core._status import RunStatus


def list_runs_query(
    table: str,
    placeholder: str,
    *,
    workflow_id: str | None,
    status: RunStatus | None,
    resource_id: str | None,
    limit: int,
    offset: int,
) -> tuple[str, list[object]]:
    """The ``list_runs`` query: runs matching every given filter, newest first (by
    ``created_at``, then by insertion order ``ord``), and its parameters."""
    where: list[str] = []
    params: list[object] = []
    for column, value in (
        ("workflow_id", workflow_id),
        ("status", None if status is None else RunStatus(status).value),
        ("resource_id", resource_id),
    ):
        if value is not None:
            where.append(f"{column} = {placeholder}")
            params.append(value)
    sql = (
        f"SELECT run_id, workflow_id, resource_id, status, created_at, updated_at FROM {table}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY created_at DESC, ord DESC LIMIT {placeholder} OFFSET {placeholder}"
    )
    return sql, [*params, max(limit, 0), max(offset, 0)]


def run_infos(rows: Iterable[Any], where: str = "storage") -> list[RunInfo]:
    """The rows of :func:`list_runs_query` as RunInfo values. StorageError naming the
    run when a row holds what trioflow never writes (a status that is not a RunStatus,
    a timestamp that is not a number): the file was edited by hand or is damaged, and a
    bare ValueError would not say which row to look at."""
    return [_run_info(row, where) for row in rows]


def _run_info(row: Any, where: str) -> RunInfo:
    run, wf, resource, stat, created, updated = row
    try:
        status = RunStatus(stat)
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise StorageError(
            f"{where}: run {run!r} has the stored status {stat!r}, which is not a run "
            f"status (expected one of {known})"
        ) from None
    try:
        return RunInfo(
            run_id=run,
            workflow_id=wf,
            resource_id=resource,
            status=status,
            created_at=int(created),
            updated_at=int(updated),
        )
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"{where}: run {run!r} has a stored row trioflow cannot read "
            f"(created_at={created!r}, updated_at={updated!r}): {exc}"
        ) from None
