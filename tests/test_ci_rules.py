"""The CI rule of tests/ci_rules.py, on tiny test files run by pytester: under ``CI=true`` a
skip is a failure naming what was missing; elsewhere a skip stays a skip."""

from __future__ import annotations

import pytest

TINY = """
import pytest

@pytest.fixture
def gateway():
    pytest.skip("/usr/bin/prometheus-pushgateway is missing")

def test_needs_gateway(gateway):
    pass

def test_needs_module():
    pytest.importorskip("no_such_module_for_ci_rules")

@pytest.mark.skip(reason="marked skip")
def test_marked():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False

def test_passes():
    pass
"""

MODULE_LEVEL = """
import pytest
pytest.importorskip("another_missing_module_for_ci_rules")

def test_never_collected():
    pass
"""


def run(pytester: pytest.Pytester, source: str, ci: str | None, monkeypatch) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_tiny=source)
    return pytester.runpytest("-p", "tests.ci_rules", "-rA")


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_outside_ci_a_skip_stays_a_skip(pytester, monkeypatch, ci):
    result = run(pytester, TINY, ci, monkeypatch)
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("ci", ["true", "TRUE", "True"])
def test_under_ci_every_skip_fails_naming_what_was_missing(pytester, monkeypatch, ci):
    result = run(pytester, TINY, ci, monkeypatch)
    # a skip in the test body is a failure; one in setup (a fixture, a skip mark) an error
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "skipped under CI=true" in out
    assert "/usr/bin/prometheus-pushgateway is missing" in out
    assert "could not import 'no_such_module_for_ci_rules'" in out
    assert "marked skip" in out


def test_under_ci_a_module_skipped_at_collection_fails(pytester, monkeypatch):
    result = run(pytester, MODULE_LEVEL, "true", monkeypatch)
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*skipped under CI=true*another_missing_module_for_ci_rules*"])


def test_outside_ci_a_module_skipped_at_collection_is_skipped(pytester, monkeypatch):
    result = run(pytester, MODULE_LEVEL, None, monkeypatch)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.assert_outcomes(skipped=1)
