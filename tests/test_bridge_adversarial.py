"""The browser-ready bridge (SPEC §5) attacked as an independent client would: raw upgrade
requests over loopback sockets, byte for byte what a hostile or broken client can send.

Each test is a bug found that way; it failed before its fix.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from test_bridge import WORKFLOWS

import trioflow as tf
import trioflow.bridge as bridge
from trioflow.bridge import _auth as auth
from trioflow.bridge import _http as http

TOKENS: dict[str, Any] = {"ctl": "control", "rd": "read"}
GUARD = 10
HEAD_TIMEOUT = 10.0
_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture(autouse=True)
def _collect_garbage() -> Any:
    yield
    gc.collect()


@pytest.fixture
async def port(nursery: trio.Nursery) -> AsyncIterator[int]:
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime:
        bound: int = await nursery.start(
            partial(bridge.serve, runtime, port=0, tokens=TOKENS, ping_interval=None)
        )
        yield bound
        nursery.cancel_scope.cancel()


def _upgrade(*lines: bytes, target: bytes = b"/") -> bytes:
    head = [
        b"GET " + target + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + _KEY,
        b"Sec-WebSocket-Version: 13",
        *lines,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n"


async def _response_head(port: int, request: bytes) -> bytes:
    """The response head the server sends to ``request`` (b"" when it just hangs up)."""
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
            return data.partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    "header",
    [
        b"Sec-WebSocket-Protocol: trioflow.v1, trioflow.bearer.\xc3\xa9",
        b"Sec-WebSocket-Extensions: \xc3\xa9",
        b"Connection: Upgrade, \xc3\xa9",
        b"Host: \xc3\xa9",
    ],
    ids=["subprotocol", "extensions", "connection", "host"],
)
async def test_non_ascii_handshake_header_gets_400_not_a_crash(
    port: int, header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: wsproto's ascii decode raised inside the handshake: the client saw the
    # connection dropped with no response, and every such request logged an error with a
    # traceback ("trioflow: error: ... connection failed: UnicodeDecodeError") that a
    # remote client could repeat at will.
    caplog.set_level(logging.ERROR, logger="trioflow.bridge")
    request = _upgrade(b"Authorization: Bearer ctl", header)
    if header.startswith(b"Host:"):
        request = request.replace(b"Host: 127.0.0.1\r\n", b"")
    head = await _response_head(port, request)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_two_origin_headers_are_refused(port: int) -> None:
    # Before: the first Origin header was checked and the rest ignored, so an allowed
    # origin followed by a foreign one was let in. A user agent sends one Origin (RFC
    # 6454 §7.3); several are read as one comma-joined value, which is no origin.
    own = f"http://127.0.0.1:{port}".encode()
    ok = await _response_head(port, _upgrade(b"Authorization: Bearer ctl", b"Origin: " + own))
    assert ok.startswith(b"HTTP/1.1 101 "), ok
    for second in (b"http://evil.example", own):
        head = await _response_head(
            port,
            _upgrade(b"Authorization: Bearer ctl", b"Origin: " + own, b"Origin: " + second),
        )
        assert head.startswith(b"HTTP/1.1 403 "), head


async def test_head_of_an_unknown_path_is_a_404_head(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the 404 body was sent after a HEAD response, h11 refused it (LocalProtocol
    # Error), the client got no response at all and the server logged a traceback.
    caplog.set_level(logging.ERROR, logger="trioflow.bridge")
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 404 "), data
    # no body after the HEAD response: the next bytes are the GET's response (kept alive)
    assert rest.startswith(b"HTTP/1.1 404 "), data
    assert rest.endswith(b"\r\n\r\nnot found\n"), data
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_that_never_reads_is_dropped(autojump_clock: Any) -> None:
    # Before: only reading a request head had a deadline; a client that sent a request
    # and then never read the response kept its connection (and task) forever, blocked in
    # send_all: the slow-read twin of slowloris.
    client, server = trio.testing.lockstep_stream_pair()  # no buffer: unread = blocked
    site = http.StaticSite()
    with trio.fail_after(HEAD_TIMEOUT * 10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(http.serve_connection, server, site, None, head_timeout=HEAD_TIMEOUT)
            )
            await client.send_all(b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n")
            # serve_connection returning ends the nursery; the client never reads
    assert trio.current_time() >= HEAD_TIMEOUT


async def test_a_proxy_basic_auth_header_does_not_hide_the_subprotocol_token(
    port: int,
) -> None:
    # Before: behind a reverse proxy with HTTP Basic auth, a browser re-sends its
    # "Authorization: Basic ..." on the websocket upgrade; the server took that as a
    # malformed bearer header that "counts" and refused the upgrade with 401, so the
    # viewer showed "server down" whatever token it offered. Only a Bearer header is a
    # header token; another scheme leaves the subprotocol token in charge.
    basic = b"Authorization: Basic dXNlcjpwYXNz"
    head = await _response_head(
        port, _upgrade(basic, b"Sec-WebSocket-Protocol: trioflow.v1, trioflow.bearer.rd")
    )
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"trioflow.bearer" not in head
    policy = auth.OriginPolicy(None)
    roles = auth.token_roles(TOKENS)
    headers = [(b"authorization", b"Basic dXNlcjpwYXNz")]
    wrong = auth.decide(headers, ["trioflow.v1", "trioflow.bearer.nope"], roles, policy)
    assert wrong.close_code == auth.CLOSE_BAD_TOKEN  # "wrong token", not "server down"
    assert auth.decide(headers, ["trioflow.v1"], roles, policy).reject == 401
    both = [*headers, (b"authorization", b"Bearer ctl")]
    assert auth.decide(both, ["trioflow.v1", "trioflow.bearer.rd"], roles, policy).role == "control"
    empty = [(b"authorization", b"Bearer")]
    assert auth.decide(empty, ["trioflow.v1", "trioflow.bearer.rd"], roles, policy).reject == 401
