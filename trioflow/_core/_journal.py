"""The step records of an execution and which of them changed since its last write.

Durable storage stores only the records that changed (``save_snapshot(...,
changed_steps=...)``), so a write costs the same however many steps settled before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Record = dict[str, Any]


class StepJournal(dict[str, Record]):
    """A dict of stored step records (qualified key -> record) that remembers the keys
    assigned or deleted since the last :meth:`take_changed`.

    Records are replaced, never mutated in place (an in-place change would go unnoticed).
    A key deleted and assigned again before the next write moves to the end of the dict;
    a backend keeps rows in the order they were first written, so such a move makes the
    next write a whole one (rare: a nested workflow run afresh in a loop).
    """

    __slots__ = ("_changed", "_removed", "_whole")

    def __init__(self, steps: Mapping[str, Record] | Iterable[tuple[str, Record]] = ()) -> None:
        super().__init__(steps)
        # Insertion-ordered: new keys are listed in the order the dict holds them.
        self._changed: dict[str, None] = {}
        self._removed: set[str] = set()
        # What storage holds is not known yet: the first write stores every record.
        self._whole = True

    def __setitem__(self, key: str, value: Record) -> None:
        if self._removed and key in self._removed and not dict.__contains__(self, key):
            self._whole = True
        dict.__setitem__(self, key, value)
        self._changed[key] = None

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self._changed[key] = None
        self._removed.add(key)

    def pop(self, key: str, *default: Any) -> Any:
        if dict.__contains__(self, key):
            value = dict.__getitem__(self, key)
            del self[key]
            return value
        return dict.pop(self, key, *default)

    def setdefault(self, key: str, default: Record) -> Record:
        if not dict.__contains__(self, key):
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> StepJournal:  # type: ignore[override,misc]
        self.update(other)
        return self

    def popitem(self) -> tuple[str, Record]:
        key, value = dict.popitem(self)
        self._changed[key] = None
        self._removed.add(key)
        return key, value

    def clear(self) -> None:
        for key in list(self):
            del self[key]

    def take_changed(self) -> list[str] | None:
        """The keys changed since the last call, in the order they changed (new keys in
        the dict's order), or None when the next write must store every record; they
        count as written from now on (see :meth:`write_failed`)."""
        changed = None if self._whole else list(self._changed)
        self._changed = {}
        self._removed = set()
        self._whole = False
        return changed

    def write_failed(self) -> None:
        """The write of the last :meth:`take_changed` keys stored nothing: the next write
        stores every record."""
        self._whole = True
