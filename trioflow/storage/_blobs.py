"""Large values stored once (SQLite): a value of a step record, a chunk's payload
or a run row whose JSON text is at least :data:`THRESHOLD` characters is kept in the
``blobs`` table, keyed by the SHA-256 of its text, and the row holding it stores ``null``
in its place plus a ``blobs`` column saying where each one goes back.

Why: one large step output reaches storage five times (the step's record, its
``workflow-step-result`` chunk, the next step's ``workflow-step-start`` chunk, that
step's result chunk and its record, as the next step's input): a 50 MB output then a few
steps grew the file by ~300 MB. Kept once, it grows it by ~50 MB (issue 15).

Which values may move out: the top-level values of a row's JSON object, and for a chunk
the top-level values of its ``payload`` object (its ``output`` and ``payload``). A row
whose whole text is shorter than :data:`THRESHOLD` is written exactly as before, with no
extra encoding; only a large one is encoded again value by value.

A row naming blobs starts with a ``"$blobs"`` entry (a key trioflow never uses at the top
of a record, a chunk or a run row): a JSON list of ``[path, hash]``, ``path`` being the
keys leading to the value. So rows without large values are unchanged, and reading one
costs a prefix test. The tables are created by the first write that needs them; the
schema version stays 2 (trioflow before this module would read such a value as
``null``: the schema-v2 files it wrote hold no ``$blobs`` rows). A blob is shared by every row (of any run) naming its hash;
``blob_refs`` says which runs use which blob, so deleting a run deletes the blobs no other
run uses.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from typing import Any, Final

import attrs

from .._core._errors import StorageError
from ._json import dumps_strict, loads_strict

__all__ = ["MARK", "THRESHOLD", "Split", "dumps_split", "has_blobs", "restore"]

#: Values whose JSON text has at least this many characters are stored once, as blobs.
THRESHOLD: Final = 64 * 1024
#: Objects whose own top-level values are looked at too.
_NESTED: Final = frozenset({"payload"})

MARK: Final = '{"$blobs":'
_CREATE = (
    "CREATE TABLE IF NOT EXISTS blobs (hash TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS blob_refs (run_id TEXT NOT NULL, hash TEXT NOT NULL, "
    "PRIMARY KEY (run_id, hash)) WITHOUT ROWID",
)


@attrs.frozen
class Split:
    """A row's JSON text with its large values moved out."""

    #: The row's text (large values replaced by ``null``, their places under ``$blobs``).
    text: str
    #: ``(hash, text)`` of each value moved out.
    blobs: list[tuple[str, str]]

    @property
    def size(self) -> int:
        """Characters of text this row writes (blobs included)."""
        return len(self.text) + sum(len(text) for _, text in self.blobs)


def dumps_split(
    value: Any, what: str, text: str | None = None, *, chunk: bool = False
) -> Split:
    """``value`` as strict JSON (StorageError naming ``what`` when it is not), its large
    values moved out. ``text``: ``dumps_strict(value)`` when the caller has it already.
    ``chunk``: ``value`` is a chunk's wire form, whose ``payload`` object is trioflow's
    (its values move out one by one); elsewhere a ``payload`` is a user's value, moved
    whole as in the chunks that carry it, so both name the same blob."""
    if text is None:
        text = dumps_strict(value, what)
    if len(text) < THRESHOLD or not isinstance(value, dict):
        return Split(text, [])
    paths: list[list[Any]] = []
    blobs: dict[str, str] = {}
    text = _encode(value, [], paths, blobs, what, nested=chunk)
    if not paths:
        return Split(text, [])
    places = json.dumps(paths, separators=(",", ":"), ensure_ascii=False)
    rest = text[1:]
    return Split(f"{MARK}{places}{',' if rest != '}' else ''}{rest}", list(blobs.items()))


def _encode(
    value: dict[Any, Any],
    at: list[str],
    paths: list[list[Any]],
    blobs: dict[str, str],
    what: str,
    *,
    nested: bool,
) -> str:
    # The same text json.dumps(separators=(",", ":"), ensure_ascii=False) gives, assembled
    # value by value (keys are str: dumps_strict accepted the whole).
    parts = []
    for key, item in value.items():
        if nested and key in _NESTED and isinstance(item, dict):
            text = _encode(item, [*at, key], paths, blobs, what, nested=False)
        else:
            text = dumps_strict(item, what)
            if len(text) >= THRESHOLD:
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
                blobs[digest] = text
                paths.append([[*at, key], digest])
                text = "null"
        parts.append(f"{json.dumps(key, ensure_ascii=False)}:{text}")
    return "{" + ",".join(parts) + "}"


def store(conn: sqlite3.Connection, run_id: str, blobs: Iterable[tuple[str, str]]) -> None:
    """Insert the blobs (kept when already stored) and note that the run uses them."""
    for statement in _CREATE:
        conn.execute(statement)
    for digest, text in blobs:
        conn.execute(
            "INSERT INTO blobs (hash, value) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING",
            (digest, text),
        )
        conn.execute(
            "INSERT INTO blob_refs (run_id, hash) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (run_id, digest),
        )


def delete_unused(conn: sqlite3.Connection, run_id: str) -> None:
    """Forget that the run uses its blobs; delete the ones no other run uses."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'blob_refs'").fetchall():
        return
    hashes = [
        row[0]
        for row in conn.execute("SELECT hash FROM blob_refs WHERE run_id = ?", (run_id,))
    ]
    if not hashes:
        return
    conn.execute("DELETE FROM blob_refs WHERE run_id = ?", (run_id,))
    for digest in hashes:
        # blob_refs is keyed (run_id, hash): looking a hash up scans; runs sharing blobs
        # are rare and a run has few, so no second index is kept up to date per write.
        if conn.execute("SELECT 1 FROM blob_refs WHERE hash = ? LIMIT 1", (digest,)).fetchall():
            continue
        conn.execute("DELETE FROM blobs WHERE hash = ?", (digest,))


def has_blobs(text: object) -> bool:
    """Whether the stored row ``text`` names blobs (cheap: its first characters)."""
    return isinstance(text, str) and text.startswith(MARK)


def restore(conn: sqlite3.Connection, text: object, what: str) -> Any:
    """The value stored as row ``text`` (see :func:`has_blobs`), its large values put
    back; StorageError naming ``what`` when the row or a blob is damaged or missing."""
    data = loads_strict(text, what)
    places = data.pop("$blobs", None) if isinstance(data, dict) else None
    if not isinstance(places, list):
        raise StorageError(f"{what}: its $blobs entry is not a JSON list; the row is damaged")
    for place in places:
        _put_back(conn, data, place, what)
    return data


def _put_back(conn: sqlite3.Connection, data: Any, place: object, what: str) -> None:
    if not (
        isinstance(place, list)
        and len(place) == 2
        and isinstance(place[0], list)
        and place[0]
        and all(isinstance(key, str) for key in place[0])
        and isinstance(place[1], str)
    ):
        raise StorageError(f"{what}: its blobs column holds {place!r}, not [path, hash]")
    path, digest = place
    target = data
    for key in path[:-1]:
        target = target.get(key) if isinstance(target, dict) else None
    if not isinstance(target, dict) or path[-1] not in target:
        raise StorageError(f"{what}: no value at {path!r} for blob {digest}; the row is damaged")
    rows = conn.execute("SELECT value FROM blobs WHERE hash = ?", (digest,)).fetchall()
    if not rows:
        raise StorageError(f"{what}: blob {digest} (at {path!r}) is missing from the database")
    target[path[-1]] = loads_strict(rows[0][0], f"{what}, blob {digest},")
