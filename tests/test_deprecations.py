"""Deprecated aliases: `run.stream_vnext`, `run.resume_stream_vnext`, `wf.create_run_async`
and the `runtime_context=` keyword each warn with `DeprecationWarning` and still work.

Contract: SPEC §2 (the `stream_vnext`/`resume_stream_vnext`/`create_run_async` row of the
run-method table; "`runtime_context=` is a deprecated alias" of `request_context`).
Background: mastra-behaviour.md §3 (`streamVNext`/`resumeStreamVNext`, `createRunAsync`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import trioflow as tf


@pytest.fixture
async def rt() -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime() as runtime:
        yield runtime


async def _add_one(ctx: tf.StepContext) -> int:
    return int(ctx.input_data) + 1


async def _gate(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"ask": "number"})
    return int(ctx.input_data) + int(ctx.resume_data)


async def _tenant(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None and ctx.get_init_data() == "suspend":
        return await ctx.suspend()
    return ctx.request_context.get("tenant")


def chain() -> tf.Workflow:
    return (
        tf.create_workflow(id="chain")
        .then(tf.create_step(id="a", execute=_add_one))
        .then(tf.create_step(id="b", execute=_add_one))
        .commit()
    )


def gated() -> tf.Workflow:
    return tf.create_workflow(id="gated").then(tf.create_step(id="g", execute=_gate)).commit()


def tenant_wf() -> tf.Workflow:
    return tf.create_workflow(id="tenant").then(tf.create_step(id="t", execute=_tenant)).commit()


async def test_stream_vnext_warns_and_streams(rt: tf.Runtime) -> None:
    run = await chain().create_run()
    with pytest.warns(DeprecationWarning, match="stream_vnext"):
        out = await run.stream_vnext(input_data=1)
    types = [chunk.type async for chunk in out]
    assert types[0] == "workflow-start"
    assert types[-1] == "workflow-finish"
    assert len(types) == 6
    result = await out.result()
    assert result.status == "success"
    assert result.result == 3


async def test_stream_vnext_warning_points_at_the_caller(rt: tf.Runtime) -> None:
    run = await chain().create_run()
    with pytest.warns(DeprecationWarning, match="stream_vnext") as record:
        out = await run.stream_vnext(input_data=1)
    assert record[0].filename == __file__
    assert (await out.result()).status == "success"


async def test_resume_stream_vnext_warns_and_resumes(rt: tf.Runtime) -> None:
    run = await gated().create_run()
    assert (await run.start(input_data=1)).status == "suspended"
    with pytest.warns(DeprecationWarning, match="resume_stream_vnext"):
        out = await run.resume_stream_vnext(resume_data=10)
    chunks = [chunk async for chunk in out]
    assert chunks[-1].type == "workflow-finish"
    result = await out.result()
    assert result.status == "success"
    assert result.result == 11


async def test_create_run_async_warns_and_returns_a_working_run(rt: tf.Runtime) -> None:
    wf = chain()
    with pytest.warns(DeprecationWarning, match="create_run_async"):
        run = await wf.create_run_async()
    assert isinstance(run, tf.Run)
    assert run.workflow_id == "chain"
    result = await run.start(input_data=5)
    assert result.result == 7


async def test_create_run_async_keeps_the_run_id(rt: tf.Runtime) -> None:
    with pytest.warns(DeprecationWarning, match="create_run_async"):
        run = await chain().create_run_async(run_id="legacy-run")
    assert run.run_id == "legacy-run"
    assert (await run.start(input_data=0)).status == "success"


async def test_runtime_context_on_start_warns_and_is_the_request_context(
    rt: tf.Runtime,
) -> None:
    run = await tenant_wf().create_run()
    with pytest.warns(DeprecationWarning, match="runtime_context"):
        result = await run.start(input_data=0, runtime_context={"tenant": "acme"})
    assert result.result == "acme"


async def test_runtime_context_warning_points_at_the_caller(rt: tf.Runtime) -> None:
    run = await tenant_wf().create_run()
    with pytest.warns(DeprecationWarning, match="runtime_context") as record:
        await run.start(input_data=0, runtime_context={"tenant": "acme"})
    assert record[0].filename == __file__


async def test_runtime_context_on_stream_warns_and_is_the_request_context(
    rt: tf.Runtime,
) -> None:
    run = await tenant_wf().create_run()
    with pytest.warns(DeprecationWarning, match="runtime_context"):
        out = await run.stream(input_data=0, runtime_context=tf.RequestContext({"tenant": "z"}))
    assert (await out.result()).result == "z"


async def test_runtime_context_on_stream_legacy_warns(rt: tf.Runtime) -> None:
    run = await tenant_wf().create_run()
    with pytest.warns(DeprecationWarning, match="runtime_context"):
        out = await run.stream_legacy(input_data=0, runtime_context={"tenant": "legacy"})
    assert (await out.get_workflow_state()).result == "legacy"


async def test_runtime_context_on_resume_warns_and_merges(rt: tf.Runtime) -> None:
    run = await tenant_wf().create_run()
    assert (await run.start(input_data="suspend", request_context={"tenant": "a"})).status == (
        "suspended"
    )
    with pytest.warns(DeprecationWarning, match="runtime_context"):
        result = await run.resume(resume_data=1, runtime_context={"tenant": "b"})
    assert result.status == "success"
    assert result.result == "b"


async def test_runtime_context_on_resume_stream_warns(rt: tf.Runtime) -> None:
    run = await tenant_wf().create_run()
    await run.start(input_data="suspend", request_context={"tenant": "a"})
    with pytest.warns(DeprecationWarning, match="runtime_context"):
        out = await run.resume_stream(resume_data=1, runtime_context={"tenant": "c"})
    assert (await out.result()).result == "c"


async def test_request_context_alone_does_not_warn(rt: tf.Runtime) -> None:
    run = await tenant_wf().create_run()
    # filterwarnings = error: any warning here fails the test.
    result = await run.start(input_data=0, request_context={"tenant": "quiet"})
    assert result.result == "quiet"
