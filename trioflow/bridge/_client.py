"""The bridge client: subscribe to runs and drive them over a websocket.

``async with trioflow.bridge.connect(url, token=...) as client:`` opens one connection and
keeps it: when it drops (server restart, network), the client reconnects on its own with a
bounded exponential backoff and re-subscribes every open subscription from the ``seq``
after the last chunk it received, so a subscription's chunks come without a gap and
without a duplicate across any number of reconnections.

A slow consumer never blocks the connection: each subscription buffers at most
``buffer_size`` chunks; when that is full the client unsubscribes it, drops what keeps
arriving, and re-subscribes from where the buffer ends once the consumer has read half
of it. Replies to requests are never stuck behind an unread subscription.
"""

from __future__ import annotations

import itertools
import logging
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from .._core._model import RunInfo
from .._core._status import RunStatus
from .._groups import unwrap_groups
from . import _protocol as p
from ._decoded import recent
from ._dial import connection_error as _connection_error
from ._dial import parse_url as _parse_url
from ._subscription import (
    BridgeAuthError,
    BridgeConnectionError,
    BridgeError,
    BridgeSubscription,
)
from ._wsclient import ClientWebSocket, open_client_websocket

logger = logging.getLogger("trioflow.bridge")

DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
DEFAULT_BUFFER_SIZE: Final = 1024
DEFAULT_RECONNECT_ATTEMPTS: Final = 10
CLOSE_GRACE: Final = 1.0
#: Seconds the reader waits for a subscription's consumer to read half its buffer.
READER_PATIENCE: Final = 0.05



@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: dict[str, Any] | None = None
    error: BridgeError | None = None

    def settle(self, reply: dict[str, Any] | None, error: BridgeError | None) -> None:
        if not self.done.is_set():
            self.reply = reply
            self.error = error
            self.done.set()


class BridgeClient:
    """A connection to a bridge server; get one from :func:`connect`."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        nursery: trio.Nursery,
        connect_timeout: float,
        max_message_size: int,
        reconnect_attempts: int | None,
        backoff_initial: float,
        backoff_max: float,
        buffer_size: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.url = url
        self._target = _parse_url(url)
        self._token = token
        self._nursery = nursery
        self._connect_timeout = connect_timeout
        self._max_message_size = max_message_size
        self._reconnect_attempts = reconnect_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._buffer_size = buffer_size
        self._ssl_context = ssl_context
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._sub_requests: dict[int, BridgeSubscription] = {}
        self._subs: dict[str, BridgeSubscription] = {}
        self._ws: ClientWebSocket | None = None
        self._connected = trio.Event()
        self._needed = trio.Event()
        self._outbox: deque[str] = deque()
        self._outbox_ready = trio.Event()
        self._room = trio.Event()
        self._recent = recent()
        self._failure: BridgeError | None = None
        self._lost: BridgeConnectionError | None = None
        self._closing = False
        self._last_close: Any = None  # the close reason of the last connection
        self._io_scope: trio.CancelScope | None = None
        self._connection_done: trio.Event | None = None
        #: How many connections were opened (1 + the reconnections).
        self.connections = 0
        #: Why the last server message that could not be read was refused (None: none).
        self.last_malformed: str | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def aclose(self) -> None:
        """Close the connection (no reconnection afterwards); ``connect()`` does it."""
        self._closing = True
        self._needed.set()
        scope, done = self._io_scope, self._connection_done
        if scope is None or done is None:
            await trio.lowlevel.checkpoint()
            return
        scope.cancel()
        await done.wait()

    # --- public API ----------------------------------------------------------------------

    def subscribe(self, run_id: str, from_seq: int = 1) -> BridgeSubscription:
        """Subscribe to ``run_id``'s chunks from ``from_seq`` on (an async iterator; one
        open subscription per run and client)."""
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
        if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 1:
            raise ValueError(f"from_seq must be an int >= 1, got {from_seq!r}")
        if run_id in self._subs:
            raise ValueError(f"this client already has an open subscription to run {run_id}")
        sub = BridgeSubscription(self, run_id, from_seq, self._buffer_size)
        if self._failure is not None:
            sub._fail(self._failure)
            return sub
        self._subs[run_id] = sub
        self._needed.set()
        self._ensure_subscribed(sub)
        return sub

    async def start(
        self,
        workflow_id: str,
        input_data: Any = None,
        *,
        run_id: str | None = None,
        resource_id: str | None = None,
        initial_state: Any = None,
        request_context: Mapping[str, Any] | None = None,
    ) -> str:
        """Start a run of a workflow registered on the server; its run id. Does not
        subscribe (use :meth:`subscribe`: the log keeps every chunk)."""
        reply = await self.request(
            "start",
            workflowId=workflow_id,
            inputData=input_data,
            runId=run_id,
            resourceId=resource_id,
            initialState=initial_state,
            requestContext=None if request_context is None else dict(request_context),
        )
        return str(reply["runId"])

    async def resume(
        self,
        run_id: str,
        resume_data: Any = None,
        *,
        step: str | Sequence[str] | None = None,
        label: str | None = None,
        for_each_index: int | None = None,
        request_context: Mapping[str, Any] | None = None,
    ) -> RunStatus:
        """Resume a suspended run; returns once the resume is claimed (status
        ``running``). ``BridgeError`` with code ``validation`` carries the
        ValidationError text; ``conflict`` when it is not suspended or already claimed."""
        reply = await self.request(
            "resume",
            runId=run_id,
            resumeData=resume_data,
            step=step if step is None or isinstance(step, str) else list(step),
            label=label,
            forEachIndex=for_each_index,
            requestContext=None if request_context is None else dict(request_context),
        )
        return RunStatus(reply["status"])

    async def cancel(self, run_id: str) -> RunStatus:
        """Cancel a run; its status afterwards (a finished run keeps its own)."""
        reply = await self.request("cancel", runId=run_id)
        return RunStatus(reply["status"])

    async def list_runs(
        self,
        workflow_id: str | None = None,
        status: RunStatus | str | None = None,
        *,
        resource_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Stored runs, newest first, filtered by every given field."""
        reply = await self.request(
            "list",
            workflowId=workflow_id,
            status=None if status is None else str(status),
            resourceId=resource_id,
            limit=limit,
            offset=offset,
        )
        return [
            RunInfo(
                run_id=row["runId"],
                workflow_id=row["workflowId"],
                resource_id=row.get("resourceId"),
                status=RunStatus(row["status"]),
                created_at=row["createdAt"],
                updated_at=row["updatedAt"],
            )
            for row in reply["runs"]
        ]

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request (wire field names, ``None`` left out) and return its
        ``reply``; BridgeError for an ``error``."""
        while self._ws is None:
            if self._failure is not None:
                await trio.lowlevel.checkpoint()
                raise self._failure
            self._needed.set()
            await self._connected.wait()
        request_id = next(self._ids)
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            self._post(p.request_message(op, request_id, **fields))
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        return pending.reply

    # --- subscriptions -------------------------------------------------------------------

    def _ensure_subscribed(self, sub: BridgeSubscription) -> None:
        if sub._finished or sub._paused or sub._live_id is not None or self._ws is None:
            return
        request_id = next(self._ids)
        sub._live_id = request_id
        self._sub_requests[request_id] = sub
        self._post(
            p.request_message("subscribe", request_id, runId=sub.run_id, fromSeq=sub._expected)
        )

    def _remove(self, sub: BridgeSubscription, *, unsubscribe: bool) -> None:
        if self._subs.get(sub.run_id) is sub:
            del self._subs[sub.run_id]
            if unsubscribe and sub._live_id is not None:
                self._post(p.request_message("unsubscribe", None, runId=sub.run_id))
        sub._live_id = None
        sub._active = False

    # --- connection ----------------------------------------------------------------------

    def _post(self, message: dict[str, Any]) -> None:
        """Queue a message for the current connection (dropped when there is none)."""
        if self._ws is None:
            return
        self._outbox.append(p.dumps(message))
        self._outbox_ready.set()

    async def _sender(self, ws: ClientWebSocket) -> None:
        while True:
            while not self._outbox:
                self._outbox_ready = trio.Event()
                await self._outbox_ready.wait()
            await ws.send_message(self._outbox.popleft())

    async def _reader(self, ws: ClientWebSocket) -> None:
        # Every message of a socket read is dispatched without a schedule point each.
        # Then, while a subscription's buffer is more than half full, its consumer gets
        # up to READER_PATIENCE seconds to read before the next batch comes (TCP holds the
        # rest): a consumer that keeps up never overflows; one that stopped reading
        # overflows and is paused, and the others go on.
        dispatch = self._dispatch
        while True:
            for frame in await ws.receive_batch():
                dispatch(frame)
            if any(sub.crowded for sub in self._subs.values()):
                with trio.move_on_after(READER_PATIENCE):  # noqa: ASYNC912 - crowded: waits
                    while any(sub.crowded for sub in self._subs.values()):
                        self._room = trio.Event()
                        await self._room.wait()

    def _on_room(self) -> None:
        self._room.set()

    def _dispatch(self, frame: str | bytes) -> None:
        try:
            message = self._recent.parse(frame)
        except p.ProtocolError as exc:
            # Its subscription (if any) sees a gap in its seqs and re-subscribes, a bounded
            # number of times (BridgeSubscription._on_gap).
            self.last_malformed = exc.message
            logger.warning("trioflow bridge client: ignoring a message: %s", exc.message)
            return
        message_type: str = message["type"]
        if message_type in ("reply", "error"):
            request_id = message.get("id")
            if isinstance(request_id, int) and not isinstance(request_id, bool):
                pending = self._pending.get(request_id)
                if pending is not None:
                    if message_type == "reply":
                        pending.settle(message, None)
                    else:
                        pending.settle(
                            None,
                            BridgeError(
                                str(message.get("code")),
                                str(message.get("message")),
                                run_id=message.get("runId"),
                            ),
                        )
                    return
                sub = self._sub_requests.pop(request_id, None)
                if sub is not None:
                    sub._on_reply(request_id, message)
                    return
            if message_type == "reply" or request_id is not None:
                return
        run_id = message.get("runId")
        if isinstance(run_id, str):
            target = self._subs.get(run_id)
            if target is not None:
                target._on_message(message_type, message)
                return
        if message_type == "error":
            logger.warning("trioflow bridge client: server error: %s", message.get("message"))

    async def _open_stream(self) -> trio.abc.Stream:
        target = self._target
        if not target.ssl:
            return await trio.open_tcp_stream(target.host, target.port)
        context = self._ssl_context or ssl.create_default_context()
        return await trio.open_ssl_over_tcp_stream(
            target.host, target.port, ssl_context=context, https_compatible=True
        )

    async def _connection(  # noqa: ASYNC114
        self, task_status: trio.TaskStatus[None] | None
    ) -> None:
        """Open one connection and serve it until it drops (raises why)."""
        target = self._target
        with trio.fail_after(self._connect_timeout):
            stream = await self._open_stream()
        try:
            ws: ClientWebSocket | None = None
            with trio.move_on_after(self._connect_timeout):
                ws = await open_client_websocket(
                    stream,
                    target.host_header,
                    target.resource,
                    subprotocols=[p.SUBPROTOCOL],
                    extra_headers=[(b"Authorization", b"Bearer " + self._token.encode())],
                    max_message_size=self._max_message_size,
                )
            if ws is None:
                raise BridgeConnectionError("the websocket handshake timed out")
            done = trio.Event()
            try:
                self._connected_to(ws, done)
                if task_status is not None:
                    task_status.started()
                async with trio.open_nursery() as io:
                    self._io_scope = io.cancel_scope
                    io.start_soon(self._io_task, self._reader, ws, io)
                    io.start_soon(self._io_task, self._sender, ws, io)
                raise self._lost or BridgeConnectionError("the connection closed")
            finally:
                self._io_scope = None
                self._last_close = ws.closed
                self._disconnected()
                # The client closes (the stream is closed below: no socket is left open).
                with trio.move_on_after(CLOSE_GRACE, shield=True):
                    await ws.aclose()
                done.set()
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _io_task(  # noqa: ASYNC910 - the task checkpoints
        self, task: Any, ws: ClientWebSocket, io: trio.Nursery
    ) -> None:
        try:
            await task(ws)
        except Exception as exc:
            if self._lost is None:
                self._lost = _connection_error(exc)
        finally:
            io.cancel_scope.cancel()

    def _connected_to(self, ws: ClientWebSocket, done: trio.Event) -> None:
        self._ws = ws
        self._connection_done = done
        self._lost = None
        self.connections += 1
        self._outbox.clear()
        self._connected.set()
        for sub in list(self._subs.values()):
            self._ensure_subscribed(sub)

    def _disconnected(self) -> None:
        self._ws = None
        self._connected = trio.Event()
        self._outbox.clear()
        self._sub_requests.clear()
        lost = self._lost or BridgeConnectionError("the connection closed")
        for pending in list(self._pending.values()):
            pending.settle(
                None,
                BridgeConnectionError(
                    f"{lost.message} before the reply arrived: the request may or may not "
                    "have been executed"
                ),
            )
        for sub in self._subs.values():
            sub._disconnected()

    def _fail(self, error: BridgeError) -> None:
        """Give up: every waiting request and every subscription gets ``error``."""
        self._failure = error
        for pending in list(self._pending.values()):
            pending.settle(None, error)
        for sub in list(self._subs.values()):
            sub._fail(error)
        self._connected.set()

    def _wanted(self) -> bool:
        return bool(self._pending) or any(not sub._paused for sub in self._subs.values())

    async def supervise(  # noqa: ASYNC114,ASYNC128 - _connection calls started()
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, and reconnect with backoff after every drop (the first connection's
        failure is raised: ``connect()`` fails fast)."""
        first: trio.TaskStatus[None] | None = task_status
        failures = 0
        while True:
            opened_before = self.connections
            self._last_close = None
            try:
                await self._connection(first)
            except (trio.Cancelled, KeyboardInterrupt, SystemExit):
                raise
            except BaseExceptionGroup as group:
                fatal, rest = group.split((trio.Cancelled, KeyboardInterrupt, SystemExit))
                if fatal is not None:
                    raise fatal from None
                assert rest is not None
                error = _connection_error(rest, self._last_close)
            except Exception as exc:
                error = _connection_error(exc, self._last_close)
            if self.connections == 0:
                raise error  # the first connection failed: connect() raises it
            first = None
            if self._closing:
                self._fail(BridgeConnectionError("the client is closed"))
                await trio.lowlevel.checkpoint()
                return
            if isinstance(error, BridgeAuthError) or error.close_code == 1009:
                # A refused token, or a message larger than max_message_size: trying
                # again would only meet the same.
                self._fail(error)
                await trio.lowlevel.checkpoint()
                return
            failures = 1 if self.connections > opened_before else failures + 1
            if self._reconnect_attempts is not None and failures > self._reconnect_attempts:
                self._fail(
                    BridgeConnectionError(
                        f"gave up after {self._reconnect_attempts} reconnection attempts: "
                        f"{error.message}"
                    )
                )
                await trio.lowlevel.checkpoint()
                return
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (failures - 1))
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            while not self._wanted():
                self._needed = trio.Event()
                await self._needed.wait()


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: str,
    connect_timeout: float = 10.0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    reconnect_attempts: int | None = DEFAULT_RECONNECT_ATTEMPTS,
    backoff_initial: float = 0.05,
    backoff_max: float = 5.0,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[BridgeClient]:
    """Connect to a bridge server (``ws://host:port`` or ``wss://``) with a bearer token.

    Raises BridgeAuthError when the server refuses the token and BridgeConnectionError
    when it cannot be reached. Afterwards the client reconnects on its own after a drop:
    up to ``reconnect_attempts`` consecutive failed attempts (None: forever), waiting
    ``backoff_initial`` seconds, doubling up to ``backoff_max`` (with jitter). Leaving the
    block closes the connection (the client closes it: no socket is left open).
    """
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty str")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 2:
        raise ValueError(f"buffer_size must be an int >= 2, got {buffer_size!r}")
    if reconnect_attempts is not None and reconnect_attempts < 0:
        raise ValueError("reconnect_attempts must be >= 0 or None")
    with unwrap_groups():
        async with trio.open_nursery() as nursery:
            client = BridgeClient(
                url,
                token=token,
                nursery=nursery,
                connect_timeout=connect_timeout,
                max_message_size=max_message_size,
                reconnect_attempts=reconnect_attempts,
                backoff_initial=backoff_initial,
                backoff_max=backoff_max,
                buffer_size=buffer_size,
                ssl_context=ssl_context,
            )
            await nursery.start(client.supervise)
            try:
                yield client
            finally:
                # The client closes first, while trio-websocket's reader still runs to
                # receive the server's answer (a cancelled reader would leave the closing
                # handshake to time out).
                with trio.move_on_after(CLOSE_GRACE, shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
