"""The bridge server: a runtime's runs over websockets (trio-websocket), and the web
viewer's files over plain HTTP on the same port.

Each TCP connection first goes through :mod:`._http`: a ``GET`` of a viewer file is
answered there (h11); a websocket upgrade is handed on, bytes already read replayed, to
trio-websocket. Admission (:func:`._auth.decide`): a foreign ``Origin`` gets 403 before
the token is looked at; a token comes in the ``Authorization`` header or as a
``trioflow.bearer.<token>`` subprotocol (the header wins); a wrong subprotocol token is
accepted and closed with 4401 at once (a browser sees only close codes); anything else
without a valid token gets 401.

One task tree per websocket (:mod:`._connection`), all inside the server's own nursery
(never the runtime's): a reader answering requests in order, a pump per subscription
(riding its run's shared live feed once caught up),
a flusher writing the send buffer (:class:`CorkedStream`), an idle watcher, a heartbeat
(``ping_interval``) and, while the client watches runs, a ``run-status`` sender fed by the
server's single :class:`RunWatch`.

Every task catches ``ConnectionClosed`` and every other error of its own: a fault of one
connection never reaches another connection, the server, or any run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Final

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, wrap_server_stream

from .._core._status import TERMINAL
from .._run import Run
from .._runtime import Runtime
from . import _auth as auth
from . import _http as http
from . import _protocol as p
from ._checks import describe
from ._connection import Connection
from ._corked import CLOSE_GRACE, CorkedStream
from ._feed import LiveFeed
from ._sources import (
    FrameCache,
    Source,
    StoredChunks,
    StoredMarks,
    died_here,
    follow_run,
    log_end,
)
from ._watch import RunWatch

logger = logging.getLogger("trioflow.bridge")

DEFAULT_PORT: Final = 8765
DEFAULT_MAX_MESSAGE_SIZE: Final = 1_048_576
DEFAULT_MAX_SUBSCRIPTIONS: Final = 100
DEFAULT_IDLE_TIMEOUT: Final = 300.0
DEFAULT_MAX_SEND_BUFFER: Final = 1_048_576
DEFAULT_LAG_TIMEOUT: Final = 10.0
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_PING_INTERVAL: Final = 20.0


async def serve(
    runtime: Runtime,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tokens: Mapping[str, p.Role] | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER,
    lag_timeout: float = DEFAULT_LAG_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    allowed_origins: Iterable[str] | None = None,
    ping_interval: float | None = DEFAULT_PING_INTERVAL,
    web: bool = True,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``runtime``'s runs over websockets (and the web viewer) until cancelled.

    ``port = await nursery.start(trioflow.bridge.serve, runtime, tokens={...})`` returns
    once the server listens, with the bound port (``port=0`` picks a free one).
    Cancelling it closes every connection (code 1001) and stops listening; runs go on.

    ``tokens`` maps each accepted bearer token to ``"read"`` (subscribe, unsubscribe,
    list, watch-runs, unwatch-runs, describe, whoami) or ``"control"`` (also start,
    resume, cancel). The token comes in an ``Authorization: Bearer <token>`` header or,
    from a browser, as the subprotocol ``trioflow.bearer.<token>`` next to
    ``trioflow.v1`` (the server selects ``trioflow.v1``, never the token; a wrong one is
    closed with code 4401 right after the handshake). Without a valid token the upgrade
    is refused with HTTP 401 (so with no tokens every connection is refused).

    ``allowed_origins``: the ``Origin`` headers that may connect (``["*"]``: any); an
    upgrade from another origin is refused with 403 before its token is read. The
    default is the viewer's own origin (``http://host:port``, plus its
    ``localhost``/``127.0.0.1`` twin on a loopback address). Clients that send no
    ``Origin`` (not browsers) are not affected.

    ``web``: serve the web viewer's files at ``http://host:port/`` (else every plain
    HTTP request gets 404). ``ping_interval``: seconds between pings of each connection
    (``None``: never); a peer that does not answer within ``ping_interval`` is closed
    (1001). ``max_message_size`` bounds incoming frames (a larger one closes the
    connection with code 1009); ``max_subscriptions`` per connection; a connection
    without subscriptions or a run watch that sends nothing for ``idle_timeout`` seconds
    is closed (1001). Each connection buffers at most about ``max_send_buffer`` outgoing
    bytes; a subscription that cannot add to a full buffer for ``lag_timeout`` seconds
    is dropped with a ``lagged`` notice. The wire protocol is in docs/bridge.md.
    """
    # Checked before listening (the policy itself needs the bound port).
    auth.OriginPolicy.build(allowed_origins, host=host, port=port or 1)
    server = BridgeServer(
        runtime,
        tokens=tokens,
        max_message_size=max_message_size,
        max_subscriptions=max_subscriptions,
        idle_timeout=idle_timeout,
        max_send_buffer=max_send_buffer,
        lag_timeout=lag_timeout,
        handshake_timeout=handshake_timeout,
        ping_interval=ping_interval,
        web=web,
    )
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        # Each address got its own free port: keep one, so the port handed back is the
        # only one served.
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound_port: int = listeners[0].socket.getsockname()[1]
    server.origins = auth.OriginPolicy.build(allowed_origins, host=host, port=bound_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.watch.run)
        await nursery.start(partial(trio.serve_listeners, server.handle_stream, listeners))
        logger.info("trioflow bridge listening on %s:%d", host, bound_port)
        if not server.has_tokens:
            logger.warning("trioflow bridge: no tokens configured, every connection is refused")
        task_status.started(bound_port)


async def _shielded_nursery(  # noqa: ASYNC114 - only ever passed to nursery.start
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[trio.Nursery]
) -> None:
    """A nursery inside ``scope`` (handed back by ``nursery.start``) that lives until
    ``scope`` is cancelled."""
    with scope:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()


def _seconds(name: str, value: Any) -> float:
    if not (isinstance(value, int | float) and value > 0) or math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


class BridgeServer:
    """The state shared by every connection of one :func:`serve`."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        tokens: Mapping[str, p.Role] | None,
        max_message_size: int,
        max_subscriptions: int,
        idle_timeout: float,
        max_send_buffer: int,
        lag_timeout: float,
        handshake_timeout: float,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        web: bool = True,
    ) -> None:
        checked = auth.token_roles(tokens)
        for name, value in (
            ("max_message_size", max_message_size),
            ("max_subscriptions", max_subscriptions),
            ("max_send_buffer", max_send_buffer),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.idle_timeout = _seconds("idle_timeout", idle_timeout)
        self.lag_timeout = _seconds("lag_timeout", lag_timeout)
        self.handshake_timeout = _seconds("handshake_timeout", handshake_timeout)
        self.ping_interval = (
            None if ping_interval is None else _seconds("ping_interval", ping_interval)
        )
        for token, _ in checked:
            if not auth.is_subprotocol_safe(token.decode()):
                logger.warning(
                    "trioflow bridge: a token has characters a browser cannot send as a "
                    "subprotocol: the web viewer cannot use it (Authorization headers can)"
                )
        self.runtime = runtime
        self.storage = runtime.storage
        self.durable = bool(getattr(self.storage, "durable", False))
        self._tokens = checked
        self.max_message_size = max_message_size
        self.max_subscriptions = max_subscriptions
        self.max_send_buffer = max_send_buffer
        self.site: http.StaticSite | None = http.StaticSite() if web else None
        self.origins = auth.OriginPolicy(None)
        self.frames = FrameCache()
        self.stored = StoredMarks(self.storage)
        self.watch = RunWatch(runtime)
        #: The shared live pump of each run some subscription follows (bridge/_feed.py).
        self.feeds: dict[str, LiveFeed] = {}
        self.connections: set[Connection] = set()

    def forget_feed(self, feed: LiveFeed) -> None:
        """A run's shared feed ended (the next subscription to join makes a new one)."""
        if self.feeds.get(feed.run_id) is feed:
            del self.feeds[feed.run_id]

    @property
    def has_tokens(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> p.Role | None:
        """The role of the ``Authorization`` bearer token in ``headers`` (None: refuse)."""
        token, _ = auth.header_token(headers)
        return auth.lookup_role(token, self._tokens)

    # --- connections ---------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:  # noqa: ASYNC910
        """One TCP connection (``trio.serve_listeners`` closes the stream afterwards).
        Never raises anything but cancellation (and KeyboardInterrupt/SystemExit)."""
        try:
            await http.serve_connection(
                stream, self.site, self._on_upgrade, head_timeout=self.handshake_timeout
            )
        except (trio.Cancelled, KeyboardInterrupt, SystemExit):
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except BaseExceptionGroup as group:
            fatal, rest = group.split((trio.Cancelled, KeyboardInterrupt, SystemExit))
            if rest is not None:
                logger.error(
                    "trioflow bridge: connection failed: %s", describe(rest), exc_info=rest
                )
            if fatal is not None:
                raise fatal from None
        except Exception as exc:
            logger.error("trioflow bridge: connection failed: %s", describe(exc), exc_info=exc)

    async def _on_upgrade(self, stream: trio.abc.Stream, head: http.RequestHead) -> None:
        del head  # trio-websocket parses the replayed request itself
        corked = CorkedStream(stream, high_water=self.max_send_buffer)
        # trio-websocket's reader and the flusher run shielded from the server's
        # cancellation: closing with 1001 on shutdown takes both (the flusher writes the
        # close frame, the reader takes the peer's answer). They stop when this ends.
        io_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:
            try:
                ws_nursery: trio.Nursery = await nursery.start(_shielded_nursery, io_scope)
                ws_nursery.start_soon(corked.flusher)
                request: WebSocketRequest | None = None
                with trio.move_on_after(self.handshake_timeout):
                    request = await wrap_server_stream(
                        ws_nursery,
                        corked,
                        message_queue_size=16,
                        max_message_size=self.max_message_size,
                        receive_buffer_size=65536,
                    )
                if request is not None:
                    await self._handle_request(request, corked)
            except (ConnectionClosed, trio.BrokenResourceError):
                pass
            finally:
                with trio.move_on_after(CLOSE_GRACE, shield=True):
                    await corked.flush()  # e.g. a 401 response
                io_scope.cancel()

    async def _handle_request(self, request: WebSocketRequest, corked: CorkedStream) -> None:
        decision = auth.decide(
            request.headers, request.proposed_subprotocols, self._tokens, self.origins
        )
        if decision.reject == 403:
            await request.reject(403, body=b"this origin may not connect (allowed_origins)\n")
            return
        if decision.reject is not None:
            await request.reject(
                decision.reject,
                extra_headers=[(b"WWW-Authenticate", b'Bearer realm="trioflow"')],
                body=b"missing or invalid bearer token\n",
            )
            return
        ws = await request.accept(subprotocol=decision.subprotocol)
        if decision.close_code is not None or decision.role is None:
            with trio.move_on_after(CLOSE_GRACE, shield=True):
                await ws.aclose(decision.close_code or auth.CLOSE_BAD_TOKEN, "wrong token")
            return
        connection = Connection(self, ws, decision.role, corked)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            code, reason = connection.close_code
            if trio.current_effective_deadline() == -math.inf:
                code, reason = 1001, "server shutting down"
            with trio.move_on_after(CLOSE_GRACE, shield=True):
                await ws.aclose(code, reason)

    # --- runs ----------------------------------------------------------------------------

    async def bound_run(self, run_id: str, request_id: p.RequestId) -> Run:
        """A Run bound to the stored run ``run_id`` (its workflow must be registered)."""
        snapshot = await self.storage.load_snapshot(run_id)
        if snapshot is None:
            raise p.ProtocolError("not-found", f"no run with id {run_id!r}", request_id)
        try:
            workflow = self.runtime.get_workflow(snapshot.workflow_id)
        except KeyError:
            raise p.ProtocolError(
                "not-found",
                f"run {run_id!r} belongs to workflow {snapshot.workflow_id!r}, which this "
                "server has not registered",
                request_id,
            ) from None
        return await self.runtime.create_run(workflow, run_id=run_id)

    async def open_source(self, snapshot: Any, from_seq: int) -> Source:
        """The chunks of a stored run from ``from_seq`` on."""
        run_id: str = snapshot.run_id
        end_seq = await self.storage.last_seq(run_id)
        if snapshot.status in TERMINAL and from_seq > end_seq:
            return Source(None, end_seq, gate=False)
        try:
            workflow = self.runtime.get_workflow(snapshot.workflow_id)
        except KeyError:
            return Source(StoredChunks(self.storage, run_id, from_seq), end_seq, gate=False)
        run = await self.runtime.create_run(workflow, run_id=run_id)
        if self.durable and died_here(run) is not None:
            # Its execution here died (whoever followed it then was told): follow what
            # storage gets from now on, e.g. a restart by another process.
            return Source(StoredChunks(self.storage, run_id, from_seq), end_seq, gate=False)
        if not self.durable:
            end_seq = max(end_seq, log_end(run))
        return Source(follow_run(run, from_seq), end_seq, gate=self.durable, run=run)
