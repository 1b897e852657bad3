"""The ``trioflow`` command line, driven as a user drives it: subprocesses against a
temporary SQLite file (run, suspend, resume from another process, cancel, restart after
Ctrl-C, inspect), every kind of bad input, and the ``--json`` outputs parsed."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

Popen = subprocess.Popen[str]

pytest.importorskip("rich", reason="the CLI needs the 'cli' extra (rich)")

ROOT = Path(__file__).resolve().parent.parent

FLOWS = textwrap.dedent(
    '''
    """Workflows the CLI tests run."""
    import os

    import attrs
    import trio

    import trioflow as tf


    @attrs.frozen
    class Order:
        id: str
        amount: int


    @attrs.frozen
    class Approval:
        approved: bool


    async def check(ctx):
        if ctx.resume_data is None:
            return await ctx.suspend({"reason": "needs approval", "id": ctx.input_data.id})
        return {"id": ctx.input_data.id, "approved": ctx.resume_data.approved}


    approval = (
        tf.create_workflow(id="approval", input_schema=Order)
        .then(tf.create_step(id="check", execute=check, input_schema=Order,
                             resume_schema=Approval))
        .commit()
    )


    async def pack(ctx):
        await trio.sleep(0.02)
        await ctx.writer.write({"packed": ctx.input_data})
        return ctx.input_data * 10


    async def announce(ctx):
        await ctx.writer.custom("data-note", {"text": "packing"})
        return ctx.input_data


    fanout = (
        tf.create_workflow(id="fanout")
        .then(tf.create_step(id="announce", execute=announce))
        .foreach(tf.create_step(id="pack", execute=pack), concurrency=2)
        .commit()
    )


    async def explode(ctx):
        await trio.sleep(0)
        raise ValueError("boom at step")


    boom = tf.create_workflow(id="boom").then(tf.create_step(id="explode", execute=explode)).commit()


    async def give_up(ctx):
        ctx.abort()
        await trio.sleep(10)


    aborts = tf.create_workflow(id="aborts").then(tf.create_step(id="give_up", execute=give_up)).commit()


    async def slow(ctx):
        if not os.environ.get("FLOWS_FAST"):
            await trio.sleep(60)
        return {"n": ctx.input_data["n"]}


    async def double(ctx):
        await trio.sleep(0)
        return {"n": ctx.input_data["n"] * 2}


    slowflow = (
        tf.create_workflow(id="slowflow")
        .then(tf.create_step(id="slow", execute=slow))
        .then(tf.create_step(id="double", execute=double))
        .commit()
    )


    async def ask(ctx):
        if ctx.resume_data is None:
            return await ctx.suspend({"who": "any"})
        return ctx.resume_data


    two_questions = (
        tf.create_workflow(id="two_questions")
        .parallel([tf.create_step(id="left", execute=ask), tf.create_step(id="right", execute=ask)])
        .commit()
    )


    async def wait_gate(ctx):
        while not os.path.exists("gate"):
            await trio.sleep(0.02)
        return "opened"


    gated = (
        tf.create_workflow(id="gated")
        .then(tf.create_step(id="wait_gate", execute=wait_gate))
        .then(tf.create_step(id="after_gate", execute=announce))
        .commit()
    )


    def make_approval():
        return approval


    not_a_workflow = 42
    '''
)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRIOFLOW_DB", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(FLOWS, encoding="utf-8")
    return tmp_path


def cli(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``trioflow ARGS`` in ``workdir`` (its database is ``workdir/trioflow.db``)."""
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        cwd=workdir,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def spawn(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Popen]:
    """``trioflow ARGS`` running in the background (killed and reaped on the way out)."""
    with subprocess.Popen(
        [sys.executable, "-m", "trioflow", *args],
        cwd=workdir,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_ids(workdir: Path, *filters: str) -> list[str]:
    proc = cli(workdir, "runs", "--json", *filters)
    assert proc.returncode == 0, proc.stderr
    return [row["runId"] for row in json.loads(proc.stdout)]


def only_run(workdir: Path) -> str:
    ids = run_ids(workdir)
    assert len(ids) == 1, ids
    return ids[0]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trioflow: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def suspended_run(workdir: Path) -> str:
    proc = cli(workdir, "run", "flows:approval", "--input", '{"id": "o-1", "amount": 5}')
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    return only_run(workdir)


# --- the main path: run, suspend, resume in another process ----------------------------------


def test_run_suspends_with_exit_3_and_a_second_process_resumes_it_to_success(
    workdir: Path,
) -> None:
    first = cli(workdir, "run", "flows:approval", "--input", '{"id": "o-1", "amount": 5}')
    assert first.returncode == 3, first.stderr
    run_id = only_run(workdir)
    assert f"trioflow resume {run_id} --data" in first.stdout
    assert '"reason": "needs approval"' in first.stdout

    second = cli(workdir, "resume", run_id, "--data", '{"approved": true}')
    assert second.returncode == 0, second.stderr
    assert 'result: {"id": "o-1", "approved": true}' in second.stdout

    shown = json.loads(cli(workdir, "show", run_id, "--json").stdout)
    assert shown["status"] == "success"
    assert shown["result"] == {"id": "o-1", "approved": True}


def test_a_run_started_from_a_file_path_resumes_from_any_directory(workdir: Path) -> None:
    db = str(workdir / "runs.db")
    first = cli(
        workdir, "run", "flows.py:approval", "--db", db, "--input", '{"id": "o-2", "amount": 1}'
    )
    assert first.returncode == 3, first.stderr
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    (row,) = json.loads(cli(elsewhere, "runs", "--db", db, "--json").stdout)
    second = cli(elsewhere, "resume", row["runId"], "--db", db, "--data", '{"approved": false}')
    assert second.returncode == 0, second.stderr
    assert '"approved": false' in second.stdout


def test_a_workflow_factory_can_be_named_instead_of_a_workflow(workdir: Path) -> None:
    proc = cli(workdir, "run", "flows:make_approval", "--input", '{"id": "o-3", "amount": 2}')
    assert proc.returncode == 3, proc.stderr


def test_a_run_not_started_by_the_command_needs_ref_to_resume(workdir: Path) -> None:
    script = textwrap.dedent(
        """
        import trio, trioflow as tf, flows
        async def main():
            async with tf.SqliteStorage("trioflow.db") as storage:
                async with tf.open_runtime(storage=storage) as rt:
                    run = await rt.create_run(flows.approval)
                    result = await run.start(input_data={"id": "o-4", "amount": 3})
                    print(run.run_id, result.status)
        trio.run(main)
        """
    )
    started = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    run_id, status = started.stdout.split()
    assert status == "suspended", started.stderr

    assert_one_line_error(cli(workdir, "resume", run_id, "--data", "{}"), "--ref MODULE:WORKFLOW")
    resumed = cli(
        workdir, "resume", run_id, "--data", '{"approved": true}', "--ref", "flows:approval"
    )
    assert resumed.returncode == 0, resumed.stderr


# --- exit statuses and output ---------------------------------------------------------------


def test_a_successful_run_exits_0_and_json_gives_the_result(workdir: Path) -> None:
    proc = cli(workdir, "run", "flows:fanout", "--input", "[1, 2, 3]", "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["status"] == "success"
    assert body["result"] == [10, 20, 30]
    assert body["workflowId"] == "fanout"
    assert body["runId"] == only_run(workdir)
    assert body["error"] is None
    assert body["suspended"] == []


def test_plain_output_is_one_line_per_event_without_escape_codes(workdir: Path) -> None:
    proc = cli(workdir, "run", "flows:fanout", "--input", "[1, 2, 3]")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert "[start] pack" in lines
    assert [line for line in lines if line.startswith("[progress] pack")] == [
        "[progress] pack 1/3",
        "[progress] pack 2/3",
        "[progress] pack 3/3",
    ]
    assert '[data-note] {"text": "packing"}' in lines
    assert sum(line.startswith('[output] pack: {"packed": ') for line in lines) == 3
    assert lines[-2:] == ["status: success", "result: [10, 20, 30]"]


def test_a_failed_run_exits_1_and_names_the_error(workdir: Path) -> None:
    proc = cli(workdir, "run", "flows:boom")
    assert proc.returncode == 1, proc.stderr
    assert "error: ValueError: boom at step" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    body = json.loads(cli(workdir, "run", "flows:boom", "--json").stdout)
    assert body["status"] == "failed"
    assert body["error"] == {"name": "ValueError", "message": "boom at step"}


def test_a_canceled_run_exits_4(workdir: Path) -> None:
    proc = cli(workdir, "run", "flows:aborts")
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert "status: canceled" in proc.stdout


def test_json_of_a_suspended_run_lists_paths_payloads_and_the_resume_command(
    workdir: Path,
) -> None:
    proc = cli(workdir, "run", "flows:approval", "--input", '{"id": "o-5", "amount": 5}', "--json")
    assert proc.returncode == 3
    body = json.loads(proc.stdout)
    assert body["status"] == "suspended"
    assert body["suspended"] == [
        {"path": "check", "payload": {"reason": "needs approval", "id": "o-5"}}
    ]
    assert body["resumeCommand"] == (
        f"""trioflow resume {body['runId']} --data '{{"approved": true}}'"""
    )


# --- the demo -----------------------------------------------------------------------------------


def _resume_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("trioflow resume ")]
    assert len(lines) == 1, stdout
    return lines[0]


def _run_printed(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    assert argv[0] == "trioflow"
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *argv[1:]],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_demo_ends_suspended_and_its_printed_command_finishes_it_in_another_process(
    workdir: Path,
) -> None:
    demo = cli(workdir, "demo")
    assert demo.returncode == 3, (demo.stdout, demo.stderr)
    out = demo.stdout
    assert "[start] check_stock" in out
    assert "[start] price" in out
    assert "[progress] pack 8/8" in out  # foreach progress
    assert "[data-note]" in out  # custom output
    command = _resume_line(out)
    run_id = only_run(workdir)
    # The default database: no --db in the command.
    assert command == f'trioflow resume {run_id} --data \'{{"approved": true, "by": "you"}}\''
    # ... and the command that serves the web viewer, to approve it in a browser.
    assert "trioflow serve trioflow._demo:demo_workflow  (then open the web viewer" in out

    finished = _run_printed(command, workdir)
    assert finished.returncode == 0, finished.stderr
    assert '"shipped": true' in finished.stdout


def test_demo_on_another_database_prints_the_db_option(workdir: Path, tmp_path: Path) -> None:
    db = tmp_path / "elsewhere.db"
    demo = cli(workdir, "demo", env={"TRIOFLOW_DB": str(db)})
    assert demo.returncode == 3, demo.stderr
    command = _resume_line(demo.stdout)
    assert f"--db {shlex.quote(str(db))}" in command
    assert f"trioflow serve trioflow._demo:demo_workflow --db {shlex.quote(str(db))}" in demo.stdout
    finished = _run_printed(command, workdir)  # no TRIOFLOW_DB in this terminal
    assert finished.returncode == 0, finished.stderr


# --- inspecting runs -------------------------------------------------------------------------------


def test_runs_json_lists_runs_with_the_documented_keys_and_filters(
    workdir: Path, suspended_run: str
) -> None:
    assert cli(workdir, "run", "flows:fanout", "--input", "[1]").returncode == 0
    rows = json.loads(cli(workdir, "runs", "--json").stdout)
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"runId", "workflowId", "status", "createdAt", "updatedAt"}
        assert isinstance(row["createdAt"], int)
    assert run_ids(workdir, "--status", "suspended") == [suspended_run]
    assert run_ids(workdir, "--workflow", "approval") == [suspended_run]
    table = cli(workdir, "runs").stdout
    assert suspended_run in table
    assert "suspended" in table
    assert "fanout" in table


def test_show_gives_steps_statuses_durations_and_suspended_payloads(
    workdir: Path, suspended_run: str
) -> None:
    body = json.loads(cli(workdir, "show", suspended_run, "--json").stdout)
    assert body["status"] == "suspended"
    assert body["workflowRef"] == "flows:approval"
    assert body["suspended"] == [
        {"path": "check", "payload": {"reason": "needs approval", "id": "o-1"}}
    ]
    (step,) = body["steps"]
    assert step["id"] == "check"
    assert step["status"] == "suspended"
    assert isinstance(step["durationMs"], int)

    text = cli(workdir, "show", suspended_run).stdout
    assert 'suspended check: {"reason": "needs approval", "id": "o-1"}' in text
    assert f"""trioflow resume {suspended_run} --data '{{"approved": true}}'""" in text


def test_events_json_is_the_wire_format_from_any_seq(workdir: Path, suspended_run: str) -> None:
    proc = cli(workdir, "events", suspended_run, "--json")
    chunks = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert chunks[0]["type"] == "workflow-start"
    assert chunks[-1]["type"] == "workflow-finish"
    assert chunks[-1]["payload"]["workflowStatus"] == "suspended"
    later = cli(workdir, "events", suspended_run, "--json", "--from-seq", "3").stdout
    assert next(json.loads(line)["seq"] for line in later.splitlines()) == 3
    plain = cli(workdir, "events", suspended_run).stdout.splitlines()
    assert plain[0].split() == ["1", "[workflow-start]", "approval"]


def test_events_follow_waits_for_a_resume_in_another_process(
    workdir: Path, suspended_run: str
) -> None:
    with spawn(workdir, "events", suspended_run, "--follow") as follower:
        assert follower.stdout is not None
        # Wait until it has printed the stored log, then resume from a third process.
        for line in follower.stdout:
            if "[finish] suspended" in line:
                break
        resumed = cli(workdir, "resume", suspended_run, "--data", '{"approved": true}')
        assert resumed.returncode == 0, resumed.stderr
        rest, _ = follower.communicate(timeout=20)
    assert follower.returncode == 0
    assert "[start] check (resumed)" in rest
    assert rest.splitlines()[-1].split()[1:] == ["[finish]", "success"]


# --- cancel, Ctrl-C and restart --------------------------------------------------------------------


def test_cancel_stores_a_suspended_run_canceled(workdir: Path, suspended_run: str) -> None:
    proc = cli(workdir, "cancel", suspended_run, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"runId": suspended_run, "status": "canceled"}
    assert run_ids(workdir, "--status", "canceled") == [suspended_run]
    assert_one_line_error(
        cli(workdir, "resume", suspended_run, "--data", "{}"), "not suspended", "canceled"
    )


def test_a_run_canceled_from_another_process_ends_canceled_in_its_own(workdir: Path) -> None:
    with spawn(workdir, "run", "flows:gated") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "[start] wait_gate":
                break
        canceled = cli(workdir, "cancel", only_run(workdir))
        assert canceled.returncode == 0, canceled.stderr
        (workdir / "gate").touch()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 4, out + err
    assert "status: canceled" in out
    assert "Traceback" not in err


def test_ctrl_c_stops_the_run_cleanly_and_restart_finishes_it(workdir: Path) -> None:
    with spawn(workdir, "run", "flows:slowflow", "--input", '{"n": 21}') as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "[start] slow":
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run_id = only_run(workdir)
    assert f"trioflow restart {run_id}" in err
    assert run_ids(workdir, "--status", "running") == [run_id]

    restarted = cli(workdir, "restart", run_id, env={"FLOWS_FAST": "1"})
    assert restarted.returncode == 0, restarted.stderr
    assert 'result: {"n": 42}' in restarted.stdout


# --- bad input: one clear line, exit status 2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(["run", "nosuchmodule:wf"], ["nosuchmodule"], id="unknown-module"),
        pytest.param(["run", "flows:nope"], ["no workflow 'nope'", "approval"], id="unknown-wf"),
        pytest.param(["run", "flows:not_a_workflow"], ["not a workflow"], id="not-a-workflow"),
        pytest.param(["run", "flows"], ["MODULE:WORKFLOW"], id="no-colon"),
        pytest.param(["run", "missing.py:wf"], ["no such file"], id="missing-file"),
        pytest.param(
            ["run", "flows:approval", "--input", '{"id": '], ["invalid JSON in --input"], id="json"
        ),
        pytest.param(
            ["run", "flows:approval", "--input", '{"id": 7}'],
            ["Invalid input data:", "id: expected str", "amount:"],
            id="schema",
        ),
        pytest.param(["show", "no-such-run"], ["no run no-such-run"], id="show-unknown-run"),
        pytest.param(
            ["resume", "no-such-run", "--data", "{}"], ["no run no-such-run"], id="resume-unknown"
        ),
        pytest.param(["cancel", "no-such-run"], ["no run no-such-run"], id="cancel-unknown"),
        pytest.param(["events", "no-such-run"], ["no run no-such-run"], id="events-unknown"),
    ],
)
def test_bad_input_gets_one_clear_line(
    workdir: Path, args: Sequence[str], fragments: Sequence[str]
) -> None:
    if args[0] != "run":
        # A database exists, so unknown ids are about the run, not the file.
        assert cli(workdir, "run", "flows:fanout", "--input", "[]").returncode == 0
    assert_one_line_error(cli(workdir, *args), *fragments)


def test_invalid_input_leaves_no_run_behind(workdir: Path) -> None:
    assert cli(workdir, "run", "flows:approval", "--input", '{"id": 7}').returncode == 2
    assert run_ids(workdir) == []


def test_resume_data_failing_its_schema_names_the_field(workdir: Path, suspended_run: str) -> None:
    proc = cli(workdir, "resume", suspended_run, "--data", '{"approved": "yes"}')
    assert_one_line_error(proc, "Invalid resume data:", "approved: expected bool")
    assert run_ids(workdir, "--status", "suspended") == [suspended_run]


def test_resuming_a_run_that_is_not_suspended_is_refused(workdir: Path, suspended_run: str) -> None:
    assert cli(workdir, "resume", suspended_run, "--data", '{"approved": true}').returncode == 0
    proc = cli(workdir, "resume", suspended_run, "--data", '{"approved": true}')
    assert_one_line_error(proc, f"run {suspended_run} is not suspended", "success")


def test_resume_of_several_suspended_steps_asks_for_step(workdir: Path) -> None:
    assert cli(workdir, "run", "flows:two_questions").returncode == 3
    run_id = only_run(workdir)
    assert_one_line_error(cli(workdir, "resume", run_id, "--data", "1"), "left", "right", "--step")
    proc = cli(workdir, "resume", run_id, "--data", '"yes"', "--step", "left")
    assert proc.returncode == 3, proc.stderr  # the other one still waits
    assert "right" in proc.stdout


def test_a_missing_database_is_an_error_not_a_new_file(workdir: Path) -> None:
    assert_one_line_error(cli(workdir, "show", "x", "--db", "absent.db"), "no database")
    assert not (workdir / "absent.db").exists()


def test_a_file_that_is_not_a_database_is_refused_untouched(workdir: Path) -> None:
    (workdir / "notes.txt").write_text("not a database\n", encoding="utf-8")
    assert_one_line_error(cli(workdir, "runs", "--db", "notes.txt"), "notes.txt")
    assert (workdir / "notes.txt").read_text(encoding="utf-8") == "not a database\n"


def test_usage_errors_exit_2_and_help_exits_0(workdir: Path) -> None:
    assert cli(workdir, "frobnicate").returncode == 2
    assert cli(workdir, "resume").returncode == 2
    helped = cli(workdir, "--help")
    assert helped.returncode == 0
    assert "demo" in helped.stdout
    assert "exit status" in helped.stdout


# --- packaging ----------------------------------------------------------------------------------


def test_importing_trioflow_does_not_import_rich() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, trioflow; print('rich' in sys.modules)"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.strip() == "False", proc.stderr


def test_without_rich_the_command_names_the_extra_to_install(workdir: Path) -> None:
    script = (
        "import sys; sys.modules['rich'] = None\n"
        "from trioflow.__main__ import main\n"
        "sys.exit(main(['runs']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert_one_line_error(proc, f"pip install -e {shlex.quote(f'{ROOT}[cli]')}")


# --- the websocket bridge -------------------------------------------------------------------------


def _has_bridge() -> bool:
    try:
        bridge = importlib.import_module("trioflow.bridge")
    except ImportError:
        return False
    return hasattr(bridge, "serve") and hasattr(bridge, "connect")


HAS_BRIDGE = _has_bridge()


@pytest.mark.skipif(HAS_BRIDGE, reason="trioflow.bridge is installed")
def test_serve_and_watch_say_the_bridge_is_not_installed(workdir: Path) -> None:
    assert_one_line_error(cli(workdir, "serve", "flows"), "bridge")
    assert_one_line_error(cli(workdir, "watch", "ws://127.0.0.1:1", "some-run"), "bridge")


@pytest.mark.skipif(not HAS_BRIDGE, reason="trioflow.bridge is not installed")
def test_watch_follows_a_run_served_by_serve_until_it_ends(
    workdir: Path, suspended_run: str
) -> None:
    serve = ("serve", "flows", "--port", "0", "--json")
    with spawn(workdir, *serve, env={"TRIOFLOW_TOKEN": "secret"}) as server:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        with spawn(workdir, "watch", url, suspended_run, env={"TRIOFLOW_TOKEN": "secret"}) as watcher:
            assert watcher.stdout is not None
            for line in watcher.stdout:
                if line.startswith("[suspended] check"):
                    break
            resumed = cli(workdir, "resume", suspended_run, "--data", '{"approved": true}')
            assert resumed.returncode == 0, resumed.stderr
            rest, err = watcher.communicate(timeout=20)
        assert watcher.returncode == 0, err
        assert rest.splitlines()[-1] == "status: success"
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=20)
    assert server.returncode == 0  # SIGINT stops a server cleanly, as SIGTERM does
