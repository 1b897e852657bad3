"""``trioflow serve``/``watch`` as an operator meets them, and storage errors on every
command (issue 12): one ``trioflow: error:`` line instead of a traceback, clean stops on
SIGTERM and SIGINT, tokens that never show in the process list.

Real subprocesses, as tests/test_cli.py (whose helpers these tests share).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cli import FLOWS, HAS_BRIDGE, assert_one_line_error, cli, only_run, spawn

needs_bridge = pytest.mark.skipif(not HAS_BRIDGE, reason="trioflow.bridge is not installed")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(FLOWS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def suspended_run(workdir: Path) -> str:
    proc = cli(workdir, "run", "flows:approval", "--input", '{"id": "o-1", "amount": 5}')
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    return only_run(workdir)


def _access(url: str, token: str) -> str:
    """What ``token`` may do on the server at ``url``: "control", "read" or "refused"."""
    import trioflow.bridge as bridge

    async def probe() -> str:
        try:
            with trio.fail_after(20):
                async with bridge.connect(url, token=token, reconnect_attempts=0) as client:
                    try:
                        await client.cancel("no-such-run")
                    except bridge.BridgeError as exc:
                        return {"not-found": "control", "forbidden": "read"}[exc.code]
        except bridge.BridgeAuthError:
            return "refused"
        raise AssertionError("cancel of an unknown run succeeded")

    return trio.run(probe)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@contextmanager
def _serve(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """``trioflow serve flows --json --port 0 ARGS``, with its first JSON line."""
    with spawn(workdir, "serve", "flows", "--port", "0", "--json", *args, env=env) as server:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            _, err = server.communicate(timeout=20)
            raise AssertionError(err)
        yield server, json.loads(line)


# --------------------------------------------------------------------------- serve errors


@needs_bridge
def test_serve_on_a_busy_port_is_one_error_line(workdir: Path, busy_port: int) -> None:
    proc = cli(workdir, "serve", "flows", "--port", str(busy_port), env={"TRIOFLOW_TOKEN": "t"})
    assert_one_line_error(proc, f"127.0.0.1:{busy_port}", "in use")


@needs_bridge
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_sigterm_and_sigint(workdir: Path, signum: int) -> None:
    with _serve(workdir, env={"TRIOFLOW_TOKEN": "t0k3n"}) as (server, info):
        assert _access(str(info["url"]), "t0k3n") == "control"
        server.send_signal(signum)
        out, err = server.communicate(timeout=20)
        assert server.returncode == 0, err
        assert "Traceback" not in err
        assert err.strip() == "", err
        assert out.strip() == "", out  # --json: the first line was the only output


@needs_bridge
def test_serve_says_it_stopped_on_sigterm(workdir: Path) -> None:
    with spawn(workdir, "serve", "flows", "--port", "0", env={"TRIOFLOW_TOKEN": "t"}) as server:
        assert server.stdout is not None
        for line in server.stdout:
            if "Ctrl-C" in line:
                break
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    assert "stopped (SIGTERM)" in out


# --------------------------------------------------------------------------- watch URLs


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765", "127.0.0.1:8765", "ws://", "https://example.org/x"]
)
@needs_bridge
def test_watch_with_a_url_that_is_not_ws_is_a_usage_error(workdir: Path, url: str) -> None:
    proc = cli(workdir, "watch", url, "some-run", env={"TRIOFLOW_TOKEN": "t"})
    assert_one_line_error(proc, "ws://", repr(url))


# --------------------------------------------------------------------------- tokens


def _token_file(workdir: Path, text: str, mode: int = 0o600) -> Path:
    path = workdir / "tokens"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@needs_bridge
def test_serve_takes_its_tokens_from_a_token_file(workdir: Path) -> None:
    path = _token_file(workdir, "# tokens of the bridge\ncontrol c-secret\n\nread  r-secret \n")
    with _serve(workdir, "--token-file", str(path)) as (server, info):
        url = str(info["url"])
        assert info["token"] is None  # nothing generated, nothing printed
        assert (_access(url, "c-secret"), _access(url, "r-secret")) == ("control", "read")
        assert _access(url, "nope") == "refused"
        # The tokens are not on the command line.
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert b"secret" not in cmdline
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
        assert server.returncode == 0
        assert "warning" not in err


@needs_bridge
def test_serve_takes_its_tokens_from_the_environment(workdir: Path) -> None:
    env = {"TRIOFLOW_TOKEN": "env-control", "TRIOFLOW_READ_TOKEN": "env-read"}
    with _serve(workdir, env=env) as (server, info):
        url = str(info["url"])
        assert (_access(url, "env-control"), _access(url, "env-read")) == ("control", "read")
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)


@needs_bridge
def test_a_token_file_readable_by_others_gets_a_warning(workdir: Path) -> None:
    path = _token_file(workdir, "control c-secret\n", mode=0o644)
    with _serve(workdir, "--token-file", str(path)) as (server, _):
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
        assert server.returncode == 0
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("trioflow: warning:")
        assert str(path) in lines[0]
        assert "chmod 600" in lines[0]
        assert "c-secret" not in err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("control\n", "line 1"),
        ("admin s3cret\n", "line 1"),
        ("read ok\ncontrol two parts\n", "line 2"),
        ("# only a comment\n", "no token"),
        ("read same\ncontrol same\n", "line 2"),
    ],
)
@needs_bridge
def test_a_malformed_token_file_is_refused_clearly(
    workdir: Path, text: str, fragment: str
) -> None:
    path = _token_file(workdir, text)
    proc = cli(workdir, "serve", "flows", "--port", "0", "--token-file", str(path))
    assert_one_line_error(proc, str(path), fragment)
    assert "s3cret" not in proc.stderr
    assert "parts" not in proc.stderr


@needs_bridge
def test_a_missing_token_file_is_refused_clearly(workdir: Path) -> None:
    proc = cli(workdir, "serve", "flows", "--port", "0", "--token-file", "nope.txt")
    assert_one_line_error(proc, "nope.txt")


@needs_bridge
def test_token_on_the_command_line_still_works_with_a_deprecation_warning(workdir: Path) -> None:
    with _serve(workdir, "--token", "cli-control", "--read-token", "cli-read") as (server, info):
        url = str(info["url"])
        assert (_access(url, "cli-control"), _access(url, "cli-read")) == ("control", "read")
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
        assert "--token-file" in err
        assert "TRIOFLOW_TOKEN" in err
        assert "deprecated" in err


@needs_bridge
def test_serve_without_a_token_generates_one_and_prints_it_once(workdir: Path) -> None:
    with spawn(workdir, "serve", "flows", "--port", "0") as server:
        assert server.stdout is not None
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=20)
    text = "".join(lines) + rest
    (token_line,) = [line for line in text.splitlines() if line.startswith("control token")]
    token = token_line.split()[-1]
    assert len(token) >= 32
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # Printed once as itself, and in the web viewer's sign-in URL (its #fragment).
    assert [line for line in text.splitlines() if token in line] == [
        line for line in text.splitlines() if line.endswith(f"#token={token}")
    ] + [token_line]


@needs_bridge
def test_watch_takes_its_token_from_a_token_file(workdir: Path, suspended_run: str) -> None:
    path = _token_file(workdir, "read r-secret\n")
    with _serve(workdir, "--token-file", str(path)) as (server, info):
        with spawn(workdir, "watch", str(info["url"]), suspended_run, "--token-file", str(path)) as w:
            assert w.stdout is not None
            for line in w.stdout:
                if line.startswith("[suspended] check"):
                    break
            else:
                raise AssertionError(w.communicate(timeout=20))
            w.kill()
            w.communicate()
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)


# --------------------------------------------------------------------------- storage errors


@pytest.mark.parametrize(
    "command",
    [
        ["show", "{run}"],
        ["events", "{run}"],
        ["events", "{run}", "--json"],
        ["cancel", "{run}"],
        ["restart", "{run}"],
        ["resume", "{run}", "--data", '{"approved": true}'],
    ],
)
def test_a_stored_row_that_is_not_json_is_one_error_line_on_every_command(
    workdir: Path,
    suspended_run: str,
    command: list[str],
) -> None:
    with sqlite3.connect(workdir / "trioflow.db") as db:
        db.execute("UPDATE runs SET snapshot = '{not json' WHERE run_id = ?", (suspended_run,))
        db.execute("UPDATE events SET chunk = 'NaN[' WHERE run_id = ?", (suspended_run,))
    proc = cli(workdir, *(part.replace("{run}", suspended_run) for part in command))
    assert_one_line_error(proc, "not valid JSON")


def test_a_damaged_event_row_is_one_error_line(workdir: Path, suspended_run: str) -> None:
    with sqlite3.connect(workdir / "trioflow.db") as db:
        db.execute("UPDATE events SET chunk = '{' WHERE run_id = ? AND seq = 2", (suspended_run,))
    assert_one_line_error(cli(workdir, "events", suspended_run), "seq 2", "not valid JSON")


def test_a_database_whose_directory_refuses_writes_is_one_error_line(
    workdir: Path,
) -> None:
    proc = cli(workdir, "run", "flows:fanout", "--input", "[1]")
    assert proc.returncode == 0, proc.stderr
    run_id = only_run(workdir)
    flows = workdir.parent / f"{workdir.name}-flows.py"
    (workdir / "flows.py").rename(flows)
    frozen = subprocess.run(["chattr", "+i", str(workdir)], capture_output=True, check=False)
    if frozen.returncode != 0:
        pytest.skip(f"cannot make a read-only directory here: {frozen.stderr.strip()}")
    try:
        proc = cli(workdir, "run", f"{flows}:fanout", "--input", "[1]")
        assert_one_line_error(proc, "trioflow.db")
        shown = cli(workdir, "show", run_id)
        assert shown.returncode == 0, shown.stderr
    finally:
        subprocess.run(["chattr", "-i", str(workdir)], check=True)
    assert os.stat(workdir).st_mode & stat.S_IWUSR


# --------------------------------------------------------------------------- log lines


def _log_line(debug: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    import logging
    import sys

    from trioflow.cli._app import _OneLineFormatter

    if debug:
        monkeypatch.setenv("TRIOFLOW_DEBUG", "1")
    else:
        monkeypatch.delenv("TRIOFLOW_DEBUG", raising=False)
    try:
        raise OSError("disk on fire")
    except OSError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "trioflow.runtime", logging.ERROR, __file__, 1, "callback of %s raised", ("w",), exc_info
    )
    return _OneLineFormatter().format(record)


def test_a_logged_exception_is_named_on_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _log_line(False, monkeypatch) == (
        "trioflow: error: callback of w raised (OSError: disk on fire)"
    )


def test_trioflow_debug_adds_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    first, *rest = _log_line(True, monkeypatch).splitlines()
    assert first == "trioflow: error: callback of w raised (OSError: disk on fire)"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "OSError: disk on fire"
