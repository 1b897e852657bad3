"""One accepted bridge websocket: its reader (requests answered in order), its
subscription pumps, its idle watcher, its heartbeat and its ``run-status`` sender.

A subscription's pump is a cursor into the run's log (``run.observe_stream``) that frames
each chunk (``tf.to_wire`` as JSON, encoded once per chunk however many subscribers read
it: :class:`FrameCache`) into the connection's send buffer; once it is live (caught up)
it joins the run's shared feed (:mod:`._feed`: one live pump per run) and sleeps while the
feed hands its chunks out. A flusher writes the send buffer to the socket, a burst of
frames in one system call (:class:`CorkedStream`).

The send buffer is bounded (``max_send_buffer`` bytes). A pump that finds it full waits
(the client's own back-pressure); one that cannot add to it for ``lag_timeout`` seconds
(the client stopped reading) drops its subscription and adds a ``lagged`` notice with the
last ``seq`` it sent: the client re-subscribes from there and loses nothing. Nothing ever
waits for a client except that client's own tasks: a slow client only slows itself, and
the server's memory per connection is bounded (``run-status`` messages waiting for room
are coalesced: at most one per run).

With durable storage (SQLite) a chunk is sent only once it is in storage: a client never
sees a chunk that a crash could take back (a restarted run re-uses the ``seq`` of chunks
that were never stored), so "re-subscribe after your last ``seq``" stays exact across a
server restart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .._broadcast import ends_at_terminal_finish
from . import _protocol as p
from ._checks import check_resume, check_start, describe
from ._corked import CorkedStream
from ._describe import describe as describe_workflow
from ._feed import LiveFeed
from ._host import ConnectionHost
from ._replies import error_for, forget_pending, frame_of
from ._sources import ExecutionDied, Source, close_chunks, follow_run
from ._watch import RunWatcher

logger = logging.getLogger("trioflow.bridge")


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
    #: The log's end when the subscription began, and whether ``caught-up`` was sent.
    end_seq: int = 0
    caught_up: bool = False
    #: Released from the run's feed because the send buffer was full.
    behind: bool = False

    def stop(self) -> None:
        self.active = False
        self.scope.cancel()


class Connection:
    """One accepted websocket: its reader, idle watcher, heartbeat, subscription pumps
    and run watch."""

    def __init__(
        self, server: ConnectionHost, ws: WebSocketConnection, role: p.Role, out: CorkedStream
    ) -> None:
        self.server = server
        self.ws = ws
        self.role = role
        self.out = out
        self.subscriptions: dict[str, _Subscription] = {}
        self.idle_since = trio.current_time()
        self.close_code: tuple[int, str | None] = (1000, None)
        self.watcher: RunWatcher | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Serve the connection until the client leaves or a task ends it (cancelling
        it ends every task of the connection; the caller closes the websocket)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._supervised, self._reader)
                nursery.start_soon(self._supervised, self._idle_watch)
                if self.server.ping_interval is not None:
                    nursery.start_soon(self._supervised, self._heartbeat)
        finally:
            self._unwatch()

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
            if not self.subscriptions and self.watcher is None:
                self.close_code = (1001, "idle timeout")
                await trio.lowlevel.checkpoint()
                return
            # A subscription or a run watch counts as activity.
            self.idle_since = trio.current_time()
            await trio.lowlevel.checkpoint()

    async def _heartbeat(self) -> None:
        """Ping every ``ping_interval`` seconds (quiet subscriptions survive proxies that
        drop idle connections); a peer that does not answer within the interval is gone."""
        interval = self.server.ping_interval
        assert interval is not None
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(interval) as scope:
                await self.ws.ping()
            if scope.cancelled_caught:
                self.close_code = (1001, "no answer to ping")
                return

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
        self._append(frame_of(message))

    def _notice(self, message: dict[str, Any]) -> None:
        """Send a small notice past the buffer's bound (one per ended subscription)."""
        with contextlib.suppress(
            ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self._append(frame_of(message))

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
                    f"{envelope.op}: this token is read-only ({', '.join(sorted(p.READ_OPS))})",
                    request_id,
                )
            request = p.parse_fields(envelope)
            return await self._dispatch(request)
        except (ConnectionClosed, trio.BrokenResourceError):
            raise
        except Exception as exc:
            await trio.lowlevel.checkpoint()
            return error_for(exc, request_id)

    async def _dispatch(self, request: p.Request) -> dict[str, Any] | None:
        server = self.server
        runtime = server.runtime
        if isinstance(request, p.Subscribe):
            await self._subscribe(request)
            return None
        if isinstance(request, p.WhoAmI | p.Describe | p.WatchRuns | p.UnwatchRuns):
            return await self._browse(request)
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
            server.watch.follow(run.run_id, run.workflow_id, run._hub)
            return p.reply(request.id, runId=run.run_id, status=str(run.status))
        if isinstance(request, p.Cancel):
            run = await server.bound_run(request.run_id, request.id)
            await run.cancel()
            server.watch.poke()
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
                    await forget_pending(server.runtime, run.run_id)
            raise
        await output.aclose()
        server.watch.follow(run.run_id, workflow.id, run._hub)
        return p.reply(request.id, runId=run.run_id)

    # --- the viewer's requests -------------------------------------------------------------

    async def _browse(
        self, request: p.WhoAmI | p.Describe | p.WatchRuns | p.UnwatchRuns
    ) -> dict[str, Any] | None:
        if isinstance(request, p.WhoAmI):
            await trio.lowlevel.checkpoint()
            return p.reply(request.id, access=self.role)
        if isinstance(request, p.Describe):
            await trio.lowlevel.checkpoint()
            try:
                workflow = self.server.runtime.get_workflow(request.workflow_id)
            except KeyError:
                raise p.ProtocolError(
                    "not-found",
                    f"no workflow registered with id {request.workflow_id!r}",
                    request.id,
                ) from None
            return p.reply(request.id, workflow=describe_workflow(workflow))
        if isinstance(request, p.UnwatchRuns):
            await trio.lowlevel.checkpoint()
            self._unwatch()
            return p.reply(request.id)
        await self._watch(request)
        return None

    async def _watch(self, request: p.WatchRuns) -> None:
        """Reply with the matching runs, then send their changes: the watcher is
        registered before the runs are read, its messages held until the reply is out."""
        self._unwatch()
        watcher = RunWatcher(request.workflow_id, request.status)
        await self.server.watch.add(watcher)
        self.watcher = watcher
        try:
            infos = await self.server.runtime.list_runs(
                workflow_id=request.workflow_id, status=request.status, limit=p.MAX_LIST_LIMIT
            )
            await self._send(p.reply(request.id, runs=[p.run_info(i) for i in infos]))
        except BaseException:
            self._unwatch()
            raise
        assert self._nursery is not None
        self._nursery.start_soon(self._send_statuses, watcher)

    def _unwatch(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            self.server.watch.remove(watcher)
            watcher.ready.set()  # its sender ends
            if not self.subscriptions:
                self.idle_since = trio.current_time()

    async def _send_statuses(self, watcher: RunWatcher) -> None:  # noqa: ASYNC910
        with contextlib.suppress(
            ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            while self.watcher is watcher:
                if not watcher.pending:
                    watcher.ready = trio.Event()
                    await watcher.ready.wait()
                    continue
                await self.out.wait_not_full()
                if self.watcher is not watcher:
                    return
                pending, watcher.pending = watcher.pending, {}
                for message in pending.values():
                    self._append(frame_of(message))

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
        except (_Unsendable, ExecutionDied) as exc:
            logger.error("trioflow bridge: subscription to %s failed: %s", sub.run_id, exc)
            if sub.active:
                self._end(sub)
                text = f"{exc}; the subscription ends"
                if isinstance(exc, ExecutionDied):
                    text += f": subscribe again from seq {sub.delivered + 1} once it is restarted"
                self._notice(p.error(None, "internal", text, run_id=sub.run_id))
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
        sub.end_seq = source.end_seq
        if source.end_seq < sub.from_seq:
            await self._put(sub, frame_of(p.caught_up(run_id, source.end_seq)))
            sub.caught_up = True
        if source.chunks is None:  # a finished run, nothing after from_seq
            await self._put(sub, frame_of(p.end(run_id, source.end_seq)))
            self._end(sub)
            return
        while True:
            if source.run is not None:
                outcome = await self._ride_feed(sub, source)
                if outcome == "ended":
                    return
                if outcome == "released":  # behind now: a cursor of its own again
                    source.chunks = follow_run(source.run, sub.delivered + 1)
            if await self._own_cursor(sub, source):
                return

    async def _ride_feed(self, sub: _Subscription, source: Source) -> str | None:
        """Follow the run's shared live feed while it hands out this subscription's
        chunks ("ended": it sent the ``end``; "released": the pump takes over from
        ``sub.delivered``, its own cursor closed; None: could not join, the feed is
        elsewhere in the log, the own cursor stays)."""
        run = source.run
        assert run is not None
        if not self._can_join(sub):
            await trio.lowlevel.checkpoint()
            return None
        feeds = self.server.feeds
        feed = feeds.get(sub.run_id)
        if feed is None or feed.closed:
            feed = LiveFeed(
                run,
                sub.delivered + 1,
                gate=source.gate,
                frames=self.server.frames,
                marks=self.server.stored,
                on_exit=self.server.forget_feed,
            )
            feeds[sub.run_id] = feed
            assert self._nursery is not None
            self._nursery.start_soon(feed.run_feed, name=f"trioflow bridge feed {sub.run_id}")
        member = feed.join(self, sub)
        if member is None:
            await trio.lowlevel.checkpoint()
            return None
        close_chunks(source)  # an idle cursor would only hold the log back
        source.chunks = None
        try:
            await member.left.wait()
        finally:
            feed.leave(member)
        return member.outcome

    def _can_join(self, sub: _Subscription) -> bool:
        """Whether the subscription may ride the run's feed now: it is live (caught up:
        a replay keeps its own cursor), its connection's send buffer is not full (at most
        half full after a release for a full buffer: no back and forth), and the feed's
        next chunk is its next one (or there is no feed yet)."""
        if not sub.caught_up or self.out.full():
            return False
        if sub.behind:  # released for a full buffer: back once it is half empty
            if len(self.out) > self.server.max_send_buffer // 2:
                return False
            sub.behind = False
        feed = self.server.feeds.get(sub.run_id)
        return feed is None or (not feed.closed and feed.next_seq == sub.delivered + 1)

    def take_live(self, sub: _Subscription, seq: int, frame: bytes, terminal: bool) -> bool:
        """A chunk from the run's shared feed; False when this connection cannot take it
        now (send buffer full, subscription or connection gone): the pump takes over."""
        if self.out.full():
            sub.behind = True
            return False
        if not sub.active or sub.delivered + 1 != seq:
            return False
        try:
            self._append(frame)
            sub.delivered = seq
            if not sub.caught_up and seq >= sub.end_seq:
                self._append(frame_of(p.caught_up(sub.run_id, seq)))
                sub.caught_up = True
            if terminal:
                self._append(frame_of(p.end(sub.run_id, seq)))
                self._end(sub)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _own_cursor(self, sub: _Subscription, source: Source) -> bool:
        """Send chunks from the subscription's own cursor: True once it sent ``end``;
        False as soon as it may join the run's shared feed."""
        run_id = sub.run_id
        chunks = source.chunks
        if chunks is None:
            raise RuntimeError("a subscription without a cursor")  # pragma: no cover
        frames = self.server.frames
        marks = self.server.stored
        out = self.out
        async for chunk in chunks:
            seq = chunk.seq
            if source.gate and seq > sub.stored:
                sub.stored = await marks.wait(run_id, seq, source.run)
            try:
                frame = frames.frame(chunk)
            except ValueError as exc:
                raise _Unsendable(f"chunk seq {seq} of run {run_id} is {exc}") from None
            if out.full() or not sub.active:
                await self._put(sub, frame)
            else:
                self._append(frame)
            sub.delivered = seq
            if not sub.caught_up and seq >= sub.end_seq:
                await self._put(sub, frame_of(p.caught_up(run_id, seq)))
                sub.caught_up = True
            if ends_at_terminal_finish(chunk):
                await self._put(sub, frame_of(p.end(run_id, seq)))
                self._end(sub)
                return True
            if source.run is not None and self._can_join(sub):
                return False
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
