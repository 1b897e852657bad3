"""The bridge's wire protocol as pure functions (`trioflow.bridge._protocol`, no sockets).

Contract: SPEC §5 (the ops and their fields, the optional `id` echoed, the server message
shapes, the error codes) and docs/bridge.md (the reference a client in another language is
written from). The module must stay trio-free like `trioflow._core`.

Covered: every op parses with its defaults; every malformed frame (bad JSON, non-objects,
binary frames, missing or mistyped fields, unknown ops, ids of the wrong type) raises a
`ProtocolError` with the documented code and keeps the request's id when it could be read;
hypothesis feeds arbitrary text and arbitrary JSON and checks that nothing but
`ProtocolError` ever comes out; server frames are valid RFC 6455 text frames (decoded by
wsproto) at every length boundary. The client's cursor logic (`BridgeSubscription` fed
messages by hand, no sockets): duplicates dropped, a gap or a `lagged` notice re-subscribes
from the next expected `seq`, a full buffer pauses instead of blocking.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

import trioflow as tf
from trioflow.bridge import BridgeError, BridgeSubscription, _sources
from trioflow.bridge import _protocol as p


def parse(message: Any) -> p.Request:
    return p.parse_request(json.dumps(message))


def parse_error(frame: str | bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(frame)
    return info.value


# --------------------------------------------------------------------------- requests


def test_subscribe_parses_with_from_seq_defaulting_to_1() -> None:
    assert parse({"op": "subscribe", "runId": "r1"}) == p.Subscribe(id=None, run_id="r1")
    assert parse({"op": "subscribe", "runId": "r1", "fromSeq": 7, "id": 3}) == p.Subscribe(
        id=3, run_id="r1", from_seq=7
    )


def test_integral_floats_count_as_integers() -> None:
    request = parse({"op": "subscribe", "runId": "r1", "fromSeq": 2.0})
    assert request == p.Subscribe(id=None, run_id="r1", from_seq=2)


def test_every_op_parses_to_its_request() -> None:
    assert parse({"op": "unsubscribe", "runId": "r"}) == p.Unsubscribe(id=None, run_id="r")
    assert parse(
        {
            "op": "start",
            "id": "a",
            "workflowId": "wf",
            "inputData": {"x": [1, 2]},
            "initialState": {"n": 0},
            "requestContext": {"user": "u"},
            "runId": "mine",
            "resourceId": "res",
        }
    ) == p.Start(
        id="a",
        workflow_id="wf",
        input_data={"x": [1, 2]},
        initial_state={"n": 0},
        request_context={"user": "u"},
        run_id="mine",
        resource_id="res",
    )
    assert parse(
        {"op": "resume", "runId": "r", "resumeData": True, "step": ["outer", "inner"]}
    ) == p.Resume(id=None, run_id="r", resume_data=True, step=["outer", "inner"])
    assert parse({"op": "resume", "runId": "r", "step": "a.b", "forEachIndex": 2}) == p.Resume(
        id=None, run_id="r", step="a.b", for_each_index=2
    )
    assert parse({"op": "cancel", "runId": "r"}) == p.Cancel(id=None, run_id="r")
    assert parse({"op": "list"}) == p.ListRuns(id=None)
    assert parse(
        {"op": "list", "workflowId": "wf", "status": "suspended", "limit": 5, "offset": 10}
    ) == p.ListRuns(id=None, workflow_id="wf", status=tf.RunStatus.SUSPENDED, limit=5, offset=10)


def test_unknown_fields_are_ignored() -> None:
    assert parse({"op": "cancel", "runId": "r", "future": {"x": 1}}) == p.Cancel(
        id=None, run_id="r"
    )


@pytest.mark.parametrize(
    ("frame", "code", "fragment"),
    [
        ("{not json", "bad-request", "malformed JSON"),
        ('{"op": "list", "limit": NaN}', "bad-request", "NaN"),
        ("[1, 2]", "bad-request", "JSON object, got array"),
        ('"list"', "bad-request", "JSON object, got string"),
        ("{}", "bad-request", '"op" is required'),
        ('{"op": 5}', "bad-request", '"op" must be a string'),
        ('{"op": "explode"}', "unknown-op", "unknown op 'explode'"),
        ('{"op": "subscribe"}', "bad-request", '"runId" is required'),
        ('{"op": "subscribe", "runId": 12}', "bad-request", '"runId" must be a string'),
        ('{"op": "subscribe", "runId": ""}', "bad-request", "must not be empty"),
        ('{"op": "subscribe", "runId": "r", "fromSeq": "3"}', "bad-request", "integer"),
        ('{"op": "subscribe", "runId": "r", "fromSeq": true}', "bad-request", "integer"),
        ('{"op": "subscribe", "runId": "r", "fromSeq": 1.5}', "bad-request", "integer"),
        ('{"op": "subscribe", "runId": "r", "fromSeq": 0}', "bad-request", ">= 1"),
        ('{"op": "start", "inputData": 1}', "bad-request", '"workflowId" is required'),
        ('{"op": "start", "workflowId": "w", "requestContext": []}', "bad-request", "object"),
        ('{"op": "resume", "runId": "r", "step": 3}', "bad-request", '"step"'),
        ('{"op": "resume", "runId": "r", "step": []}', "bad-request", '"step"'),
        ('{"op": "resume", "runId": "r", "step": ["a", 1]}', "bad-request", '"step"'),
        ('{"op": "resume", "runId": "r", "forEachIndex": -1}', "bad-request", ">= 0"),
        ('{"op": "list", "status": "sleeping"}', "bad-request", 'unknown "status"'),
        ('{"op": "list", "limit": 100000}', "bad-request", "<= 1000"),
        ('{"op": "cancel", "runId": null}', "bad-request", '"runId" is required'),
    ],
)
def test_malformed_requests_raise_protocol_errors(frame: str, code: str, fragment: str) -> None:
    error = parse_error(frame)
    assert error.code == code
    assert fragment in error.message


def test_binary_frames_are_bad_requests() -> None:
    error = parse_error(b'{"op": "list"}')
    assert error.code == "bad-request"
    assert "binary" in error.message


def test_errors_keep_the_request_id_once_it_is_known() -> None:
    assert parse_error('{"op": "bogus", "id": "x1"}').request_id == "x1"
    assert parse_error('{"op": "subscribe", "id": 9}').request_id == 9


@pytest.mark.parametrize("bad_id", ["true", "1.5", "[1]", '{"a": 1}'])
def test_an_id_of_the_wrong_type_is_a_bad_request_without_an_id(bad_id: str) -> None:
    error = parse_error(f'{{"op": "list", "id": {bad_id}}}')
    assert error.code == "bad-request"
    assert '"id"' in error.message
    assert error.request_id is None


def test_forbidden_is_decided_from_the_envelope_before_the_fields() -> None:
    envelope = p.parse_envelope('{"op": "start", "id": 4}')
    assert envelope.op in p.CONTROL_OPS
    assert envelope.id == 4
    with pytest.raises(p.ProtocolError):
        p.parse_fields(envelope)


def test_the_ops_and_error_codes_are_the_ones_spec_lists() -> None:
    read = {"subscribe", "unsubscribe", "list", "watch-runs", "unwatch-runs", "describe", "whoami"}
    assert read == p.READ_OPS
    assert read | {"start", "resume", "cancel"} == p.OPS
    assert {
        "bad-request",
        "unknown-op",
        "not-found",
        "forbidden",
        "validation",
        "conflict",
        "too-large",
        "internal",
    } == p.ERROR_CODES


# --------------------------------------------------------------------------- hypothesis

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
field_names = st.sampled_from(
    [
        "op",
        "id",
        "runId",
        "fromSeq",
        "workflowId",
        "inputData",
        "resumeData",
        "step",
        "label",
        "forEachIndex",
        "status",
        "limit",
        "offset",
        "requestContext",
        "initialState",
        "resourceId",
    ]
)
requestish = st.dictionaries(field_names, json_values, max_size=5).flatmap(
    lambda d: st.sampled_from([*sorted(p.OPS), "nope"]).map(lambda op: {**d, "op": op})
)


def outcome(frame: str | bytes) -> str:
    """The request's op, or the code of the ProtocolError it raises (nothing else may
    come out)."""
    try:
        request = p.parse_request(frame)
    except p.ProtocolError as exc:
        return exc.code
    return type(request).__name__


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=st.text(max_size=60) | st.binary(max_size=30))
def test_arbitrary_frames_raise_only_protocol_errors(frame: str | bytes) -> None:
    assert outcome(frame) in p.ERROR_CODES | REQUEST_TYPES


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=requestish | json_values)
def test_arbitrary_json_raises_only_protocol_errors(message: Any) -> None:
    result = outcome(json.dumps(message))
    if result in REQUEST_TYPES:
        assert isinstance(message, dict)
        assert message["op"] in p.OPS
    else:
        assert result in {"bad-request", "unknown-op"}


REQUEST_TYPES = {
    "Subscribe", "Unsubscribe", "Start", "Resume", "Cancel", "ListRuns",
    "WatchRuns", "UnwatchRuns", "Describe", "WhoAmI",
}


# --------------------------------------------------------------------------- server messages


def test_server_message_shapes() -> None:
    assert p.reply(1, runId="r") == {"type": "reply", "id": 1, "runId": "r"}
    assert p.error(None, "not-found", "no run") == {
        "type": "error",
        "id": None,
        "code": "not-found",
        "message": "no run",
    }
    assert p.caught_up("r", 3) == {"type": "caught-up", "runId": "r", "seq": 3}
    assert p.end("r", 9) == {"type": "end", "runId": "r", "seq": 9}
    assert p.lagged("r", 4) == {"type": "lagged", "runId": "r", "seq": 4}


def test_list_rows_use_the_wire_names() -> None:
    info = tf.RunInfo(
        run_id="r",
        workflow_id="wf",
        resource_id=None,
        status=tf.RunStatus.SUCCESS,
        created_at=1,
        updated_at=2,
    )
    assert p.run_info(info) == {
        "runId": "r",
        "workflowId": "wf",
        "status": "success",
        "createdAt": 1,
        "updatedAt": 2,
    }


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frames_decode_as_rfc6455_frames(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)  # multi-byte UTF-8 too
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(p.text_frame(text))
    events = list(client.events())
    assert len(events) == 1
    assert isinstance(events[0], TextMessage)
    assert events[0].data == text
    assert events[0].message_finished


def test_dumps_is_compact_and_keeps_unicode() -> None:
    assert p.dumps({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'


def test_parse_server_message_rejects_frames_without_a_type() -> None:
    assert p.parse_server_message('{"type": "end", "runId": "r", "seq": 1}')["type"] == "end"
    for frame in ['{"runId": "r"}', "[]", "{", b"{}"]:
        with pytest.raises(p.ProtocolError):
            p.parse_server_message(frame)


def test_the_protocol_module_imports_no_async_framework() -> None:
    tree = ast.parse(Path(p.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "trio_websocket", "anyio", "asyncio"}


def test_importing_trioflow_does_not_import_the_bridge() -> None:
    code = (
        "import sys, trioflow; "
        "print(sorted(n for n in sys.modules "
        "if n.startswith(('trioflow.bridge', 'trio_websocket', 'wsproto'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- client cursor


class StubClient:
    """Stands in for a BridgeClient: records the subscribes a subscription asks for."""

    def __init__(self) -> None:
        self.subscribed_from: list[int] = []
        self.posted: list[dict[str, Any]] = []

    def _ensure_subscribed(self, sub: BridgeSubscription) -> None:
        if not sub._paused and sub._live_id is None and not sub._finished:
            self.subscribed_from.append(sub._expected)
            sub._live_id = len(self.subscribed_from)

    def _post(self, message: dict[str, Any]) -> None:
        self.posted.append(message)

    def _remove(self, sub: BridgeSubscription, *, unsubscribe: bool) -> None:
        sub._live_id = None


def wire_chunk(seq: int) -> dict[str, Any]:
    return {
        "type": "workflow-step-output",
        "runId": "r",
        "from": "USER",
        "seq": seq,
        "payload": {"output": seq, "stepName": "s"},
    }


def accept(sub: BridgeSubscription) -> None:
    """The server's reply to the subscription's current subscribe."""
    assert sub._live_id is not None
    sub._on_reply(sub._live_id, {"type": "reply", "id": sub._live_id, "runId": "r"})


def buffered(sub: BridgeSubscription) -> list[int]:
    return [item.seq for item in sub._buffer if hasattr(item, "seq")]


def new_subscription(buffer_size: int = 100) -> tuple[StubClient, BridgeSubscription]:
    client = StubClient()
    sub = BridgeSubscription(client, "r", 1, buffer_size)  # type: ignore[arg-type]
    client._ensure_subscribed(sub)
    return client, sub


def test_the_client_cursor_drops_duplicates_and_resubscribes_after_a_gap_or_lag() -> None:
    client, sub = new_subscription()
    sub._on_message("workflow-step-output", wire_chunk(1))  # before the reply: ignored
    accept(sub)
    for seq in (1, 2, 2, 1, 3):
        sub._on_message("workflow-step-output", wire_chunk(seq))
    assert buffered(sub) == [1, 2, 3]
    sub._on_message("lagged", {"type": "lagged", "runId": "r", "seq": 3})
    assert client.subscribed_from == [1, 4]
    sub._on_message("workflow-step-output", wire_chunk(4))  # of the dropped subscription
    accept(sub)
    sub._on_message("workflow-step-output", wire_chunk(6))  # a gap: never delivered
    assert client.subscribed_from == [1, 4, 4]
    accept(sub)
    for seq in (3, 4, 5, 6):
        sub._on_message("workflow-step-output", wire_chunk(seq))
    assert buffered(sub) == [1, 2, 3, 4, 5, 6]


def test_a_full_client_buffer_pauses_the_subscription_instead_of_blocking() -> None:
    client, sub = new_subscription(buffer_size=2)
    accept(sub)
    for seq in (1, 2, 3, 4):
        sub._on_message("workflow-step-output", wire_chunk(seq))
    assert buffered(sub) == [1, 2]
    assert sub._paused
    assert client.posted == [{"op": "unsubscribe", "runId": "r"}]
    assert client.subscribed_from == [1]  # nothing more until the consumer reads


def test_an_error_for_the_subscription_fails_it() -> None:
    _, sub = new_subscription()
    assert sub._live_id is not None
    sub._on_reply(
        sub._live_id,
        {"type": "error", "id": sub._live_id, "code": "not-found", "message": "no run"},
    )
    (error,) = list(sub._buffer)
    assert isinstance(error, BridgeError)
    assert error.code == "not-found"
    assert sub._finished


def test_the_servers_frame_cache_is_bounded_in_bytes_and_shares_one_encoding() -> None:
    cache = _sources.FrameCache(size=100, max_bytes=1000)
    chunks = [
        tf.DataChunk(type="data-x", run_id="r", seq=seq, data="y" * 300) for seq in range(1, 6)
    ]
    frames = [cache.frame(chunk) for chunk in chunks]
    assert cache.frame(chunks[-1]) is frames[-1]  # the same object: encoded once
    assert cache._bytes <= 1000
    assert list(cache._entries) == [("r", 4), ("r", 5)]  # the oldest went first
    assert p.parse_server_message(frames[0][4:].decode())["seq"] == 1
