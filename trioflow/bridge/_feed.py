"""One live pump per run, shared by its subscribers (the bridge server's fan-out).

A subscription replays the log with a cursor of its own until it reaches the chunk the
run's :class:`LiveFeed` hands out next; then it joins the feed and its pump sleeps. The
feed reads the run's log once, waits once for each chunk to be in durable storage, frames
it once, and appends that frame to the send buffer of every member: one task step per
chunk however many subscribers follow the run, instead of one per subscriber.

A member whose connection's send buffer is full when a chunk comes is released from the
feed with nothing lost (its last delivered ``seq`` says where it stands): its own pump
takes over from the next chunk, with the usual back-pressure and ``lag_timeout``, and
joins again once it catches up. The feed ends at the run's terminal ``workflow-finish``
(every member gets its ``end``), when its last member leaves, or on an error (the members
are released: their pumps meet the error themselves and report it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal, Protocol

import attrs
import trio

from .._broadcast import ends_at_terminal_finish
from .._run import Run
from ._sources import FrameCache, StoredMarks, follow_run

#: Why a member left its feed: the subscription ended (its ``end`` was sent) or its own
#: pump must take over from its last delivered ``seq``.
Outcome = Literal["ended", "released"]


class Follower(Protocol):
    """What a feed asks of a member's connection (``Connection``)."""

    def take_live(self, sub: Any, seq: int, frame: bytes, terminal: bool) -> bool: ...


@attrs.define(eq=False)
class Member:
    follower: Follower
    sub: Any  # the connection's _Subscription (has .delivered)
    left: trio.Event = attrs.field(factory=trio.Event)
    outcome: Outcome = "released"


class LiveFeed:
    """The shared live pump of one run (see the module's docstring)."""

    def __init__(
        self,
        run: Run,
        next_seq: int,
        *,
        gate: bool,
        frames: FrameCache,
        marks: StoredMarks,
        on_exit: Callable[[LiveFeed], None],
    ) -> None:
        self.run = run
        self.run_id = run.run_id
        #: The seq of the next chunk the feed hands out (a member joins when its own next
        #: chunk is this one).
        self.next_seq = next_seq
        self.members: dict[int, Member] = {}
        self.closed = False
        self._gate = gate
        self._frames = frames
        self._marks = marks
        self._stored = 0
        self._scope = trio.CancelScope()
        self._on_exit = on_exit

    def join(self, follower: Follower, sub: Any) -> Member | None:
        """Add a subscription whose next chunk is the feed's next one (None: it is not)."""
        if self.closed or sub.delivered + 1 != self.next_seq:
            return None
        member = Member(follower, sub)
        self.members[id(sub)] = member
        return member

    def leave(self, member: Member) -> None:
        """A member's pump stops following (unsubscribed, connection gone)."""
        if self.members.get(id(member.sub)) is member:
            del self.members[id(member.sub)]
        member.left.set()
        if not self.members:
            self._scope.cancel()  # nobody follows: stop reading the log

    async def run_feed(self) -> None:  # noqa: ASYNC910 - the cursor checkpoints
        """Hand out the run's chunks until its terminal chunk or its last member leaves.
        Cancelling it releases every member (their pumps take over)."""
        chunks = follow_run(self.run, self.next_seq)
        if self._gate:
            self._marks.acquire(self.run_id)
        try:
            with self._scope, contextlib.suppress(Exception):
                # An error (a chunk that is not strict JSON, storage failing, the run's
                # execution here dying) releases the members: each pump then meets it on
                # its own cursor and reports it.
                async for chunk in chunks:
                    seq = chunk.seq
                    if self._gate and seq > self._stored:
                        self._stored = await self._marks.wait(self.run_id, seq, self.run)
                    frame = self._frames.frame(chunk)  # ValueError: released, pumps report
                    terminal = ends_at_terminal_finish(chunk)
                    self._hand_out(seq, frame, terminal)
                    self.next_seq = seq + 1
                    if terminal or not self.members:
                        return
        finally:
            self.closed = True
            for member in list(self.members.values()):
                self._release(member, "released")
            chunks.close()
            if self._gate:
                self._marks.release(self.run_id)
            self._on_exit(self)

    def _hand_out(self, seq: int, frame: bytes, terminal: bool) -> None:
        for member in list(self.members.values()):
            if not member.follower.take_live(member.sub, seq, frame, terminal):
                self._release(member, "released")
            elif terminal:
                self._release(member, "ended")

    def _release(self, member: Member, outcome: Outcome) -> None:
        self.members.pop(id(member.sub), None)
        member.outcome = outcome
        member.left.set()
