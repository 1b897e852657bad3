"""``trioflow serve`` and the web viewer (SPEC §6, issue 16): it prints the viewer's URL
(with ``#token=`` when it generated the token), serves the page on the websocket's port,
takes ``--allowed-origin`` (repeatable) and ``--no-web``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import HAS_BRIDGE, assert_one_line_error, cli, spawn, workdir

pytestmark = pytest.mark.skipif(not HAS_BRIDGE, reason="needs trioflow.bridge")
__all__ = ["workdir"]  # the fixture, used by name


def http_get(port: int, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


@contextlib.contextmanager
def serving(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """``trioflow serve flows --port 0 --json ARGS``: its announcement, then SIGTERM."""
    with spawn(workdir, "--json", "serve", "flows", "--port", "0", *args, env=env) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        try:
            yield json.loads(line)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)


def test_serve_prints_the_viewer_url_with_the_generated_token(workdir: Path) -> None:
    with serving(workdir) as announced:
        port = announced["port"]
        token = announced["token"]
        assert announced["viewer"] == f"http://127.0.0.1:{port}/#token={token}"
        page = http_get(port)
        assert page.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Security-Policy" in page


def test_serve_prints_the_plain_viewer_url_with_given_tokens(workdir: Path) -> None:
    with serving(workdir, env={"TRIOFLOW_TOKEN": "given-token"}) as announced:
        assert announced["token"] is None
        assert announced["viewer"] == f"http://127.0.0.1:{announced['port']}/"


def test_serve_says_the_viewer_url_in_text(workdir: Path) -> None:
    with spawn(workdir, "serve", "flows", "--port", "0", env={"TRIOFLOW_TOKEN": "t"}) as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    port = lines[0].split("ws://127.0.0.1:")[1].split()[0]
    assert lines[1].strip() == f"web viewer: http://127.0.0.1:{port}/"


def test_no_web_serves_no_page(workdir: Path) -> None:
    with serving(workdir, "--no-web", env={"TRIOFLOW_TOKEN": "t"}) as announced:
        assert announced["viewer"] is None
        assert http_get(announced["port"]).startswith(b"HTTP/1.1 404 ")


def test_allowed_origins_are_checked_and_applied(workdir: Path) -> None:
    assert_one_line_error(
        cli(workdir, "serve", "flows", "--port", "0", "--allowed-origin", "ftp://nope"),
        "--allowed-origin 'ftp://nope'",
    )
    with serving(
        workdir,
        "--allowed-origin",
        "https://a.example",
        "--allowed-origin",
        "https://b.example:8443",
        env={"TRIOFLOW_TOKEN": "t"},
    ) as announced:
        port = announced["port"]
        assert upgrade_status(port, "https://b.example:8443") == 101
        assert upgrade_status(port, f"http://127.0.0.1:{port}") == 403


def upgrade_status(port: int, origin: str) -> int:
    request = (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer t\r\nOrigin: {origin}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request.encode())
        head = conn.recv(4096)
    return int(head.split()[1])


def test_serve_help_documents_the_viewer_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trioflow", "serve", "--help"], capture_output=True, text=True, check=True
    )
    for option in ("--allowed-origin", "--no-web", "web viewer"):
        assert option in proc.stdout


def test_sigterm_closes_each_websocket_with_1001(workdir: Path) -> None:
    """Stopping ``trioflow serve`` sends a connected client a close frame (1001, going
    away), not a dropped TCP connection."""
    args = ("--json", "serve", "flows", "--port", "0")
    with spawn(workdir, *args, env={"TRIOFLOW_TOKEN": "given-token"}) as proc:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer given-token\r\n\r\n"
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            head, _, frames = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), head
            proc.send_signal(signal.SIGTERM)
            while len(frames) < 4 and (chunk := conn.recv(4096)):
                frames += chunk
        proc.communicate(timeout=20)
        assert proc.returncode == 0
    # An unmasked close frame (opcode 8, FIN) whose payload starts with the code.
    assert frames[:1] == b"\x88", frames
    assert int.from_bytes(frames[2:4], "big") == 1001
