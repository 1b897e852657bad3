"""Durability promises with real processes (SPEC §2 "Resume semantics", §4; issue 4).

Every test runs child Python processes (``sys.executable``) that share one SQLite file:
each child is ``child.py``, written to the test's ``tmp_path`` next to ``workflows.py``
(the workflows it runs); it opens ``tf.open_runtime(storage=tf.SqliteStorage(db))``, does
one thing (start, resume, restart, boot with ``restart_active_runs=True``) and prints one
JSON object on stdout. Steps leave traces in files of ``tmp_path`` (one line per
execution), which is how the tests count executions across processes; they block on
files the test creates, which is how the tests interleave processes without sleeps.

Covered: a run suspended in one process and resumed in another; two processes resuming
the same suspension at once; SIGKILL in the middle of a step followed by ``restart()`` or
a boot with ``restart_active_runs=True``; a foreach killed mid-way; following a run that
executes in another process with ``observe_stream``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest
import trio
from _children import (
    Child,
    assert_contiguous,
    count_types,
    finish_statuses,
    kill,
    spawn_child,
    step_results,
    until,
    wait_until_exists,
)

import trioflow as tf

#: Generous: a child process needs ~0.3 s to import trio and trioflow.
TIMEOUT = 30.0

WORKFLOWS_PY = textwrap.dedent(
    '''
    """Workflows run by the child processes of tests/test_processes.py."""

    import os
    from pathlib import Path

    import trio

    import trioflow as tf

    HERE = Path(__file__).resolve().parent
    WHO = os.environ.get("TF_CHILD", "test")


    def append(name, line):
        with open(HERE / name, "a") as f:
            f.write(f"{line}\\n")


    def touch(name):
        (HERE / name).touch()


    async def wait_for(name):
        while not (HERE / name).exists():
            await trio.sleep(0.01)


    async def hang_if_asked():
        if (HERE / "hang").exists():
            await trio.sleep(60)


    def trace_id(ctx):
        span = ctx.tracing_context
        return None if span is None else span.trace_id


    # --- approval: suspend in one process, resume in another -------------------------

    async def prepare(ctx):
        append("prepare.log", WHO)
        ctx.request_context["prepared_by"] = WHO
        ctx.set_state({"prepared": True})
        return {"order": ctx.input_data["order"], "doubled": ctx.input_data["amount"] * 2}


    async def approve(ctx):
        append("approve.log", WHO)
        if ctx.resume_data is None:
            ctx.set_state({"asked": True})
            await ctx.suspend({"question": "approve " + ctx.input_data["order"] + "?"})
            return {"suspended_in_trace": trace_id(ctx)}
        return {
            "input": ctx.input_data,
            "resume_data": ctx.resume_data,
            "prepare_result": ctx.get_step_result("prepare"),
            "state": ctx.state,
            "request_context": dict(ctx.request_context),
            "trace_id": trace_id(ctx),
            "who": WHO,
        }


    async def finish(ctx):
        append("finish.log", WHO)
        return {"approved": ctx.input_data["resume_data"]["approved"], "state": ctx.state}


    approval = (
        tf.create_workflow(id="approval")
        .then(tf.create_step(id="prepare", execute=prepare))
        .then(tf.create_step(id="approve", execute=approve))
        .then(tf.create_step(id="finish", execute=finish))
        .commit()
    )


    # --- race: two processes resume the same suspension ------------------------------

    async def gate(ctx):
        if ctx.resume_data is None:
            return await ctx.suspend({"waiting": True})
        append("gate.log", WHO)
        touch("entered-" + WHO)
        await wait_for("release")
        return {"opened_by": WHO}


    async def downstream(ctx):
        append("downstream.log", WHO)
        return ctx.input_data


    race = (
        tf.create_workflow(id="race")
        .then(tf.create_step(id="gate", execute=gate))
        .then(tf.create_step(id="downstream", execute=downstream))
        .commit()
    )


    # --- chain4: killed in its third step ----------------------------------------------

    def chain_step(step_id):
        async def execute(ctx):
            append(step_id + ".log", WHO)
            if step_id == "s3":
                touch("s3-entered")
                await hang_if_asked()
            return ctx.input_data + 1

        return tf.create_step(id=step_id, execute=execute)


    chain4 = tf.create_workflow(id="chain4")
    for _id in ("s1", "s2", "s3", "s4"):
        chain4 = chain4.then(chain_step(_id))
    chain4 = chain4.commit()


    # --- items: a foreach over 20 items killed mid-way -----------------------------------

    async def square(ctx):
        i = ctx.input_data
        append("items.log", f"{WHO} {i}")
        if i >= 10:
            touch(f"entered-{i}")
            await hang_if_asked()
        else:
            await trio.sleep(0.01)
        return i * i


    async def total(ctx):
        append("total.log", WHO)
        return sum(ctx.input_data)


    items = (
        tf.create_workflow(id="items")
        .foreach(tf.create_step(id="square", execute=square), concurrency=4)
        .then(tf.create_step(id="total", execute=total))
        .commit()
    )


    # --- chatty: writes chunks slowly, observed from another process -------------------

    async def talk(ctx):
        touch("talking")
        for i in range(10):
            await ctx.writer.write({"i": i})
            await trio.sleep(0.05)
        # The observer acknowledges chunks 0-9 while this step is still running.
        with trio.move_on_after(5) as waited:
            await wait_for("ack")
        for i in range(10, 20):
            await ctx.writer.write({"i": i})
            await trio.sleep(0.05)
        return {"written": 20, "ack_timed_out": waited.cancelled_caught}


    chatty = tf.create_workflow(id="chatty").then(tf.create_step(id="talk", execute=talk)).commit()

    WORKFLOWS = [approval, race, chain4, items, chatty]
    '''
)

CHILD_PY = textwrap.dedent(
    '''
    """One child process of tests/test_processes.py: child.py DB COMMAND WORKFLOW RUN_ID [JSON]."""

    import json
    import os
    import sys
    from pathlib import Path

    import trio

    import trioflow as tf
    from trioflow.tracing import InMemoryTracer

    import workflows

    HERE = Path(__file__).resolve().parent
    WHO = os.environ.get("TF_CHILD", "child")


    def summary(result, tracer):
        return {
            "run_id": result.run_id,
            "status": str(result.status),
            "result": result.result,
            "error": None if result.error is None else repr(result.error),
            "trace_id": result.trace_id,
            "suspended": result.suspended,
            "steps": {k: {"status": str(v.status), "output": v.output} for k, v in result.steps.items()},
            "root_trace_ids": [s.trace_id for s in tracer.by_kind("workflow_run")],
        }


    async def barrier():
        # Both racers get here before either resumes.
        if os.environ.get("TF_BARRIER"):
            (HERE / ("ready-" + WHO)).touch()
            while not (HERE / "go").exists():
                await trio.sleep(0.005)


    async def main(db, command, workflow_id, run_id, arg=None):
        tracer = InMemoryTracer()
        storage = tf.SqliteStorage(db)
        try:
            async with tf.open_runtime(
                storage=storage,
                workflows=workflows.WORKFLOWS,
                tracer=tracer,
                restart_active_runs=command == "boot",
            ) as rt:
                run = await rt.create_run(workflow_id, run_id=run_id)
                if command == "start":
                    options = json.loads(arg)
                    out = summary(await run.start(**options), tracer)
                elif command == "resume":
                    await barrier()
                    try:
                        result = await run.resume(resume_data=json.loads(arg))
                    except tf.TrioflowError as exc:
                        out = {"raised": type(exc).__name__, "message": str(exc)}
                    else:
                        out = summary(result, tracer)
                elif command == "restart":
                    out = summary(await run.restart(), tracer)
                elif command == "boot":
                    async with run.observe_stream(from_seq=1, follow=True) as sub:
                        async for _chunk in sub:
                            pass
                    state = await rt.get_run_state(run_id)
                    out = {"status": str(state.status), "result": state.result}
                else:
                    raise SystemExit("unknown command " + command)
        finally:
            await storage.aclose()
        print(json.dumps(out), flush=True)


    if __name__ == "__main__":
        trio.run(main, *sys.argv[1:])
    '''
)


@attrs.frozen
class Env:
    """The test's directory (child.py, workflows.py, the step trace files) and database."""

    dir: Path
    db: Path

    def lines(self, name: str) -> list[str]:
        path = self.dir / name
        return path.read_text().splitlines() if path.exists() else []

    def touch(self, name: str) -> None:
        (self.dir / name).touch()

    def exists(self, name: str) -> bool:
        return (self.dir / name).exists()


@pytest.fixture
def env(tmp_path: Path) -> Env:
    (tmp_path / "workflows.py").write_text(WORKFLOWS_PY)
    (tmp_path / "child.py").write_text(CHILD_PY)
    return Env(tmp_path, tmp_path / "runs.db")


async def spawn(
    nursery: trio.Nursery, env: Env, name: str, args: Sequence[str], *, barrier: bool = False
) -> Child:
    """Start ``child.py DATABASE *args`` as process ``name``. Cancelling ``nursery`` kills it."""
    return await spawn_child(nursery, env.dir, str(env.db), name, args, barrier=barrier)


async def run_child(env: Env, name: str, *args: str) -> dict[str, Any]:
    """Run one child to its end and return what it printed."""
    async with trio.open_nursery() as nursery:
        child = await spawn(nursery, env, name, args)
    return child.output()


async def stored_events(env: Env, run_id: str) -> list[tf.Chunk]:
    async with tf.SqliteStorage(env.db) as storage:
        return list(await storage.read_events(run_id))


@contextlib.asynccontextmanager
async def sqlite_runtime(env: Env) -> AsyncIterator[tf.Runtime]:
    """``open_runtime`` on this process's own SqliteStorage of the test's database."""
    async with tf.SqliteStorage(env.db) as storage, tf.open_runtime(storage=storage) as rt:
        yield rt


def load_workflows(env: Env) -> ModuleType:
    """Import the children's workflows.py into this process (under a unique name)."""
    spec = importlib.util.spec_from_file_location(
        f"workflows_{abs(hash(env.dir))}", env.dir / "workflows.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_args(workflow_id: str, run_id: str, **options: Any) -> list[str]:
    return ["start", workflow_id, run_id, json.dumps(options)]


# --- suspended in A, resumed in B --------------------------------------------------------


async def test_run_suspended_in_one_process_resumes_in_another_with_everything_intact(
    env: Env,
) -> None:
    with trio.fail_after(TIMEOUT):
        a = await run_child(
            env,
            "A",
            *start_args(
                "approval",
                "r1",
                input_data={"order": "o1", "amount": 5},
                initial_state={"count": 1},
                request_context={"user": "alice", "tenant": "t1"},
            ),
        )
        assert a["status"] == "suspended", a
        assert a["suspended"] == [["approve"]]
        trace_id = a["trace_id"]
        assert trace_id
        assert a["steps"]["approve"]["status"] == "suspended"
        assert a["root_trace_ids"] == [trace_id]

        b = await run_child(env, "B", "resume", "approval", "r1", json.dumps({"approved": True}))

    assert b["status"] == "success", b
    approved = b["steps"]["approve"]["output"]
    assert approved["input"] == {"order": "o1", "doubled": 10}  # the original input
    assert approved["resume_data"] == {"approved": True}
    assert approved["prepare_result"] == {"order": "o1", "doubled": 10}
    assert approved["state"] == {"count": 1, "prepared": True, "asked": True}
    assert approved["request_context"] == {"user": "alice", "tenant": "t1", "prepared_by": "A"}
    assert approved["who"] == "B"
    # The resumed execution continues A's trace: its root span and the step's span.
    assert b["trace_id"] == trace_id
    assert b["root_trace_ids"] == [trace_id]
    assert approved["trace_id"] == trace_id
    assert b["result"] == {
        "approved": True,
        "state": {"count": 1, "prepared": True, "asked": True},
    }
    # prepare ran once (in A), approve once per execution, finish once (in B).
    assert env.lines("prepare.log") == ["A"]
    assert env.lines("approve.log") == ["A", "B"]
    assert env.lines("finish.log") == ["B"]

    events = await stored_events(env, "r1")
    assert_contiguous(events)
    assert count_types(events, "workflow-start") == 2
    assert finish_statuses(events) == ["suspended", "success"]
    assert events[-1].type == "workflow-finish"


# --- two resumers at once ----------------------------------------------------------------


async def test_two_processes_resuming_the_same_suspension_exactly_one_wins(env: Env) -> None:
    with trio.fail_after(TIMEOUT):
        a = await run_child(env, "A", *start_args("race", "r1", input_data=None))
        assert a["status"] == "suspended", a

        async with trio.open_nursery() as nursery:
            racers = [
                await spawn(
                    nursery,
                    env,
                    name,
                    ["resume", "race", "r1", json.dumps({"go": True})],
                    barrier=True,
                )
                for name in ("B1", "B2")
            ]
            # Both are ready to resume before either may.
            await wait_until_exists(env.dir, "ready-B1", "ready-B2")
            env.touch("go")

            # The winner blocks inside the resumed step until "release": the loser must
            # have given up by then. (Two winners would both wait for "release".)
            def settled() -> bool:
                entered = sum(env.exists(f"entered-{r.name}") for r in racers)
                exited = sum(r.done.is_set() for r in racers)
                return (entered == 1 and exited == 1) or entered == 2

            await until(settled)
            env.touch("release")

    outputs = {r.name: r.output() for r in racers}
    winners = [name for name, out in outputs.items() if "raised" not in out]
    losers = [name for name, out in outputs.items() if "raised" in out]
    assert len(winners) == 1, outputs
    assert len(losers) == 1, outputs
    (winner,) = winners
    (loser,) = losers
    assert outputs[loser]["raised"] == "ResumeAlreadyClaimedError", outputs[loser]
    assert outputs[winner]["status"] == "success"
    assert outputs[winner]["result"] == {"opened_by": winner}
    assert env.lines("gate.log") == [winner]
    assert env.lines("downstream.log") == [winner]

    events = await stored_events(env, "r1")
    assert_contiguous(events)
    assert count_types(events, "workflow-start") == 2
    assert finish_statuses(events) == ["suspended", "success"]
    assert step_results(events) == Counter({"gate": 1, "downstream": 1})


# --- SIGKILL in the middle of a step -------------------------------------------------------


async def kill_chain_in_its_third_step(env: Env) -> None:
    env.touch("hang")
    async with trio.open_nursery() as nursery:
        a = await spawn(nursery, env, "A", start_args("chain4", "r1", input_data=0))
        await wait_until_exists(env.dir, "s3-entered")
        assert a.process.returncode is None, a.stderr()
        await kill(a)
    (env.dir / "hang").unlink()


async def check_chain_recovered(env: Env, result: Any) -> None:
    assert result == 4
    assert env.lines("s1.log") == ["A"]
    assert env.lines("s2.log") == ["A"]
    assert env.lines("s3.log") == ["A", "B"]  # at-least-once for the step that was running
    assert env.lines("s4.log") == ["B"]
    events = await stored_events(env, "r1")
    assert_contiguous(events)
    assert count_types(events, "workflow-start") == 2  # A's start, B's restart
    assert finish_statuses(events) == ["success"]
    assert step_results(events) == Counter({"s1": 1, "s2": 1, "s3": 1, "s4": 1})


async def test_sigkill_mid_step_then_restart_in_another_process_continues_the_run(
    env: Env,
) -> None:
    with trio.fail_after(TIMEOUT):
        await kill_chain_in_its_third_step(env)
        b = await run_child(env, "B", "restart", "chain4", "r1")
    assert b["status"] == "success", b
    assert b["steps"]["s2"] == {"status": "success", "output": 2}
    await check_chain_recovered(env, b["result"])


async def test_sigkill_mid_step_then_boot_with_restart_active_runs_continues_the_run(
    env: Env,
) -> None:
    with trio.fail_after(TIMEOUT):
        await kill_chain_in_its_third_step(env)
        b = await run_child(env, "B", "boot", "chain4", "r1")
    assert b["status"] == "success", b
    await check_chain_recovered(env, b["result"])


async def test_foreach_killed_mid_way_restarts_only_the_items_not_recorded_as_finished(
    env: Env,
) -> None:
    with trio.fail_after(TIMEOUT):
        env.touch("hang")
        async with trio.open_nursery() as nursery:
            a = await spawn(
                nursery, env, "A", start_args("items", "r1", input_data=list(range(20)))
            )
            # Items 0-9 are quick; 10-13 (one per worker of concurrency=4) hang.
            await wait_until_exists(env.dir, *(f"entered-{i}" for i in range(10, 14)))
            await kill(a)
        (env.dir / "hang").unlink()

        # What A recorded: a snapshot and its chunks are written together, so the stored
        # progress chunks are exactly the items the stored snapshot holds as finished.
        before = await stored_events(env, "r1")
        recorded = {
            chunk.payload.current_index
            for chunk in before
            if isinstance(chunk, tf.WorkflowStepProgress)
            and chunk.payload.iteration_status == "success"
        }
        ran_in_a = {int(line.split()[1]) for line in env.lines("items.log")}
        assert ran_in_a == set(range(14))
        assert recorded <= set(range(10)), recorded
        assert recorded, "A recorded no finished item before it was killed"

        b = await run_child(env, "B", "restart", "items", "r1")

    assert b["status"] == "success", b
    assert b["result"] == sum(i * i for i in range(20))
    ran_in_b = sorted(int(line.split()[1]) for line in env.lines("items.log") if line[0] == "B")
    assert ran_in_b == sorted(set(range(20)) - recorded)
    assert env.lines("total.log") == ["B"]

    events = await stored_events(env, "r1")
    assert_contiguous(events)
    assert events[: len(before)] == before  # B appended after what A stored
    assert count_types(events, "workflow-start") == 2
    assert finish_statuses(events) == ["success"]
    successes = Counter(
        chunk.payload.current_index
        for chunk in events
        if isinstance(chunk, tf.WorkflowStepProgress)
        and chunk.payload.iteration_status == "success"
    )
    assert successes == Counter(range(20))  # one settled iteration per item, over A and B


# --- observing a run that executes in another process ---------------------------------------


async def test_observe_stream_follows_a_run_executing_in_another_process_live(env: Env) -> None:
    workflows = load_workflows(env)
    received: list[tf.Chunk] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            a = await spawn(nursery, env, "A", start_args("chatty", "r1", input_data=None))
            await wait_until_exists(env.dir, "talking")
            async with sqlite_runtime(env) as rt:
                run = await rt.create_run(workflows.chatty, run_id="r1")
                assert a.process.returncode is None  # A is still running
                async with run.observe_stream(from_seq=1, follow=True) as sub:
                    async for chunk in sub:
                        received.append(chunk)
                        if isinstance(chunk, tf.WorkflowStepOutput) and chunk.payload.output == {
                            "i": 9
                        }:
                            # Seen while A's step runs: let it write the rest.
                            env.touch("ack")
        out = a.output()

    assert out["status"] == "success", out
    assert [c.seq for c in received] == list(range(1, len(received) + 1))
    assert received[0].type == "workflow-start"
    outputs = [c.payload.output for c in received if isinstance(c, tf.WorkflowStepOutput)]
    assert outputs == [{"i": i} for i in range(20)]
    assert isinstance(received[-1], tf.WorkflowFinish)
    assert received[-1].payload.workflow_status == "success"
    assert received == await stored_events(env, "r1")
    # Live: chunks 0-9 reached this process while the step that wrote them was running.
    assert out["result"]["ack_timed_out"] is False, (
        "the observer did not receive chunks 0-9 while the step that wrote them was running"
    )
