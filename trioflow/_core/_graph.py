"""The workflow graph: an ordered list of entries (pure, trio-free).

A *node* is anything with an ``id`` that the engine can execute as one step: a Step, or a
Workflow used as a step. Conditions, map functions and sleep durations are user callables
(sync or async); the graph only stores them.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any, Literal, Protocol

import attrs


class Node(Protocol):
    @property
    def id(self) -> str: ...


def check_id(kind: str, value: object) -> str:
    """Ids are non-empty strings without ``.``, ``[`` or ``]`` (those build paths)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} id must be a non-empty str, got {value!r}")
    bad = [c for c in ".[]" if c in value]
    if bad:
        raise ValueError(f"{kind} id {value!r} must not contain {''.join(bad)!r}")
    return value


@attrs.frozen
class StepEntry:
    node: Any

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.node.id,)


@attrs.frozen
class ParallelEntry:
    nodes: tuple[Any, ...]
    fail_fast: bool = False

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.nodes)


@attrs.frozen
class BranchEntry:
    conditions: tuple[Callable[..., Any], ...]
    nodes: tuple[Any, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.nodes)


@attrs.frozen
class LoopEntry:
    node: Any
    condition: Callable[..., Any]
    kind: Literal["dowhile", "dountil"]

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.node.id,)


@attrs.frozen
class ForeachEntry:
    node: Any
    concurrency: int = 1

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.node.id,)


@attrs.frozen
class MapEntry:
    id: str
    fn: Callable[..., Any] | None = None
    mapping: dict[str, Any] | None = None

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.id,)


@attrs.frozen
class SleepEntry:
    id: str
    seconds: float | Callable[..., Any] | None = None
    until: _dt.datetime | Callable[..., Any] | None = None

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.id,)


Entry = StepEntry | ParallelEntry | BranchEntry | LoopEntry | ForeachEntry | MapEntry | SleepEntry


# --- map sources -------------------------------------------------------------------------


@attrs.frozen
class FromStep:
    """Take a value from an earlier step's output (``path`` dotted, ``"."`` = all of it)."""

    step_id: str
    path: str = "."


@attrs.frozen
class FromInit:
    """Take a value from the workflow input."""

    path: str = "."


@attrs.frozen
class FromContext:
    """Take a value from the request context (dotted path)."""

    path: str


@attrs.frozen
class Const:
    """A constant."""

    value: Any


MapSource = FromStep | FromInit | FromContext | Const


def from_step(step: Any, path: str = ".") -> FromStep:
    """Mapping source: ``step``'s output (a Step, Workflow or id) at ``path``."""
    step_id = step if isinstance(step, str) else step.id
    return FromStep(check_id("step", step_id), path)


def from_init(path: str = ".") -> FromInit:
    """Mapping source: the workflow input at ``path``."""
    return FromInit(path)


def from_context(path: str) -> FromContext:
    """Mapping source: the request context value at dotted ``path``."""
    return FromContext(path)


def const(value: Any) -> Const:
    """Mapping source: ``value`` itself."""
    return Const(value)


_MISSING = object()


def get_path(value: Any, path: str) -> Any:
    """Follow a dotted ``path`` through mappings, attributes and list indices.

    ``"."`` or ``""`` is the value itself. A missing key raises ``KeyError`` naming the path.
    """
    if path in (".", ""):
        return value
    current = value
    for part in path.split("."):
        if isinstance(current, dict):
            nxt = current.get(part, _MISSING)
        elif isinstance(current, list | tuple) and part.isdigit():
            index = int(part)
            nxt = current[index] if index < len(current) else _MISSING
        else:
            nxt = getattr(current, part, _MISSING)
        if nxt is _MISSING:
            raise KeyError(f"path {path!r} not found (no {part!r})")
        current = nxt
    return current


def find_node(entries: list[Entry], node_id: str) -> Any | None:
    """The node with ``node_id`` among ``entries`` (None when absent or synthetic)."""
    for entry in entries:
        if isinstance(entry, StepEntry | LoopEntry | ForeachEntry):
            if entry.node.id == node_id:
                return entry.node
        elif isinstance(entry, ParallelEntry | BranchEntry):
            for node in entry.nodes:
                if node.id == node_id:
                    return node
    return None


def entry_nodes(entries: list[Entry]) -> list[Any]:
    """Every node (Step or nested Workflow) the entries run, in graph order."""
    nodes: list[Any] = []
    for entry in entries:
        if isinstance(entry, StepEntry | LoopEntry | ForeachEntry):
            nodes.append(entry.node)
        elif isinstance(entry, ParallelEntry | BranchEntry):
            nodes.extend(entry.nodes)
    return nodes
