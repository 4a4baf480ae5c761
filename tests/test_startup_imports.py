"""What a run imports is most of its start-up on small inputs: a run imports only what its model
and options need. Facts about ``sys.modules`` at the end of a real CLI run, not timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs `batch-infer ARGS` in this process, then writes the names of the imported modules.
# The CLI ends with os._exit (see batch_infer.cli.main), so the list is written just before it.
DUMP = """
import json, os, sys
exit_now = os._exit
def dump_then_exit(code):
    with open(os.environ["MODULES_OUT"], "w") as handle:
        json.dump(sorted(sys.modules), handle)
    exit_now(code)
os._exit = dump_then_exit
sys.argv = ["batch-infer", *sys.argv[1:]]
from batch_infer.cli import main
main()
"""

NEVER = ["dask", "distributed", "prometheus_client", "openlineage", "batch_infer.observe.html"]
SCIKIT_LEARN = ["sklearn", "scipy", "joblib"]


def modules_of(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    env = {**os.environ, "MODULES_OUT": str(out)}
    done = subprocess.run(
        [sys.executable, "-c", DUMP, *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text()))


def imported(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def sample_args(sample: Path, output: Path, runtime: str) -> list[str]:
    return [
        "run",
        "-i",
        str(sample / "churn"),
        "-m",
        str(sample / "models" / "model.joblib"),
        "--scaler",
        str(sample / "models" / "scaler.joblib"),
        "-o",
        str(output),
        "--runtime",
        runtime,
        "-q",
    ]


@pytest.fixture
def compiled_sample(sample_copy: Path) -> Path:
    models = sample_copy / "models"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_infer",
            "compile",
            "--model",
            str(models / "model.joblib"),
            "--scaler",
            str(models / "scaler.joblib"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return sample_copy


def test_a_compiled_run_imports_neither_scikit_learn_nor_what_it_was_not_asked_for(
    compiled_sample, tmp_path
):
    modules = modules_of(tmp_path, *sample_args(compiled_sample, tmp_path / "out", "compiled"))
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert "batch_infer.runner" in modules  # the list is the run's
    unexpected = [p for p in SCIKIT_LEARN + NEVER if imported(modules, p)]
    assert unexpected == []


def test_a_scikit_learn_run_imports_no_engine_or_report_it_was_not_asked_for(sample_copy, tmp_path):
    modules = modules_of(tmp_path, *sample_args(sample_copy, tmp_path / "out", "sklearn"))
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert imported(modules, "sklearn")  # the model needs it, and the list shows it
    assert [p for p in NEVER if imported(modules, p)] == []


def test_a_run_that_writes_the_html_report_imports_its_module(sample_copy, tmp_path):
    report = tmp_path / "report.html"
    args = sample_args(sample_copy, tmp_path / "out", "sklearn")
    modules = modules_of(tmp_path, *args, "--report-html", str(report))
    assert report.exists() and "batch_infer.observe.html" in modules
