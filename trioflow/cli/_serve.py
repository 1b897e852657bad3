"""``trioflow serve`` and ``trioflow watch``: the websocket bridge from the command line.

Tokens never go on the command line, where every local user reads them (``ps``,
``/proc/PID/cmdline``): ``serve`` takes them from ``--token-file`` (lines ``control TOKEN``
/ ``read TOKEN``) and from ``TRIOFLOW_TOKEN`` / ``TRIOFLOW_READ_TOKEN``; with none it makes
one control token and prints it once. ``--token``/``--read-token`` still work, with a
deprecation warning.
"""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import os
import secrets
import signal
import stat
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from .._core._chunks import WorkflowFinish
from .._core._serde import to_wire
from .._groups import is_cancellation, leaves
from .._runtime import open_runtime
from ._load import CliError, load_module_workflows
from ._session import EXIT_SUCCESS, Session, exit_status
from ._view import make_view

ROLES: Final = ("control", "read")
#: The environment variable of each role's token.
TOKEN_ENV: Final = {"control": "TRIOFLOW_TOKEN", "read": "TRIOFLOW_READ_TOKEN"}
_SAFER: Final = "use --token-file FILE or TRIOFLOW_TOKEN / TRIOFLOW_READ_TOKEN instead"


def _bridge(*names: str) -> Any:
    """``trioflow.bridge``, imported on first use (extra ``bridge``), with ``names``."""
    try:
        bridge = importlib.import_module("trioflow.bridge")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not missing.startswith("trioflow"):
            raise CliError(
                f"the websocket bridge needs the 'bridge' extra ({missing} is missing): "
                "pip install 'trioflow[bridge]'"
            ) from None
        bridge = None
    if bridge is None or not all(hasattr(bridge, name) for name in names):
        raise CliError(
            "the websocket bridge is not installed in this trioflow (trioflow.bridge with "
            f"{' and '.join(names)} is missing)"
        )
    return bridge


# --- tokens --------------------------------------------------------------------------------


def read_token_file(path: str, session: Session) -> list[tuple[str, str]]:
    """The ``(token, role)`` pairs of a token file: one ``control TOKEN`` or ``read TOKEN``
    per line; blank lines and lines starting with ``#`` are skipped. CliError (never
    quoting a token) for anything else; a warning when group or others may read it."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        mode = file.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CliError(f"cannot read --token-file {path}: {reason}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        session.warn(
            f"--token-file {path} is readable by group or others (mode "
            f"{stat.S_IMODE(mode):04o}): chmod 600 {path}"
        )
    pairs: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 2 or words[0] not in ROLES:
            raise CliError(
                f"--token-file {path} line {number}: expected 'control TOKEN' or 'read TOKEN' "
                f"(a role, then one token without spaces), got {len(words)} words"
                + ("" if words[0] in ROLES else " not starting with a role")
            )
        role, token = words
        if token in first_line:
            raise CliError(
                f"--token-file {path} line {number}: the token of line {first_line[token]} "
                "again (each token has one role)"
            )
        first_line[token] = number
        pairs.append((token, role))
    if not pairs:
        raise CliError(f"--token-file {path} has no token (lines 'control TOKEN' / 'read TOKEN')")
    return pairs


def serve_tokens(session: Session, args: argparse.Namespace) -> dict[str, str]:
    """Every token ``serve`` accepts, with its role (empty: none was given)."""
    tokens: dict[str, str] = {}
    if args.token_file is not None:
        tokens.update(read_token_file(args.token_file, session))
    for role, name in TOKEN_ENV.items():
        value = os.environ.get(name, "").strip()
        if value:
            tokens.setdefault(value, role)
    for option, values, role in (
        ("--token", args.token, "control"),
        ("--read-token", args.read_token, "read"),
    ):
        if values:
            session.warn(
                f"{option} is deprecated: every local user can read it in the process "
                f"list; {_SAFER}"
            )
            for value in values:
                tokens.setdefault(value, role)
    return tokens


def watch_token(session: Session, args: argparse.Namespace) -> str:
    """The token ``watch`` presents: ``--token-file`` (its first token), the environment,
    or the deprecated ``--token``."""
    if args.token_file is not None:
        return read_token_file(args.token_file, session)[0][0]
    for name in TOKEN_ENV.values():
        value = os.environ.get(name, "").strip()
        if value:
            return value
    if args.token:
        session.warn(
            f"--token is deprecated: every local user can read it in the process list; {_SAFER}"
        )
        return str(args.token)
    raise CliError(
        "watch needs the server's token: --token-file FILE, TRIOFLOW_TOKEN or TRIOFLOW_READ_TOKEN"
    )


# --- serve ---------------------------------------------------------------------------------


def _listen_error(exc: BaseException, host: str, port: int) -> CliError | None:
    """The one-line error for a server that could not listen (None: not that)."""
    oserror = _only(exc, OSError)
    if oserror is None:
        return None
    reason = oserror.strerror or str(oserror)
    if oserror.errno == errno.EADDRINUSE:
        reason = "the port is in use (another server runs there?); choose one with --port"
    return CliError(f"cannot listen on {host}:{port}: {reason}")


def _only(exc: BaseException, kind: type[OSError]) -> OSError | None:
    """``exc`` when it is a ``kind``, or the one exception that is not a cancellation in
    a group when that is a ``kind``."""
    real = [leaf for leaf in leaves(exc) if not is_cancellation(leaf)]
    if len(real) == 1 and isinstance(real[0], kind):
        return real[0]
    return None


async def _start_server(nursery: trio.Nursery, serve: Any, host: str, port: int) -> int:
    try:
        bound: int = await nursery.start(serve)
    except (OSError, BaseExceptionGroup) as exc:
        error = _listen_error(exc, host, port)
        if error is None:
            raise
        raise error from None
    return bound


async def _next_signal(signals: AsyncIterator[int]) -> str:
    """Wait for the next signal; its name."""
    async for signum in signals:
        return signal.Signals(signum).name
    raise AssertionError("a signal receiver never ends")  # pragma: no cover


def allowed_origins(values: list[str] | None) -> list[str] | None:
    """The ``--allowed-origin`` values, checked (None: the server's default, the
    viewer's own origin)."""
    if not values:
        return None
    normalize = importlib.import_module("trioflow.bridge._auth").normalize_origin
    for value in values:
        if value == "*":
            continue
        try:
            normalize(value)
        except ValueError as exc:
            raise CliError(f"--allowed-origin {value!r}: {exc}") from None
    return list(values)


def viewer_url(host: str, port: int) -> str:
    """The ``http://`` URL a browser opens (a wildcard bind is reached on loopback)."""
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0", "::"):
        bare = "127.0.0.1"
    shown = f"[{bare}]" if ":" in bare else bare
    return f"http://{shown}:{port}/"


async def cmd_serve(session: Session, args: argparse.Namespace) -> int:
    bridge = _bridge("serve")
    origins = allowed_origins(args.allowed_origin)
    workflows = load_module_workflows(args.target)
    tokens = serve_tokens(session, args)
    generated = None
    if not tokens:
        generated = secrets.token_urlsafe(32)
        tokens[generated] = "control"
    # SIGTERM (systemd, docker stop) and SIGINT (Ctrl-C) both stop the server cleanly:
    # connections closed, the runtime left, exit status 0. Caught from before the server
    # is announced, so a signal right after the announcement is never lost.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with session.storage(must_exist=False) as storage:
            async with open_runtime(
                storage=storage, workflows=workflows, restart_active_runs=args.restart_active
            ) as rt:
                serve = functools.partial(
                    bridge.serve,
                    rt,
                    host=args.host,
                    port=args.port,
                    tokens=tokens,
                    allowed_origins=origins,
                    web=not args.no_web,
                )
                async with trio.open_nursery() as nursery:
                    port = await _start_server(nursery, serve, args.host, args.port)
                    viewer = None if args.no_web else viewer_url(args.host, port)
                    _announce(
                        session, f"ws://{args.host}:{port}", port, workflows, generated, viewer
                    )
                    name = await _next_signal(signals)
                    nursery.cancel_scope.cancel()
    if not session.json:
        session.say(f"server stopped ({name})", markup=False)
    return EXIT_SUCCESS


def _announce(
    session: Session,
    url: str,
    port: int,
    workflows: list[Any],
    generated: str | None,
    viewer: str | None,
) -> None:
    ids = [w.id for w in workflows]
    # A generated token signs the viewer in from its URL fragment (never sent to the
    # server): the one place it is printed.
    sign_in = viewer if viewer is None or generated is None else f"{viewer}#token={generated}"
    if session.json:
        session.emit_json(
            {"url": url, "port": port, "workflows": ids, "token": generated, "viewer": sign_in}
        )
        return
    session.say(f"serving {', '.join(ids)} on {url} (database {session.db_display})", markup=False)
    if sign_in is not None:
        session.say(f"web viewer: {sign_in}", markup=False)
    if generated is not None:
        session.say(f"control token (shown once): {generated}", markup=False)
    session.say("press Ctrl-C to stop", markup=False)
    session.out.file.flush()


# --- watch ---------------------------------------------------------------------------------


def check_bridge_url(url: str) -> None:
    """CliError unless ``url`` is a ``ws://`` or ``wss://`` URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL"
        raise CliError(f"the bridge URL is malformed ({exc}): {url!r}") from None
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise CliError(f"the bridge URL has a bad port: {url!r}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise CliError(
            f"the bridge URL must be ws://HOST:PORT or wss://HOST:PORT (e.g. "
            f"ws://127.0.0.1:8765), got {url!r}"
        )


async def cmd_watch(session: Session, args: argparse.Namespace) -> int:
    bridge = _bridge("connect")
    check_bridge_url(args.url)
    token = watch_token(session, args)
    final = "unknown"
    view = None if session.json else make_view(session.out)
    async with _as_context(bridge.connect(args.url, token=token)) as client:
        async with view.showing() if view is not None else _nothing():
            async for chunk in client.subscribe(args.run_id, from_seq=args.from_seq):
                if isinstance(chunk, WorkflowFinish):
                    final = chunk.payload.workflow_status
                if view is None:
                    session.emit_json(to_wire(chunk))
                else:
                    view.handle(chunk)
    if view is not None:
        session.say(f"status: {final}", markup=False)
    return exit_status(final)


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    await trio.lowlevel.checkpoint()
    yield


@asynccontextmanager
async def _as_context(connection: Any) -> AsyncIterator[Any]:
    """``connect()`` may hand back an async context manager or an awaitable client."""
    if hasattr(connection, "__aenter__"):
        async with connection as client:
            yield client
        return
    client = await connection
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()


def add_arguments(serve: argparse.ArgumentParser, watch: argparse.ArgumentParser) -> None:
    """The options of ``serve`` and ``watch`` (their positional arguments are set by the
    caller)."""
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port",
        type=int,
        default=8765,
        help="port of the websocket (ws://HOST:PORT) and of the web viewer "
        "(http://HOST:PORT/, printed at start; 0: any free port)",
    )
    serve.add_argument(
        "--token-file",
        metavar="FILE",
        help="tokens, one per line: 'control TOKEN' or 'read TOKEN' (chmod 600)",
    )
    serve.add_argument(
        "--token",
        action="append",
        default=[],
        help="deprecated: use --token-file or TRIOFLOW_TOKEN",
    )
    serve.add_argument(
        "--read-token",
        action="append",
        default=[],
        help="deprecated: use --token-file or TRIOFLOW_READ_TOKEN",
    )
    serve.add_argument("--restart-active", action="store_true", help="restart runs left running")
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (scheme://host[:port]) whose pages may connect, repeatable; '*' "
        "allows any (default: the viewer's own origin, printed at start)",
    )
    serve.add_argument(
        "--no-web",
        action="store_true",
        help="do not serve the web viewer (the websocket stays on the same port)",
    )
    watch.add_argument(
        "--token-file", metavar="FILE", help="a token file as for serve (its first token)"
    )
    watch.add_argument("--token", help="deprecated: use --token-file or TRIOFLOW_TOKEN")
    watch.add_argument("--from-seq", type=int, default=1, metavar="N")
