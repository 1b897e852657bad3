"""Issue 12, run API: refused requests store nothing and say what happened.

- Input data, initial state, resume data and request context that are not strict JSON
  (SPEC §0: NaN/Infinity, lone surrogates, nesting past ``MAX_JSON_DEPTH``, values that
  are not JSON at all) are a ``ValidationError`` naming the path, raised before anything is
  stored, on every backend.
- A resume that arrives while another process's resume of the same suspension is still
  executing is ``ResumeAlreadyClaimedError`` (SPEC §2), not ``NotSuspendedError``.
- ``for_each_index`` naming no suspended iteration of a nested foreach is refused before
  anything runs, as on a top-level foreach.
- A workflow that contains itself (directly or through others) or nests workflows deeper
  than ``MAX_NESTING_DEPTH`` is refused at ``commit()`` and, if it changed after that, at
  ``create_run()``/``start()``, before anything is stored.
- What the engine stores is strict JSON: an error attribute that is NaN or a message with a
  lone surrogate does not reach storage as such.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trioflow as tf
from trioflow._core._json import MAX_JSON_DEPTH

# --------------------------------------------------------------------------- helpers


@pytest.fixture(params=["memory", "sqlite"])
async def rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    storage: Any = (
        tf.MemoryStorage() if request.param == "memory" else tf.SqliteStorage(tmp_path / "r.db")
    )
    async with tf.open_runtime(storage=storage) as runtime:
        yield runtime


async def echo(ctx: tf.StepContext) -> Any:
    return ctx.input_data


async def gate_execute(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"ask": True})
    return ctx.resume_data


def plain_workflow(wf_id: str = "plain", **kwargs: Any) -> tf.Workflow:
    return tf.create_workflow(id=wf_id, **kwargs).then(
        tf.create_step(id="echo", execute=echo)
    ).commit()


def gate_workflow(resume_schema: Any = None) -> tf.Workflow:
    gate = tf.create_step(id="gate", execute=gate_execute, resume_schema=resume_schema)
    return tf.create_workflow(id="gated").then(gate).commit()


def nested(depth: int) -> Any:
    """``depth`` levels of nested lists around 1."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def assert_pending_and_empty(rt: Any, run: Any) -> None:
    state = await rt.get_run_state(run.run_id)
    assert state.status == "pending"
    assert state.input is None
    assert run.status == "pending"
    assert [c async for c in run.observe_stream(follow=False)] == []


@attrs.frozen
class Box:
    value: Any


@attrs.frozen
class Measure:
    amount: float


# --------------------------------------------------------------------------- item 1: values


BAD_VALUES: list[tuple[str, Callable[[], Any], str, str]] = [
    ("nan", lambda: {"x": float("nan")}, "x", "nan"),
    ("infinity", lambda: {"x": [1, float("inf")]}, "x[1]", "inf"),
    ("surrogate", lambda: {"name": "a\ud800b"}, "name", "surrogate"),
    ("surrogate-key", lambda: {"k\udfff": 1}, "", "surrogate"),
    ("not-json", lambda: {"when": object()}, "when", "object"),
    ("bytes", lambda: {"raw": b"\x00"}, "raw", "bytes"),
    ("too-deep", lambda: {"deep": nested(MAX_JSON_DEPTH + 5)}, "deep", "deeper than"),
]


@pytest.mark.parametrize(("value", "path", "words"), [b[1:] for b in BAD_VALUES], ids=[
    b[0] for b in BAD_VALUES
])
async def test_input_data_that_is_not_strict_json_is_refused_before_storing(
    rt: Any, value: Callable[[], Any], path: str, words: str
) -> None:
    run = await plain_workflow().create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data=value())
    assert str(info.value).startswith("Invalid input data:\n- ")
    ((error_path, message),) = info.value.errors
    assert error_path.startswith(path)
    assert words in message.lower()
    await assert_pending_and_empty(rt, run)


@pytest.mark.parametrize("depth", [500, 980])
async def test_input_nested_hundreds_deep_is_a_validation_error_not_internal(
    rt: Any, depth: int
) -> None:
    run = await plain_workflow().create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data={"a": nested(depth)})
    assert str(info.value).startswith("Invalid input data:")
    ((error_path, message),) = info.value.errors
    assert error_path == "a" + "[0]" * (MAX_JSON_DEPTH - 1)
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message
    await assert_pending_and_empty(rt, run)
    # Nothing was claimed: the same run still starts with good input.
    assert (await run.start(input_data={"a": nested(MAX_JSON_DEPTH - 1)})).status == "success"


async def test_structured_input_is_checked_as_stored(rt: Any) -> None:
    # The attrs schema accepts the value; what is stored (its unstructured form) is not
    # strict JSON.
    wf = tf.create_workflow(id="boxed", input_schema=Box).then(
        tf.create_step(id="echo", execute=echo)
    ).commit()
    run = await wf.create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data=Box(value={"n": float("-inf")}))
    assert info.value.errors[0][0] == "value.n"
    await assert_pending_and_empty(rt, run)

    wf2 = tf.create_workflow(id="measured", input_schema=Measure).then(
        tf.create_step(id="echo", execute=echo)
    ).commit()
    run2 = await wf2.create_run()
    with pytest.raises(tf.ValidationError) as info2:
        await run2.start(input_data={"amount": float("nan")})
    assert info2.value.errors[0][0] == "amount"
    await assert_pending_and_empty(rt, run2)


async def test_initial_state_that_is_not_strict_json_is_refused(rt: Any) -> None:
    run = await plain_workflow().create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data=1, initial_state={"s": {"t": float("inf")}})
    assert str(info.value).startswith("Invalid initial state:\n- s.t: ")
    await assert_pending_and_empty(rt, run)

    run2 = await plain_workflow().create_run()
    with pytest.raises(tf.ValidationError) as info2:
        await run2.start(input_data=1, initial_state={"s": nested(600)})
    assert str(info2.value).startswith("Invalid initial state:")
    await assert_pending_and_empty(rt, run2)


async def test_request_context_that_is_not_strict_json_is_refused(rt: Any) -> None:
    run = await plain_workflow().create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data=1, request_context={"user": {"score": float("nan")}})
    assert str(info.value).startswith("Invalid request context:\n- user.score: ")
    await assert_pending_and_empty(rt, run)

    with pytest.raises(tf.ValidationError):
        await run.start(input_data=1, request_context={"user": nested(700)})
    await assert_pending_and_empty(rt, run)


async def test_resume_data_that_is_not_strict_json_is_refused(rt: Any) -> None:
    for schema in (None, Box):
        run = await gate_workflow(resume_schema=schema).create_run()
        assert (await run.start(input_data=1)).status == "suspended"
        stored_before = await rt.get_run_state(run.run_id)
        events_before = [c async for c in run.observe_stream(follow=False)]
        bad: list[Any] = [
            {"value": float("nan")},
            {"value": "\udc00"},
            {"value": nested(900)},
        ]
        if schema is None:
            bad.append({"value": object()})
        for data in bad:
            with pytest.raises(tf.ValidationError) as info:
                await run.resume(resume_data=data)
            assert str(info.value).startswith("Invalid resume data:\n- value")
        with pytest.raises(tf.ValidationError) as info:
            await run.resume(resume_data={"value": 1}, request_context={"x": float("inf")})
        assert str(info.value).startswith("Invalid request context:\n- x: ")
        after = await rt.get_run_state(run.run_id)
        assert after.status == "suspended"
        assert after.updated_at == stored_before.updated_at
        assert [c async for c in run.observe_stream(follow=False)] == events_before
        # The suspension is still there to resume.
        assert (await run.resume(resume_data={"value": 2})).status == "success"


async def test_ordinary_values_are_stored_unchanged(rt: Any) -> None:
    value = {"text": "héllo ☃ \U0001f600", "n": [1, 2.5, -0.0, None, True], "m": {"k": "v"}}
    run = await plain_workflow().create_run()
    result = await run.start(
        input_data=value, initial_state={"s": 1}, request_context={"user": "u"}
    )
    assert result.status == "success"
    assert result.result == value
    state = await rt.get_run_state(run.run_id)
    assert state.input == value


# --------------------------------------------------------------------------- item 4: graphs


def leaf_step() -> Any:
    return tf.create_step(id="leaf", execute=echo)


def wrap(depth: int, step: Any = None) -> tf.Workflow:
    """``depth`` levels of workflows nested in one another around a plain step (the
    outermost is level 0, so ``depth`` is the number of nested levels)."""
    wf = tf.create_workflow(id="w0").then(step or leaf_step()).commit()
    for level in range(1, depth + 1):
        wf = tf.create_workflow(id=f"w{level}").then(wf).commit()
    return wf


async def stored_run_ids(rt: Any) -> list[str]:
    return [info.run_id for info in await rt.list_runs()]


def test_a_workflow_containing_itself_is_refused_at_commit() -> None:
    from trioflow._workflow import WorkflowGraphError

    a = tf.create_workflow(id="a").then(leaf_step())
    a.then(a)
    with pytest.raises(WorkflowGraphError, match=r"workflow 'a' contains itself: a -> a$"):
        a.commit()
    assert not a.committed
    assert isinstance(WorkflowGraphError("x"), ValueError)
    assert issubclass(WorkflowGraphError, tf.TrioflowError)


def test_a_cycle_through_other_workflows_is_refused_at_commit() -> None:
    from trioflow._workflow import WorkflowGraphError

    a = tf.create_workflow(id="a").then(leaf_step())
    b = tf.create_workflow(id="b")
    c = tf.create_workflow(id="c")
    a.parallel([leaf_step(), b])
    b.then(c)
    c.foreach(a)
    with pytest.raises(WorkflowGraphError, match=r"contains itself: a -> b -> c -> a$"):
        a.commit()
    with pytest.raises(WorkflowGraphError, match=r"contains itself: b -> c -> a -> b$"):
        b.commit()
    # A↔B directly, in a loop and a branch.
    x = tf.create_workflow(id="x").then(leaf_step())
    y = tf.create_workflow(id="y").dowhile(x, lambda ctx: False)
    x.branch([(lambda ctx: True, y)])
    with pytest.raises(WorkflowGraphError, match=r"x -> y -> x$"):
        x.commit()


async def test_a_cycle_made_after_commit_is_refused_before_anything_is_stored(rt: Any) -> None:
    from trioflow._workflow import WorkflowGraphError

    inner = tf.create_workflow(id="inner").then(leaf_step()).commit()
    outer = tf.create_workflow(id="outer").then(inner).commit()
    inner.then(outer)  # outer is still committed, and now contains itself
    with pytest.raises(WorkflowGraphError, match=r"outer -> inner -> outer"):
        await outer.create_run()
    assert await stored_run_ids(rt) == []

    # Changed between create_run() and start(): start refuses, the run stays pending.
    inner2 = tf.create_workflow(id="inner2").then(leaf_step()).commit()
    outer2 = tf.create_workflow(id="outer2").then(inner2).commit()
    run = await outer2.create_run()
    inner2.then(outer2)
    with pytest.raises(WorkflowGraphError, match=r"outer2 -> inner2 -> outer2"):
        await run.start(input_data=1)
    await assert_pending_and_empty(rt, run)


def test_a_shared_nested_workflow_is_not_a_cycle() -> None:
    shared = tf.create_workflow(id="shared").then(leaf_step()).commit()
    mid = tf.create_workflow(id="mid").then(shared).then(shared).commit()
    top = tf.create_workflow(id="top").parallel([shared, mid]).then(mid).commit()
    assert top.committed


async def test_nesting_up_to_the_limit_runs(rt: Any) -> None:
    from trioflow._workflow import MAX_NESTING_DEPTH

    assert MAX_NESTING_DEPTH >= 50
    wf = wrap(MAX_NESTING_DEPTH, tf.create_step(id="gate", execute=gate_execute))
    run = await wf.create_run()
    first = await run.start(input_data={"v": 1})
    assert first.status == "suspended"
    assert len(first.suspended[0]) == MAX_NESTING_DEPTH + 1
    result = await run.resume(resume_data={"v": 2})
    assert result.status == "success"
    assert result.result == {"v": 2}


@pytest.mark.parametrize("extra", [1, 150])
async def test_nesting_deeper_than_the_limit_is_refused(rt: Any, extra: int) -> None:
    from trioflow._workflow import MAX_NESTING_DEPTH, WorkflowGraphError

    # Built bottom-up, each level committed: the last commit is the one that goes too deep.
    with pytest.raises(WorkflowGraphError, match=f"more than {MAX_NESTING_DEPTH} levels deep"):
        wrap(MAX_NESTING_DEPTH + extra)
    # Deepened after commit: create_run refuses before storing anything.
    top = wrap(MAX_NESTING_DEPTH)
    bottom = top
    while True:
        (entry,) = bottom.entries
        node = entry.node  # type: ignore[union-attr]
        if not isinstance(node, tf.Workflow):
            break
        bottom = node
    bottom.then(tf.create_workflow(id="one-more").then(leaf_step()).commit())
    with pytest.raises(WorkflowGraphError, match=f"more than {MAX_NESTING_DEPTH} levels deep"):
        await top.create_run()
    assert await stored_run_ids(rt) == []


async def test_a_cycle_made_while_suspended_is_refused_by_resume_and_restart(rt: Any) -> None:
    from trioflow._workflow import WorkflowGraphError

    inner = (
        tf.create_workflow(id="inner")
        .then(tf.create_step(id="gate", execute=gate_execute))
        .commit()
    )
    outer = tf.create_workflow(id="outer").then(inner).commit()
    run = await outer.create_run()
    assert (await run.start(input_data=1)).status == "suspended"
    before = await rt.get_run_state(run.run_id)
    inner.then(outer)
    with pytest.raises(WorkflowGraphError, match=r"outer -> inner -> outer"):
        await run.resume(resume_data=2)
    with pytest.raises(WorkflowGraphError):
        await run.restart()
    after = await rt.get_run_state(run.run_id)
    assert (after.status, after.updated_at) == ("suspended", before.updated_at)


# --------------------------------------------------------------------------- item 3: foreach


async def _suspended_foreach(rt: Any, outer: tf.Workflow) -> tuple[Any, Any, list[Any]]:
    run = await outer.create_run()
    assert (await run.start(input_data=[1, 2, 3])).status == "suspended"
    before = await rt.get_run_state(run.run_id)
    events = [c async for c in run.observe_stream(follow=False)]
    return run, before, events


async def _unchanged(rt: Any, run: Any, before: Any, events: list[Any]) -> None:
    after = await rt.get_run_state(run.run_id)
    assert (after.status, after.updated_at) == ("suspended", before.updated_at)
    assert [c async for c in run.observe_stream(follow=False)] == events


async def test_for_each_index_of_a_nested_foreach_names_a_suspended_iteration(rt: Any) -> None:
    leaf = tf.create_step(id="leaf", execute=gate_execute)
    nest = tf.create_workflow(id="nest").foreach(leaf).commit()
    outer = tf.create_workflow(id="outer").then(nest).commit()
    run, before, events = await _suspended_foreach(rt, outer)

    with pytest.raises(tf.StepNotSuspendedError) as info:
        await run.resume(step="nest.leaf", for_each_index=7, resume_data=5)
    assert "nest.leaf[7]" in str(info.value)
    assert "nest.leaf[0]" in str(info.value)
    await _unchanged(rt, run, before, events)

    # Iteration 0 suspended (concurrency 1 stops the foreach there): it resumes.
    result = await run.resume(step="nest.leaf", for_each_index=0, resume_data=5)
    assert result.status == "suspended"
    assert result.steps["nest"].status == "suspended"


async def test_for_each_index_of_a_foreach_over_a_nested_workflow(rt: Any) -> None:
    inner = (
        tf.create_workflow(id="inner")
        .then(tf.create_step(id="g", execute=gate_execute))
        .commit()
    )
    outer = tf.create_workflow(id="outer").foreach(inner, concurrency=3).commit()
    run, before, events = await _suspended_foreach(rt, outer)
    with pytest.raises(tf.StepNotSuspendedError):
        await run.resume(step="inner", for_each_index=3, resume_data=5)
    await _unchanged(rt, run, before, events)
    result = await run.resume(step="inner", for_each_index=2, resume_data=9)
    assert result.status == "suspended"


async def test_for_each_index_on_a_path_without_a_foreach_is_refused(rt: Any) -> None:
    inner = (
        tf.create_workflow(id="inner")
        .then(tf.create_step(id="g", execute=gate_execute))
        .commit()
    )
    outer = tf.create_workflow(id="outer").then(inner).commit()
    run = await outer.create_run()
    assert (await run.start(input_data=1)).status == "suspended"
    before = await rt.get_run_state(run.run_id)
    with pytest.raises(ValueError, match=r"'inner.g' is not a foreach step"):
        await run.resume(step="inner.g", for_each_index=0, resume_data=5)
    after = await rt.get_run_state(run.run_id)
    assert (after.status, after.updated_at) == ("suspended", before.updated_at)


# --------------------------------------------------------------------------- item 2: claims


@pytest.fixture(params=["memory", "sqlite"])
def shared_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """Storages two runtimes (standing for two processes) share: one MemoryStorage, or
    two SqliteStorage handles on one file."""
    if request.param == "memory":
        memory = tf.MemoryStorage()
        return lambda: memory
    return lambda: tf.SqliteStorage(tmp_path / "shared.db")


async def test_a_resume_while_another_process_executes_a_resume_is_already_claimed(
    shared_storage: Callable[[], Any],
) -> None:
    entered = trio.Event()
    release = trio.Event()

    async def blocker(ctx: tf.StepContext) -> Any:
        entered.set()
        await release.wait()
        return ctx.input_data

    def build() -> tf.Workflow:
        return (
            tf.create_workflow(id="claims")
            .then(tf.create_step(id="gate", execute=gate_execute))
            .then(tf.create_step(id="after", execute=blocker))
            .commit()
        )

    async with tf.open_runtime(storage=shared_storage(), workflows=[build()]) as first:
        run = await first.create_run("claims")
        assert (await run.start(input_data=1)).status == "suspended"
        async with tf.open_runtime(storage=shared_storage(), workflows=[build()]) as second:
            async with trio.open_nursery() as nursery:
                outcome: list[Any] = []

                async def resume_here() -> None:
                    outcome.append(await run.resume(resume_data={"go": 1}))

                nursery.start_soon(resume_here)
                # The resumed step succeeded; the execution is in the next step.
                await entered.wait()
                other = await second.create_run("claims", run_id=run.run_id)
                with pytest.raises(tf.ResumeAlreadyClaimedError):
                    await other.resume(resume_data={"go": 2})
                # In the process executing it, too.
                with pytest.raises(tf.ResumeAlreadyClaimedError):
                    await run.resume(resume_data={"go": 3})
                release.set()
            assert outcome[0].status == "success"
            assert outcome[0].result == {"go": 1}
            # Finished: a late resume is simply not suspended.
            with pytest.raises(tf.NotSuspendedError):
                await other.resume(resume_data={"go": 4})


async def test_a_resume_while_the_start_executes_elsewhere_is_not_suspended(
    shared_storage: Callable[[], Any],
) -> None:
    entered = trio.Event()
    release = trio.Event()

    async def blocker(ctx: tf.StepContext) -> Any:
        entered.set()
        await release.wait()
        return ctx.input_data

    def build() -> tf.Workflow:
        step = tf.create_step(id="slow", execute=blocker)
        return tf.create_workflow(id="plainrun").then(step).then(leaf_step()).commit()

    async with tf.open_runtime(storage=shared_storage(), workflows=[build()]) as first:
        run = await first.create_run("plainrun")
        async with tf.open_runtime(storage=shared_storage(), workflows=[build()]) as second:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.start)
                await entered.wait()
                other = await second.create_run("plainrun", run_id=run.run_id)
                with pytest.raises(tf.NotSuspendedError):
                    await other.resume(resume_data=1)
                release.set()
