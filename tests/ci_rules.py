"""Under ``CI=true`` a skipped test is a failed test: CI installs every optional part.

A test skips when something optional is missing (a Debian binary, an extra from
``requirements.lock``). On a laptop that is a convenience; in CI it would hide a test that
never ran, so this plugin turns every skip (of a test, or of a whole module at collection)
into a failure whose message names what was missing. ``xfail`` is left alone.
Loaded by ``tests/conftest.py``; ``.ci/run`` sets ``CI=true``.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """True when the ``CI`` environment variable is ``true`` (any case), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() == "true"


def _skip_reason(longrepr: object) -> str:
    # a skip's longrepr is (path, lineno, "Skipped: <reason>")
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def failure_message(longrepr: object) -> str:
    return (
        f"skipped under CI=true, where every optional part must be installed: "
        f"{_skip_reason(longrepr)}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        report.outcome = "failed"
        report.longrepr = failure_message(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():
        report.outcome = "failed"
        report.longrepr = failure_message(report.longrepr)
