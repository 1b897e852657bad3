"""A run queued by the user's own code and started by ``trioflow worker`` stores the
worker's ``MODULE:ATTR``, so ``trioflow resume`` continues it without ``--ref`` (issue 14
item 2). PostgreSQL: workers need a database that processes coordinate through."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import trio
from test_cli_postgres import as_uri, cli, import_flows, spawn_worker
from test_cli_postgres import workdir as workdir  # the fixture

import trioflow as tf

pytest.importorskip("rich", reason="the CLI needs the 'cli' extra (rich)")


async def test_a_run_started_by_a_worker_is_resumed_without_ref(
    workdir: Path, postgres_db: str
) -> None:
    flows = import_flows(workdir)
    uri = as_uri(postgres_db)
    with spawn_worker(workdir, uri) as worker:
        assert worker.stdout is not None
        await trio.to_thread.run_sync(worker.stdout.readline)
        async with (
            tf.PostgresStorage(postgres_db) as storage,
            tf.open_runtime(storage=storage, workflows=[flows.approval]) as rt,
        ):
            run_id = await rt.enqueue("approval", input_data={"id": "o-7"})
            run = await rt.create_run("approval", run_id=run_id)
            with trio.fail_after(30):
                async with run.observe_stream() as sub:
                    async for chunk in sub:
                        if chunk.type == "workflow-finish":
                            break
    shown = await trio.to_thread.run_sync(
        functools.partial(cli, workdir, "show", run_id, "--db", uri, "--json")
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["workflowRef"] == "flows:approval"
    resumed = await trio.to_thread.run_sync(
        functools.partial(cli, workdir, "resume", run_id, "--db", uri, "--data", '{"approved": true}')
    )
    assert resumed.returncode == 0, resumed.stderr
    assert '"approved": true' in resumed.stdout
