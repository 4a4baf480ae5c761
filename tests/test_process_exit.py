"""Real processes end with their run's exit code: no deadlock with many workers, no abort at exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .conftest import REPO, read_output

FEATURES = [f"f{i}" for i in range(8)]


def _input(folder: Path, bad: bool = False) -> Path:
    """4 files of 5 row groups (20 fragments, more than Arrow's 8 IO threads)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for index in range(4):
        columns = {name: rng.normal(size=20_000) for name in FEATURES}
        if bad:
            columns["f0"][::997] = np.inf  # a few rows per row group the model cannot take
        pq.write_table(pa.table(columns), folder / f"part-{index}.parquet", row_group_size=4_000)
    return folder


def _model(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({name: rng.normal(size=500) for name in FEATURES})
    model = make_pipeline(StandardScaler(), LogisticRegression())
    model.fit(frame, frame["f0"] > 0)
    path = folder / "model.joblib"
    joblib.dump(model, path)
    return path


def _run(source: Path, out: Path, model: Path, workers: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "batch_infer", "run", "--input", str(source)]
    command += ["--output", str(out), "--model", str(model), "--quiet", "--workers", str(workers)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_more_workers_than_arrow_io_threads_do_not_deadlock(tmp_path):
    """With pre-buffered reads, 16 workers each waited for a read no free IO thread could run
    (every one of 4 runs hung before the fix)."""
    source = _input(tmp_path / "in")
    result = _run(source, tmp_path / "out", _model(tmp_path), workers=16)
    assert result.returncode == 0, result.stderr
    assert read_output(tmp_path / "out").num_rows == 80_000


def test_runs_failing_on_the_reject_limit_exit_3_every_time(tmp_path):
    """Arrow's pool threads dropping Python objects during interpreter shutdown aborted about
    one such run in 65 on larger inputs (SIGABRT, "terminate called without an active
    exception"); this only guards against the common case coming back."""
    source = _input(tmp_path / "in", bad=True)
    model = _model(tmp_path)
    codes = [_run(source, tmp_path / f"out{i}", model, workers=4) for i in range(6)]
    assert [c.returncode for c in codes] == [3] * 6, [c.stderr[-300:] for c in codes]
    assert all(c.stderr.strip().splitlines()[-1].startswith("Error: ") for c in codes)
