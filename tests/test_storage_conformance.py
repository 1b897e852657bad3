"""Storage conformance: one suite every backend must pass (SPEC §4, issue 4).

The ``storage`` fixture is parametrised over the backends (``memory``, ``sqlite-file``,
``postgres``: a fresh database on the server of the ``postgres_db`` fixture). Covered: round trips of every snapshot field and every chunk type
(values produced by real workflow runs, compared with what was handed to the storage,
which is what MemoryStorage returns), the compare-and-set of ``save_snapshot``,
``create_run`` insert-if-absent, listing with filters, order and paging, ``last_seq``,
``read_events`` paging, deletion, cancellation, concurrent writers, and engine-level
conformance (the same workflows give equal results and event logs on every backend).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._core import _chunks as ch
from trioflow._core._model import ResumeLabel, RunSnapshot
from trioflow.storage import MemoryStorage, Storage
from trioflow.storage.sqlite import SqliteStorage

S = tf.RunStatus

#: Every backend the suite runs against.
BACKENDS = ["memory", "sqlite-file", "postgres"]


async def open_backend(
    kind: str, tmp_path: Path, name: str = "runs", *, postgres_dsn: str | None = None
) -> Storage:
    """A fresh, empty storage of the given kind."""
    if kind == "memory":
        return MemoryStorage()
    if kind == "sqlite-file":
        store = SqliteStorage(tmp_path / f"{name}.db")
        await store.open()
        return store
    if kind == "postgres":
        assert postgres_dsn is not None
        pg = tf.PostgresStorage(postgres_dsn)
        await pg.open()
        return pg
    raise AssertionError(f"unknown backend {kind!r}")


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    dsn = request.getfixturevalue("postgres_db") if request.param == "postgres" else None
    store = await open_backend(request.param, tmp_path, postgres_dsn=dsn)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


# --------------------------------------------------------------------------- protocol


async def test_backend_implements_the_protocol(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert isinstance(storage.durable, bool)


# --------------------------------------------------------------------------- helpers


_ids = itertools.count(1)


def snap(
    run_id: str | None = None,
    *,
    workflow_id: str = "wf",
    status: tf.RunStatus = S.PENDING,
    resource_id: str | None = None,
    created_at: int = 1_000,
    **fields: Any,
) -> RunSnapshot:
    return RunSnapshot(
        run_id=run_id or f"run-{next(_ids)}",
        workflow_id=workflow_id,
        resource_id=resource_id,
        status=status,
        created_at=created_at,
        updated_at=fields.pop("updated_at", created_at),
        **fields,
    )


def out(run_id: str, seq: int, value: Any = None) -> ch.WorkflowStepOutput:
    return ch.WorkflowStepOutput(
        run_id=run_id,
        seq=seq,
        payload=ch.StepOutputPayload(output={"n": seq} if value is None else value, step_name="s"),
    )


def outs(run_id: str, first: int, count: int) -> list[ch.Chunk]:
    return [out(run_id, seq) for seq in range(first, first + count)]


class Recording:
    """A storage wrapper that remembers what was handed to the backend: the last snapshot
    stored per run (what MemoryStorage would return) and every chunk written."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.durable = inner.durable
        self.snapshots: dict[str, RunSnapshot] = {}
        self.events: dict[str, list[ch.Chunk]] = {}

    async def create_run(self, snapshot: RunSnapshot) -> bool:
        ok = await self.inner.create_run(snapshot)
        if ok:
            self.snapshots[snapshot.run_id] = snapshot
            self.events[snapshot.run_id] = []
        return ok

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        return await self.inner.load_snapshot(run_id)

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[ch.Chunk] = (),
        *,
        expected_status: tf.RunStatus | Sequence[tf.RunStatus] | None = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        ok = await self.inner.save_snapshot(
            snapshot, events, expected_status=expected_status, changed_steps=changed_steps
        )
        if ok:
            self.snapshots[snapshot.run_id] = snapshot
            self.events.setdefault(snapshot.run_id, []).extend(events)
        return ok

    async def append_events(self, run_id: str, events: Sequence[ch.Chunk]) -> None:
        await self.inner.append_events(run_id, events)
        if run_id in self.snapshots:
            self.events[run_id].extend(events)

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[ch.Chunk]:
        return await self.inner.read_events(run_id, from_seq=from_seq, limit=limit)

    async def last_seq(self, run_id: str) -> int:
        return await self.inner.last_seq(run_id)

    async def list_runs(self, **kwargs: Any) -> list[tf.RunInfo]:
        return await self.inner.list_runs(**kwargs)

    async def delete_run(self, run_id: str) -> bool:
        return await self.inner.delete_run(run_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Boom(Exception):
    """A custom error with public attributes."""

    def __init__(self, message: str, code: int, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


@attrs.frozen
class Approval:
    approved: bool
    by: str = "unknown"


def rich_nested_workflow() -> Any:
    """first -> foreach(item) -> map -> nested(inner: writes, custom data, state, usage,
    request context, suspends with a label) -> after (reads earlier results)."""

    async def first(ctx: tf.StepContext) -> list[int]:
        return [1, 2, 3]

    async def item(ctx: tf.StepContext) -> int:
        return int(ctx.input_data) * 10

    async def inner(ctx: tf.StepContext) -> Any:
        await ctx.writer.write({"note": "héllo ✓", "n": 1})
        await ctx.writer.custom("data-progress", {"pct": 50, "items": [1, None, 2.5]})
        ctx.set_state({"inner_seen": True, "nested": {"k": [1, 2]}})
        ctx.record_usage(
            tf.Usage(
                input_tokens=3,
                output_tokens=4,
                total_tokens=7,
                reasoning_tokens=1,
                cached_input_tokens=2,
                cache_creation_input_tokens=5,
            )
        )
        ctx.request_context["inner"] = {"deep": [1, 2]}
        if ctx.resume_data is None:
            return await ctx.suspend({"why": "approve?", "amount": 12.5}, resume_label="approve")
        return {"approved": ctx.resume_data.approved, "by": ctx.resume_data.by}

    async def after(ctx: tf.StepContext) -> dict[str, Any]:
        return {"first": ctx.get_step_result("first"), "got": ctx.input_data}

    inner_step = tf.create_step(id="inner", execute=inner, resume_schema=Approval)
    nested = tf.create_workflow(id="nested").then(inner_step).commit()
    return (
        tf.create_workflow(id="rich")
        .then(tf.create_step(id="first", execute=first))
        .foreach(tf.create_step(id="item", execute=item), concurrency=1)
        .map(lambda ctx: {"values": ctx.input_data})
        .then(nested)
        .then(tf.create_step(id="after", execute=after))
        .commit()
    )


def one_step(wf_id: str, execute: Any, **wf_options: Any) -> Any:
    return (
        tf.create_workflow(id=wf_id, **wf_options)
        .then(tf.create_step(id="body", execute=execute))
        .commit()
    )


@attrs.define
class Scenarios:
    """Runs of real workflows, by name -> run id."""

    recording: Recording
    runs: dict[str, str] = attrs.field(factory=dict)
    results: dict[str, tf.WorkflowResult] = attrs.field(factory=dict)


async def run_scenarios(store: Storage) -> Scenarios:
    """Drive workflows into every status and chunk type, through a Recording of
    ``store``. Uses no time (the sleep entry sleeps 0 s)."""
    rec = Recording(store)
    sc = Scenarios(rec)
    async with tf.open_runtime(storage=rec) as rt:
        # suspended inside a nested workflow, with label, state, context and usage
        rich = rich_nested_workflow()
        run = await rich.create_run(resource_id="user-1")
        sc.results["suspended"] = await run.start(
            input_data={"order": "o-1"},
            initial_state={"k": 1},
            request_context={"tenant": "t1"},
            tracing_options={"trace_id": "abc123"},
        )
        sc.runs["suspended"] = run.run_id
        # the same workflow resumed to success
        run = await rich.create_run(resource_id="user-2")
        await run.start(input_data={"order": "o-2"}, request_context={"tenant": "t2"})
        sc.results["success"] = await run.resume(
            resume_data={"approved": True, "by": "ann"}, label="approve"
        )
        sc.runs["success"] = run.run_id

        # failed with custom attributes and a cause chain
        async def bad(ctx: tf.StepContext) -> None:
            try:
                raise KeyError("missing")
            except KeyError as exc:
                raise Boom("outer failed", 42, {"retry": False, "tags": ["a"]}) from exc

        run = await one_step("failing", bad).create_run()
        sc.results["failed"] = await run.start(input_data=1)
        sc.runs["failed"] = run.run_id

        # tripwire
        async def trip(ctx: tf.StepContext) -> None:
            raise tf.TripwireError("blocked", retry=True, metadata={"rule": "pii"})

        run = await one_step("tripping", trip).create_run()
        sc.results["tripwire"] = await run.start(input_data=1)
        sc.runs["tripwire"] = run.run_id

        # per_step: paused after one entry
        async def plus(ctx: tf.StepContext) -> int:
            return int(ctx.input_data) + 1

        stepwise = (
            tf.create_workflow(id="stepwise")
            .then(tf.create_step(id="a", execute=plus))
            .sleep(0)
            .then(tf.create_step(id="b", execute=plus))
            .commit()
        )
        run = await stepwise.create_run()
        sc.results["paused"] = await run.start(input_data=1, per_step=True)
        sc.runs["paused"] = run.run_id
        # a sleep entry (waiting chunk) run to success
        run = await stepwise.create_run()
        sc.results["slept"] = await run.start(input_data=1)
        sc.runs["slept"] = run.run_id

        # canceled while its step runs
        entered = trio.Event()

        async def hang(ctx: tf.StepContext) -> None:
            entered.set()
            await trio.sleep_forever()

        run = await one_step("hanging", hang).create_run()
        async with trio.open_nursery() as nursery:

            async def start() -> None:
                sc.results["canceled"] = await run.start(input_data=1)

            nursery.start_soon(start)
            await entered.wait()
            await run.cancel()
        sc.runs["canceled"] = run.run_id
        # a pending run that never started
        run = await one_step("idle", plus).create_run(resource_id="user-3")
        sc.runs["pending"] = run.run_id
        assert rt.storage is rec

    # interrupted: the runtime stops while a resume executes (left ``running``)
    resumed = trio.Event()

    async def wait_forever_on_resume(ctx: tf.StepContext) -> None:
        if ctx.resume_data is None:
            return await ctx.suspend({"why": "wait"})
        resumed.set()
        await trio.sleep_forever()

    async with tf.open_runtime(storage=rec):
        run = await one_step("interrupted", wait_forever_on_resume).create_run()
        await run.start(input_data=1)
        async with trio.open_nursery() as nursery:

            async def resume() -> None:
                await run.resume(resume_data={"go": True})

            nursery.start_soon(resume)
            await resumed.wait()
            nursery.cancel_scope.cancel()
        sc.runs["interrupted"] = run.run_id
    return sc


def wire(chunks: Sequence[ch.Chunk]) -> list[dict[str, Any]]:
    return [tf.to_wire(c) for c in chunks]


# --------------------------------------------------------------------------- snapshots


async def test_every_snapshot_field_round_trips(storage: Storage) -> None:
    original = snap(
        "full",
        workflow_id="wf-ü",
        status=S.SUSPENDED,
        resource_id="res-1",
        created_at=1_700_000_000_123,
        updated_at=1_700_000_000_456,
        input={"order": {"id": "o-1", "items": [1, 2.5, None, True, "ß"]}},
        state={"count": 3, "nested": {"deep": [{"x": 1}]}, "flag": False},
        steps={
            "a": {"status": "success", "output": [1, {"b": None}], "started_at": 1, "ended_at": 2},
            "nested.inner": {"status": "suspended", "suspend_payload": {"why": "ask"}},
            "loop[2].inner": {"status": "failed", "error": {"message": "x", "name": "E"}},
        },
        suspended_paths={"nested": [3], "par": [4, 1]},
        resume_labels={
            "approve": ResumeLabel(path=["nested", "inner"]),
            "third": ResumeLabel(path=["loop"], foreach_index=2),
        },
        request_context={"tenant": "t1", "user": {"id": 7, "roles": ["a", "b"]}},
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        result={"total": 10**15, "ratio": 0.1},
        error=tf.SerializedError(
            message="outer",
            name="Boom",
            extra={"code": 42, "info": {"a": [1]}},
            cause=tf.SerializedError(message="inner", name="KeyError"),
        ),
        tripwire=tf.TripwireInfo(reason="blocked", retry=True, metadata={"r": 1}, step_id="a"),
        step_execution_path=["a", "map_1", "nested"],
        active_entry=3,
        active_input={"values": [10, 20]},
        resume={"path": ["nested", "inner"], "data": {"ok": True}, "foreach_index": None},
        last_seq=42,
        usage=tf.Usage(
            input_tokens=1,
            output_tokens=2,
            total_tokens=3,
            reasoning_tokens=4,
            cached_input_tokens=5,
            cache_creation_input_tokens=6,
        ),
    )
    defaults = snap("defaults-only")
    assert all(
        getattr(original, f.name) != getattr(defaults, f.name) for f in attrs.fields(RunSnapshot)
    ), "the snapshot under test must set every field"
    assert await storage.create_run(original)
    loaded = await storage.load_snapshot("full")
    assert loaded == original
    assert loaded is not None
    assert type(loaded.status) is tf.RunStatus  # the enum member, not only an equal str
    changed = attrs.evolve(original, status=S.RUNNING, result=None, error=None, tripwire=None)
    assert await storage.save_snapshot(changed)
    assert await storage.load_snapshot("full") == changed


async def test_snapshots_of_real_runs_round_trip(storage: Storage) -> None:
    sc = await run_scenarios(storage)
    for name, run_id in sc.runs.items():
        loaded = await storage.load_snapshot(run_id)
        assert loaded == sc.recording.snapshots[run_id], name


async def test_real_runs_set_every_snapshot_field(storage: Storage) -> None:
    # Guards the round-trip test above: between them, the scenarios give every
    # RunSnapshot field a non-default value.
    sc = await run_scenarios(storage)
    stored = [await storage.load_snapshot(run_id) for run_id in sc.runs.values()]
    blank = snap("blank")
    unset = [
        f.name
        for f in attrs.fields(RunSnapshot)
        if all(getattr(s, f.name) == getattr(blank, f.name) for s in stored)
    ]
    assert unset == []


async def test_stored_error_keeps_attributes_and_cause_chain(storage: Storage) -> None:
    sc = await run_scenarios(storage)
    loaded = await storage.load_snapshot(sc.runs["failed"])
    assert loaded is not None
    assert loaded.status == "failed"
    err = loaded.error
    assert isinstance(err, tf.SerializedError)
    assert (err.name, err.message) == ("Boom", "outer failed")
    assert err.extra == {"code": 42, "details": {"retry": False, "tags": ["a"]}}
    assert err.code == 42
    assert err.cause is not None
    assert err.cause.name == "KeyError"


async def test_stored_suspended_run_keeps_context_state_labels_usage(storage: Storage) -> None:
    sc = await run_scenarios(storage)
    loaded = await storage.load_snapshot(sc.runs["suspended"])
    assert loaded is not None
    assert loaded.status is S.SUSPENDED
    assert loaded.resource_id == "user-1"
    assert loaded.input == {"order": "o-1"}
    assert loaded.state == {"k": 1, "inner_seen": True, "nested": {"k": [1, 2]}}
    assert loaded.request_context == {"tenant": "t1", "inner": {"deep": [1, 2]}}
    assert loaded.trace_id == "abc123"
    assert loaded.resume_labels == {"approve": ResumeLabel(path=["nested", "inner"])}
    assert loaded.usage == tf.Usage(
        input_tokens=3,
        output_tokens=4,
        total_tokens=7,
        reasoning_tokens=1,
        cached_input_tokens=2,
        cache_creation_input_tokens=5,
    )
    assert loaded.steps["item"]["output"] == [10, 20, 30]
    assert loaded.steps["nested.inner"]["suspend_payload"] == {"why": "approve?", "amount": 12.5}


# --------------------------------------------------------------------------- chunks


def one_of_each_chunk(run_id: str) -> list[ch.Chunk]:
    """Every chunk class with every optional field set, seq 1..11."""
    err = tf.SerializedError(
        message="bad",
        name="Boom",
        extra={"code": 1},
        cause=tf.SerializedError(message="c", name="E"),
    )
    trip = tf.TripwireInfo(reason="r", retry=True, metadata={"m": 1}, step_id="s")
    usage = tf.Usage(input_tokens=1, output_tokens=2, total_tokens=3, reasoning_tokens=4)
    chunks: list[Any] = [
        ch.WorkflowStart(run_id=run_id, payload=ch.WorkflowStartPayload(workflow_id="wf")),
        ch.WorkflowStepStart(
            run_id=run_id,
            payload=ch.StepStartPayload(
                id="s",
                step_name="s",
                step_call_id="c-1",
                payload={"in": [1]},
                started_at=5,
                resume_payload={"ok": True},
                resumed_at=6,
                metadata={"m": {"snake_case_key": 1}},
            ),
        ),
        ch.WorkflowStepOutput(
            run_id=run_id,
            payload=ch.StepOutputPayload(output={"snake_key": "ü", "n": None}, step_name="s"),
        ),
        ch.WorkflowStepProgress(
            run_id=run_id,
            payload=ch.StepProgressPayload(
                id="s",
                step_name="s",
                completed_count=1,
                total_count=3,
                current_index=0,
                iteration_status="success",
                iteration_output=[1, 2],
            ),
        ),
        ch.WorkflowStepWaiting(
            run_id=run_id,
            payload=ch.StepWaitingPayload(id="s", step_name="s", payload=3, started_at=7),
        ),
        ch.WorkflowStepSuspended(
            run_id=run_id,
            payload=ch.StepSuspendedPayload(
                id="s",
                step_name="s",
                suspend_payload={"why": "x"},
                suspend_output={"partial": 1},
                suspended_at=8,
                payload={"in": 1},
                started_at=7,
                step_call_id="c-2",
            ),
        ),
        ch.WorkflowStepResult(
            run_id=run_id,
            payload=ch.StepResultPayload(
                id="s",
                step_name="s",
                status="failed",
                output={"o": 1},
                payload={"in": 1},
                error=err,
                started_at=1,
                ended_at=2,
                resume_payload={"r": 1},
                resumed_at=3,
                step_call_id="c-3",
                tripwire=trip,
                metadata={"k": "v"},
            ),
        ),
        ch.WorkflowPaused(run_id=run_id),
        ch.WorkflowCanceled(run_id=run_id),
        ch.WorkflowFinish(
            run_id=run_id,
            payload=ch.WorkflowFinishPayload(
                workflow_status="failed", usage=usage, metadata={"error": {"m": 1}}, tripwire=trip
            ),
        ),
        ch.DataChunk(type="data-custom", run_id=run_id, data={"any": ["json", 1, None]}),
    ]
    return [attrs.evolve(c, seq=i) for i, c in enumerate(chunks, start=1)]


async def test_every_chunk_class_round_trips(storage: Storage) -> None:
    await storage.create_run(snap("r"))
    chunks = one_of_each_chunk("r")
    assert len({type(c) for c in chunks}) == len(ch.CHUNK_CLASSES) + 1
    await storage.append_events("r", chunks[:4])
    assert await storage.save_snapshot(snap("r", status=S.RUNNING), chunks[4:])
    assert list(await storage.read_events("r")) == chunks


async def test_chunks_of_real_runs_round_trip(storage: Storage) -> None:
    sc = await run_scenarios(storage)
    for name, run_id in sc.runs.items():
        stored = list(await storage.read_events(run_id))
        assert stored == sc.recording.events[run_id], name
        assert [c.seq for c in stored] == list(range(1, len(stored) + 1)), name


async def test_real_runs_produce_every_chunk_type(storage: Storage) -> None:
    sc = await run_scenarios(storage)
    types: set[str] = set()
    for run_id in sc.runs.values():
        types |= {c.type for c in await storage.read_events(run_id)}
    assert {t for t in types if not t.startswith("data-")} == set(ch.CHUNK_CLASSES)
    assert "data-progress" in types


# --------------------------------------------------------------------------- create_run


async def test_create_run_inserts_only_when_absent(storage: Storage) -> None:
    first = snap("dup", state={"v": 1})
    assert await storage.create_run(first) is True
    assert await storage.create_run(snap("dup", state={"v": 2}, workflow_id="other")) is False
    assert await storage.load_snapshot("dup") == first
    assert len(await storage.list_runs()) == 1


async def test_load_snapshot_of_unknown_run_is_none(storage: Storage) -> None:
    assert await storage.load_snapshot("nope") is None


async def test_concurrent_create_run_of_one_id_inserts_once(storage: Storage) -> None:
    wins: list[int] = []

    async def create(i: int) -> None:
        if await storage.create_run(snap("same", state={"by": i})):
            wins.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(create, i)
    assert len(wins) == 1
    loaded = await storage.load_snapshot("same")
    assert loaded is not None
    assert loaded.state == {"by": wins[0]}


# --------------------------------------------------------------------------- changed_steps


def rec(value: Any, status: str = "success") -> dict[str, Any]:
    return {"status": status, "output": value, "started_at": 1, "ended_at": 2}


async def test_save_with_changed_steps_stores_the_snapshot_in_dict_order(
    storage: Storage,
) -> None:
    await storage.create_run(snap("r", status=S.RUNNING, steps={"a": rec(1), "b": rec(2)}))
    steps = {"a": rec(10), "b": rec(2), "n.x": rec(3), "n[1].y": rec(4)}
    new = snap("r", status=S.RUNNING, steps=steps, state={"k": 1})
    assert await storage.save_snapshot(
        new, outs("r", 1, 1), expected_status=S.RUNNING, changed_steps=["a", "n.x", "n[1].y"]
    )
    loaded = await storage.load_snapshot("r")
    assert loaded == new
    assert loaded is not None
    assert list(loaded.steps) == ["a", "b", "n.x", "n[1].y"]
    # a set of new keys: stored in the snapshot's order
    more = dict(steps, z=rec(5), m=rec(6))
    assert await storage.save_snapshot(snap("r", steps=more), changed_steps={"m", "z"})
    loaded = await storage.load_snapshot("r")
    assert loaded is not None
    assert list(loaded.steps) == [*steps, "z", "m"]


async def test_changed_steps_naming_a_key_no_longer_in_the_snapshot_deletes_it(
    storage: Storage,
) -> None:
    await storage.create_run(snap("r", steps={"a": rec(1), "n.x": rec(2), "n.y": rec(3)}))
    kept = snap("r", steps={"a": rec(1), "n.y": rec(3)})
    assert await storage.save_snapshot(kept, changed_steps=("n.x",))
    assert await storage.load_snapshot("r") == kept
    # deleted, then added again: a whole write (None) puts it at the end, as the dict has it
    moved = snap("r", steps={"a": rec(1), "n.y": rec(3), "n.x": rec(9)})
    assert await storage.save_snapshot(moved, changed_steps=["n.x"])
    again = snap("r", steps={"n.x": rec(9), "a": rec(1), "n.y": rec(3)})
    assert await storage.save_snapshot(again)
    loaded = await storage.load_snapshot("r")
    assert loaded == again
    assert loaded is not None
    assert list(loaded.steps) == ["n.x", "a", "n.y"]


async def test_step_execution_path_grows_through_incremental_writes(storage: Storage) -> None:
    await storage.create_run(snap("r", status=S.RUNNING, step_execution_path=["a"]))
    path = ["a"]
    for step in ("b", "c", "d"):
        path.append(step)
        current = snap("r", status=S.RUNNING, step_execution_path=list(path))
        assert await storage.save_snapshot(current, changed_steps=[])
        assert await storage.load_snapshot("r") == current
    # a whole write replaces it, also with a shorter or different path
    other = snap("r", status=S.RUNNING, step_execution_path=["x"])
    assert await storage.save_snapshot(other)
    assert await storage.load_snapshot("r") == other
    # a shorter path with changed_steps (not the prefix promised) is still stored whole
    empty = snap("r", status=S.RUNNING)
    assert await storage.save_snapshot(empty, changed_steps=[])
    assert await storage.load_snapshot("r") == empty


async def test_refused_save_with_changed_steps_writes_no_step(storage: Storage) -> None:
    before = snap("r", status=S.SUSPENDED, steps={"a": rec(1, "suspended")})
    await storage.create_run(before)
    after = snap("r", status=S.RUNNING, steps={"a": rec(2), "b": rec(3)})
    assert not await storage.save_snapshot(
        after, expected_status=S.RUNNING, changed_steps=["a", "b"]
    )
    assert await storage.load_snapshot("r") == before


async def test_many_settled_steps_round_trip_through_incremental_writes(
    storage: Storage,
) -> None:
    await storage.create_run(snap("r", status=S.RUNNING))
    steps: dict[str, dict[str, Any]] = {}
    for i in range(60):
        steps[f"s{i}"] = rec({"i": i, "text": "é" * (i % 3)})
        if i % 7 == 0:
            steps["progress"] = rec(i, "running")  # updated in place, keeps its place
        current = snap("r", status=S.RUNNING, steps=dict(steps), last_seq=i + 1)
        changed = [f"s{i}", "progress"] if i % 7 == 0 else [f"s{i}"]
        assert await storage.save_snapshot(
            current, outs("r", i + 1, 1), expected_status=S.RUNNING, changed_steps=changed
        )
    loaded = await storage.load_snapshot("r")
    assert loaded == current
    assert loaded is not None
    assert list(loaded.steps) == list(steps)
    assert await storage.delete_run("r")
    assert await storage.load_snapshot("r") is None
    assert await storage.create_run(snap("r"))
    reloaded = await storage.load_snapshot("r")
    assert reloaded is not None
    assert reloaded.steps == {}


# --------------------------------------------------------------------------- compare-and-set


async def test_save_without_expected_status_replaces(storage: Storage) -> None:
    await storage.create_run(snap("r"))
    new = snap("r", status=S.SUCCESS, result=5)
    assert await storage.save_snapshot(new) is True
    assert await storage.load_snapshot("r") == new


async def test_save_with_matching_expected_status_writes_snapshot_and_events(
    storage: Storage,
) -> None:
    await storage.create_run(snap("r", status=S.SUSPENDED))
    claimed = snap("r", status=S.RUNNING)
    assert await storage.save_snapshot(claimed, outs("r", 1, 2), expected_status=S.SUSPENDED)
    assert await storage.load_snapshot("r") == claimed
    assert list(await storage.read_events("r")) == outs("r", 1, 2)


async def test_save_with_expected_status_tuple_matches_any_member(storage: Storage) -> None:
    await storage.create_run(snap("r", status=S.WAITING))
    claimed = snap("r", status=S.RUNNING)
    assert await storage.save_snapshot(claimed, expected_status=(S.RUNNING, S.WAITING))
    assert await storage.load_snapshot("r") == claimed


@pytest.mark.parametrize(
    "expected", [S.SUSPENDED, (S.SUSPENDED, S.PAUSED), [S.SUCCESS]], ids=["single", "tuple", "list"]
)
async def test_save_with_mismatching_expected_status_writes_nothing(
    storage: Storage, expected: Any
) -> None:
    before = snap("r", status=S.RUNNING, state={"v": 1})
    await storage.create_run(before)
    await storage.append_events("r", outs("r", 1, 3))
    after = snap("r", status=S.FAILED, state={"v": 2})
    assert await storage.save_snapshot(after, outs("r", 4, 2), expected_status=expected) is False
    assert await storage.load_snapshot("r") == before
    assert await storage.last_seq("r") == 3
    assert list(await storage.read_events("r")) == outs("r", 1, 3)


async def test_save_of_unknown_run_is_false_and_creates_nothing(storage: Storage) -> None:
    assert await storage.save_snapshot(snap("ghost"), outs("ghost", 1, 2)) is False
    assert await storage.save_snapshot(snap("ghost"), expected_status=S.PENDING) is False
    assert await storage.load_snapshot("ghost") is None
    assert await storage.last_seq("ghost") == 0
    assert await storage.read_events("ghost") == []
    assert await storage.list_runs() == []


async def test_exactly_one_concurrent_claim_wins(storage: Storage) -> None:
    await storage.create_run(snap("r", status=S.SUSPENDED))
    winners: list[int] = []

    async def claim(i: int) -> None:
        mine = snap("r", status=S.RUNNING, state={"by": i})
        if await storage.save_snapshot(mine, expected_status=S.SUSPENDED):
            winners.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(claim, i)
    assert len(winners) == 1
    loaded = await storage.load_snapshot("r")
    assert loaded is not None
    assert loaded.state == {"by": winners[0]}


async def test_save_with_events_not_continuing_the_log_raises_and_writes_nothing(
    storage: Storage,
) -> None:
    before = snap("r", status=S.RUNNING)
    await storage.create_run(before)
    await storage.append_events("r", outs("r", 1, 2))
    with pytest.raises(ValueError, match="seq"):
        await storage.save_snapshot(snap("r", status=S.SUCCESS), outs("r", 4, 1))
    assert await storage.load_snapshot("r") == before
    assert await storage.last_seq("r") == 2


# --------------------------------------------------------------------------- events


async def test_last_seq_counts_appended_events(storage: Storage) -> None:
    assert await storage.last_seq("unknown") == 0
    await storage.create_run(snap("r"))
    assert await storage.last_seq("r") == 0
    await storage.append_events("r", outs("r", 1, 3))
    await storage.append_events("r", [])
    assert await storage.last_seq("r") == 3
    assert await storage.save_snapshot(snap("r", status=S.RUNNING), outs("r", 4, 2))
    assert await storage.last_seq("r") == 5


async def test_read_events_pages_with_from_seq_and_limit(storage: Storage) -> None:
    await storage.create_run(snap("r"))
    log = outs("r", 1, 10)
    await storage.append_events("r", log)
    assert list(await storage.read_events("r")) == log
    assert list(await storage.read_events("r", from_seq=4)) == log[3:]
    assert list(await storage.read_events("r", from_seq=4, limit=3)) == log[3:6]
    assert list(await storage.read_events("r", from_seq=9, limit=5)) == log[8:]
    assert list(await storage.read_events("r", from_seq=0, limit=2)) == log[:2]
    assert list(await storage.read_events("r", limit=0)) == []
    assert list(await storage.read_events("r", from_seq=11)) == []
    pages: list[ch.Chunk] = []
    seq = 1
    while page := await storage.read_events("r", from_seq=seq, limit=4):
        pages.extend(page)
        seq = page[-1].seq + 1
    assert pages == log


async def test_logs_of_runs_are_separate(storage: Storage) -> None:
    await storage.create_run(snap("a"))
    await storage.create_run(snap("b"))
    await storage.append_events("a", outs("a", 1, 3))
    await storage.append_events("b", outs("b", 1, 1))
    assert list(await storage.read_events("a")) == outs("a", 1, 3)
    assert list(await storage.read_events("b")) == outs("b", 1, 1)


async def test_append_with_a_gap_before_it_raises_and_writes_nothing(storage: Storage) -> None:
    await storage.create_run(snap("r"))
    await storage.append_events("r", outs("r", 1, 2))
    with pytest.raises(ValueError, match="seq"):
        await storage.append_events("r", outs("r", 4, 2))
    with pytest.raises(ValueError, match="seq"):
        await storage.append_events("r", outs("r", 2, 2))  # overlaps the log
    assert list(await storage.read_events("r")) == outs("r", 1, 2)


async def test_append_with_a_gap_inside_the_batch_raises_and_writes_nothing(
    storage: Storage,
) -> None:
    await storage.create_run(snap("r"))
    with pytest.raises(ValueError, match="seq"):
        await storage.append_events("r", [out("r", 1), out("r", 3)])
    assert await storage.last_seq("r") == 0


async def test_append_to_unknown_run_is_ignored(storage: Storage) -> None:
    await storage.append_events("ghost", outs("ghost", 1, 2))
    assert await storage.read_events("ghost") == []
    assert await storage.create_run(snap("ghost"))
    assert await storage.last_seq("ghost") == 0


# --------------------------------------------------------------------------- listing


async def test_list_runs_newest_first_then_latest_inserted(storage: Storage) -> None:
    for run_id, created in [("old", 100), ("mid-1", 200), ("new", 300), ("mid-2", 200)]:
        await storage.create_run(snap(run_id, created_at=created))
    assert [r.run_id for r in await storage.list_runs()] == ["new", "mid-2", "mid-1", "old"]


async def test_list_runs_rows_describe_the_current_snapshot(storage: Storage) -> None:
    await storage.create_run(snap("r", workflow_id="w", resource_id="u", created_at=10))
    await storage.save_snapshot(
        snap("r", workflow_id="w", resource_id="u", status=S.SUCCESS, created_at=10, updated_at=20)
    )
    assert await storage.list_runs() == [
        tf.RunInfo(
            run_id="r",
            workflow_id="w",
            resource_id="u",
            status=S.SUCCESS,
            created_at=10,
            updated_at=20,
        )
    ]


async def test_list_runs_filters_combine(storage: Storage) -> None:
    rows = [
        ("a1", "alpha", S.SUCCESS, "u1"),
        ("a2", "alpha", S.SUSPENDED, "u2"),
        ("a3", "alpha", S.SUSPENDED, "u1"),
        ("b1", "beta", S.SUSPENDED, "u1"),
        ("b2", "beta", S.FAILED, None),
    ]
    for i, (run_id, wf, status, resource) in enumerate(rows):
        await storage.create_run(
            snap(run_id, workflow_id=wf, status=status, resource_id=resource, created_at=i)
        )

    async def ids(**filters: Any) -> list[str]:
        return [r.run_id for r in await storage.list_runs(**filters)]

    assert await ids(workflow_id="alpha") == ["a3", "a2", "a1"]
    assert await ids(status=S.SUSPENDED) == ["b1", "a3", "a2"]
    assert await ids(resource_id="u1") == ["b1", "a3", "a1"]
    assert await ids(workflow_id="alpha", status=S.SUSPENDED) == ["a3", "a2"]
    assert await ids(workflow_id="alpha", status=S.SUSPENDED, resource_id="u1") == ["a3"]
    assert await ids(workflow_id="gamma") == []
    assert await ids(status=S.RUNNING) == []


async def test_list_runs_status_filter_follows_saves(storage: Storage) -> None:
    await storage.create_run(snap("r", status=S.PENDING))
    await storage.save_snapshot(snap("r", status=S.RUNNING))
    assert [r.run_id for r in await storage.list_runs(status=S.RUNNING)] == ["r"]
    assert await storage.list_runs(status=S.PENDING) == []


async def test_list_runs_pages_with_limit_and_offset(storage: Storage) -> None:
    for i in range(25):
        await storage.create_run(snap(f"r{i:02}", created_at=i))
    everything = [r.run_id for r in await storage.list_runs()]
    assert everything == [f"r{i:02}" for i in reversed(range(25))]
    pages = [
        [r.run_id for r in await storage.list_runs(limit=10, offset=offset)]
        for offset in (0, 10, 20, 30)
    ]
    assert [len(p) for p in pages] == [10, 10, 5, 0]
    assert [run_id for page in pages for run_id in page] == everything
    assert await storage.list_runs(limit=0) == []
    assert len(await storage.list_runs()) == 25  # default limit 100


# --------------------------------------------------------------------------- delete


async def test_delete_run_removes_snapshot_and_log(storage: Storage) -> None:
    await storage.create_run(snap("gone"))
    await storage.create_run(snap("kept"))
    await storage.append_events("gone", outs("gone", 1, 3))
    await storage.append_events("kept", outs("kept", 1, 2))
    assert await storage.delete_run("gone") is True
    assert await storage.load_snapshot("gone") is None
    assert await storage.read_events("gone") == []
    assert await storage.last_seq("gone") == 0
    assert [r.run_id for r in await storage.list_runs()] == ["kept"]
    assert list(await storage.read_events("kept")) == outs("kept", 1, 2)
    assert await storage.delete_run("gone") is False
    assert await storage.delete_run("never") is False


async def test_deleted_run_id_can_be_created_again_with_an_empty_log(storage: Storage) -> None:
    await storage.create_run(snap("r"))
    await storage.append_events("r", outs("r", 1, 3))
    await storage.delete_run("r")
    assert await storage.create_run(snap("r", state={"again": True}))
    assert await storage.last_seq("r") == 0
    await storage.append_events("r", outs("r", 1, 1))
    assert list(await storage.read_events("r")) == outs("r", 1, 1)


# --------------------------------------------------------------------------- cancellation, close


async def test_cancelled_call_writes_nothing(storage: Storage) -> None:
    before = snap("r", status=S.SUSPENDED)
    await storage.create_run(before)
    with trio.CancelScope() as scope:
        scope.cancel()
        await storage.save_snapshot(snap("r", status=S.RUNNING), outs("r", 1, 2))
    assert scope.cancelled_caught
    assert await storage.load_snapshot("r") == before
    assert await storage.last_seq("r") == 0


async def test_every_method_is_a_checkpoint(storage: Storage) -> None:
    await storage.create_run(snap("r"))
    calls: list[Any] = [
        lambda: storage.create_run(snap("x")),
        lambda: storage.load_snapshot("r"),
        lambda: storage.save_snapshot(snap("r")),
        lambda: storage.append_events("r", outs("r", 1, 1)),
        lambda: storage.append_events("r", []),
        lambda: storage.read_events("r"),
        lambda: storage.last_seq("r"),
        lambda: storage.list_runs(),
        lambda: storage.delete_run("x"),
    ]
    for call in calls:
        with trio.testing.assert_checkpoints():
            await call()


async def test_closed_storage_is_unusable(storage: Storage) -> None:
    await storage.create_run(snap("r"))
    await storage.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await storage.load_snapshot("r")
    with pytest.raises(RuntimeError, match="closed"):
        await storage.create_run(snap("s"))
    await storage.aclose()  # idempotent


# --------------------------------------------------------------------------- concurrent writers


async def test_concurrent_writers_keep_every_log_contiguous(storage: Storage) -> None:
    runs, rounds = 50, 8

    async def writer(i: int) -> None:
        run_id = f"w{i:02}"
        assert await storage.create_run(snap(run_id, status=S.RUNNING, created_at=i))
        seq = 1
        for k in range(rounds):
            await storage.append_events(run_id, outs(run_id, seq, 3))
            seq += 3
            status = S.SUCCESS if k == rounds - 1 else S.RUNNING
            mine = snap(run_id, status=status, created_at=i, state={"round": k})
            assert await storage.save_snapshot(
                mine, outs(run_id, seq, 2), expected_status=S.RUNNING
            )
            seq += 2

    async with trio.open_nursery() as nursery:
        for i in range(runs):
            nursery.start_soon(writer, i)
    for i in range(runs):
        run_id = f"w{i:02}"
        log = list(await storage.read_events(run_id))
        assert log == outs(run_id, 1, rounds * 5)
        loaded = await storage.load_snapshot(run_id)
        assert loaded is not None
        assert (loaded.status, loaded.state) == (S.SUCCESS, {"round": rounds - 1})
    assert len(await storage.list_runs(status=S.SUCCESS)) == runs


# --------------------------------------------------------------------------- engine level


_VOLATILE = {"runId", "startedAt", "endedAt", "suspendedAt", "resumedAt", "stepCallId"}


def normalized(value: Any) -> Any:
    """Wire dicts / plain data with run ids, timestamps and call ids blanked."""
    if isinstance(value, dict):
        return {k: "*" if k in _VOLATILE else normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def comparable(result: tf.WorkflowResult) -> dict[str, Any]:
    steps = {
        key: {
            "status": r.status,
            "output": r.output,
            "payload": r.payload,
            "suspend_payload": r.suspend_payload,
            "resume_payload": r.resume_payload,
            "error": None if r.error is None else (type(r.error).__name__, str(r.error)),
        }
        for key, r in result.steps.items()
    }
    return {
        "status": result.status,
        "result": result.result,
        "error": None if result.error is None else str(result.error),
        "steps": steps,
        "input": result.input,
        "state": result.state,
        "suspended": result.suspended,
        "suspend_payload": result.suspend_payload,
        "step_execution_path": result.step_execution_path,
        "tripwire": result.tripwire,
    }


async def engine_trace(store: Storage) -> dict[str, Any]:
    """Results and normalized logs of the scenario runs on ``store``."""
    sc = await run_scenarios(store)
    return {
        name: {
            "result": comparable(sc.results[name]) if name in sc.results else None,
            "log": normalized(wire(await store.read_events(run_id))),
        }
        for name, run_id in sc.runs.items()
    }


async def test_engine_gives_equal_results_and_logs_on_every_backend(storage: Storage) -> None:
    reference = MemoryStorage()
    expected = await engine_trace(reference)
    await reference.aclose()
    actual = await engine_trace(storage)
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name] == expected[name], name


async def test_engine_resume_after_reload_on_every_backend(storage: Storage) -> None:
    # The stored run (not any in-process object) is what a second runtime resumes.
    wf = rich_nested_workflow()
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run()
        first = await run.start(input_data={"order": "o"}, request_context={"tenant": "t"})
    assert first.status == "suspended"
    async with tf.open_runtime(storage=storage):
        again = await wf.create_run(run_id=run.run_id)
        assert again.status == "suspended"
        final = await again.resume(resume_data={"approved": True}, label="approve")
    assert final.status == "success"
    assert final.trace_id == first.trace_id
    assert final.result == {
        "first": [1, 2, 3],
        "got": {"approved": True, "by": "unknown"},
    }
    log = list(await storage.read_events(run.run_id))
    assert [c.seq for c in log] == list(range(1, len(log) + 1))
    finishes = [c for c in log if isinstance(c, tf.WorkflowFinish)]
    assert [c.payload.workflow_status for c in finishes] == ["suspended", "success"]
    assert log[-1] == finishes[-1]


async def test_runtime_list_get_delete_on_every_backend(storage: Storage) -> None:
    async def plus(ctx: tf.StepContext) -> int:
        return int(ctx.input_data) + 1

    wf = one_step("listed", plus)
    async with tf.open_runtime(storage=storage) as rt:
        done = await wf.create_run(resource_id="u")
        await done.start(input_data=1)
        idle = await wf.create_run(resource_id="u")
        assert [r.run_id for r in await rt.list_runs(status="success")] == [done.run_id]
        assert {r.run_id for r in await rt.list_runs(resource_id="u")} == {
            done.run_id,
            idle.run_id,
        }
        state = await rt.get_run_state(done.run_id)
        assert (state.status, state.result, state.input) == ("success", 2, 1)
        assert await rt.delete_run(done.run_id) is True
        with pytest.raises(tf.SnapshotNotFoundError):
            await rt.get_run_state(done.run_id)


# --------------------------------------------------------------------------- strict JSON (SQL backends)

SQL_BACKENDS = ["sqlite-file", "postgres"]


@attrs.define
class SqlBackend:
    """A durable SQL storage and a raw connection to its tables (for damaging rows)."""

    storage: Storage
    execute: Any  # (sql with {runs}/{events} table names, params) -> None
    placeholder: str


@pytest.fixture(params=SQL_BACKENDS)
async def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlBackend]:
    if request.param == "postgres":
        import psycopg

        dsn = request.getfixturevalue("postgres_db")
        store = await open_backend("postgres", tmp_path, postgres_dsn=dsn)

        def execute_pg(sql: str, params: tuple[Any, ...] = ()) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    sql.format(runs="trioflow_runs", events="trioflow_events", p="%s"), params
                )

        backend = SqlBackend(store, execute_pg, "%s")
    else:
        import sqlite3

        store = await open_backend("sqlite-file", tmp_path)

        def execute_sqlite(sql: str, params: tuple[Any, ...] = ()) -> None:
            conn = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
            try:
                conn.execute(sql.format(runs="runs", events="events", p="?"), params)
            finally:
                conn.close()

        backend = SqlBackend(store, execute_sqlite, "?")
    try:
        yield backend
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
async def test_values_that_are_not_strict_json_are_refused_and_not_stored(
    sql_backend: SqlBackend, bad: float
) -> None:
    storage = sql_backend.storage
    with pytest.raises(tf.StorageError, match="refused to store the snapshot of run 'a'"):
        await storage.create_run(snap("a", state={"x": bad}))
    assert await storage.load_snapshot("a") is None
    original = snap("r")
    assert await storage.create_run(original)
    with pytest.raises(tf.StorageError, match="refused to store the snapshot of run 'r'"):
        await storage.save_snapshot(snap("r", status=S.RUNNING, state={"x": bad}))
    with pytest.raises(tf.StorageError, match="refused to store event seq 1 of run 'r'"):
        await storage.append_events("r", [out("r", 1, {"y": bad})])
    assert await storage.load_snapshot("r") == original
    assert await storage.last_seq("r") == 0


async def test_stored_rows_that_are_not_json_are_storage_errors(sql_backend: SqlBackend) -> None:
    storage = sql_backend.storage
    await storage.create_run(snap("r"))
    await storage.append_events("r", [out("r", 1, 1), out("r", 2, 2)])
    await trio.to_thread.run_sync(
        sql_backend.execute, "UPDATE {events} SET chunk = 'oops' WHERE seq = 2", ()
    )
    with pytest.raises(tf.StorageError, match="event seq 2 of run 'r' is not valid JSON"):
        await storage.read_events("r")
    assert wire(await storage.read_events("r", limit=1)) == wire([out("r", 1, 1)])
    for text, problem in (("{", "is not valid JSON"), ("[]", "is not a JSON object")):
        await trio.to_thread.run_sync(
            sql_backend.execute, "UPDATE {runs} SET snapshot = {p}", (text,)
        )
        with pytest.raises(tf.StorageError, match=f"snapshot of run 'r' {problem}"):
            await storage.load_snapshot("r")


async def test_changed_steps_writes_only_the_named_records(sql_backend: SqlBackend) -> None:
    # Durable backends keep what is stored for a key not named (the caller's promise is
    # that it did not change): a write costs what changed, not every earlier step.
    storage = sql_backend.storage
    await storage.create_run(snap("r", steps={"a": rec(1)}))
    stale = snap("r", steps={"a": rec("not written"), "b": rec(2)})
    assert await storage.save_snapshot(stale, changed_steps=["b"])
    loaded = await storage.load_snapshot("r")
    assert loaded is not None
    assert loaded.steps == {"a": rec(1), "b": rec(2)}
    with pytest.raises(TypeError, match="not a str"):
        await storage.save_snapshot(stale, changed_steps="b")


async def test_step_records_that_are_not_strict_json_are_refused(sql_backend: SqlBackend) -> None:
    storage = sql_backend.storage
    original = snap("r", steps={"a": rec(1)})
    await storage.create_run(original)
    bad = snap("r", steps={"a": rec(1), "b": rec(float("nan"))})
    with pytest.raises(tf.StorageError, match=r"snapshot of run 'r' \(step 'b'\)"):
        await storage.save_snapshot(bad, changed_steps=["b"])
    assert await storage.load_snapshot("r") == original


async def test_stored_step_rows_that_are_not_json_are_storage_errors(
    sql_backend: SqlBackend,
) -> None:
    storage = sql_backend.storage
    await storage.create_run(snap("r", steps={"a": rec(1)}))
    steps = "trioflow_steps" if sql_backend.placeholder == "%s" else "steps"
    await trio.to_thread.run_sync(
        sql_backend.execute, f"UPDATE {steps} SET record = 'oops' WHERE step_key = 'a'", ()
    )
    with pytest.raises(tf.StorageError, match="snapshot of run 'r', step 'a', is not valid JSON"):
        await storage.load_snapshot("r")
