"""CLI conventions: --version, JSON log lines with the run id, NO_COLOR, `python cli.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

from .conftest import REPO


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args], capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}
    )


def test_version_flag_prints_the_installed_version() -> None:
    shown = _run(sys.executable, "-m", "batch_infer", "--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"batch-infer {version('batch-infer')}"


def test_top_level_cli_py_works_like_the_command(tmp_path) -> None:
    shown = _run(sys.executable, "cli.py", "--version")
    assert shown.stdout.strip() == f"batch-infer {version('batch-infer')}"
    done = _run(
        sys.executable,
        "cli.py",
        "run",
        "-c",
        "configs/ci_smoke.yaml",
        "-o",
        str(tmp_path / "out"),
        "--output-format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows_out"] == 20_000 and report["version"] == version("batch-infer")
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["batch_infer_version"] == version("batch-infer")


def test_json_log_lines_carry_time_level_logger_message_and_the_run_id(tmp_path) -> None:
    done = _run(
        sys.executable,
        "-m",
        "batch_infer",
        "run",
        "-c",
        "configs/ci_smoke.yaml",
        "-o",
        str(tmp_path / "out"),
        "--log-format",
        "json",
        "--output-format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.strip().splitlines()]
    assert lines, "no log lines"
    for line in lines:
        assert {"time", "level", "logger", "message", "run_id"} <= set(line)
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["run_id"]
    assert any(line["run_id"] == run_id and "committed" in line["message"] for line in lines)


def test_no_color_means_no_escape_codes(tmp_path) -> None:
    shown = _run(
        sys.executable,
        "-m",
        "batch_infer",
        "run",
        "--help",
        env={"NO_COLOR": "1", "FORCE_COLOR": ""},
    )
    assert shown.returncode == 0
    assert "\x1b[" not in shown.stdout
    colored = _run(
        sys.executable,
        "-m",
        "batch_infer",
        "run",
        "--help",
        env={"FORCE_COLOR": "1", "NO_COLOR": ""},
    )
    assert "\x1b[" in colored.stdout  # the check above could fail
