"""The bridge's wire protocol, sans-IO: parsing, validating and formatting messages.

Pure and trio-free (like ``trioflow._core``): the server and the client call these
functions around their own I/O. docs/bridge.md is the protocol's reference; this module is
its executable form. One JSON object per websocket text frame, in both directions.

Client -> server requests carry ``"op"`` and an optional ``"id"`` (a string or an integer)
that the server echoes in its ``reply`` or ``error``. Unknown extra fields are ignored, so
a client may send fields a newer server understands.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal, NoReturn

import attrs

from .._core._json import JsonValueError, check_strict_json, has_lone_surrogate
from .._core._status import RunStatus

#: The websocket subprotocol the server accepts when a client proposes it (optional).
SUBPROTOCOL: Final = "trioflow.v1"

ErrorCode = Literal[
    "bad-request",
    "unknown-op",
    "not-found",
    "forbidden",
    "validation",
    "conflict",
    "too-large",
    "internal",
]
#: Every error code the server sends (docs/bridge.md explains each).
ERROR_CODES: Final[frozenset[str]] = frozenset(
    {
        "bad-request",
        "unknown-op",
        "not-found",
        "forbidden",
        "validation",
        "conflict",
        "too-large",
        "internal",
    }
)

Role = Literal["read", "control"]
ROLES: Final[frozenset[str]] = frozenset({"read", "control"})

#: Operations a read-only token may use; a control token may use every operation.
READ_OPS: Final[frozenset[str]] = frozenset(
    {"subscribe", "unsubscribe", "list", "watch-runs", "unwatch-runs", "describe", "whoami"}
)
CONTROL_OPS: Final[frozenset[str]] = frozenset({"start", "resume", "cancel"})
OPS: Final[frozenset[str]] = READ_OPS | CONTROL_OPS

#: Server -> client message types that are not chunks.
CONTROL_TYPES: Final[frozenset[str]] = frozenset(
    {"caught-up", "end", "lagged", "reply", "error", "run-status"}
)

#: A request id: echoed as given (None when the request had none).
RequestId = str | int | None

#: Largest ``limit`` a ``list`` request may ask for.
MAX_LIST_LIMIT: Final = 1000
#: Largest integer any request field may hold (``offset``, ``fromSeq``, ``forEachIndex``):
#: 2**53 - 1, the largest integer every JSON parser reads exactly, and far inside what
#: every storage backend's 64-bit integers take.
MAX_WIRE_INT: Final = 2**53 - 1

_STATUSES: Final[frozenset[str]] = frozenset(status.value for status in RunStatus)


class ProtocolError(Exception):
    """A request the server answers with an ``error`` message (or a malformed server
    message, on the client side)."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.request_id = request_id


# --- requests -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Subscribe:
    id: RequestId
    run_id: str
    from_seq: int = 1


@attrs.frozen(kw_only=True)
class Unsubscribe:
    id: RequestId
    run_id: str


@attrs.frozen(kw_only=True)
class Start:
    id: RequestId
    workflow_id: str
    input_data: Any = None
    initial_state: Any = None
    request_context: dict[str, Any] | None = None
    run_id: str | None = None
    resource_id: str | None = None


@attrs.frozen(kw_only=True)
class Resume:
    id: RequestId
    run_id: str
    resume_data: Any = None
    step: str | list[str] | None = None
    label: str | None = None
    for_each_index: int | None = None
    request_context: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class Cancel:
    id: RequestId
    run_id: str


@attrs.frozen(kw_only=True)
class ListRuns:
    id: RequestId
    workflow_id: str | None = None
    status: RunStatus | None = None
    resource_id: str | None = None
    limit: int = 100
    offset: int = 0


@attrs.frozen(kw_only=True)
class WatchRuns:
    """``watch-runs``: the matching runs now, then a ``run-status`` on each change."""

    id: RequestId
    workflow_id: str | None = None
    status: RunStatus | None = None


@attrs.frozen(kw_only=True)
class UnwatchRuns:
    id: RequestId


@attrs.frozen(kw_only=True)
class Describe:
    id: RequestId
    workflow_id: str


@attrs.frozen(kw_only=True)
class WhoAmI:
    id: RequestId


Request = (
    Subscribe
    | Unsubscribe
    | Start
    | Resume
    | Cancel
    | ListRuns
    | WatchRuns
    | UnwatchRuns
    | Describe
    | WhoAmI
)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str) -> Any:
    """Strict JSON: no NaN/Infinity."""
    return _DECODER.decode(text)


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(message: Mapping[str, Any]) -> str:
    """The text of one message (compact JSON, UTF-8 kept as is); ValueError for NaN or
    Infinity. (A lone surrogate passes here: :func:`encode` refuses it.)"""
    return _ENCODER.encode(message)


def encode(message: Mapping[str, Any]) -> bytes:
    """The UTF-8 bytes of one message as strict JSON (RFC 8259, the project's policy in
    ``trioflow._core._json``); ValueError naming the first offending path otherwise (NaN,
    Infinity, a lone surrogate, a value that is not JSON, nesting too deep)."""
    try:
        return dumps(message).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        # The slow path, only for a refused message: say where.
        try:
            check_strict_json(message)
        except JsonValueError as problem:
            raise ValueError(f"not strict JSON: {problem}") from None
        raise ValueError(f"not strict JSON: {exc}") from None


def printable(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (for messages that quote what
    a client sent)."""
    if not has_lone_surrogate(text):
        return text
    return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__  # pragma: no cover - json.loads makes no other types


class _Fields:
    """Typed access to a request's fields; every failure is a ``bad-request``."""

    def __init__(self, message: dict[str, Any], op: str, request_id: RequestId) -> None:
        self._message = message
        self._op = op
        self._id = request_id

    def _fail(self, text: str) -> NoReturn:
        raise ProtocolError("bad-request", f"{self._op}: {text}", self._id)

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self._message.get(key)
        if value is None:
            if required:
                self._fail(f'"{key}" is required (a non-empty string)')
            return None
        if not isinstance(value, str):
            self._fail(f'"{key}" must be a string, got {_type_name(value)}')
        if not value:
            self._fail(f'"{key}" must not be empty')
        if has_lone_surrogate(value):
            self._fail(_SURROGATE.format(key=key))
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key, required=True)
        assert value is not None
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int = MAX_WIRE_INT) -> int:
        value = self._message.get(key)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._fail(f'"{key}" must be an integer, got {_type_name(value)}')
        if value < minimum:
            self._fail(f'"{key}" must be >= {minimum}, got {_short(value)}')
        if value > maximum:
            self._fail(f'"{key}" must be <= {maximum}, got {_short(value)}')
        return value

    def optional_integer(self, key: str, *, minimum: int) -> int | None:
        if self._message.get(key) is None:
            return None
        return self.integer(key, 0, minimum=minimum)

    def obj(self, key: str) -> dict[str, Any] | None:
        value = self._message.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self._fail(f'"{key}" must be an object, got {_type_name(value)}')
        return value

    def any(self, key: str) -> Any:
        return self._message.get(key)

    def step(self, key: str) -> str | list[str] | None:
        value = self._message.get(key)
        if value is None:
            return None
        parts = [value] if isinstance(value, str) else value
        if isinstance(parts, list) and parts and all(isinstance(x, str) and x for x in parts):
            if any(has_lone_surrogate(part) for part in parts):
                self._fail(_SURROGATE.format(key=key))
            return value if isinstance(value, str) else list(value)
        self._fail(
            f'"{key}" must be a step id ("a" or "outer.inner") or a non-empty array of '
            f"step ids, got {_type_name(value)}"
        )


_SURROGATE: Final = (
    '"{key}" must be valid Unicode text: it holds a lone surrogate (e.g. an unpaired \\ud800)'
)


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


def _request_id(message: dict[str, Any]) -> RequestId:
    value = message.get("id")
    if isinstance(value, str) and has_lone_surrogate(value):
        raise ProtocolError("bad-request", _SURROGATE.format(key="id"))
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ProtocolError(
        "bad-request", f'"id" must be a string or an integer, got {_type_name(value)}'
    )


@attrs.frozen
class Envelope:
    """A frame's JSON object with its ``id`` and known ``op`` (fields not checked yet)."""

    message: dict[str, Any]
    id: RequestId
    op: str


def parse_envelope(frame: str | bytes) -> Envelope:
    """Read a client frame up to its ``op``: ProtocolError (``bad-request`` or
    ``unknown-op``, with the request's id when it could be read) for anything else."""
    if not isinstance(frame, str):
        raise ProtocolError("bad-request", "binary frames are not supported: send JSON text")
    try:
        message = loads(frame)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad-request", f"malformed JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(
            "bad-request", f"a request must be a JSON object, got {_type_name(message)}"
        )
    request_id = _request_id(message)
    op = message.get("op")
    if op is None:
        raise ProtocolError("bad-request", '"op" is required', request_id)
    if not isinstance(op, str):
        raise ProtocolError(
            "bad-request", f'"op" must be a string, got {_type_name(op)}', request_id
        )
    if op not in OPS:
        known = ", ".join(sorted(OPS))
        raise ProtocolError("unknown-op", f"unknown op {op[:64]!r} (known: {known})", request_id)
    return Envelope(message, request_id, op)


def parse_fields(envelope: Envelope) -> Request:
    """The typed request of an envelope; ProtocolError (``bad-request``) when a field is
    missing or has the wrong type."""
    return _build(envelope.op, _Fields(envelope.message, envelope.op, envelope.id), envelope.id)


def parse_request(frame: str | bytes) -> Request:
    """The request a client frame holds (``parse_envelope`` then ``parse_fields``)."""
    return parse_fields(parse_envelope(frame))


def _build(op: str, f: _Fields, request_id: RequestId) -> Request:
    if op == "subscribe":
        return Subscribe(
            id=request_id,
            run_id=f.required_text("runId"),
            from_seq=f.integer("fromSeq", 1, minimum=1),
        )
    if op == "unsubscribe":
        return Unsubscribe(id=request_id, run_id=f.required_text("runId"))
    if op == "start":
        return Start(
            id=request_id,
            workflow_id=f.required_text("workflowId"),
            input_data=f.any("inputData"),
            initial_state=f.any("initialState"),
            request_context=f.obj("requestContext"),
            run_id=f.text("runId"),
            resource_id=f.text("resourceId"),
        )
    if op == "resume":
        return Resume(
            id=request_id,
            run_id=f.required_text("runId"),
            resume_data=f.any("resumeData"),
            step=f.step("step"),
            label=f.text("label"),
            for_each_index=f.optional_integer("forEachIndex", minimum=0),
            request_context=f.obj("requestContext"),
        )
    if op == "cancel":
        return Cancel(id=request_id, run_id=f.required_text("runId"))
    if op == "whoami":
        return WhoAmI(id=request_id)
    if op == "unwatch-runs":
        return UnwatchRuns(id=request_id)
    if op == "describe":
        return Describe(id=request_id, workflow_id=f.required_text("workflowId"))
    status = _status_filter(op, f.text("status"), request_id)
    if op == "watch-runs":
        return WatchRuns(id=request_id, workflow_id=f.text("workflowId"), status=status)
    assert op == "list"
    return ListRuns(
        id=request_id,
        workflow_id=f.text("workflowId"),
        status=status,
        resource_id=f.text("resourceId"),
        limit=f.integer("limit", 100, minimum=0, maximum=MAX_LIST_LIMIT),
        offset=f.integer("offset", 0, minimum=0),
    )


def _status_filter(op: str, status: str | None, request_id: RequestId) -> RunStatus | None:
    if status is None:
        return None
    if status not in _STATUSES:
        known = ", ".join(s.value for s in RunStatus)
        raise ProtocolError(
            "bad-request", f'{op}: unknown "status" {status[:64]!r} (known: {known})', request_id
        )
    return RunStatus(status)


def request_message(op: str, request_id: RequestId, **fields: Any) -> dict[str, Any]:
    """A client request (``None`` fields left out); ``fields`` use the wire names."""
    message: dict[str, Any] = {"op": op}
    if request_id is not None:
        message["id"] = request_id
    message.update({key: value for key, value in fields.items() if value is not None})
    return message


# --- server messages ------------------------------------------------------------------------


def reply(request_id: RequestId, **fields: Any) -> dict[str, Any]:
    return {"type": "reply", "id": request_id, **fields}


def error(
    request_id: RequestId, code: ErrorCode, message: str, *, run_id: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "error",
        "id": request_id,
        "code": code,
        "message": printable(message),
    }
    if run_id is not None:
        out["runId"] = run_id
    return out


def caught_up(run_id: str, seq: int) -> dict[str, Any]:
    return {"type": "caught-up", "runId": run_id, "seq": seq}


def end(run_id: str, seq: int) -> dict[str, Any]:
    return {"type": "end", "runId": run_id, "seq": seq}


def lagged(run_id: str, seq: int) -> dict[str, Any]:
    return {"type": "lagged", "runId": run_id, "seq": seq}


def run_status(run_id: str, workflow_id: str, status: str, updated_at: int) -> dict[str, Any]:
    """A ``run-status`` message of ``watch-runs``."""
    return {
        "type": "run-status",
        "runId": run_id,
        "workflowId": workflow_id,
        "status": status,
        "updatedAt": updated_at,
    }


def run_info(info: Any) -> dict[str, Any]:
    """One row of a ``list`` reply, from a ``tf.RunInfo``."""
    row: dict[str, Any] = {
        "runId": info.run_id,
        "workflowId": info.workflow_id,
        "status": str(info.status),
        "createdAt": info.created_at,
        "updatedAt": info.updated_at,
    }
    if info.resource_id is not None:
        row["resourceId"] = info.resource_id
    return row


def text_frame(text: str | bytes) -> bytes:
    """One unfragmented, unmasked websocket text frame (RFC 6455 §5.2), as a server
    sends it: the bridge frames its hot path itself (no extensions are negotiated).
    ``text`` is the message's text or its UTF-8 bytes (from :func:`encode`)."""
    payload = text.encode("utf-8") if isinstance(text, str) else text
    size = len(payload)
    if size < 126:
        return b"\x81" + bytes((size,)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def is_chunk_type(message_type: str) -> bool:
    """Whether a server message of this ``type`` is a wire chunk (SPEC §3.4)."""
    return message_type.startswith(("workflow-", "data-"))


def parse_server_message(frame: str | bytes) -> dict[str, Any]:
    """A server frame as a dict with a string ``type`` (client side); ProtocolError
    otherwise."""
    if not isinstance(frame, str):
        raise ProtocolError("bad-request", "the server sent a binary frame")
    try:
        message = loads(frame)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad-request", f"the server sent malformed JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad-request", "the server sent a message without a string type")
    return message
