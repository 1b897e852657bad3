"""The command line as a new user meets it in the first hour (issue 14): runs started by
``serve`` continued without ``--ref``, errors while importing a workflow module say where,
resume hints and missing options filled with an example of the schema, ``runs`` refusing
what it cannot list, SIGTERM treated as Ctrl-C, ``show --all`` listing every step at every
depth with its retries, install hints that work.

Real subprocesses, as tests/test_cli.py (whose helpers these tests share).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_cli import (
    FLOWS,
    HAS_BRIDGE,
    ROOT,
    _env,
    assert_one_line_error,
    cli,
    only_run,
    run_ids,
    spawn,
)

needs_bridge = pytest.mark.skipif(not HAS_BRIDGE, reason="trioflow.bridge is not installed")

EXTRA_FLOWS = textwrap.dedent(
    '''

    @attrs.frozen
    class Decision:
        approved: bool
        by: str = "unknown"
        notes: list[str] = attrs.Factory(list)


    async def decide(ctx):
        if ctx.resume_data is None:
            return await ctx.suspend({"q": "ok?"}, resume_label="boss")
        return ctx.resume_data.by


    async def count(ctx):
        if ctx.resume_data is None:
            return await ctx.suspend({"q": "how many?"})
        return ctx.resume_data


    decisions = (
        tf.create_workflow(id="decisions")
        .parallel([
            tf.create_step(id="decide", execute=decide, resume_schema=Decision),
            tf.create_step(id="count", execute=count, resume_schema=int),
        ])
        .commit()
    )


    async def fetch(ctx):
        if ctx.input_data == 2 and ctx.retry_count == 0:
            raise RuntimeError("flaky")
        return ctx.input_data * 10


    async def tally(ctx):
        if ctx.retry_count < 2:
            raise RuntimeError("not yet")
        return sum(ctx.input_data)


    async def label(ctx):
        return f"total {ctx.input_data}"


    async def crack(ctx):
        raise ValueError(f"cracked on attempt {ctx.retry_count}")


    digest = tf.create_workflow(id="digest").then(tf.create_step(id="fetch", execute=fetch, retries=1)).commit()
    summary = tf.create_workflow(id="summary").then(tf.create_step(id="label", execute=label)).commit()
    fragile = tf.create_workflow(id="fragile").then(tf.create_step(id="crack", execute=crack, retries=1)).commit()

    deep = (
        tf.create_workflow(id="deep")
        .foreach(digest, concurrency=1)
        .then(tf.create_step(id="tally", execute=tally, retries=3))
        .then(summary)
        .commit()
    )
    deep_failing = tf.create_workflow(id="deep_failing").then(fragile).commit()
    '''
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(FLOWS + EXTRA_FLOWS, encoding="utf-8")
    return tmp_path


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.rstrip("\n").splitlines()
    assert lines[0].startswith("trioflow: error: "), lines
    return lines


# --- item 2: runs started by serve (or a worker) remember their module ----------------------

CLIENT = textwrap.dedent(
    """
    import sys

    import trio
    import trioflow as tf


    async def main(url):
        async with tf.bridge.connect(url, token="secret") as client:
            run_id = await client.start(
                "approval",
                {"id": "o-9", "amount": 3},
                # A client cannot choose what a later `trioflow resume` imports.
                request_context={"trioflow__workflowRef": "evil:wf"},
            )
            async for chunk in client.subscribe(run_id):
                if chunk.type == "workflow-finish":
                    break
        print(run_id)


    trio.run(main, sys.argv[1])
    """
)


@needs_bridge
def test_a_run_started_through_serve_is_resumed_and_cancelled_without_ref(workdir: Path) -> None:
    (workdir / "client.py").write_text(CLIENT, encoding="utf-8")
    with spawn(workdir, "serve", "flows", "--port", "0", "--json", env={"TRIOFLOW_TOKEN": "secret"}) as server:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        ids = []
        for _ in range(2):
            client = subprocess.run(
                [sys.executable, "client.py", url],
                cwd=workdir,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert client.returncode == 0, client.stderr
            ids.append(client.stdout.strip())
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
    shown = json.loads(cli(workdir, "show", ids[0], "--json").stdout)
    assert shown["workflowRef"] == "flows:approval"

    resumed = cli(workdir, "resume", ids[0], "--data", '{"approved": true}')
    assert resumed.returncode == 0, resumed.stderr
    assert '"approved": true' in resumed.stdout

    canceled = cli(workdir, "cancel", ids[1])
    assert canceled.returncode == 0, canceled.stderr
    assert run_ids(workdir, "--status", "canceled") == [ids[1]]


def test_serving_a_list_of_workflows_stores_a_reference_that_finds_each(workdir: Path) -> None:
    # The reference `serve MODULE:LIST` stores names the list: resume picks the run's
    # workflow from it by id. Driven in-process: the stamping is the workflows' on_start.
    script = textwrap.dedent(
        """
        import trio
        import trioflow as tf
        from trioflow.cli._load import load_module_workflows

        import flows

        flows.both = [flows.fanout, flows.approval]


        async def main():
            workflows = load_module_workflows("flows:both")
            async with tf.SqliteStorage("trioflow.db") as storage:
                async with tf.open_runtime(storage=storage, workflows=workflows) as rt:
                    run = await rt.create_run(flows.approval)
                    await run.start(input_data={"id": "o-1", "amount": 1})
                    print(run.run_id)


        trio.run(main)
        """
    )
    (workdir / "starter.py").write_text(script, encoding="utf-8")
    started = subprocess.run(
        [sys.executable, "starter.py"], cwd=workdir, env=_env(), capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert json.loads(cli(workdir, "show", run_id, "--json").stdout)["workflowRef"] == (
        "flows:both"
    )
    # flows.both is only set by the starter: a later process does not have it.
    (workdir / "flows.py").write_text(
        FLOWS + EXTRA_FLOWS + "\nboth = [fanout, approval]\n", encoding="utf-8"
    )
    resumed = cli(workdir, "resume", run_id, "--data", '{"approved": false}')
    assert resumed.returncode == 0, resumed.stderr


# --- item 3: an error while importing says where ----------------------------------------------


def test_an_error_raised_while_importing_shows_the_users_frames(workdir: Path) -> None:
    (workdir / "helpers.py").write_text("RATE = 1 / 0\n", encoding="utf-8")
    (workdir / "shop.py").write_text("import helpers\n", encoding="utf-8")
    for target in ("shop:wf", "./shop.py:wf"):
        lines = _error_lines(cli(workdir, "run", target))
        assert "ZeroDivisionError: division by zero" in lines[0]
        text = "\n".join(lines[1:])
        assert f'File "{workdir / "shop.py"}", line 1, in <module>' in text
        assert f'File "{workdir / "helpers.py"}", line 1, in <module>' in text
        assert "RATE = 1 / 0" in text
        assert "importlib" not in text
        assert "trioflow" not in text.replace(str(workdir), "")


def test_a_syntax_error_in_a_workflow_module_names_its_line(workdir: Path) -> None:
    (workdir / "broken.py").write_text("x = 1\ny = (\n", encoding="utf-8")
    lines = _error_lines(cli(workdir, "run", "broken:wf"))
    assert "SyntaxError" in lines[0]
    assert f'File "{workdir / "broken.py"}", line 2' in "\n".join(lines)


# --- item 4: the resume hint is filled ------------------------------------------------------------


def test_the_resume_hint_is_an_example_of_the_resume_schema(workdir: Path) -> None:
    proc = cli(workdir, "run", "flows:approval", "--input", '{"id": "o-1", "amount": 5}')
    assert proc.returncode == 3, proc.stderr
    run_id = only_run(workdir)
    expected = f"""trioflow resume {run_id} --data '{{"approved": true}}'"""
    assert proc.stdout.splitlines()[-1] == expected
    shown = cli(workdir, "show", run_id)
    assert f"resume    {expected}" in shown.stdout
    # The printed command is one the user can run as it is.
    done = cli(workdir, *shlex.split(expected)[1:])
    assert done.returncode == 0, done.stderr


def test_several_suspended_steps_get_one_command_each_with_label_or_step(workdir: Path) -> None:
    proc = cli(workdir, "run", "flows:decisions", "--json")
    assert proc.returncode == 3, proc.stderr
    body = json.loads(proc.stdout)
    run_id = body["runId"]
    decide = (
        f"trioflow resume {run_id} --data "
        """'{"approved": true, "by": "unknown", "notes": []}' --label boss"""
    )
    count = f"trioflow resume {run_id} --data 0 --step count"
    assert body["resumeCommands"] == [decide, count]
    assert body["resumeCommand"] == decide
    plain = cli(workdir, "show", run_id).stdout
    assert f"resume    {decide}" in plain
    assert f"resume    {count}" in plain
    assert cli(workdir, *shlex.split(count)[1:]).returncode == 3
    assert cli(workdir, *shlex.split(decide)[1:]).returncode == 0


def test_restart_of_a_suspended_run_points_at_the_filled_resume_command(workdir: Path) -> None:
    assert cli(workdir, "run", "flows:approval", "--input", '{"id": "a", "amount": 1}').returncode == 3
    run_id = only_run(workdir)
    assert_one_line_error(
        cli(workdir, "restart", run_id),
        f"""is suspended: continue it with trioflow resume {run_id} --data '{{"approved": true}}'""",
    )


# --- item 5: a missing --input / --data ------------------------------------------------------------


def test_a_missing_input_names_the_option_and_an_example(workdir: Path) -> None:
    assert_one_line_error(
        cli(workdir, "run", "flows:approval"),
        "missing --input: workflow 'approval' expects a JSON object",
        """e.g. --input '{"id": "...", "amount": 0}'""",
    )
    assert not (workdir / "trioflow.db").exists() or run_ids(workdir) == []


def test_a_missing_data_names_the_option_and_an_example(workdir: Path) -> None:
    assert cli(workdir, "run", "flows:approval", "--input", '{"id": "a", "amount": 1}').returncode == 3
    run_id = only_run(workdir)
    assert_one_line_error(
        cli(workdir, "resume", run_id),
        "missing --data: step 'check' expects a JSON object",
        """e.g. --data '{"approved": true}'""",
    )
    assert run_ids(workdir, "--status", "suspended") == [run_id]


# --- item 6: runs refuses what it cannot list ------------------------------------------------------


def test_runs_on_a_missing_database_is_refused(workdir: Path) -> None:
    assert_one_line_error(cli(workdir, "runs"), "no database at trioflow.db")
    assert_one_line_error(cli(workdir, "runs", "--json", "--db", "other.db"), "other.db")
    assert not (workdir / "trioflow.db").exists()
    assert not (workdir / "other.db").exists()


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_runs_with_a_limit_below_one_is_refused(workdir: Path, limit: str) -> None:
    assert cli(workdir, "run", "flows:fanout", "--input", "[1]").returncode == 0
    assert_one_line_error(cli(workdir, "runs", "--limit", limit), "--limit must be 1 or more", limit)


# --- item 7: SIGTERM is treated as Ctrl-C ------------------------------------------------------


def test_sigterm_stops_the_run_as_ctrl_c_does_and_restart_finishes_it(workdir: Path) -> None:
    with spawn(workdir, "run", "flows:slowflow", "--input", '{"n": 4}') as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "[start] slow":
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    run_id = only_run(workdir)
    assert err.splitlines() == [
        "terminated (SIGTERM)",
        f"run {run_id} stopped and can be continued with:",
        f"trioflow restart {run_id}",
    ]
    assert run_ids(workdir, "--status", "running") == [run_id]
    restarted = cli(workdir, "restart", run_id, env={"FLOWS_FAST": "1"})
    assert restarted.returncode == 0, restarted.stderr
    assert 'result: {"n": 8}' in restarted.stdout


# --- item 8: show --all lists every step at every depth, with retries ----------------------------

DEEP_KEYS = [
    "digest",
    "tally",
    "summary",
    "digest[0]",
    "digest[1]",
    "digest[0].fetch",
    "digest[1].fetch",
    "summary.label",
]


def _deep_run(workdir: Path) -> str:
    proc = cli(workdir, "run", "flows:deep", "--input", "[1, 2]")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return only_run(workdir)


def _rows(stdout: str) -> dict[str, str]:
    """The plain table's rows by their first column."""
    return {line.split()[0]: line for line in stdout.splitlines() if line.strip()}


def test_show_all_json_lists_every_settled_step_by_qualified_key(workdir: Path) -> None:
    run_id = _deep_run(workdir)
    body = json.loads(cli(workdir, "show", run_id, "--all", "--json").stdout)
    every = body["allSteps"]
    assert sorted(every) == sorted(DEEP_KEYS)
    assert every["digest[1].fetch"]["status"] == "success"
    assert every["digest[1].fetch"]["output"] == 20
    assert every["digest[1].fetch"]["retryCount"] == 1
    assert every["digest[0].fetch"]["retryCount"] == 0
    assert every["digest[1]"]["output"] == 20
    assert every["digest"]["output"] == [10, 20]
    assert every["tally"]["retryCount"] == 2
    assert every["summary.label"]["output"] == "total 30"
    assert isinstance(every["tally"]["startedAt"], int)
    assert "started_at" not in every["tally"]
    # The top-level steps keep their own list, with their retries.
    assert {s["id"]: s["retryCount"] for s in body["steps"]} == {
        "digest": 0,
        "tally": 2,
        "summary": 0,
    }
    assert "allSteps" not in json.loads(cli(workdir, "show", run_id, "--json").stdout)


def test_show_all_prints_every_step_with_outputs_errors_and_retries(workdir: Path) -> None:
    run_id = _deep_run(workdir)
    shown = cli(workdir, "show", run_id, "--all")
    assert shown.returncode == 0, shown.stderr
    rows = _rows(shown.stdout)
    # Each step under its parent, foreach items in order.
    assert [key for key in rows if key in DEEP_KEYS] == [
        "digest",
        "digest[0]",
        "digest[0].fetch",
        "digest[1]",
        "digest[1].fetch",
        "tally",
        "summary",
        "summary.label",
    ], shown.stdout
    assert "retried 1\N{MULTIPLICATION SIGN}" in rows["digest[1].fetch"]
    assert "20" in rows["digest[1].fetch"]
    assert "retried" not in rows["digest[0].fetch"]
    assert "retried 2\N{MULTIPLICATION SIGN}" in rows["tally"]
    assert '"total 30"' in rows["summary.label"]
    assert "--all" not in shown.stdout

    assert cli(workdir, "run", "flows:deep_failing").returncode == 1
    failed_id = run_ids(workdir, "--workflow", "deep_failing")[0]
    rows = _rows(cli(workdir, "show", failed_id, "--all").stdout)
    assert "failed" in rows["fragile.crack"]
    assert "retried 1\N{MULTIPLICATION SIGN}" in rows["fragile.crack"]
    assert "ValueError: cracked on attempt 1" in rows["fragile.crack"]


def test_the_show_all_example_of_the_cli_page_is_what_show_all_prints(workdir: Path) -> None:
    run_id = _deep_run(workdir)
    printed = cli(workdir, "show", run_id, "--all").stdout.splitlines()
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    example = page.split("$ trioflow show 2a1aeca3… --all\n", 1)[1].split("```", 1)[0]
    documented = example.splitlines()

    def table(lines: list[str]) -> list[str]:
        start = next(i for i, line in enumerate(lines) if line.startswith("STEP "))
        end = lines.index("", start)
        return [re.sub(r"\d+\.\d\ds", "0.00s", line) for line in lines[start:end]]

    assert table(printed) == table(documented)
    assert printed[-1] == documented[-1]
    plain = cli(workdir, "show", run_id).stdout
    hint = re.search(r"`(\d+ inner steps \(.*? lists them)`", page)
    assert hint is not None
    assert hint.group(1).replace("2a1aeca3…", run_id) in plain


def test_show_all_orders_items_by_index_and_keeps_siblings_in_stored_order() -> None:
    from trioflow.cli._inspect import tree_order

    keys = ["x", "y", "x[10].a", "x[2].b", "x[2].a", "x[10]", "x[2]", "y.z"]
    assert tree_order(keys) == ["x", "x[2]", "x[2].b", "x[2].a", "x[10]", "x[10].a", "y", "y.z"]


def test_show_without_all_counts_the_inner_steps_and_shows_top_level_retries(
    workdir: Path,
) -> None:
    run_id = _deep_run(workdir)
    shown = cli(workdir, "show", run_id)
    assert shown.returncode == 0, shown.stderr
    rows = _rows(shown.stdout)
    assert "retried 2\N{MULTIPLICATION SIGN}" in rows["tally"]
    assert "digest[1].fetch" not in shown.stdout
    assert (
        f"5 inner steps (of nested workflows and foreach items): "
        f"trioflow show {run_id} --all lists them"
    ) in shown.stdout


# --- item 1: install hints name a way to install that works ------------------------------------


def test_install_hints_name_the_checkout_not_a_registry() -> None:
    from trioflow._install import install_hint

    hint = install_hint("bridge")
    assert hint == f"pip install -e {shlex.quote(f'{ROOT}[bridge]')}"
    assert "'trioflow[" not in hint
    assert '"trioflow[' not in hint


def test_a_postgres_db_without_psycopg_names_the_checkout(
    workdir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "psycopg.py").write_text("raise ImportError('blocked for the test')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "trioflow", "runs", "--db", "postgresql://x@localhost/db"],
        cwd=workdir,
        env=_env({"PYTHONPATH": f"{blocker}:{ROOT}"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert_one_line_error(proc, "postgres extra", f"pip install -e '{ROOT}[postgres]'")
