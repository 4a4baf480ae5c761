"""Crash safety, resume, reruns, signals and locks, proven on real processes.

Kills are real: BATCH_INFER_FAILPOINT makes the process SIGKILL itself at a named stage (see
batch_infer/failpoints.py), so no cleanup code runs, as with ``kill -9`` or a lost machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from batch_infer import run
from batch_infer.failpoints import POINTS

from .conftest import REPO, churn_table, make_config, read_output, write_parquet

RUN_DATE = "2026-02-01"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_INFER_")}
    env.update(extra)
    return env


def _command(input_path: Path, output: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "batch_infer", "run",
        "--input", str(input_path), "--output", str(output), "--model", str(model),
        "--partition-by", "day", "--run-date", RUN_DATE, "--workers", "1", *extra,
    ]  # fmt: skip


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=120, check=False
    )


def _leftovers(out: Path) -> list[str]:
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and ("_staging" in p.parts or p.name.endswith((".staged", ".tmp", ".lock")))
    )


def _same_scores(out: Path, reference: Path) -> None:
    got = read_output(out).sort_by("customer_id")
    want = read_output(reference).sort_by("customer_id")
    assert got.num_rows == want.num_rows
    assert got.column("customer_id").to_pylist() == want.column("customer_id").to_pylist()
    assert got.column("prediction").equals(want.column("prediction"))
    assert np.array_equal(
        got.column("probability").to_numpy(), want.column("probability").to_numpy()
    )
    assert got.column("predicted_at").equals(want.column("predicted_at"))


@pytest.fixture
def reference(tmp_path, trained_models, churn_input) -> Path:
    """The uninterrupted result every recovery must reproduce."""
    out = tmp_path / "reference"
    assert _run(_command(churn_input, out, trained_models["binary"])).returncode == 0
    return out


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_any_stage_then_rerun_gives_the_uninterrupted_result(
    point, tmp_path, trained_models, churn_input, reference
):
    out = tmp_path / "out"
    command = _command(churn_input, out, trained_models["binary"])
    killed = _run(command, BATCH_INFER_FAILPOINT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point == "after-success":  # committed: only the cleanup is left for the rerun
        assert (out / "_SUCCESS").exists() and _leftovers(out)
    else:
        assert not (out / "_SUCCESS").exists()  # what honouring readers wait for
    if point not in ("before-success", "after-success"):
        assert not (out / "_manifest.json").exists()

    rerun = _run(command)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "_SUCCESS").exists()
    _same_scores(out, reference)
    manifest = json.loads((out / "_manifest.json").read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert files == sorted(f["path"] for f in manifest["files"])
    assert _leftovers(out) == []


def test_kill_during_overwrite_never_shows_a_mix_to_honouring_readers(
    tmp_path, trained_models, churn_input
):
    out = tmp_path / "out"
    first = _command(churn_input, out, trained_models["binary"])
    assert _run(first).returncode == 0
    second = _command(churn_input, out, trained_models["regressor"], "--mode", "overwrite")
    killed = _run(second, BATCH_INFER_FAILPOINT="mid-commit")
    assert killed.returncode == -signal.SIGKILL
    # the old result is no longer advertised, and the new one not yet: no _SUCCESS, no manifest
    assert not (out / "_SUCCESS").exists() and not (out / "_manifest.json").exists()
    assert _run(second).returncode == 0
    assert "probability" not in read_output(out).column_names  # the regressor's result, whole
    assert read_output(out).num_rows == 5_000
    assert _leftovers(out) == []


def test_resume_rescores_only_unfinished_row_groups(
    tmp_path, trained_models, churn_input, reference
):
    out = tmp_path / "out"
    command = _command(churn_input, out, trained_models["binary"])
    killed = _run(command, BATCH_INFER_FAILPOINT="between-fragments")
    assert killed.returncode == -signal.SIGKILL
    records = list(out.glob("_staging/*/_done/*.json"))
    assert len(records) == 1  # one of six row groups finished before the kill
    run_record = json.loads(next(out.glob("_staging/*/_run.json")).read_text())

    resumed = _run([*command, "--resume", "--output-format", "json"])
    assert resumed.returncode == 0, resumed.stderr
    assert "1 row group(s) already staged" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["run_id"] == run_record["run_id"]
    _same_scores(out, reference)


def test_resume_is_refused_when_an_input_changed(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    command = _command(churn_input, out, trained_models["binary"])
    assert _run(command, BATCH_INFER_FAILPOINT="between-fragments").returncode == -signal.SIGKILL
    changed = churn_input / "day=2" / "b.parquet"
    write_parquet(churn_table(2_500, seed=42), changed)

    refused = _run([*command, "--resume"])
    assert refused.returncode == 2
    assert f"input changed: {changed}" in refused.stderr
    assert not (out / "_SUCCESS").exists()

    fresh = _run(command)  # the default starts over when resuming is not safe
    assert fresh.returncode == 0, fresh.stderr
    assert "discarding interrupted run" in fresh.stderr
    assert read_output(out).num_rows == 5_000


def test_resume_is_refused_when_the_model_changed(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    assert (
        _run(
            _command(churn_input, out, trained_models["binary"]),
            BATCH_INFER_FAILPOINT="between-fragments",
        ).returncode
        == -9
    )
    refused = _run([*_command(churn_input, out, trained_models["multiclass"]), "--resume"])
    assert refused.returncode == 2
    assert "model changed" in refused.stderr


def test_resume_after_the_model_file_was_replaced_in_place_is_refused_and_keeps_the_staging(
    tmp_path, trained_models, churn_input
):
    """The nightly scenario: a run is killed half way, someone replaces the model file at the
    same path, the retry says --resume. It must refuse (exit 2) naming the model and both
    sha256s, leave the killed run's staging exactly as it was, and commit nothing."""
    import hashlib
    import shutil

    model = tmp_path / "model.joblib"
    shutil.copyfile(trained_models["binary"], model)
    out = tmp_path / "out"
    command = _command(churn_input, out, model)
    assert _run(command, BATCH_INFER_FAILPOINT="between-fragments").returncode == -9
    staged = {p: p.read_bytes() for p in out.glob("_staging/**/*") if p.is_file()}
    assert staged
    old = hashlib.sha256(model.read_bytes()).hexdigest()
    shutil.copyfile(trained_models["multiclass"], model)
    new = hashlib.sha256(model.read_bytes()).hexdigest()

    refused = _run([*command, "--resume"])

    assert refused.returncode == 2, refused.stderr
    error = refused.stderr.strip().splitlines()[-1]
    assert f"model changed (sha256 {old[:12]} -> {new[:12]})" in error
    assert {p: p.read_bytes() for p in out.glob("_staging/**/*") if p.is_file()} == staged
    assert not (out / "_SUCCESS").exists()


def test_committed_output_fails_or_skips(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    command = _command(churn_input, out, trained_models["binary"])
    assert _run(command).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    again = _run(command)
    assert again.returncode == 5
    assert "already holds a committed result" in again.stderr

    skipped = _run([*command, "--if-exists", "skip", "--output-format", "json"])
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout.strip().splitlines()[-1])["status"] == "skipped"
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_overwrite_partitions_replaces_only_the_partitions_written(
    tmp_path, trained_models, churn_input
):
    out = tmp_path / "out"
    config = make_config(
        churn_input,
        out,
        trained_models["binary"],
        output={"partition_by": ["day"]},
        run_date="2026-01-01",
    )
    run(config)
    day1 = {p.name: p.read_bytes() for p in (out / "day=1").iterdir()}

    only_day2 = tmp_path / "day2-only"
    write_parquet(
        pq.read_table(churn_input / "day=2" / "b.parquet"), only_day2 / "day=2" / "b.parquet"
    )
    rerun = make_config(
        only_day2, out, trained_models["binary"],
        output={"partition_by": ["day"], "mode": "overwrite-partitions"}, run_date="2026-01-02",
    )  # fmt: skip
    report = run(rerun)

    assert {p.name: p.read_bytes() for p in (out / "day=1").iterdir()} == day1
    scored = read_output(out)
    assert scored.num_rows == 5_000
    import pyarrow.compute as pc

    for day in (1, 2):
        rows = scored.filter(pc.equal(scored.column("day"), day))
        assert {t.day for t in rows.column("predicted_at").to_pylist()} == {day}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["run_id"] == report.run_id
    assert manifest["rows_committed"] == 5_000 and manifest["rows_out"] == 2_500
    assert sorted(f["path"] for f in manifest["files"]) == sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*.parquet")
    )


def _slow_input(tmp_path: Path, rows: int = 60_000) -> Path:
    """Many small row groups, scored one small batch at a time: seconds of work to interrupt."""
    root = tmp_path / "slow"
    write_parquet(churn_table(rows, seed=9), root / "day=1" / "a.parquet", row_group_size=1_000)
    return root


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_commits_nothing_and_leaves_the_run_resumable(
    signum, code, tmp_path, trained_models
):
    source, out = _slow_input(tmp_path), tmp_path / "out"
    command = _command(source, out, trained_models["binary"], "--batch-size", "50")
    process = subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not list(out.glob("_staging/*/_done/*.json")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no row group finished"
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1].startswith("Error: interrupted by SIG")
    assert not (out / "_SUCCESS").exists()
    assert list(out.glob("_staging/*/_done/*.json"))  # kept for the resume
    assert not (out / "_batch_infer.lock").exists()

    resumed = _run(command)
    assert resumed.returncode == 0, resumed.stderr
    assert "already staged" in resumed.stderr
    assert read_output(out).num_rows == 60_000


def test_second_run_into_a_locked_output_is_refused(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    out.mkdir()
    holder = {
        "run_id": "20260101T000000Z-abcdef12",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": "2026-01-01T00:00:00+00:00",
    }
    (out / "_batch_infer.lock").write_text(json.dumps(holder))
    refused = _run(_command(churn_input, out, trained_models["binary"]))
    assert refused.returncode == 75
    assert (
        f"is locked by run 20260101T000000Z-abcdef12 (pid {os.getpid()} on {socket.gethostname()}) since 2026-01-01"
        in refused.stderr
    )
    assert not (out / "_SUCCESS").exists()


def test_lock_of_a_dead_process_does_not_block(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    holder = {
        "run_id": "dead",
        "pid": gone.pid,
        "host": socket.gethostname(),
        "since": "2026-01-01T00:00:00+00:00",
    }
    (out / "_batch_infer.lock").write_text(json.dumps(holder))
    result = _run(_command(churn_input, out, trained_models["binary"]))
    assert result.returncode == 0, result.stderr
    assert "removing the stale lock of run dead" in result.stderr
    assert not (out / "_batch_infer.lock").exists()


def test_overlapping_runs(tmp_path, trained_models):
    source, out = _slow_input(tmp_path, rows=150_000), tmp_path / "out"  # ~8 s: outlives the 2nd
    command = _command(source, out, trained_models["binary"], "--batch-size", "50")
    first = subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not (out / "_batch_infer.lock").exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = _run(command)
    assert second.returncode == 75
    assert "is locked by run" in second.stderr
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert read_output(out).num_rows == 150_000


def test_crash_mid_commit_then_changed_input_leaves_no_stale_files(
    tmp_path, trained_models, churn_input
):
    """The new run inherits the crashed commit's files and replaces them: no duplicate rows."""
    out = tmp_path / "out"
    command = _command(churn_input, out, trained_models["binary"])
    assert _run(command, BATCH_INFER_FAILPOINT="mid-commit").returncode == -signal.SIGKILL
    (churn_input / "day=2" / "b.parquet").rename(churn_input / "day=2" / "renamed.parquet")
    rerun = _run(command)
    assert rerun.returncode == 0, rerun.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert files == sorted(f["path"] for f in manifest["files"])  # glob readers see no stale file
    assert read_output(out).num_rows == 5_000


def test_no_resume_after_a_crash_mid_commit_still_commits(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    first = _command(churn_input, out, trained_models["binary"])
    assert _run(first).returncode == 0
    second = _command(churn_input, out, trained_models["regressor"], "--mode", "overwrite")
    assert _run(second, BATCH_INFER_FAILPOINT="mid-commit").returncode == -signal.SIGKILL
    rerun = _run([*second, "--no-resume"])
    assert rerun.returncode == 0, rerun.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert files == sorted(f["path"] for f in manifest["files"])
    assert read_output(out).num_rows == 5_000


def test_overwrite_partitions_after_a_crashed_commit_keeps_every_partition(
    tmp_path, trained_models
):
    out = tmp_path / "out"
    days = {}
    for day in (1, 2, 3):
        days[day] = tmp_path / f"in{day}"
        write_parquet(
            churn_table(300, seed=day), days[day] / f"day={day}" / "a.parquet", row_group_size=100
        )

    def command(day: int) -> list[str]:
        return [
            *_command(days[day], out, trained_models["binary"]),
            "--mode",
            "overwrite-partitions",
        ]

    assert _run(command(1)).returncode == 0
    assert _run(command(2), BATCH_INFER_FAILPOINT="mid-commit").returncode == -signal.SIGKILL
    third = _run(command(3))
    assert third.returncode == 0, third.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert files == sorted(f["path"] for f in manifest["files"])
    # day=1 was committed and stays; day=2's commit never completed, so none of it is published
    assert {f["path"].split("/")[0] for f in manifest["files"]} == {"day=1", "day=3"}
    assert read_output(out).num_rows == 600
