"""The suite's own conftest says, in pytest's default quiet output, which tests were
skipped and why (a user without PostgreSQL must see that those tests did not run)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


def test_skip_reasons_are_shown_without_rs(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(
        """
        import pytest

        def test_ran():
            pass

        @pytest.mark.parametrize("n", [1, 2])
        def test_needs_server(n):
            pytest.skip("PostgreSQL tests skipped: no server here")

        def test_other():
            pytest.skip("another reason")
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        [
            "*what did not run*",
            "2 skipped: PostgreSQL tests skipped: no server here",
            "1 skipped: another reason",
        ]
    )


def test_no_section_when_nothing_skipped(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile("def test_ran():\n    pass\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "what did not run" not in result.stdout.str()
