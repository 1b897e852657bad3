"""The bundled demo: parallel steps, a foreach with progress, streamed custom output and a
suspension for approval, on the embedded SQLite default."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

from ._context import StepContext
from ._core._chunks import (
    Chunk,
    DataChunk,
    WorkflowFinish,
    WorkflowStepProgress,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
)
from ._runtime import open_runtime
from ._workflow import Workflow, create_step, create_workflow


@attrs.frozen
class Order:
    id: str
    items: list[str]


@attrs.frozen
class Approval:
    approved: bool
    by: str = "someone"


async def _check_stock(ctx: StepContext) -> dict[str, Any]:
    await trio.sleep(0.05)
    return {"in_stock": len(ctx.input_data.items)}


async def _price(ctx: StepContext) -> dict[str, Any]:
    await trio.sleep(0.05)
    return {"total": 12 * len(ctx.input_data.items)}


async def _prepare(ctx: StepContext) -> list[str]:
    order = ctx.get_init_data()
    await ctx.writer.custom("data-note", {"text": f"packing {len(order.items)} items"})
    return list(order.items)


async def _pack(ctx: StepContext) -> str:
    await trio.sleep(0.02)
    return f"packed {ctx.input_data}"


async def _approve(ctx: StepContext) -> dict[str, Any] | None:
    if ctx.resume_data is None:
        await ctx.suspend({"question": "ship this order?"}, resume_label="approval")
        return None
    return {"approved": ctx.resume_data.approved, "by": ctx.resume_data.by}  # noqa: ASYNC910


def demo_workflow() -> Workflow:
    check = create_step(id="check_stock", execute=_check_stock, input_schema=Order)
    price = create_step(id="price", execute=_price, input_schema=Order)
    prepare = create_step(id="prepare", execute=_prepare)
    pack = create_step(id="pack", execute=_pack)
    approve = create_step(id="approve", execute=_approve, resume_schema=Approval)
    return (
        create_workflow(id="demo-order", input_schema=Order)
        .parallel([check, price])
        .then(prepare)
        .foreach(pack, concurrency=2)
        .then(approve)
        .commit()
    )


def _line(chunk: Chunk) -> str | None:
    if isinstance(chunk, WorkflowStepStart):
        return f"  ▶ {chunk.payload.id}"
    if isinstance(chunk, WorkflowStepResult):
        return f"  ✔ {chunk.payload.id} {chunk.payload.status}: {json.dumps(chunk.payload.output)}"
    if isinstance(chunk, WorkflowStepProgress):
        p = chunk.payload
        return f"    {p.id} [{p.completed_count}/{p.total_count}] item {p.current_index}"
    if isinstance(chunk, DataChunk):
        return f"  ✎ {chunk.type}: {json.dumps(chunk.data)}"
    if isinstance(chunk, WorkflowStepSuspended):
        return f"  ⏸ {chunk.payload.id} waits: {json.dumps(chunk.payload.suspend_payload)}"
    if isinstance(chunk, WorkflowFinish):
        return f"  ■ run {chunk.payload.workflow_status}"
    return None


def run_demo(db: str | None) -> int:
    """Run the demo to its suspension, approve it, and print every step as it streams."""

    async def main() -> int:
        from .storage import MemoryStorage

        storage: Any
        try:
            from .storage.sqlite import SqliteStorage
        except ImportError:
            storage = MemoryStorage()
            where = "memory"
        else:
            storage = SqliteStorage(db or "trioflow.db")
            where = db or "trioflow.db"
        workflow = demo_workflow()
        async with open_runtime(storage=storage, workflows=[workflow]):
            run = await workflow.create_run()
            print(f"run {run.run_id} of {workflow.id!r} (storage: {where})")
            out = await run.stream(input_data={"id": "o-1", "items": ["mug", "tea", "spoon"]})
            async for chunk in out:
                if (text := _line(chunk)) is not None:
                    print(text)
            result = await out.result()
            print(f"suspended at {result.suspended}; approving it now")
            resumed = await run.resume_stream(resume_data={"approved": True, "by": "demo"})
            async for chunk in resumed:
                if (text := _line(chunk)) is not None:
                    print(text)
            final = await resumed.result()
            print(f"result: {json.dumps(final.result)}")
        if hasattr(storage, "aclose"):
            await storage.aclose()
        return 0 if final.status == "success" else 1

    return trio.run(main)
