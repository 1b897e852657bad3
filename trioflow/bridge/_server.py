"""The bridge server: a runtime's runs over websockets (trio-websocket).

One task tree per connection, all inside the server's own nursery (never the runtime's):

- a **reader** parses each frame and answers it (requests are handled one at a time, in
  order, so replies come in request order);
- one **pump** per subscription: a cursor into the run's log (``run.observe_stream``) that
  frames each chunk (``tf.to_wire`` as JSON, encoded once per chunk however many
  subscribers read it) into the connection's send buffer;
- a **flusher** writes that buffer to the socket: a burst of frames leaves in one system
  call (:class:`CorkedStream`);
- an **idle watcher** closes a connection that has had no subscription and sent nothing
  for ``idle_timeout`` seconds.

The send buffer is bounded (``max_send_buffer`` bytes). A pump that finds it full waits
(the client's own back-pressure); one that cannot add to it for ``lag_timeout`` seconds
(the client stopped reading) drops its subscription and adds a ``lagged`` notice with the
last ``seq`` it sent: the client re-subscribes from there and loses nothing. Nothing ever
waits for a client except that client's own tasks: a slow client only slows itself, and
the server's memory per connection is bounded.

With durable storage (SQLite) a chunk is sent only once it is in storage: a client never
sees a chunk that a crash could take back (a restarted run re-uses the ``seq`` of chunks
that were never stored), so "re-subscribe after your last ``seq``" stays exact across a
server restart.

Every task catches ``ConnectionClosed`` and every other error of its own: a fault of one
connection never reaches another connection, the server, or any run.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from .. import _errors as errors
from .._broadcast import ends_at_terminal_finish
from .._core._status import TERMINAL, RunStatus
from .._run import Run
from .._runtime import Runtime
from . import _protocol as p
from ._checks import check_resume, check_start, describe
from ._corked import CLOSE_GRACE, CorkedStream
from ._sources import FrameCache, Source, StoredChunks, StoredMarks, close_chunks, log_end

logger = logging.getLogger("trioflow.bridge")

DEFAULT_PORT: Final = 8765
DEFAULT_MAX_MESSAGE_SIZE: Final = 1_048_576
DEFAULT_MAX_SUBSCRIPTIONS: Final = 100
DEFAULT_IDLE_TIMEOUT: Final = 300.0
DEFAULT_MAX_SEND_BUFFER: Final = 1_048_576
DEFAULT_LAG_TIMEOUT: Final = 10.0
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0


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
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``runtime``'s runs over websockets until cancelled.

    ``port = await nursery.start(trioflow.bridge.serve, runtime, tokens={...})`` returns
    once the server listens, with the bound port (``port=0`` picks a free one).

    ``tokens`` maps each accepted bearer token to ``"read"`` (subscribe, unsubscribe,
    list) or ``"control"`` (also start, resume, cancel); an upgrade request without one
    of them in its ``Authorization: Bearer <token>`` header is refused with HTTP 401 (so
    with no tokens every connection is refused). ``max_message_size`` bounds incoming
    frames (a larger one closes the connection with code 1009); ``max_subscriptions`` per
    connection; a connection without subscriptions that sends nothing for
    ``idle_timeout`` seconds is closed (1001). Each connection buffers at most about
    ``max_send_buffer`` outgoing bytes; a subscription that cannot add to a full buffer
    for ``lag_timeout`` seconds is dropped with a ``lagged`` notice. The wire protocol is
    in docs/bridge.md.
    """
    server = BridgeServer(
        runtime,
        tokens=tokens,
        max_message_size=max_message_size,
        max_subscriptions=max_subscriptions,
        idle_timeout=idle_timeout,
        max_send_buffer=max_send_buffer,
        lag_timeout=lag_timeout,
        handshake_timeout=handshake_timeout,
    )
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        # Each address got its own free port: keep one, so the port handed back is the
        # only one served.
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound_port: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, server.handle_stream, listeners))
        logger.info("trioflow bridge listening on %s:%d", host, bound_port)
        if not server.has_tokens:
            logger.warning("trioflow bridge: no tokens configured, every connection is refused")
        task_status.started(bound_port)


class _Stopped(Exception):
    """The subscription was replaced or unsubscribed while its pump waited."""


class _Unsendable(Exception):
    """A chunk of the log cannot be sent as strict JSON (e.g. NaN stored by an older
    trioflow): re-subscribing would meet it again, so the subscription ends."""


class _Lagged(Exception):
    """The connection's send queue stayed full for ``lag_timeout`` seconds."""


@attrs.define(eq=False)
class _Subscription:
    run_id: str
    from_seq: int
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    active: bool = True
    #: The seq of the last chunk queued for the client (the ``lagged`` notice says it).
    delivered: int = 0
    #: Every seq up to this one is known to be in durable storage.
    stored: int = 0

    def stop(self) -> None:
        self.active = False
        self.scope.cancel()


def _error_for(exc: Exception, request_id: p.RequestId) -> dict[str, Any]:
    """The ``error`` message for an exception an operation raised."""
    if isinstance(exc, p.ProtocolError):
        return p.error(
            exc.request_id if exc.request_id is not None else request_id, exc.code, exc.message
        )
    if isinstance(exc, errors.ValidationError):
        return p.error(request_id, "validation", str(exc))
    if isinstance(exc, errors.SnapshotNotFoundError):
        return p.error(request_id, "not-found", str(exc))
    if isinstance(
        exc,
        errors.RunAlreadyStartedError
        | errors.NotSuspendedError
        | errors.ResumeAlreadyClaimedError
        | errors.StepNotSuspendedError
        | errors.MultipleSuspendedStepsError
        | errors.RunNotActiveError
        | errors.RuntimeClosedError,
    ):
        return p.error(request_id, "conflict", str(exc))
    if isinstance(exc, ValueError | TypeError | errors.TrioflowError):
        return p.error(request_id, "bad-request", str(exc))
    logger.error(
        "trioflow bridge: request %r failed: %s", request_id, describe(exc), exc_info=exc
    )
    return p.error(request_id, "internal", f"internal error ({type(exc).__name__})")


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
    ) -> None:
        checked: list[tuple[bytes, p.Role]] = []
        for token, role in (tokens or {}).items():
            if not isinstance(token, str) or not token or token.strip() != token:
                raise ValueError("a token must be a non-empty str without surrounding spaces")
            if role not in p.ROLES:
                raise ValueError(f"token role must be 'read' or 'control', got {role!r}")
            checked.append((token.encode(), role))
        for name, value in (
            ("max_message_size", max_message_size),
            ("max_subscriptions", max_subscriptions),
            ("max_send_buffer", max_send_buffer),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name, seconds in (
            ("idle_timeout", idle_timeout),
            ("lag_timeout", lag_timeout),
            ("handshake_timeout", handshake_timeout),
        ):
            if not (isinstance(seconds, int | float) and seconds > 0) or math.isnan(seconds):
                raise ValueError(f"{name} must be a number of seconds > 0, got {seconds!r}")
        self.runtime = runtime
        self.storage = runtime.storage
        self.durable = bool(getattr(self.storage, "durable", False))
        self._tokens = checked
        self.max_message_size = max_message_size
        self.max_subscriptions = max_subscriptions
        self.idle_timeout = float(idle_timeout)
        self.max_send_buffer = max_send_buffer
        self.lag_timeout = float(lag_timeout)
        self.handshake_timeout = float(handshake_timeout)
        self.frames = FrameCache()
        self.stored = StoredMarks(self.storage)
        self.connections: set[_Connection] = set()

    @property
    def has_tokens(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> p.Role | None:
        """The role of the bearer token in ``headers`` (None: refuse)."""
        for name, value in headers:
            if name.lower() != b"authorization":
                continue
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                return None
            token = token.strip()
            role: p.Role | None = None
            for known, known_role in self._tokens:  # no early exit: constant time
                if hmac.compare_digest(known, token):
                    role = known_role
            return role
        return None

    # --- connections ---------------------------------------------------------------------

    async def handle_stream(self, stream: trio.SocketStream) -> None:  # noqa: ASYNC910
        """One TCP connection (``trio.serve_listeners`` closes the stream afterwards).
        Never raises anything but cancellation (and KeyboardInterrupt/SystemExit)."""
        try:
            await self._handle_stream(stream)
        except (trio.Cancelled, KeyboardInterrupt, SystemExit):
            raise
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

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        corked = CorkedStream(stream, high_water=self.max_send_buffer)
        async with trio.open_nursery() as ws_nursery:  # trio-websocket's reader, the flusher
            ws_nursery.start_soon(corked.flusher)
            try:
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
                ws_nursery.cancel_scope.cancel()

    async def _handle_request(self, request: WebSocketRequest, corked: CorkedStream) -> None:
        role = self.authenticate(request.headers)
        if role is None:
            await request.reject(
                401,
                extra_headers=[(b"WWW-Authenticate", b'Bearer realm="trioflow"')],
                body=b"missing or invalid bearer token\n",
            )
            return
        subprotocol = p.SUBPROTOCOL if p.SUBPROTOCOL in request.proposed_subprotocols else None
        ws = await request.accept(subprotocol=subprotocol)
        connection = _Connection(self, ws, role, corked)
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
        if not self.durable:
            end_seq = max(end_seq, log_end(run))
        chunks = run.observe_stream(from_seq=from_seq, follow=True)
        return Source(chunks, end_seq, gate=self.durable)


class _Connection:
    """One accepted websocket: its reader, idle watcher and subscription pumps."""

    def __init__(
        self, server: BridgeServer, ws: WebSocketConnection, role: p.Role, out: CorkedStream
    ) -> None:
        self.server = server
        self.ws = ws
        self.role = role
        self.out = out
        self.subscriptions: dict[str, _Subscription] = {}
        self.idle_since = trio.current_time()
        self.close_code: tuple[int, str | None] = (1000, None)
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._supervised, self._reader)
            nursery.start_soon(self._supervised, self._idle_watch)

    async def _supervised(self, task: Callable[[], Any]) -> None:  # noqa: ASYNC910
        """Run one of the connection's tasks; whichever ends first ends the connection."""
        try:
            await task()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:
            logger.error(
                "trioflow bridge: connection task failed: %s", describe(exc), exc_info=exc
            )
            self.close_code = (1011, "internal error")
        finally:
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    async def _idle_watch(self) -> None:
        timeout = self.server.idle_timeout
        while True:
            deadline = self.idle_since + timeout
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            if not self.subscriptions:
                self.close_code = (1001, "idle timeout")
                await trio.lowlevel.checkpoint()
                return
            # A subscription counts as activity.
            self.idle_since = trio.current_time()
            await trio.lowlevel.checkpoint()

    # --- sending -------------------------------------------------------------------------

    def _append(self, frame: bytes) -> None:
        closed = self.ws.closed
        if closed is not None:
            raise ConnectionClosed(closed)
        self.out.append(frame)

    async def _send(self, message: dict[str, Any]) -> None:
        """Send a reply or error (waits while the send buffer is full: back-pressure on
        the client's own requests)."""
        await self.out.wait_not_full()
        self._append(_frame_of(message))

    def _notice(self, message: dict[str, Any]) -> None:
        """Send a small notice past the buffer's bound (one per ended subscription)."""
        with contextlib.suppress(
            ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self._append(_frame_of(message))

    # --- requests ------------------------------------------------------------------------

    async def _reader(self) -> None:
        while True:
            frame = await self.ws.get_message()
            self.idle_since = trio.current_time()
            reply = await self._answer(frame)
            if reply is not None:
                await self._send(reply)

    async def _answer(self, frame: str | bytes) -> dict[str, Any] | None:
        request_id: p.RequestId = None
        try:
            envelope = p.parse_envelope(frame)
            request_id = envelope.id
            if envelope.op in p.CONTROL_OPS and self.role != "control":
                raise p.ProtocolError(
                    "forbidden",
                    f"{envelope.op}: this token is read-only (subscribe, unsubscribe, list)",
                    request_id,
                )
            request = p.parse_fields(envelope)
            return await self._dispatch(request)
        except (ConnectionClosed, trio.BrokenResourceError):
            raise
        except Exception as exc:
            await trio.lowlevel.checkpoint()
            return _error_for(exc, request_id)

    async def _dispatch(self, request: p.Request) -> dict[str, Any] | None:
        server = self.server
        runtime = server.runtime
        if isinstance(request, p.Subscribe):
            await self._subscribe(request)
            return None
        if isinstance(request, p.Unsubscribe):
            await trio.lowlevel.checkpoint()
            self._drop(request.run_id)
            return p.reply(request.id, runId=request.run_id)
        if isinstance(request, p.Start):
            return await self._start(request)
        if isinstance(request, p.Resume):
            check_resume(request)
            run = await server.bound_run(request.run_id, request.id)
            output = await run.resume_stream(
                resume_data=request.resume_data,
                step=request.step,
                label=request.label,
                for_each_index=request.for_each_index,
                request_context=request.request_context,
            )
            await output.aclose()
            return p.reply(request.id, runId=run.run_id, status=str(run.status))
        if isinstance(request, p.Cancel):
            run = await server.bound_run(request.run_id, request.id)
            await run.cancel()
            snapshot = await server.storage.load_snapshot(run.run_id)
            status = snapshot.status if snapshot is not None else run.status
            return p.reply(request.id, runId=run.run_id, status=str(status))
        assert isinstance(request, p.ListRuns)
        infos = await runtime.list_runs(
            workflow_id=request.workflow_id,
            status=request.status,
            resource_id=request.resource_id,
            limit=request.limit,
            offset=request.offset,
        )
        return p.reply(request.id, runs=[p.run_info(info) for info in infos])

    async def _start(self, request: p.Start) -> dict[str, Any]:
        server = self.server
        try:
            workflow = server.runtime.get_workflow(request.workflow_id)
        except KeyError:
            raise p.ProtocolError(
                "not-found", f"no workflow registered with id {request.workflow_id!r}", request.id
            ) from None
        existing = None
        if request.run_id is not None:
            existing = await server.storage.load_snapshot(request.run_id)
            if existing is not None and existing.workflow_id != workflow.id:
                raise p.ProtocolError(
                    "conflict",
                    f"run {request.run_id!r} belongs to workflow {existing.workflow_id!r}",
                    request.id,
                )
        # A refused start stores nothing (SPEC §5): check its values before create_run
        # stores a pending run.
        check_start(workflow, request)
        run = await server.runtime.create_run(
            workflow, run_id=request.run_id, resource_id=request.resource_id
        )
        try:
            output = await run.stream(
                input_data=request.input_data,
                initial_state=request.initial_state,
                request_context=request.request_context,
            )
        except Exception:
            if existing is None:
                # Refused for a reason the checks above do not know (on_start raised, a
                # newer rule of the run API): nothing ran, leave no pending run behind.
                with trio.CancelScope(shield=True):
                    await _forget_pending(server.runtime, run.run_id)
            raise
        await output.aclose()
        return p.reply(request.id, runId=run.run_id)

    # --- subscriptions -------------------------------------------------------------------

    async def _subscribe(self, request: p.Subscribe) -> None:
        server = self.server
        run_id = request.run_id
        if run_id not in self.subscriptions and (
            len(self.subscriptions) >= server.max_subscriptions
        ):
            raise p.ProtocolError(
                "too-large",
                f"subscribe: at most {server.max_subscriptions} subscriptions per connection",
                request.id,
            )
        snapshot = await server.storage.load_snapshot(run_id)
        if snapshot is None:
            raise p.ProtocolError("not-found", f"no run with id {run_id!r}", request.id)
        source = await server.open_source(snapshot, request.from_seq)
        self._drop(run_id)  # a second subscribe to the same run moves the cursor
        sub = _Subscription(run_id, request.from_seq, delivered=request.from_seq - 1)
        self.subscriptions[run_id] = sub
        try:
            # The reply comes before the subscription's first message.
            await self._send(p.reply(request.id, runId=run_id))
        except BaseException:
            self._drop(run_id)
            close_chunks(source)
            raise
        assert self._nursery is not None
        self._nursery.start_soon(self._pump, sub, source, name=f"trioflow bridge pump {run_id}")

    def _drop(self, run_id: str) -> None:
        sub = self.subscriptions.pop(run_id, None)
        if sub is not None:
            sub.stop()
            if not self.subscriptions:
                self.idle_since = trio.current_time()

    def _end(self, sub: _Subscription) -> None:
        """The subscription ended on its own (end, lag, error)."""
        sub.active = False
        if self.subscriptions.get(sub.run_id) is sub:
            del self.subscriptions[sub.run_id]
            if not self.subscriptions:
                self.idle_since = trio.current_time()

    async def _pump(self, sub: _Subscription, source: Source) -> None:  # noqa: ASYNC910
        stored = self.server.stored
        if source.gate:
            stored.acquire(sub.run_id)
        try:
            with sub.scope:
                await self._pump_chunks(sub, source)
        except (_Stopped, ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except _Lagged:
            if sub.active:
                self._end(sub)
                self._notice(p.lagged(sub.run_id, sub.delivered))
        except _Unsendable as exc:
            logger.error("trioflow bridge: subscription to %s failed: %s", sub.run_id, exc)
            if sub.active:
                self._end(sub)
                self._notice(
                    p.error(None, "internal", f"{exc}; the subscription ends", run_id=sub.run_id)
                )
        except Exception as exc:
            logger.error(
                "trioflow bridge: subscription to %s failed: %s",
                sub.run_id,
                describe(exc),
                exc_info=exc,
            )
            if sub.active:
                self._end(sub)
                self._notice(
                    p.error(
                        None,
                        "internal",
                        f"the subscription failed ({type(exc).__name__}); re-subscribe "
                        f"from seq {sub.delivered + 1}",
                        run_id=sub.run_id,
                    )
                )
        finally:
            self._end(sub)
            if source.gate:
                stored.release(sub.run_id)
            close_chunks(source)

    async def _pump_chunks(self, sub: _Subscription, source: Source) -> None:
        run_id = sub.run_id
        end_seq = source.end_seq
        caught_up = False
        if end_seq < sub.from_seq:
            await self._put(sub, _frame_of(p.caught_up(run_id, end_seq)))
            caught_up = True
        chunks = source.chunks
        if chunks is None:  # a finished run, nothing after from_seq
            await self._put(sub, _frame_of(p.end(run_id, end_seq)))
            self._end(sub)
            return
        frames = self.server.frames
        marks = self.server.stored
        out = self.out
        async for chunk in chunks:
            seq = chunk.seq
            if source.gate and seq > sub.stored:
                sub.stored = await marks.wait(run_id, seq)
            try:
                frame = frames.frame(chunk)
            except ValueError as exc:
                raise _Unsendable(f"chunk seq {seq} of run {run_id} is {exc}") from None
            if out.full() or not sub.active:
                await self._put(sub, frame)
            else:
                self._append(frame)
            sub.delivered = seq
            if not caught_up and seq >= end_seq:
                await self._put(sub, _frame_of(p.caught_up(run_id, seq)))
                caught_up = True
            if ends_at_terminal_finish(chunk):
                await self._put(sub, _frame_of(p.end(run_id, seq)))
                self._end(sub)
                return
        raise RuntimeError("the run's log ended before its terminal workflow-finish")

    async def _put(self, sub: _Subscription, frame: bytes) -> None:
        """Send one frame of a subscription; _Lagged when the send buffer stays full for
        ``lag_timeout`` seconds, _Stopped once the subscription was dropped."""
        out = self.out
        if out.full():
            with trio.move_on_after(self.server.lag_timeout) as scope:
                await out.wait_not_full()
            if scope.cancelled_caught:
                raise _Lagged
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if not sub.active:
            raise _Stopped
        self._append(frame)


async def _forget_pending(runtime: Runtime, run_id: str) -> None:
    """Delete a run this request created and could not start (only while it is still
    pending: another request may have started it meanwhile)."""
    snapshot = await runtime.storage.load_snapshot(run_id)
    if snapshot is not None and snapshot.status is RunStatus.PENDING:
        try:
            await runtime.delete_run(run_id)
        except (RuntimeError, errors.StorageError) as exc:
            logger.warning("trioflow bridge: cannot delete refused run %s: %s", run_id, exc)


def _frame_of(message: dict[str, Any]) -> bytes:
    """The frame of a server message: strict JSON always. A message that is not (a stored
    value an older trioflow let through) becomes an ``internal`` error for its request."""
    try:
        return p.text_frame(p.encode(message))
    except ValueError as exc:
        kind = message.get("type")
        logger.error("trioflow bridge: cannot send a %s message: %s", kind, exc)
        request_id = message.get("id")
        run_id = message.get("runId")
        fallback = p.error(
            request_id if isinstance(request_id, int | str) else None,
            "internal",
            f"the server cannot send its {kind} message: {exc}",
            run_id=run_id if isinstance(run_id, str) else None,
        )
        try:
            return p.text_frame(p.encode(fallback))
        except ValueError:  # pragma: no cover - ids and run ids are checked when parsed
            return p.text_frame(p.encode(p.error(None, "internal", "unsendable message")))
