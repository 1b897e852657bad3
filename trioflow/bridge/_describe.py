"""A workflow as JSON: its graph and its schemas as JSON Schema (pure, trio-free).

The bridge's ``describe`` reply: enough for a page to draw the graph (entries in order,
step ids, kinds, nesting) and to build the start and resume forms. Conditions, map
functions and step bodies are code, so only their ids and kinds appear.

The graph::

    {"id": "orders", "description": ..., "inputSchema": {...}, "outputSchema": {...},
     "entries": [ENTRY, ...],
     "resumeSchemas": {"approve": {...}, "nested.inner": {...}}}

    ENTRY = {"type": "step", "node": NODE}
          | {"type": "parallel", "nodes": [NODE, ...], "failFast": bool}
          | {"type": "branch", "nodes": [NODE, ...]}
          | {"type": "dowhile" | "dountil", "node": NODE}
          | {"type": "foreach", "node": NODE, "concurrency": n}
          | {"type": "map", "id": ...}
          | {"type": "sleep", "id": ..., "seconds": s (when fixed)}
          | {"type": "sleep-until", "id": ..., "until": iso (when fixed)}
    NODE  = {"id", "kind": "step" | "workflow", "description"?, "inputSchema"?,
             "resumeSchema"?, "suspendSchema"?, "outputSchema"?,
             "entries": [ENTRY, ...] (kind "workflow")}

A step's id inside a nested workflow is ``"<nested id>.<inner id>"`` in the chunks (SPEC
§3.2): ``resumeSchemas`` is keyed by those dotted paths, so the resume form for a
``workflow-step-suspended`` chunk is ``resumeSchemas[chunk.payload.id]`` (foreach
iterations share their step's schema).

JSON Schema (draft 2020-12 subset) follows the converter (``trioflow._core._serde``): attrs
classes are objects whose fields without a default are required and extra keys allowed;
``list``/``tuple``/``set`` are arrays, ``dict[str, X]`` objects, ``Optional``/unions
``anyOf``, ``Literal`` and enums ``enum``, ``datetime`` an ISO string. ``None`` and ``Any``
are ``{}`` (anything); a type it cannot express is ``{}`` with a ``description``. A class
that refers to itself is described once; the inner reference becomes ``{}``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .._core import _graph as g
from .._workflow import WorkflowGraph

JsonSchema = dict[str, Any]

_SCALARS: Final[dict[Any, JsonSchema]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    _dt.datetime: {"type": "string", "format": "date-time"},
    _dt.date: {"type": "string", "format": "date"},
}
#: Recursion bound for generic nesting (list[list[...]]) that is not a class cycle.
_MAX_DEPTH: Final = 32


def json_schema(schema: Any) -> JsonSchema:
    """The JSON Schema of a trioflow schema (an attrs class, a plain type, ``None``)."""
    return _Schemas().of(schema, 0)


class _Schemas:
    def __init__(self) -> None:
        self._open: set[type] = set()  # classes being described (cycle guard)

    def of(self, t: Any, depth: int) -> JsonSchema:
        if t is None or t is typing.Any or t is object or depth > _MAX_DEPTH:
            return {}
        if isinstance(t, str):
            return {"description": f"unresolved type {t!r}"}
        if t in _SCALARS:
            return dict(_SCALARS[t])
        if isinstance(t, type) and issubclass(t, enum.Enum):
            return {"enum": [m.value for m in t], "title": t.__name__}
        origin = typing.get_origin(t)
        if origin is not None or t in (list, tuple, set, frozenset, dict):
            return self._generic(t, origin, depth)
        if isinstance(t, type) and (attrs.has(t) or dataclasses.is_dataclass(t)):
            return self._class(t, depth)
        if isinstance(t, type) and typing.is_typeddict(t):
            return self._typeddict(t, depth)
        pydantic = getattr(t, "model_json_schema", None)
        if callable(pydantic):
            try:
                found = pydantic()
            except Exception:  # a schema hook may fail; the field is still usable
                found = None
            if isinstance(found, dict):
                return found
        return {"description": f"any value ({getattr(t, '__name__', repr(t))})"}

    def _generic(self, t: Any, origin: Any, depth: int) -> JsonSchema:
        args = typing.get_args(t)
        base = origin if origin is not None else t
        if base is typing.Union or base is types.UnionType:
            return _union([self.of(a, depth + 1) for a in args])
        if base is typing.Literal:
            return {"enum": [a.value if isinstance(a, enum.Enum) else a for a in args]}
        if base is typing.Annotated:
            return self.of(args[0], depth + 1)
        if base in (list, set, frozenset, Sequence) or (base is tuple and _open_tuple(args)):
            out: JsonSchema = {"type": "array"}
            if args:
                out["items"] = self.of(args[0], depth + 1)
            if base in (set, frozenset):
                out["uniqueItems"] = True
            return out
        if base is tuple:
            items = [self.of(a, depth + 1) for a in args]
            return {
                "type": "array",
                "prefixItems": items,
                "items": False,
                "minItems": len(items),
            }
        if base in (dict, Mapping):
            out = {"type": "object"}
            if len(args) == 2:
                out["additionalProperties"] = self.of(args[1], depth + 1)
            return out
        return {"description": f"any value ({t!r})"}

    def _class(self, cls: type, depth: int) -> JsonSchema:
        if cls in self._open:
            return {"description": f"a {cls.__name__} (recursive)"}
        self._open.add(cls)
        try:
            hints = _hints(cls)
            properties: dict[str, JsonSchema] = {}
            required: list[str] = []
            for name, default, field_type in _fields(cls):
                prop = self.of(hints.get(name, field_type), depth + 1)
                if default is _REQUIRED:
                    required.append(name)
                elif default is not _FACTORY and _is_json(default):
                    prop = {**prop, "default": default}
                properties[name] = prop
            out: JsonSchema = {"type": "object", "title": cls.__name__, "properties": properties}
            if required:
                out["required"] = required
            doc = (cls.__doc__ or "").strip()
            if doc and not doc.startswith(f"{cls.__name__}("):  # not attrs' generated repr
                out["description"] = doc.split("\n\n")[0]
            return out
        finally:
            self._open.discard(cls)

    def _typeddict(self, cls: type, depth: int) -> JsonSchema:
        hints = _hints(cls)
        required = sorted(getattr(cls, "__required_keys__", hints))
        return {
            "type": "object",
            "title": cls.__name__,
            "properties": {k: self.of(v, depth + 1) for k, v in hints.items()},
            "required": required,
        }


_REQUIRED = object()
_FACTORY = object()


def _fields(cls: type) -> list[tuple[str, Any, Any]]:
    """(init name, default or _REQUIRED/_FACTORY, declared type) per init field."""
    out: list[tuple[str, Any, Any]] = []
    if attrs.has(cls):
        for field in attrs.fields(cls):
            if not field.init:
                continue
            name = field.alias or field.name
            default: Any = field.default
            if default is attrs.NOTHING:
                default = _REQUIRED
            elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = _FACTORY
            out.append((name, default, field.type))
        return out
    for dc_field in dataclasses.fields(cls):
        if not dc_field.init:
            continue
        if dc_field.default is not dataclasses.MISSING:
            default = dc_field.default
        elif dc_field.default_factory is not dataclasses.MISSING:
            default = _FACTORY
        else:
            default = _REQUIRED
        out.append((dc_field.name, default, dc_field.type))
    return out


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a forward reference that cannot be resolved: keep declared types
        return {}


def _open_tuple(args: tuple[Any, ...]) -> bool:
    return len(args) == 2 and args[1] is Ellipsis


def _union(options: list[JsonSchema]) -> JsonSchema:
    if any(option == {} for option in options):
        return {}
    simple = [o.get("type") for o in options if set(o) == {"type"}]
    if len(simple) == len(options):
        return {"type": simple}
    return {"anyOf": options}


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


# --- graph ---------------------------------------------------------------------------------


def describe(workflow: WorkflowGraph) -> dict[str, Any]:
    """The graph and schemas of ``workflow`` as JSON (see the module docstring)."""
    resume: dict[str, JsonSchema] = {}
    out: dict[str, Any] = {"id": workflow.id}
    if workflow.description:
        out["description"] = workflow.description
    out["inputSchema"] = json_schema(workflow.input_schema)
    out["outputSchema"] = json_schema(workflow.output_schema)
    out["entries"] = _entries(workflow.entries, "", resume, 0)
    out["resumeSchemas"] = resume
    return out


def _entries(
    entries: Sequence[g.Entry], prefix: str, resume: dict[str, JsonSchema], depth: int
) -> list[dict[str, Any]]:
    return [_entry(entry, prefix, resume, depth) for entry in entries]


def _entry(
    entry: g.Entry, prefix: str, resume: dict[str, JsonSchema], depth: int
) -> dict[str, Any]:
    def node(n: Any) -> dict[str, Any]:
        return _node(n, prefix, resume, depth)

    if isinstance(entry, g.StepEntry):
        return {"type": "step", "node": node(entry.node)}
    if isinstance(entry, g.ParallelEntry):
        return {
            "type": "parallel",
            "nodes": [node(n) for n in entry.nodes],
            "failFast": entry.fail_fast,
        }
    if isinstance(entry, g.BranchEntry):
        return {"type": "branch", "nodes": [node(n) for n in entry.nodes]}
    if isinstance(entry, g.LoopEntry):
        return {"type": entry.kind, "node": node(entry.node)}
    if isinstance(entry, g.ForeachEntry):
        return {"type": "foreach", "node": node(entry.node), "concurrency": entry.concurrency}
    if isinstance(entry, g.MapEntry):
        return {"type": "map", "id": prefix + entry.id}
    out: dict[str, Any] = {"id": prefix + entry.id}
    if entry.until is not None:
        out["type"] = "sleep-until"
        if isinstance(entry.until, _dt.datetime):
            out["until"] = entry.until.isoformat()
        return out
    out["type"] = "sleep"
    if isinstance(entry.seconds, int | float) and math.isfinite(entry.seconds):
        out["seconds"] = entry.seconds
    return out


def _node(n: Any, prefix: str, resume: dict[str, JsonSchema], depth: int) -> dict[str, Any]:
    path = prefix + n.id
    kind = "workflow" if isinstance(n, WorkflowGraph) else "step"
    out: dict[str, Any] = {"id": path, "kind": kind}
    if getattr(n, "description", None):
        out["description"] = n.description
    for attr, key in (
        ("input_schema", "inputSchema"),
        ("output_schema", "outputSchema"),
        ("suspend_schema", "suspendSchema"),
        ("resume_schema", "resumeSchema"),
    ):
        value = getattr(n, attr, None)
        if value is not None:
            out[key] = json_schema(value)
    if "resumeSchema" in out:
        resume[path] = out["resumeSchema"]
    if isinstance(n, WorkflowGraph):
        if depth >= _MAX_DEPTH:
            out["entries"] = []
        else:
            out["entries"] = _entries(n.entries, path + ".", resume, depth + 1)
    return out
