"""The browser side of the bridge, without a browser: admission (subprotocol tokens, 4401,
``Origin``), the viewer's HTTP next to the websocket on one port, and ``describe``.

Contract: SPEC §5 (subprotocol auth, allowed_origins, describe, the web viewer). The HTTP
tests speak to a real loopback socket with a `trio.fail_after` guard.
"""

from __future__ import annotations

import datetime as _dt
import enum
import gc
import json
from typing import Any, Literal

import attrs
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketRequest,
    open_websocket,
    wrap_server_stream,
)

import trioflow as tf
from trioflow._demo import demo_workflow
from trioflow.bridge import _auth as auth
from trioflow.bridge import _http as http
from trioflow.bridge._describe import describe, json_schema

GUARD = 10
TOKENS = auth.token_roles({"c-tok": "control", "r-tok": "read"})


@pytest.fixture(autouse=True)
def _collect_garbage() -> Any:
    yield
    gc.collect()


# --------------------------------------------------------------------------- admission


def test_subprotocol_token_selects_v1_never_the_token() -> None:
    creds = auth.offered_credentials([], ["trioflow.v1", "trioflow.bearer.c-tok"])
    assert creds == auth.Credentials(b"c-tok", "subprotocol", "trioflow.v1")
    decision = auth.decide([], ["trioflow.v1", "trioflow.bearer.c-tok"], TOKENS, auth.OriginPolicy(None))
    assert decision == auth.Decision(role="control", subprotocol="trioflow.v1")


def test_bad_subprotocol_token_is_accepted_then_closed_4401() -> None:
    decision = auth.decide([], ["trioflow.v1", "trioflow.bearer.nope"], TOKENS, auth.OriginPolicy(None))
    assert decision.reject is None
    assert decision.subprotocol == "trioflow.v1"
    assert decision.close_code == 4401
    assert decision.role is None


def test_header_token_wins_over_subprotocol() -> None:
    headers = [(b"authorization", b"Bearer r-tok")]
    decision = auth.decide(headers, ["trioflow.v1", "trioflow.bearer.c-tok"], TOKENS, auth.OriginPolicy(None))
    assert decision.role == "read"
    bad_header = [(b"authorization", b"Bearer nope")]
    decision = auth.decide(bad_header, ["trioflow.v1", "trioflow.bearer.c-tok"], TOKENS, auth.OriginPolicy(None))
    assert decision.reject == 401  # a header was sent: it counts, and it is wrong


@pytest.mark.parametrize(
    ("headers", "protocols"),
    [
        ([], []),
        ([], ["trioflow.v1"]),
        ([(b"authorization", b"Basic Yzp0")], ["trioflow.v1"]),
        ([(b"authorization", b"Bearer")], []),
        # a bearer subprotocol without trioflow.v1: no subprotocol can be selected, so a
        # 4401 close is impossible for a browser to see; the upgrade is refused
        ([], ["trioflow.bearer.c-tok-wrong"]),
    ],
)
def test_missing_or_malformed_token_is_refused_401(
    headers: list[tuple[bytes, bytes]], protocols: list[str]
) -> None:
    assert auth.decide(headers, protocols, TOKENS, auth.OriginPolicy(None)).reject == 401


def test_foreign_origin_is_refused_403_before_the_token() -> None:
    policy = auth.OriginPolicy.build(None, host="127.0.0.1", port=8765)
    foreign = [(b"origin", b"http://evil.example")]
    assert auth.decide(foreign, ["trioflow.v1", "trioflow.bearer.c-tok"], TOKENS, policy).reject == 403
    assert auth.decide(foreign, [], TOKENS, policy).reject == 403
    own = [(b"origin", b"http://localhost:8765")]
    assert auth.decide(own, ["trioflow.v1", "trioflow.bearer.c-tok"], TOKENS, policy).role == "control"
    # no Origin: not a browser, not affected
    assert auth.decide([], ["trioflow.v1", "trioflow.bearer.c-tok"], TOKENS, policy).role == "control"


def test_default_origins_are_the_viewer_and_its_loopback_twin() -> None:
    assert auth.viewer_origins("127.0.0.1", 8765) == {
        "http://127.0.0.1:8765",
        "http://localhost:8765",
    }
    assert auth.viewer_origins("localhost", 80) == {"http://localhost", "http://127.0.0.1"}
    assert auth.viewer_origins("10.1.2.3", 9000) == {"http://10.1.2.3:9000"}
    assert "http://localhost:9000" in auth.viewer_origins("0.0.0.0", 9000)
    policy = auth.OriginPolicy.build(None, host="10.1.2.3", port=9000)
    assert policy.allows("HTTP://10.1.2.3:9000")
    assert not policy.allows("http://10.1.2.3:9001")
    assert not policy.allows("null")


def test_allowed_origins_option() -> None:
    policy = auth.OriginPolicy.build(["https://ops.example.com"], host="127.0.0.1", port=1)
    assert policy.allows("https://ops.example.com:443")
    assert not policy.allows("http://127.0.0.1:1")
    assert auth.OriginPolicy.build(["*"], host="h", port=1).allows("http://anything")
    with pytest.raises(ValueError, match="origin"):
        auth.OriginPolicy.build(["ops.example.com"], host="h", port=1)
    with pytest.raises(TypeError, match="list"):
        auth.OriginPolicy.build("https://a.example", host="h", port=1)


def test_generated_tokens_fit_in_a_subprotocol() -> None:
    import secrets

    assert all(auth.is_subprotocol_safe(secrets.token_urlsafe(18)) for _ in range(50))
    assert not auth.is_subprotocol_safe("a b")
    assert not auth.is_subprotocol_safe("a/b=")


# --------------------------------------------------------------------------- HTTP


async def _http_get(port: int, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes (or a full response arrives
    for a keep-alive connection: then we close)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return data
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and head.startswith(b"HTTP/1.1 101 "):
                return data  # switched to websocket: the head is all we want
            if sep:
                length = [
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= length[0] and b"HEAD " not in request:
                    return data


@pytest.fixture
async def static_port(nursery: trio.Nursery) -> int:
    port: int = await nursery.start(http.serve, http.StaticSite())
    return port


async def test_serves_the_viewer_files(static_port: int) -> None:
    with trio.fail_after(GUARD):
        response = await _http_get(static_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: text/html; charset=utf-8" in head.lower()
    assert b"content-security-policy: default-src 'none'" in head.lower()
    assert b'<script type="module" src="app.js">' in body
    with trio.fail_after(GUARD):
        js = await _http_get(static_port, b"GET /app.js?v=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert js.startswith(b"HTTP/1.1 200 ")
    assert b"text/javascript" in js.partition(b"\r\n\r\n")[0]


async def test_keep_alive_serves_several_requests_on_one_connection(static_port: int) -> None:
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", static_port)
        async with stream:
            await stream.send_all(
                b"GET /style.css HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /conn.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert b"text/css" in data
    assert b"BEARER_PREFIX" in data


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"404"),
        (b"GET /../pyproject.toml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"404"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", b"405"),
        (b"BLAH\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"404"),
    ],
)
async def test_bad_requests_are_answered_and_closed(
    static_port: int, request_bytes: bytes, status: bytes
) -> None:
    with trio.fail_after(GUARD):
        response = await _http_get(static_port, request_bytes)
    assert response.startswith(b"HTTP/1.1 " + status), response[:80]


async def test_head_request_has_no_body(static_port: int) -> None:
    with trio.fail_after(GUARD):
        response = await _http_get(static_port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b""


async def test_idle_connection_is_closed(nursery: trio.Nursery, autojump_clock: Any) -> None:
    del autojump_clock
    left, right = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def serve() -> None:
        await http.serve_connection(right, http.StaticSite(), None, head_timeout=5)
        done.set()

    nursery.start_soon(serve)
    start = trio.current_time()
    await done.wait()
    assert trio.current_time() - start == pytest.approx(5)
    await left.aclose()
    await right.aclose()


async def _echo_server(request: WebSocketRequest, decision: auth.Decision) -> None:
    ws = await request.accept(subprotocol=decision.subprotocol)
    if decision.close_code is not None:
        await ws.aclose(decision.close_code, "wrong token")
        return
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(json.dumps({"role": decision.role, "echo": message}))
    except ConnectionClosed:
        pass


@pytest.fixture
async def upgrade_port(nursery: trio.Nursery) -> int:
    """The viewer's files and a websocket on one port, admitted by ``auth.decide``."""
    ports: list[int] = []

    async def on_upgrade(stream: trio.abc.Stream, head: http.RequestHead) -> None:
        policy = auth.OriginPolicy.build(None, host="127.0.0.1", port=ports[0])
        async with trio.open_nursery() as ws_nursery:
            request = await wrap_server_stream(ws_nursery, stream)
            decision = auth.decide(
                request.headers, request.proposed_subprotocols, TOKENS, policy
            )
            if decision.reject is not None:
                await request.reject(decision.reject)
            else:
                await _echo_server(request, decision)
            ws_nursery.cancel_scope.cancel()

    port: int = await nursery.start(http.serve, http.StaticSite(), on_upgrade)
    ports.append(port)
    return port


async def test_websocket_upgrade_on_the_same_port(upgrade_port: int) -> None:
    with trio.fail_after(GUARD):
        async with open_websocket(
            "127.0.0.1",
            upgrade_port,
            "/",
            use_ssl=False,
            subprotocols=["trioflow.v1", "trioflow.bearer.r-tok"],
        ) as ws:
            assert ws.subprotocol == "trioflow.v1"  # never the token
            await ws.send_message("hello")
            assert json.loads(await ws.get_message()) == {"role": "read", "echo": "hello"}
        # the same port still serves files
        response = await _http_get(upgrade_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200 ")


@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
async def test_wrong_subprotocol_token_closes_4401(upgrade_port: int) -> None:
    with trio.fail_after(GUARD):
        async with open_websocket(
            "127.0.0.1",
            upgrade_port,
            "/",
            use_ssl=False,
            subprotocols=["trioflow.v1", "trioflow.bearer.wrong"],
        ) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
    assert info.value.reason.code == 4401


async def test_foreign_origin_upgrade_gets_403(upgrade_port: int) -> None:
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: trioflow.v1, trioflow.bearer.c-tok\r\n"
    )
    with trio.fail_after(GUARD):
        foreign = await _http_get(upgrade_port, upgrade + b"Origin: http://evil.example\r\n\r\n")
        own = await _http_get(
            upgrade_port, upgrade + b"Origin: http://localhost:%d\r\n\r\n" % upgrade_port
        )
    assert foreign.startswith(b"HTTP/1.1 403 ")
    assert own.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-protocol: trioflow.v1\r\n" in own.lower()
    assert b"c-tok" not in own


# --------------------------------------------------------------------------- describe


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Item:
    name: str
    qty: int = 1
    tags: list[str] = attrs.Factory(list)


@attrs.frozen
class Tree:
    label: str
    children: list[Tree] = attrs.Factory(list)


def test_json_schema_of_attrs_and_plain_types() -> None:
    assert json_schema(None) == {}
    assert json_schema(int) == {"type": "integer"}
    assert json_schema(list[str]) == {"type": "array", "items": {"type": "string"}}
    assert json_schema(dict[str, float]) == {
        "type": "object",
        "additionalProperties": {"type": "number"},
    }
    assert json_schema(int | None) == {"type": ["integer", "null"]}
    assert json_schema(Literal["a", "b"]) == {"enum": ["a", "b"]}
    assert json_schema(Color) == {"enum": ["red", "blue"], "title": "Color"}
    assert json_schema(_dt.datetime) == {"type": "string", "format": "date-time"}
    assert json_schema(tuple[int, str])["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    item = json_schema(Item)
    assert item["required"] == ["name"]
    assert item["properties"]["qty"] == {"type": "integer", "default": 1}
    assert item["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    tree = json_schema(Tree)
    inner = tree["properties"]["children"]["items"]
    assert "recursive" in inner["description"]
    json.dumps(tree)  # plain JSON


def test_describe_the_demo_graph() -> None:
    graph = describe(demo_workflow())
    assert [e["type"] for e in graph["entries"]] == ["parallel", "step", "foreach", "step", "step"]
    assert [n["id"] for n in graph["entries"][0]["nodes"]] == ["check_stock", "price"]
    assert graph["entries"][2] == {
        "type": "foreach",
        "node": {"id": "pack", "kind": "step"},
        "concurrency": 3,
    }
    assert graph["inputSchema"]["required"] == ["id", "items"]
    assert graph["resumeSchemas"]["approve"]["properties"]["approved"] == {"type": "boolean"}
    json.dumps(graph)


async def _noop(ctx: tf.StepContext) -> Any:
    return ctx.input_data


def test_describe_nesting_loops_branch_map_sleep() -> None:
    inner_step = tf.create_step(id="inner", execute=_noop, resume_schema=Item)
    nested = tf.create_workflow(id="nested").then(inner_step).commit()
    a = tf.create_step(id="a", execute=_noop)
    b = tf.create_step(id="b", execute=_noop)
    wf = (
        tf.create_workflow(id="outer", input_schema=int)
        .branch([(lambda ctx: True, a), (lambda ctx: False, b)])
        .dowhile(tf.create_step(id="w", execute=_noop), lambda ctx: False)
        .dountil(tf.create_step(id="u", execute=_noop), lambda ctx: True)
        .map(lambda ctx: [1])
        .foreach(nested, concurrency=2)
        .sleep(1.5)
        .commit()
    )
    graph = describe(wf)
    types = [e["type"] for e in graph["entries"]]
    assert types == ["branch", "dowhile", "dountil", "map", "foreach", "sleep"]
    foreach = graph["entries"][4]["node"]
    assert foreach["kind"] == "workflow"
    assert foreach["entries"][0]["node"]["id"] == "nested.inner"
    assert graph["resumeSchemas"] == {"nested.inner": json_schema(Item)}
    assert graph["entries"][3]["id"] == "map_3"
    assert graph["entries"][5] == {"type": "sleep", "id": "sleep_5", "seconds": 1.5}
    assert graph["inputSchema"] == {"type": "integer"}
