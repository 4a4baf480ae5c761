"""Relative paths in a config file mean "beside the file"; in flags and env vars, the cwd.

A job's config lives with its job (``/opt/jobs/configs/ci_smoke.yaml``), and cron starts it in
``$HOME``: the config must mean the same wherever the command is started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batch_infer.config import load_config, load_serve_config

from .conftest import REPO, read_output

# configs/ci_smoke.yaml, laid out as a deployment would: the config in jobs/configs/, the data
# and models beside it in jobs/sample_data/, the output in jobs/output/.
CI_SMOKE = """\
input:
  path: ../sample_data/churn
model:
  path: ../sample_data/models/model.joblib
  scaler: ../sample_data/models/scaler.joblib
output:
  path: ../output/ci_smoke/dt={run_date}
  partition_by: [event_date]
  rejects: ../output/rejects
  max_reject_rows: 0
observe:
  metrics_file: ../metrics.prom
  report_html: report.html
run_date: "2026-01-05"
"""


def _jobs(sample_copy: Path) -> Path:
    """``<tmp>/jobs`` with ``configs/ci_smoke.yaml`` and ``sample_data/``; returns the config."""
    jobs = sample_copy.parent / "jobs"
    jobs.mkdir()
    sample_copy.rename(jobs / "sample_data")
    config = jobs / "configs" / "ci_smoke.yaml"
    config.parent.mkdir()
    config.write_text(CI_SMOKE)
    return config


def _cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_INFER_")}
    clean["BATCH_INFER_CACHE_DIR"] = os.environ["BATCH_INFER_CACHE_DIR"]
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "batch_infer", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_a_config_run_from_another_directory_reads_paths_beside_the_config(sample_copy):
    config = _jobs(sample_copy)
    jobs = config.parent.parent
    home = sample_copy.parent / "home"  # cron's cwd
    home.mkdir()

    done = _cli(home, "run", "--config", str(config), "--output-format", "json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows_out"] == 20_000
    out = jobs / "output" / "ci_smoke" / "dt=2026-01-05"
    assert (out / "_SUCCESS").is_file()
    assert read_output(out).num_rows == 20_000
    assert (jobs / "metrics.prom").is_file()
    assert (jobs / "configs" / "report.html").is_file()
    assert list(home.iterdir()) == []  # nothing written relative to the cwd


def test_flag_and_env_paths_are_relative_to_the_working_directory(sample_copy):
    config = _jobs(sample_copy)
    jobs = config.parent.parent
    home = sample_copy.parent / "home"
    (home / "models").mkdir(parents=True)
    model = jobs / "sample_data" / "models" / "model.joblib"
    (home / "models" / "model.joblib").write_bytes(model.read_bytes())
    model.unlink()  # only the cwd's copy can be read

    done = _cli(
        home,
        "run",
        "-c",
        str(config),
        "--output",
        "scores/dt={run_date}",
        BATCH_INFER_MODEL__PATH="models/model.joblib",
    )

    assert done.returncode == 0, done.stderr
    assert read_output(home / "scores" / "dt=2026-01-05").num_rows == 20_000
    assert not (jobs / "output" / "ci_smoke").exists()
    assert not (jobs / "configs" / "scores").exists()


def test_urls_absolute_paths_and_templates_are_kept(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    file = folder / "job.yaml"
    file.write_text(
        "input: {path: 's3://lake/churn/'}\n"
        "model: {path: /models/m.joblib, scaler: 'memory://models/s.joblib', contract: c.json}\n"
        "output: {path: 'out/dt={run_date}', rejects: 'simplecache::s3://b/rejects'}\n"
        "observe: {metrics_file: '~/metrics.prom', report_html: ../reports/r.html}\n"
    )

    config = load_config(file, environ={})

    assert config.input.path == "s3://lake/churn/"
    assert config.model.path == "/models/m.joblib"
    assert config.model.scaler == "memory://models/s.joblib"
    assert config.model.contract == str(folder / "c.json")
    assert config.output.path == str(folder / "out" / "dt={run_date}")
    assert config.output.rejects == "simplecache::s3://b/rejects"
    assert config.observe.metrics_file == "~/metrics.prom"
    assert config.observe.report_html == str(tmp_path / "reports" / "r.html")
    dated = load_config(file, {"run_date": "2026-01-05"}, environ={})
    assert dated.output_path == str(folder / "out" / "dt=2026-01-05")


def test_env_and_flags_are_not_anchored_to_the_config(tmp_path):
    file = tmp_path / "configs" / "job.yaml"
    file.parent.mkdir()
    file.write_text("input: {path: in}\nmodel: {path: m.joblib}\noutput: {path: out}\n")

    config = load_config(
        file, {"output": {"path": "flag-out"}}, environ={"BATCH_INFER_MODEL__PATH": "env.joblib"}
    )

    assert config.input.path == str(file.parent / "in")
    assert config.model.path == "env.joblib"
    assert config.output.path == "flag-out"


def test_serve_reads_the_model_beside_its_config(tmp_path):
    file = tmp_path / "configs" / "serve.yaml"
    file.parent.mkdir()
    file.write_text("model: {path: ../models/m.joblib, scaler: s.joblib}\nserve: {http_port: 0}\n")

    config = load_serve_config(file, environ={})

    assert config.model.path == str(tmp_path / "models" / "m.joblib")
    assert config.model.scaler == str(file.parent / "s.joblib")


def test_the_repo_ci_smoke_config_runs_from_any_directory(tmp_path):
    """`make run`'s own config, from cron's cwd, with the output moved by a relative flag."""
    done = _cli(
        tmp_path,
        "run",
        "--config",
        str(REPO / "configs" / "ci_smoke.yaml"),
        "--output",
        "scores",
        "--output-format",
        "json",
    )

    assert done.returncode == 0, done.stderr
    assert read_output(tmp_path / "scores").num_rows == 20_000
