"""What the command prints to help the user type the next command: the ``trioflow resume``
command of a suspended run, filled with an example of its resume schema, and the message
for a missing ``--input``/``--data`` with an example of what is expected.

An example is built from a schema's attrs fields: a field's default when it has one, else
a placeholder of the field's type (``"..."`` for a string, ``0``, ``true``, ``[]`` of an
example item, a nested object for a nested class).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import shlex
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._admit import node_at
from .._core._errors import ValidationError
from .._core._model import ResumeLabel
from .._core._serde import to_jsonable, validate
from .._workflow import WorkflowGraph
from ._load import CliError

#: Nested classes deeper than this are shown as ``{}`` (a schema may be recursive).
_MAX_DEPTH = 4

_SCALARS: dict[Any, Any] = {str: "...", int: 0, float: 0.0, bool: True, bytes: "..."}


def example_of(schema: Any, depth: int = 0) -> Any:
    """A JSON value that ``schema`` accepts (as far as placeholders can), for hints."""
    if schema is None or schema is Any or schema is type(None):
        return None
    if schema in _SCALARS:
        return _SCALARS[schema]
    if isinstance(schema, type) and attrs.has(schema):
        return _attrs_example(schema, depth) if depth < _MAX_DEPTH else {}
    if isinstance(schema, type) and issubclass(schema, enum.Enum):
        members = list(schema)
        return to_jsonable(members[0].value) if members else None
    if schema in (_dt.datetime, _dt.date, _dt.time):
        return {_dt.datetime: "2026-01-01T00:00:00", _dt.date: "2026-01-01"}.get(schema, "00:00")
    origin = typing.get_origin(schema)
    args = typing.get_args(schema)
    if origin is typing.Literal:
        return to_jsonable(args[0]) if args else None
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return example_of(options[0], depth) if options else None
    if origin is typing.Annotated:
        return example_of(args[0], depth)
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return {}
    if isinstance(origin, type) and issubclass(origin, Sequence | set | frozenset):
        return [example_of(args[0], depth + 1)] if args and args[0] is not Ellipsis else []
    if isinstance(schema, type) and issubclass(schema, Mapping):
        return {}
    if isinstance(schema, type) and issubclass(schema, list | tuple | set | frozenset):
        return []
    return None


def _attrs_example(cls: type, depth: int) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        hints = {}
    out: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if not field.init:
            continue
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            factory: Any = default.factory
            takes_self = default.takes_self
            default = attrs.NOTHING if takes_self else _call(factory)
        name = field.alias or field.name
        if default is not attrs.NOTHING:
            out[name] = to_jsonable(default)
        else:
            out[name] = example_of(hints.get(field.name, field.type), depth + 1)
    return out


def _call(factory: Any) -> Any:
    try:
        return factory()
    except Exception:
        return attrs.NOTHING


def example_text(schema: Any) -> str:
    """``schema``'s example as a shell word (``JSON`` when there is no schema to go by)."""
    if schema is None:
        return "JSON"
    return shlex.quote(json.dumps(example_of(schema), ensure_ascii=False))


def describe_expected(schema: Any) -> str:
    """``a JSON object``, ``a JSON list``… for messages."""
    value = example_of(schema)
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON list"
    return "a JSON value"


# --- resume commands -----------------------------------------------------------------------


def resume_schema_at(workflow: WorkflowGraph | None, path: Sequence[str]) -> Any:
    """The resume schema of the suspended step at ``path`` (None: unknown or none)."""
    if workflow is None:
        return None
    node = node_at(workflow, list(path))
    return getattr(node, "resume_schema", None)


def resume_commands(
    run_id: str,
    db_option: str,
    suspended: Sequence[Sequence[str]],
    *,
    workflow: WorkflowGraph | None,
    labels: Mapping[str, ResumeLabel] | None = None,
    data: Any | None = None,
) -> list[str]:
    """One ``trioflow resume`` command per suspended step: ``data`` when the caller knows
    it, else an example of the step's resume schema; with ``--label``/``--step`` when
    more than one step is suspended (one alone needs neither)."""
    commands = []
    for path in suspended:
        if data is not None:
            data_text = shlex.quote(json.dumps(data, ensure_ascii=False))
        else:
            data_text = example_text(resume_schema_at(workflow, path))
        selector = ""
        if len(suspended) > 1:
            selector = " --step " + shlex.quote(".".join(path))
            for label, target in sorted((labels or {}).items()):
                if list(target.path) == list(path) and target.foreach_index is None:
                    selector = " --label " + shlex.quote(label)
                    break
        commands.append(f"trioflow resume {run_id}{db_option} --data {data_text}{selector}")
    return commands


# --- missing --input / --data ----------------------------------------------------------------


def require_value(schema: Any, option: str, what: str) -> None:
    """CliError when ``option`` was not given and ``schema`` (of ``what``, e.g. ``workflow
    'orders'``) does not accept nothing, naming the option and an example of it."""
    if schema is None:
        return
    try:
        validate(None, schema, "")
    except ValidationError:
        raise CliError(
            f"missing {option}: {what} expects {describe_expected(schema)}, e.g. "
            f"{option} {example_text(schema)}"
        ) from None


def step_to_resume(
    suspended: Sequence[Sequence[str]],
    labels: Mapping[str, ResumeLabel],
    step: str | None,
    label: str | None,
) -> list[str] | None:
    """The path a ``resume`` targets, when it can be told before resuming."""
    if step is not None:
        return step.split(".")
    if label is not None:
        target = labels.get(label)
        return list(target.path) if target is not None else None
    if len(suspended) == 1:
        return list(suspended[0])
    return None
