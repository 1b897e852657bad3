"""The bundled demo (``trioflow demo``): an order workflow with parallel steps, a foreach
with progress, streamed custom output and a suspension for approval.

``trioflow demo`` starts it on the embedded SQLite default and stops when it suspends,
printing the ``trioflow resume …`` command that finishes it from another terminal. The
workflow is found again in that other process through the reference
``trioflow._demo:demo_workflow`` stored with the run.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from ._context import StepContext
from ._runnable import Workflow, create_workflow
from ._workflow import create_step

#: The input ``trioflow demo`` starts the workflow with.
DEMO_INPUT: dict[str, Any] = {
    "id": "order-42",
    "items": ["teapot", "mug", "mug", "kettle", "tea", "spoon", "tray", "cosy"],
}
#: The resume data of the command the demo prints.
DEMO_APPROVAL: dict[str, Any] = {"approved": True, "by": "you"}

_PRICES = {"teapot": 30, "mug": 8, "kettle": 25, "tea": 6, "spoon": 2, "tray": 12, "cosy": 5}


@attrs.frozen
class Order:
    id: str
    items: list[str]


@attrs.frozen
class Approval:
    approved: bool
    by: str = "someone"


async def _check_stock(ctx: StepContext) -> dict[str, Any]:
    order: Order = ctx.input_data
    await trio.lowlevel.checkpoint()
    for item in sorted(set(order.items)):
        await trio.sleep(0.06)
        await ctx.writer.custom("data-stock", {"item": item, "available": True})
    return {"in_stock": True, "distinct": len(set(order.items))}


async def _price(ctx: StepContext) -> dict[str, Any]:
    order: Order = ctx.input_data
    await trio.sleep(0.3)
    return {"total": sum(_PRICES.get(item, 10) for item in order.items)}


async def _plan(ctx: StepContext) -> list[str]:
    order: Order = ctx.get_init_data()
    await ctx.writer.custom("data-note", {"text": f"packing {len(order.items)} items, 3 at a time"})
    return list(order.items)


async def _pack(ctx: StepContext) -> dict[str, Any]:
    item: str = ctx.input_data
    await trio.sleep(0.15 + 0.03 * len(item))
    await ctx.writer.write({"packed": item})
    return {"item": item, "weight_g": 100 * len(item)}


async def _approve(ctx: StepContext) -> dict[str, Any] | None:
    if ctx.resume_data is None:
        order: Order = ctx.get_init_data()
        price = ctx.get_step_result("price") or {}
        await ctx.suspend(
            {
                "question": f"ship {order.id} ({len(order.items)} items, "
                f"total {price.get('total')})?",
                "items": len(order.items),
            },
            resume_label="approval",
        )
        return None
    approval: Approval = ctx.resume_data
    await trio.lowlevel.checkpoint()
    return {"approved": approval.approved, "by": approval.by}


async def _ship(ctx: StepContext) -> dict[str, Any]:
    decision: dict[str, Any] = ctx.input_data
    if not decision["approved"]:
        await ctx.writer.custom("data-note", {"text": f"{decision['by']} said no: not shipped"})
        return {"shipped": False, "by": decision["by"]}
    await ctx.writer.custom("data-note", {"text": "handing the parcel to the courier"})
    await trio.sleep(0.2)
    return {"shipped": True, "approved_by": decision["by"]}


def demo_workflow() -> Workflow:
    """The demo workflow (a new, committed instance)."""
    check = create_step(id="check_stock", execute=_check_stock, input_schema=Order)
    price = create_step(id="price", execute=_price, input_schema=Order)
    plan = create_step(id="plan", execute=_plan)
    pack = create_step(id="pack", execute=_pack)
    approve = create_step(id="approve", execute=_approve, resume_schema=Approval)
    ship = create_step(id="ship", execute=_ship)
    return (
        create_workflow(id="demo-order", input_schema=Order)
        .parallel([check, price])
        .then(plan)
        .foreach(pack, concurrency=3)
        .then(approve)
        .then(ship)
        .commit()
    )
