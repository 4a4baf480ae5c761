"""The CLI through typer's CliRunner and through one real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from batch_infer.cli import app
from batch_infer.config import load_config

from .conftest import REPO, read_output

runner = CliRunner()


def _write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def test_run_json_last_line_is_one_object(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "run",
            "-i",
            str(churn_input),
            "-o",
            str(out),
            "-m",
            str(trained_models["binary"]),
            "--output-format",
            "json",
            "--run-date",
            "2026-03-01",
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows_in"] == summary["rows_out"] == 5_000
    assert summary["output"] == str(out)
    assert summary["run_date"] == "2026-03-01"
    assert len(summary["model_sha256"]) == 64
    assert summary["seconds"] > 0


def test_text_summary_and_plain_log_lines_when_not_a_terminal(
    tmp_path, trained_models, churn_input
):
    result = runner.invoke(
        app,
        [
            "run",
            "-i",
            str(churn_input),
            "-o",
            str(tmp_path / "out"),
            "-m",
            str(trained_models["binary"]),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "Committed 5,000 rows" in result.stdout
    assert (
        "INFO batch_infer.progress: scored 5000/5000 rows (100%), 2/2 files, 6/6 row groups"
        in result.stderr
    )
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr  # no animation


def test_quiet_prints_nothing_on_success(tmp_path, trained_models, churn_input):
    result = runner.invoke(
        app,
        [
            "run",
            "-q",
            "-i",
            str(churn_input),
            "-o",
            str(tmp_path / "out"),
            "-m",
            str(trained_models["binary"]),
        ],
    )
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_flags_override_env_which_overrides_yaml(tmp_path, trained_models, churn_input):
    config = _write_config(
        tmp_path / "c.yaml",
        input={"path": str(churn_input), "batch_size": 10},
        model={"path": str(trained_models["binary"])},
        output={"path": str(tmp_path / "yaml-out"), "mode": "error"},
    )
    environ = {
        "BATCH_INFER_OUTPUT__PATH": str(tmp_path / "env-out"),
        "BATCH_INFER_INPUT__BATCH_SIZE": "20",
        "BATCH_INFER_OUTPUT__PARTITION_BY": "day,region",
        "UNRELATED": "x",
    }
    loaded = load_config(config, {"input": {"batch_size": 30}}, environ=environ)
    assert loaded.output.path == str(tmp_path / "env-out")
    assert loaded.input.batch_size == 30
    assert loaded.output.partition_by == ["day", "region"]
    assert loaded.output.mode == "error"


def test_env_variables_reach_the_cli(tmp_path, trained_models, churn_input, monkeypatch):
    config = _write_config(
        tmp_path / "c.yaml",
        input={"path": str(churn_input)},
        model={"path": str(trained_models["binary"])},
        output={"path": str(tmp_path / "yaml-out")},
    )
    monkeypatch.setenv("BATCH_INFER_OUTPUT__PATH", str(tmp_path / "env-out"))
    result = runner.invoke(app, ["run", "-c", str(config), "-q"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "env-out" / "_SUCCESS").exists()
    assert not (tmp_path / "yaml-out").exists()


def test_unknown_config_key_is_a_usage_error(tmp_path, trained_models, churn_input):
    config = _write_config(
        tmp_path / "c.yaml",
        input={"path": str(churn_input), "bach_size": 5},
        model={"path": str(trained_models["binary"])},
        output={"path": str(tmp_path / "out")},
    )
    result = runner.invoke(app, ["run", "-c", str(config)])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "Error: invalid configuration: input.bach_size: unknown field — fix the field"
    )


def test_validate_writes_nothing(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "validate",
            "-i",
            str(churn_input),
            "-o",
            str(out),
            "-m",
            str(trained_models["binary"]),
            "--output-format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["rows"], report["files"], report["fragments"]) == (5_000, 2, 6)
    assert report["features"] == ["age", "tenure", "monthly_charges", "total_charges"]
    assert not out.exists()


def test_inspect_parquet_and_model(trained_models, churn_input):
    parquet = runner.invoke(app, ["inspect", str(churn_input), "--output-format", "json"])
    assert parquet.exit_code == 0, parquet.stderr
    info = json.loads(parquet.stdout)
    assert info["rows"] == 5_000 and info["row_groups"] == 6 and info["partition_keys"] == ["day"]
    assert info["schema"]["age"] == "int32"

    model = runner.invoke(app, ["inspect", str(trained_models["multiclass"])])
    assert model.exit_code == 0, model.stderr
    assert "RandomForestClassifier" in model.stdout
    assert "['middle', 'senior', 'young']" in model.stdout
    assert "monthly_charges" in model.stdout


def test_help_lists_commands_and_examples():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    assert "Example: batch-infer run" in result.stdout
    for flag in (
        "--config",
        "--input",
        "--output",
        "--model",
        "--scaler",
        "--features",
        "--partition-by",
        "--batch-size",
        "--mode",
        "--run-date",
        "--quiet",
        "--output-format",
    ):
        assert flag in result.stdout


def test_real_subprocess_scores_the_sample(tmp_path):
    """``python -m batch_infer`` as cron would run it: no terminal, JSON for the scheduler."""
    out = tmp_path / "scores"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_INFER_")}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_infer",
            "run",
            "-c",
            "configs/ci_smoke.yaml",
            "-o",
            str(out),
            "--output-format",
            "json",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["rows_out"] == 20_000
    assert read_output(out).num_rows == 20_000
    assert "Traceback" not in completed.stderr

    again = subprocess.run(
        [sys.executable, "-m", "batch_infer", "run", "-c", "configs/ci_smoke.yaml", "-o", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 5
    assert (
        again.stderr.strip()
        .splitlines()[-1]
        .startswith(f"Error: {out} already holds a committed result")
    )


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(config):
    loaded = load_config(config, {"run_date": "2026-01-31"}, environ={})
    assert loaded.output_path


@pytest.mark.parametrize(
    "args",
    [["run", "--bogus"], ["run", "--output-format", "xml"], ["run", "--batch-size", "abc"]],
    ids=["unknown-flag", "bad-choice", "bad-int"],
)
def test_usage_errors_are_one_unwrapped_line(args):
    env = {**os.environ, "COLUMNS": "40"}
    completed = subprocess.run(
        [sys.executable, "-m", "batch_infer", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--help" in lines[0]
