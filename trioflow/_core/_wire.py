"""The wire format (SPEC §3.4): chunks as the JSON dicts Mastra clients read.

``{"type", "runId", "from", "seq", "payload": {...}}`` with camelCased *field names*; user
data (outputs, payloads, suspend/resume data, custom data, error extras) is never renamed.
None fields are left out. The event log in storage and the websocket bridge use this shape.
Re-exported by :mod:`trioflow._core._serde`, the one serialization layer.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["camel", "from_wire", "to_wire", "type_name"]


def type_name(value: object) -> str:
    """How an error message names the JSON type of ``value`` (``null`` for None)."""
    if value is None:
        return "null"
    return type(value).__name__


_USER_DATA_FIELDS = frozenset(
    {
        "output",
        "payload",
        "suspend_payload",
        "suspend_output",
        "resume_payload",
        "iteration_output",
        "metadata",
        "final_workflow_result",
    }
)


@functools.cache
def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _usage_to_wire(usage: Any) -> dict[str, int]:
    return {camel(f.name): getattr(usage, f.name) for f in attrs.fields(type(usage))}


def _usage_from_wire(data: Any, where: str) -> Any:
    from ._model import Usage

    if data is None:
        return Usage()
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {type_name(data)}")
    values: dict[str, int] = {}
    for field in attrs.fields(Usage):
        raw = data.get(camel(field.name), 0)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"{where}.{camel(field.name)}: expected int, got {type_name(raw)}")
        values[field.name] = raw
    return Usage(**values)


_ERROR_KEYS = frozenset({"message", "name", "cause", "extra"})


def _error_to_wire(err: Any) -> dict[str, Any]:
    # Custom attributes sit at the top level, as Mastra clients read them; the few whose
    # names collide with the error's own keys go under "extra" so nothing is lost.
    out: dict[str, Any] = {"message": err.message, "name": err.name}
    clashing = {k: v for k, v in err.extra.items() if k in _ERROR_KEYS}
    out.update((k, v) for k, v in err.extra.items() if k not in _ERROR_KEYS)
    if clashing:
        out["extra"] = clashing
    if err.cause is not None:
        out["cause"] = _error_to_wire(err.cause)
    return out


def _error_from_wire(data: Any, where: str) -> Any:
    from ._model import SerializedError

    if not isinstance(data, Mapping) or not isinstance(data.get("message"), str):
        raise ValueError(f"{where}: expected an error object with a message")
    extra = {k: v for k, v in data.items() if k not in _ERROR_KEYS}
    nested = data.get("extra")
    if isinstance(nested, Mapping):
        extra.update(nested)
    cause = data.get("cause")
    return SerializedError(
        message=data["message"],
        name=str(data.get("name", "Error")),
        extra=extra,
        cause=_error_from_wire(cause, f"{where}.cause") if cause is not None else None,
    )


def _tripwire_to_wire(info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"reason": info.reason, "retry": info.retry}
    if info.metadata is not None:
        out["metadata"] = info.metadata
    if info.step_id is not None:
        out["stepId"] = info.step_id
    return out


def _tripwire_from_wire(data: Any, where: str) -> Any:
    from ._model import TripwireInfo

    if not isinstance(data, Mapping) or not isinstance(data.get("reason"), str):
        raise ValueError(f"{where}: expected a tripwire object with a reason")
    return TripwireInfo(
        reason=data["reason"],
        retry=bool(data.get("retry", False)),
        metadata=data.get("metadata"),
        step_id=data.get("stepId"),
    )


#: trioflow's own payload fields, left out of the wire dict at their default (``False``,
#: ``0``) so that chunks stay as Mastra sends them unless they have something to say.
_OMITTED_AT_DEFAULT = frozenset({"restart", "retry_count"})


def _payload_to_wire(payload: Any, chunk_type: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in attrs.fields(type(payload)):
        value = getattr(payload, field.name)
        if value is None:
            continue
        name = field.name
        if name == "usage" or (name in _OMITTED_AT_DEFAULT and value == field.default):
            continue
        if name == "error":
            out["error"] = _error_to_wire(value)
        elif name == "tripwire":
            out["tripwire"] = _tripwire_to_wire(value)
        else:
            out[camel(name)] = value
    if chunk_type == "workflow-finish":
        out["output"] = {"usage": _usage_to_wire(payload.usage)}
    return out


def to_wire(chunk: Any) -> dict[str, Any]:
    """The JSON-ready, Mastra-shaped dict of a chunk."""
    out: dict[str, Any] = {
        "type": chunk.type,
        "runId": chunk.run_id,
        "from": chunk.from_,
        "seq": chunk.seq,
    }
    if chunk.type.startswith("data-"):
        out["data"] = chunk.data
        return out
    out["payload"] = _payload_to_wire(chunk.payload, chunk.type)
    return out


def _payload_from_wire(cls: type[Any], data: Any, chunk_type: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"payload: expected an object, got {type_name(data)}")
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(cls):
        name = field.name
        key = camel(name)
        where = f"payload.{key}"
        if name == "usage":
            output = data.get("output")
            usage = output.get("usage") if isinstance(output, Mapping) else None
            kwargs["usage"] = _usage_from_wire(usage, "payload.output.usage")
            continue
        value = data.get("stepName", data.get("id")) if name == "step_name" else data.get(key)
        if value is None:
            if name in _USER_DATA_FIELDS:
                kwargs[name] = None  # user data may be null (left out of the wire dict)
            elif field.default is attrs.NOTHING:
                raise ValueError(f"{where}: required field missing")
            continue
        if name == "error":
            kwargs[name] = _error_from_wire(value, where)
        elif name == "tripwire":
            kwargs[name] = _tripwire_from_wire(value, where)
        elif name in _USER_DATA_FIELDS or name == "metadata":
            kwargs[name] = value
        else:
            kwargs[name] = _check_scalar(value, field.type, where)
        if (
            chunk_type == "workflow-finish"
            and name == "metadata"
            and not isinstance(value, Mapping)
        ):
            raise ValueError(f"{where}: expected an object, got {type_name(value)}")
    return cls(**kwargs)


def _check_scalar(value: Any, annotation: Any, where: str) -> Any:
    # The annotation is a string until something resolves the class's types (cattrs does
    # when it unstructures one), then a type or a union: read both the same way.
    if isinstance(annotation, str):
        text = annotation
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation)
    if text.startswith("bool") and not isinstance(value, bool):
        raise ValueError(f"{where}: expected bool, got {type_name(value)}")
    if text.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: expected int, got {type_name(value)}")
    if text.startswith("str") and not isinstance(value, str):
        raise ValueError(f"{where}: expected str, got {type_name(value)}")
    return value


def from_wire(data: Mapping[str, Any]) -> Any:
    """The chunk a wire dict describes; ValueError naming the field when it is malformed.

    Accepts Mastra-shaped dicts that leave out optional fields (``seq`` defaults to 0,
    ``from`` to the type's usual origin).
    """
    from ._chunks import CHUNK_CLASSES, DataChunk

    if not isinstance(data, Mapping):
        raise ValueError(f"chunk: expected an object, got {type_name(data)}")
    chunk_type = data.get("type")
    if not isinstance(chunk_type, str):
        raise ValueError("type: required str field missing")
    run_id = data.get("runId")
    if not isinstance(run_id, str):
        raise ValueError("runId: required str field missing")
    seq = data.get("seq", 0)
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValueError(f"seq: expected int, got {type_name(seq)}")
    origin = data.get("from")
    if origin is not None and not isinstance(origin, str):
        raise ValueError(f"from: expected str, got {type_name(origin)}")
    if chunk_type.startswith("data-"):
        return DataChunk(
            type=chunk_type,
            run_id=run_id,
            seq=seq,
            from_=origin or "WORKFLOW",
            data=data.get("data"),
        )
    cls = CHUNK_CLASSES.get(chunk_type)
    if cls is None:
        raise ValueError(f"type: unknown chunk type {chunk_type!r}")
    payload = _payload_from_wire(_PAYLOAD_CLASSES[chunk_type], data.get("payload"), chunk_type)
    kwargs: dict[str, Any] = {"run_id": run_id, "seq": seq, "payload": payload}
    if origin is not None:
        kwargs["from_"] = origin
    return cls(**kwargs)


def _payload_classes() -> dict[str, type[Any]]:
    from . import _chunks as c

    return {
        "workflow-start": c.WorkflowStartPayload,
        "workflow-step-start": c.StepStartPayload,
        "workflow-step-output": c.StepOutputPayload,
        "workflow-step-progress": c.StepProgressPayload,
        "workflow-step-waiting": c.StepWaitingPayload,
        "workflow-step-suspended": c.StepSuspendedPayload,
        "workflow-step-result": c.StepResultPayload,
        "workflow-paused": c.EmptyPayload,
        "workflow-canceled": c.EmptyPayload,
        "workflow-finish": c.WorkflowFinishPayload,
    }


_PAYLOAD_CLASSES = _payload_classes()
