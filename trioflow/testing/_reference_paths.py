"""The reference model's suspended paths and resume labels (what a suspended run lists,
and how a resume names its target), read from the model's own records."""

from __future__ import annotations

from collections.abc import Iterator

from ._reference_nodes import ModelError, _Level, _Rec
from ._spec import BranchSpec, ForeachSpec, LoopSpec, NodeSpec, ParallelSpec, ThenSpec, WorkflowSpec


def suspended_leaves(
    level: _Level, prefix: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], _Rec, NodeSpec, tuple[int, ...] | None]]:
    """Each suspended path with its leaf's record and spec and, for a foreach, its
    suspended iterations. A suspended foreach is listed by its own path (a foreach over a
    nested workflow too: its items are resumed through it)."""
    for node_id in level.suspended:
        rec = level.results[node_id]
        path = (*prefix, node_id)
        if rec.kind == "nested" and rec.level is not None:
            yield from suspended_leaves(rec.level, path)
        elif rec.kind == "foreach" and rec.items is not None:
            iterations = tuple(
                i for i, item in enumerate(rec.items) if item and item.status == "suspended"
            )
            yield path, rec, _leaf_spec(level.spec, node_id), iterations
        else:
            yield path, rec, _leaf_spec(level.spec, node_id), None


def _leaf_spec(spec: WorkflowSpec, node_id: str) -> NodeSpec:
    for entry in spec.entries:
        nodes: tuple[NodeSpec, ...] = ()
        if isinstance(entry, ThenSpec | LoopSpec | ForeachSpec):
            nodes = (entry.node,)
        elif isinstance(entry, ParallelSpec | BranchSpec):
            nodes = entry.nodes
        for node in nodes:
            if node.id == node_id:
                return node
    raise ModelError(f"no node {node_id!r} in {spec.id!r}")


def labels_of(root: _Level) -> dict[str, tuple[tuple[str, ...], int | None]]:
    found: dict[str, list[tuple[tuple[str, ...], int | None]]] = {}

    def visit(level: _Level, prefix: tuple[str, ...], index: int | None) -> None:
        for node_id in level.suspended:
            rec = level.results[node_id]
            path = (*prefix, node_id) if index is None else prefix
            collect(rec, path, index)

    def collect(rec: _Rec, path: tuple[str, ...], index: int | None) -> None:
        if rec.kind == "step" and rec.label is not None:
            found.setdefault(rec.label, []).append((path, index))
        elif rec.kind == "nested" and rec.level is not None:
            visit(rec.level, path, index)
        elif rec.kind == "foreach" and rec.items is not None:
            for i, item in enumerate(rec.items):
                if item is not None and item.status == "suspended":
                    collect(item, path, i if index is None else index)

    visit(root, (), None)
    # A label given by two suspended steps is ambiguous: leave it out.
    return {name: places[0] for name, places in found.items() if len(places) == 1}
