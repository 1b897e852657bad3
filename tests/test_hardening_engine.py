"""Issue 12, engine findings: each test pins one finding of the adversarial pass.

- exception groups are unwrapped by one helper (``trioflow._groups``); ``open_runtime``
  gives the user their own exception;
- a step (or a condition, a map or sleep function) raising a ``BaseException`` subclass
  fails its own run, never the runtime;
- a step output that is not strict JSON fails that step, naming the path;
- cancel gives every started entry its terminal chunk (foreach with concurrency, a nested
  workflow inside a parallel);
- a slow final write completes (``SHIELDED_WRITE_GRACE`` only bounds interrupted runs).

Time only passes on pytest-trio's ``autojump_clock``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._groups import is_cancellation, is_fatal, leaves, sole_exception, unwrap_groups

# --------------------------------------------------------------------------- groups


def test_sole_exception_unwraps_nested_single_member_groups() -> None:
    inner = ValueError("x")
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [inner])])
    assert sole_exception(group) is inner
    two = ExceptionGroup("two", [ValueError(), KeyError()])
    assert sole_exception(two) is two
    assert sole_exception(inner) is inner
    assert leaves(BaseExceptionGroup("g", [two, inner])) == [*two.exceptions, inner]


def _unwrapped(group: BaseExceptionGroup[BaseException], user_error: Any = None) -> BaseException:
    """What ``unwrap_groups`` raises for ``group``."""
    try:
        with unwrap_groups() as guard:
            guard.user_error = user_error
            raise group
    except (Exception, KeyboardInterrupt, BaseExceptionGroup) as exc:
        return exc
    raise AssertionError("unwrap_groups swallowed the group")


def test_unwrap_groups_prefers_the_lone_real_exception() -> None:
    error = ValueError("mine")
    raised = _unwrapped(ExceptionGroup("g", [error]))
    assert raised is error
    # The group is not the context of the exception it contained.
    assert not isinstance(raised.__context__, BaseExceptionGroup)


def test_unwrap_groups_keeps_the_user_error_first_with_the_others_as_context() -> None:
    mine = ValueError("mine")
    other = KeyError("internal")
    raised = _unwrapped(ExceptionGroup("g", [mine, other]), user_error=mine)
    assert raised is mine
    assert isinstance(raised.__context__, BaseExceptionGroup)
    assert other in raised.__context__.exceptions


def test_unwrap_groups_counts_one_exception_raised_twice_once() -> None:
    error = ValueError("raised by a task and by its waiter")
    assert _unwrapped(ExceptionGroup("g", [error, error]), user_error=error) is error
    assert _unwrapped(ExceptionGroup("g", [error, error])) is error


def test_unwrap_groups_keeps_a_group_of_unrelated_errors() -> None:
    group = ExceptionGroup("g", [ValueError(), KeyError()])
    assert _unwrapped(group) is group


def test_unwrap_groups_turns_an_interrupt_among_errors_into_keyboard_interrupt() -> None:
    raised = _unwrapped(BaseExceptionGroup("g", [ValueError(), KeyboardInterrupt()]))
    assert isinstance(raised, KeyboardInterrupt)
    assert isinstance(raised.__cause__, BaseExceptionGroup)


async def test_cancellation_helpers_classify_nursery_groups() -> None:
    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep_forever()
        except BaseException as exc:
            caught.append(exc)
            raise
    assert len(caught) == 1
    assert is_cancellation(caught[0])
    assert is_fatal(caught[0])
    assert not is_cancellation(ValueError())
    assert not is_fatal(SystemExit())
    assert is_fatal(BaseExceptionGroup("g", [SystemExit(), KeyboardInterrupt()]))


async def test_open_runtime_raises_the_users_own_exception() -> None:
    with pytest.raises(ValueError, match="from the body") as info:
        async with tf.open_runtime():
            raise ValueError("from the body")
    assert type(info.value) is ValueError


async def test_open_runtime_raises_the_users_own_exception_while_runs_execute() -> None:
    async def forever(ctx: tf.StepContext) -> None:
        await trio.sleep_forever()

    wf = tf.create_workflow(id="g-forever").then(tf.create_step(id="s", execute=forever)).commit()

    async def body() -> None:
        async with tf.open_runtime() as runtime:
            run = await runtime.create_run(wf)
            await run.stream()
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("body")

    with pytest.raises(KeyError, match="body"):
        await body()


# --------------------------------------------------------------------------- BaseException


class Boom(BaseException):
    """Not an Exception: what a careless library might raise."""


BASE_ERRORS = [Boom("boom"), SystemExit(3), GeneratorExit()]


def _raising(error: BaseException) -> Any:
    async def execute(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        raise error

    return execute


async def _slow_ok(ctx: tf.StepContext) -> str:
    await trio.sleep(5)
    return "ok"


async def _raise_boom(ctx: tf.StepContext) -> Any:
    await trio.lowlevel.checkpoint()
    raise Boom("from user code")


async def _identity(ctx: tf.StepContext) -> Any:
    await trio.lowlevel.checkpoint()
    return ctx.input_data


async def _truthy(ctx: tf.StepContext) -> bool:
    await trio.lowlevel.checkpoint()
    return True


async def _block(ctx: tf.StepContext) -> None:
    await trio.sleep_forever()


def _step(step_id: str) -> tf.Step:
    return tf.create_step(id=step_id, execute=_identity)


@pytest.mark.parametrize("error", BASE_ERRORS, ids=lambda e: type(e).__name__)
async def test_a_step_raising_a_base_exception_fails_only_its_own_run(
    error: BaseException, autojump_clock: trio.testing.MockClock
) -> None:
    bad = tf.create_workflow(id="bad").then(tf.create_step(id="s", execute=_raising(error)))
    good = tf.create_workflow(id="good").then(tf.create_step(id="slow", execute=_slow_ok))
    async with tf.open_runtime(workflows=[bad, good]) as runtime:
        other = await runtime.create_run(good)
        out = await other.stream()
        run = await runtime.create_run(bad)
        result = await run.start()
        assert result.status == "failed"
        assert isinstance(result.error, type(error))
        assert result.steps["s"].status == "failed"
        chunks = [c.type for c in await runtime.storage.read_events(run.run_id)]
        assert chunks[-1] == "workflow-finish"
        stored = await runtime.get_run_state(run.run_id)
        assert stored.status == "failed"
        assert stored.error is not None
        assert stored.error.name == type(error).__name__
        # The unrelated run was not touched.
        assert (await out.result()).status == "success"


async def test_a_base_exception_is_not_retried() -> None:
    calls = 0

    async def execute(ctx: tf.StepContext) -> None:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        raise Boom("once")

    wf = tf.create_workflow(id="once").then(tf.create_step(id="s", execute=execute, retries=3))
    async with tf.open_runtime(workflows=[wf]) as runtime:
        run = await runtime.create_run(wf)
        assert (await run.start()).status == "failed"
    assert calls == 1


@pytest.mark.parametrize("where", ["map", "sleep", "dountil", "on_finish"])
async def test_user_functions_raising_a_base_exception_fail_their_run(where: str) -> None:
    wf = tf.create_workflow(id=f"user-{where}")
    if where == "map":
        wf = wf.map(_raise_boom)
    elif where == "sleep":
        wf = wf.sleep(_raise_boom)
    elif where == "dountil":
        wf = wf.dountil(_step("a"), _raise_boom)
    else:
        wf = tf.create_workflow(id=f"user-{where}", on_finish=_raise_boom).then(_step("a"))
    async with tf.open_runtime(workflows=[wf]) as runtime:
        run = await runtime.create_run(wf)
        result = await run.start(input_data=1)
        if where == "on_finish":
            # A lifecycle callback's error is logged; the run's outcome stands.
            assert result.status == "success"
        else:
            assert result.status == "failed"
            assert isinstance(result.error, Boom)
        # The runtime still works.
        after = tf.create_workflow(id="after").then(_step("b")).commit()
        again = await runtime.create_run(after)
        assert (await again.start(input_data=2)).status == "success"


async def test_a_branch_condition_raising_a_base_exception_counts_as_false() -> None:
    wf = tf.create_workflow(id="cond").branch([(_raise_boom, _step("a")), (_truthy, _step("b"))])
    async with tf.open_runtime(workflows=[wf]) as runtime:
        run = await runtime.create_run(wf)
        result = await run.start(input_data=1)
    assert result.status == "success"
    assert "a" not in result.steps
    assert result.steps["b"].status == "success"


async def test_restart_active_runs_survives_a_step_raising_a_base_exception() -> None:
    storage = tf.MemoryStorage()
    blocked = tf.create_workflow(id="boot").then(tf.create_step(id="s", execute=_block))
    async with tf.open_runtime(storage=storage, workflows=[blocked]) as runtime:
        run = await runtime.create_run(blocked)
        await run.stream()
        await trio.testing.wait_all_tasks_blocked()
    before = await storage.load_snapshot(run.run_id)
    assert before is not None
    assert before.status == "running"
    # The next boot: the same workflow id now raises a BaseException. Twice: the failed
    # run is not restarted again, and neither boot crashes.
    for _ in range(2):
        crashing = tf.create_workflow(id="boot").then(
            tf.create_step(id="s", execute=_raising(Boom("boot")))
        )
        async with tf.open_runtime(storage=storage, workflows=[crashing], restart_active_runs=True):
            await trio.testing.wait_all_tasks_blocked()
        snapshot = await storage.load_snapshot(run.run_id)
        assert snapshot is not None
        assert snapshot.status == "failed"


# --------------------------------------------------------------------------- strict JSON


def _cycle() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def _deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


NOT_JSON: list[tuple[str, Any, str, str]] = [
    # (id, output, path, words of the reason)
    ("object", lambda: {"a": object()}, "a", "type object"),
    ("bytes", lambda: {"items": [1, 2, b"x"]}, "items[2]", "type bytes"),
    ("cycle", _cycle, "[1]", "contains itself"),
    ("nan", lambda: {"x": float("nan")}, "x", "nan"),
    ("infinity", lambda: [float("inf")], "[0]", "inf"),
    ("deep", lambda: _deep(150), "[0]" * 100, "deeper than 100"),
    ("surrogate", lambda: {"s": "\ud800"}, "s", "surrogate"),
]


def _returning(make: Any) -> Any:
    async def execute(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        return make()

    return execute


@pytest.mark.parametrize(
    ("make", "path", "words"), [c[1:] for c in NOT_JSON], ids=[c[0] for c in NOT_JSON]
)
async def test_a_step_output_that_is_not_strict_json_fails_the_step(
    make: Any, path: str, words: str, autojump_clock: trio.testing.MockClock
) -> None:
    wf = tf.create_workflow(id="odd").then(tf.create_step(id="s", execute=_returning(make)))
    async with tf.open_runtime(workflows=[wf]) as runtime:
        run = await runtime.create_run(wf)
        with trio.fail_after(60):
            out = await run.stream()
            chunks = [chunk async for chunk in out]
            result = await out.result()
        assert result.status == "failed"
        error = result.error
        assert isinstance(error, tf.ValidationError)
        assert str(error).startswith("Step output is not valid JSON: ")
        assert getattr(error, "path", None) == path
        assert words in str(error)
        assert [c.type for c in chunks][-2:] == ["workflow-step-result", "workflow-finish"]
        assert chunks[-1].payload.workflow_status == "failed"
        stored = await runtime.get_run_state(run.run_id)
        assert stored.status == "failed"
        assert stored.steps["s"].status == "failed"


async def test_the_error_names_the_path_in_one_line() -> None:
    wf = tf.create_workflow(id="odd-path").then(
        tf.create_step(id="s", execute=_returning(lambda: {"items": [1, 2, b"x"]}))
    )
    async with tf.open_runtime(workflows=[wf]) as runtime:
        result = await (await runtime.create_run(wf)).start()
    assert str(result.error) == (
        "Step output is not valid JSON: items[2]: a value of type bytes is not JSON"
    )
    assert isinstance(result.error, ValueError)


@pytest.mark.parametrize("what", ["state", "suspend", "bail", "map"])
async def test_other_values_a_step_produces_are_checked_too(what: str) -> None:
    async def execute(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        if what == "state":
            ctx.set_state({"n": float("nan")})
        elif what == "suspend":
            await ctx.suspend({"blob": b"x"})
        elif what == "bail":
            ctx.bail({"x": float("inf")})
        return 1

    wf = tf.create_workflow(id=f"odd-{what}")
    if what == "map":
        wf = wf.map(_returning(lambda: {"m": object()}))
    else:
        wf = wf.then(tf.create_step(id="s", execute=execute))
    async with tf.open_runtime(workflows=[wf]) as runtime:
        run = await runtime.create_run(wf)
        result = await run.start(input_data=1)
        assert result.status == "failed", result
        assert isinstance(result.error, tf.ValidationError)
        prefix = {
            "state": "State update",
            "suspend": "Suspend payload",
            "bail": "Bail value",
            "map": "Step output",
        }[what]
        assert str(result.error).startswith(prefix + " is not valid JSON: ")
        assert (await runtime.get_run_state(run.run_id)).status == "failed"


async def test_restart_of_a_run_whose_step_returns_bytes_fails_it(tmp_path: Any) -> None:
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    await storage.open()
    try:
        blocked = tf.create_workflow(id="odd-restart").then(tf.create_step(id="s", execute=_block))
        async with tf.open_runtime(storage=storage, workflows=[blocked]) as runtime:
            run = await runtime.create_run(blocked)
            await run.stream()
            await trio.testing.wait_all_tasks_blocked()
        odd = tf.create_workflow(id="odd-restart").then(
            tf.create_step(id="s", execute=_returning(lambda: b"raw"))
        )
        async with tf.open_runtime(storage=storage, workflows=[odd]) as runtime:
            again = await runtime.create_run(odd, run_id=run.run_id)
            with trio.fail_after(30):
                result = await again.restart()
            assert result.status == "failed"
            assert "Step output is not valid JSON: (root): a value of type bytes" in str(
                result.error
            )
        snapshot = await storage.load_snapshot(run.run_id)
        assert snapshot is not None
        assert snapshot.status == "failed"
    finally:
        await storage.aclose()


# --------------------------------------------------------------------------- cancel


def _unsettled(chunks: list[Any]) -> list[str]:
    """Ids of step-start chunks without a later result/suspended chunk for the same id."""
    open_ids: list[str] = []
    for chunk in chunks:
        if chunk.type == "workflow-step-start":
            open_ids.append(chunk.payload.id)
        elif (
            chunk.type in ("workflow-step-result", "workflow-step-suspended")
            and chunk.payload.id in open_ids
        ):
            open_ids.remove(chunk.payload.id)
    return open_ids


async def _cancel_while_blocked(wf: tf.Workflow, input_data: Any) -> list[Any]:
    async with tf.open_runtime(workflows=[wf]) as runtime:
        run = await runtime.create_run(wf)
        out = await run.stream(input_data=input_data)
        await trio.testing.wait_all_tasks_blocked()
        await run.cancel()
        with trio.fail_after(10):
            chunks = [chunk async for chunk in out]
        assert (await out.result()).status == "canceled"
        stored = list(await runtime.storage.read_events(run.run_id))
    assert [c.type for c in stored] == [c.type for c in chunks]
    return chunks


async def test_cancel_settles_a_foreach_with_concurrency(autojump_clock: Any) -> None:
    wf = tf.create_workflow(id="fe-cancel").foreach(
        tf.create_step(id="s", execute=_block), concurrency=2
    )
    chunks = await _cancel_while_blocked(wf, [1, 2, 3])
    assert _unsettled(chunks) == []
    results = [c for c in chunks if c.type == "workflow-step-result"]
    assert [(c.payload.id, c.payload.status) for c in results] == [("s", "canceled")]
    assert [c.type for c in chunks][-2:] == ["workflow-canceled", "workflow-finish"]


async def test_cancel_settles_a_nested_workflow_inside_its_parallel(autojump_clock: Any) -> None:
    inner = tf.create_workflow(id="inner").parallel(
        [tf.create_step(id="a", execute=_block), tf.create_step(id="b", execute=_block)]
    )
    wf = tf.create_workflow(id="nest-cancel").then(inner)
    chunks = await _cancel_while_blocked(wf, 1)
    assert _unsettled(chunks) == []
    statuses = {c.payload.id: c.payload.status for c in chunks if c.type == "workflow-step-result"}
    assert statuses == {"inner.a": "canceled", "inner.b": "canceled", "inner": "canceled"}


async def test_cancel_settles_a_nested_foreach_with_concurrency(autojump_clock: Any) -> None:
    inner = tf.create_workflow(id="inner-fe").foreach(
        tf.create_step(id="s", execute=_block), concurrency=3
    )
    wf = tf.create_workflow(id="nest-fe-cancel").then(inner)
    chunks = await _cancel_while_blocked(wf, [1, 2, 3])
    assert _unsettled(chunks) == []


# --------------------------------------------------------------------------- slow final write


class SlowFinalWrites:
    """A MemoryStorage whose snapshot writes of a finished run take ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.inner = tf.MemoryStorage()
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def save_snapshot(self, snapshot: Any, events: Any = (), **kwargs: Any) -> bool:
        if str(snapshot.status) in ("success", "failed", "canceled"):
            await trio.sleep(self.delay)
        return bool(await self.inner.save_snapshot(snapshot, events, **kwargs))


async def _quick(ctx: tf.StepContext) -> str:
    await trio.lowlevel.checkpoint()
    return "done"


async def test_a_slow_final_write_completes(autojump_clock: trio.testing.MockClock) -> None:
    storage = SlowFinalWrites(delay=60)
    wf = tf.create_workflow(id="slow-final").then(tf.create_step(id="s", execute=_quick))
    async with tf.open_runtime(storage=storage, workflows=[wf]) as runtime:  # type: ignore[arg-type]
        run = await runtime.create_run(wf)
        started = trio.current_time()
        result = await run.start()
        assert trio.current_time() - started >= 60
        assert result.status == "success"
        assert (await runtime.get_run_state(run.run_id)).status == "success"


async def test_a_slow_final_write_of_a_canceled_run_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = SlowFinalWrites(delay=60)
    wf = tf.create_workflow(id="slow-cancel").then(tf.create_step(id="s", execute=_block))
    async with tf.open_runtime(storage=storage, workflows=[wf]) as runtime:  # type: ignore[arg-type]
        run = await runtime.create_run(wf)
        out = await run.stream()
        await trio.testing.wait_all_tasks_blocked()
        await run.cancel()
        assert (await out.result()).status == "canceled"
        assert (await runtime.get_run_state(run.run_id)).status == "canceled"


async def test_closing_the_runtime_still_bounds_a_final_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trioflow._driver._execution import SHIELDED_WRITE_GRACE

    storage = SlowFinalWrites(delay=10_000)
    wf = tf.create_workflow(id="slow-close").then(tf.create_step(id="s", execute=_quick))
    async with tf.open_runtime(storage=storage, workflows=[wf]) as runtime:  # type: ignore[arg-type]
        run = await runtime.create_run(wf)
        await run.stream()
        await trio.sleep(100)  # the final write is under way
        closing = trio.current_time()
    assert trio.current_time() - closing <= SHIELDED_WRITE_GRACE + 1


async def test_open_runtime_keeps_a_group_the_users_block_raised_itself() -> None:
    mine = ExceptionGroup("mine", [ValueError("inner")])
    with pytest.RaisesGroup(ValueError, match="^mine$") as caught:
        async with tf.open_runtime():
            raise mine
    # Only the runtime's own nursery group is unwrapped: the user's group comes out whole.
    assert caught.value is mine
