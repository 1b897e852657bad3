"""The trioflow pytest plugin (entry point pytest11 ``trioflow``) as a user's test suite sees
it: a runtime on a MockClock over MemoryStorage and SqliteStorage, the clock fixture, the
real-clock opt-out; and ``import trioflow.testing`` without hypothesis installed."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]


def plugin_args() -> list[str]:
    """Load the plugin explicitly unless its entry point is installed (then pytest loads
    it, and loading it twice is an error)."""
    installed = any(
        ep.value == "trioflow.testing._plugin"
        for ep in importlib.metadata.entry_points(group="pytest11")
    )
    return [] if installed else ["-p", "trioflow.testing._plugin"]


@pytest.fixture
def user_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(
        """
        [pytest]
        trio_mode = true
        filterwarnings = error
        """
    )
    pytester.makepyfile(
        workflows="""
        import trio
        import trioflow as tf

        async def nap(ctx):
            await trio.sleep(3600)
            return ctx.input_data + 1

        napper = (
            tf.create_workflow(id="napper")
            .then(tf.create_step(id="nap", execute=nap))
            .sleep(7200)
            .commit()
        )
        """
    )
    return pytester


def test_the_runtime_fixture_runs_on_both_storages_and_a_mock_clock(
    user_project: pytest.Pytester,
) -> None:
    user_project.makepyfile(
        test_user="""
        import time
        import trio
        import trioflow as tf
        from workflows import napper

        async def test_napper(trioflow_runtime, trioflow_storage_kind, trioflow_clock):
            started = time.monotonic()
            t0 = trio.current_time()
            run = await napper.create_run()
            result = await run.start(input_data=1)
            assert result.status == "success"
            assert result.result == 2
            assert trio.current_time() - t0 == 3 * 3600
            assert time.monotonic() - started < 10
            assert isinstance(trioflow_clock, trio.testing.MockClock)
            state = await trioflow_runtime.get_run_state(run.run_id)
            assert state.status == "success"
            print("RAN ON", trioflow_storage_kind)
        """
    )
    result = user_project.runpytest_subprocess(*plugin_args(), "-v", "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*test_napper?memory?*RAN ON memory*", "*test_napper?sqlite?*RAN ON sqlite*"]
    )


def test_a_test_may_choose_its_clock(user_project: pytest.Pytester) -> None:
    user_project.makepyfile(
        test_clocks="""
        import pytest
        import trio

        async def test_manual_clock(mock_clock, trioflow_clock, trioflow_memory_storage):
            assert trioflow_clock is mock_clock

        @pytest.mark.trioflow_real_clock
        async def test_real_clock(trioflow_clock):
            assert not isinstance(trioflow_clock, trio.testing.MockClock)

        async def test_sqlite_only(trioflow_sqlite_storage):
            assert trioflow_sqlite_storage.durable
        """
    )
    result = user_project.runpytest_subprocess(*plugin_args())
    result.assert_outcomes(passed=3)


def test_the_harness_works_inside_a_plugin_test(user_project: pytest.Pytester) -> None:
    user_project.makepyfile(
        test_crash="""
        from trioflow.testing import check_crash_points
        from workflows import napper

        async def test_every_crash_point(trioflow_clock):
            report = await check_crash_points(napper, input_data=1)
            assert report.reference.result.result == 2
            assert not report.failures()
        """
    )
    result = user_project.runpytest_subprocess(*plugin_args())
    result.assert_outcomes(passed=1)


def test_trioflow_testing_imports_without_hypothesis() -> None:
    script = textwrap.dedent(
        """
        import sys

        class NoHypothesis:
            def find_spec(self, name, path=None, target=None):
                if name == "hypothesis" or name.startswith("hypothesis."):
                    raise ImportError("hypothesis is not installed")
                return None

        sys.meta_path.insert(0, NoHypothesis())
        import trioflow.testing as testing

        assert "hypothesis" not in sys.modules
        assert callable(testing.check_stream_invariants)
        try:
            testing.workflows
        except ImportError as exc:
            print("IMPORT ERROR:", exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "IMPORT ERROR: trioflow.testing.workflows needs hypothesis" in proc.stdout
