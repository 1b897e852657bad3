"""The step records and execution path a write hands to storage, without copying them.

A snapshot handed to storage must never change afterwards (MemoryStorage keeps it,
FaultyStorage records it as acknowledged), so each write used to copy every step record
and the whole ``step_execution_path``: the one cost of a durable write that still grew
with the run. :class:`Handout` instead keeps a few *replicas*: plain dicts (and lists)
that are brought up to date by replaying the changes of the writes since they were last
handed out, exactly as a storage applies ``changed_steps`` (so they hold the journal's
records in the journal's order). A replica is reused only when nothing but the handout
refers to it any more (CPython's reference count says so: storage dropped the snapshot,
as SQLite and PostgreSQL do once it is written); one still referenced is never touched
again. Otherwise, and where reference counts do not exist, a write copies as before.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

Record = dict[str, Any]

#: A step record deleted by a write (its key no longer in the journal).
_GONE: Final[Any] = object()

_getrefcount = getattr(sys, "getrefcount", None)

#: Writes a replica may fall behind before it leaves the pool.
MAX_LAG: Final = 32


class _Replica:
    __slots__ = ("path", "steps", "version")

    def __init__(self, steps: Record, path: list[str], version: int) -> None:
        self.steps = steps
        self.path = path
        #: The number of writes whose changes ``steps`` holds.
        self.version = version


def _unshared_count() -> int:
    """What getrefcount says, inside :meth:`Handout._free`, of a replica's dict that only
    the replica refers to (measured the same way, as interpreters count differently)."""
    assert _getrefcount is not None
    replicas = [_Replica({}, [], 0)]
    replica = replicas[0]
    return int(_getrefcount(replica.steps))


#: References to a replica's dict (or list) that nobody else holds, as counted in _free.
_UNSHARED: Final = _unshared_count() if _getrefcount is not None else 0


class Handout:
    """Dicts of step records and execution-path lists, one pair per write, equal to the
    journal and the path at that write and never changed once handed out.

    Call :meth:`take` at every write with the keys that write names (None: a whole write,
    after which earlier replicas are not reused). The path must only grow (an execution
    appends to it); a replica whose path is not a prefix of it is not reused.
    """

    __slots__ = ("_first", "_max", "_replicas", "_windows")

    def __init__(self, *, max_replicas: int = 3) -> None:
        self._max = max_replicas
        self._replicas: list[_Replica] = []
        #: Per write since the oldest replica's version: (key, record or _GONE) in order.
        self._windows: list[list[tuple[str, Any]]] = []
        #: The version the first entry of ``_windows`` leads to, minus one.
        self._first = 0

    @property
    def version(self) -> int:
        return self._first + len(self._windows)

    def take(
        self, steps: Mapping[str, Record], changed: Sequence[str] | None, path: list[str]
    ) -> tuple[Record, list[str]]:
        """The step records and path to hand to this write (``changed``: the keys it
        names, as ``StepJournal.take_changed`` returned them)."""
        if changed is None or _getrefcount is None:
            # Storage is told to store every record: start the replicas over.
            self._replicas.clear()
            self._windows.clear()
            self._first += 1
            return self._fresh(steps, path)
        self._windows.append([(key, steps.get(key, _GONE)) for key in changed])
        replica = self._free(len(steps))
        if replica is None:
            return self._fresh(steps, path)
        self._replay(replica)
        if not self._extend(replica.path, path):
            replica.path = list(path)
        self._trim()
        return replica.steps, replica.path

    def _fresh(self, steps: Mapping[str, Record], path: list[str]) -> tuple[Record, list[str]]:
        replica = _Replica(dict(steps), list(path), self.version)
        if _getrefcount is not None:
            if len(self._replicas) >= self._max:
                self._replicas.remove(min(self._replicas, key=lambda r: r.version))
            self._replicas.append(replica)
            self._trim()
        return replica.steps, replica.path

    def _free(self, size: int) -> _Replica | None:
        # The most recent replica nobody holds, unless replaying into it would cost more
        # than a copy. Indexing (not enumerate, whose reused tuple holds a reference).
        assert _getrefcount is not None
        replicas = self._replicas
        best: _Replica | None = None
        for i in range(len(replicas)):
            replica = replicas[i]
            if _getrefcount(replica.steps) > _UNSHARED or _getrefcount(replica.path) > _UNSHARED:
                continue
            if best is None or replica.version > best.version:
                best = replica
        if best is None:
            return None
        start = best.version - self._first
        if len(self._windows) - start > 1:
            pending = sum(len(window) for window in self._windows[start:])
            if pending > size + 16:
                self._replicas.remove(best)
                return None
        return best

    def _replay(self, replica: _Replica) -> None:
        steps = replica.steps
        for window in self._windows[replica.version - self._first :]:
            for key, record in window:
                if record is _GONE:
                    steps.pop(key, None)
                else:
                    steps[key] = record
        replica.version = self.version

    @staticmethod
    def _extend(stale: list[str], path: list[str]) -> bool:
        # An execution only appends to its path: a stale copy is a prefix of it.
        have = len(stale)
        if have > len(path) or (have and stale[-1] != path[have - 1]):
            return False
        if have < len(path):
            stale.extend(path[have:])
        return True

    def _trim(self) -> None:
        # Windows every replica already holds are not needed any more. A replica held
        # elsewhere (a snapshot storage keeps) for more than MAX_LAG writes leaves the
        # pool, so that it does not pin the records of every write since.
        version = self._first + len(self._windows)
        limit = version - MAX_LAG
        oldest = version
        stale = False
        for replica in self._replicas:
            if replica.version < limit:
                stale = True
            elif replica.version < oldest:
                oldest = replica.version
        if stale:
            self._replicas = [r for r in self._replicas if r.version >= limit]
        drop = oldest - self._first
        if drop > 0:
            del self._windows[:drop]
            self._first = oldest
