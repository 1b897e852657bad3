"""SQL shared by the SQL backends (SQLite and PostgreSQL differ only in placeholders)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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


def run_infos(rows: Iterable[Any]) -> list[RunInfo]:
    """The rows of :func:`list_runs_query` as RunInfo values."""
    return [
        RunInfo(
            run_id=run,
            workflow_id=wf,
            resource_id=resource,
            status=RunStatus(stat),
            created_at=int(created),
            updated_at=int(updated),
        )
        for run, wf, resource, stat, created, updated in rows
    ]
