"""Shared fixtures: real Parquet files written by pyarrow, real fitted models saved with joblib."""

from __future__ import annotations

import shutil
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_infer.config import load_config

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
FEATURES = ["age", "tenure", "monthly_charges", "total_charges"]

# ci_rules: under CI=true a skipped test fails, naming what was missing (see its docstring).
# pytester: for testing that rule on a tiny test file (tests/test_ci_rules.py).
pytest_plugins = ["tests.ci_rules", "pytester"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Compiled runtimes go to a cache of each test's own, never ~/.cache/batch-infer."""
    folder = tmp_path_factory.mktemp("batch-infer-cache")
    monkeypatch.setenv("BATCH_INFER_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A private copy of sample_data/ (tests must never write into the repo)."""
    target = tmp_path / "sample_data"
    shutil.copytree(SAMPLE, target)
    return target


def make_config(input_path, output_path, model_path, **extra):
    """A RunConfig built the way the CLI builds one, without env variables leaking in."""
    overrides = {
        "input": {"path": str(input_path)},
        "model": {"path": str(model_path)},
        "output": {"path": str(output_path)},
    }
    for section, values in extra.items():
        if isinstance(values, dict):
            overrides.setdefault(section, {}).update(values)
        else:
            overrides[section] = values
    return load_config(None, overrides, environ={})


def churn_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "customer_id": pa.array(np.arange(rows, dtype="int64")),
            "age": pa.array(rng.integers(18, 90, rows).astype("int32")),
            "tenure": pa.array(rng.integers(0, 72, rows).astype("int32")),
            "monthly_charges": pa.array(np.round(rng.uniform(18, 120, rows), 2)),
            "total_charges": pa.array(np.round(rng.uniform(0, 8000, rows), 2)),
            "region": pa.array(rng.choice(["north", "south", "east", "west"], rows)),
        }
    )


def write_parquet(table: pa.Table, path: Path, row_group_size: int = 1_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def read_output(root: Path) -> pa.Table:
    """Read a committed output the way a hive-aware reader does (``_``-prefixed paths skipped)."""
    import pyarrow.dataset as ds

    return ds.dataset(root, format="parquet", partitioning="hive").to_table()


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory) -> dict[str, Path]:
    """Binary, multiclass (string labels) and regression models fitted on churn-like data."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("models")
    train = churn_table(3_000, seed=99).to_pandas()
    X = train[FEATURES].astype("float64")
    rng = np.random.default_rng(7)
    binary = (X["tenure"] + rng.normal(0, 10, len(X)) > 36).astype("int64")
    multi = np.where(X["age"] < 35, "young", np.where(X["age"] < 60, "middle", "senior"))
    value = 3.0 * X["monthly_charges"] - 0.1 * X["total_charges"] + rng.normal(0, 1, len(X))

    paths = {}
    models = {
        "binary": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, binary),
        "multiclass": RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(
            X, multi
        ),
        "regressor": LinearRegression().fit(X, value),
    }
    for name, model in models.items():
        paths[name] = folder / f"{name}.joblib"
        joblib.dump(model, paths[name])
    scaler = StandardScaler().fit(X)
    paths["scaler"] = folder / "scaler.joblib"
    joblib.dump(scaler, paths["scaler"])
    paths["scaled_model"] = folder / "scaled_model.joblib"
    joblib.dump(
        LogisticRegression(max_iter=500).fit(scaler.transform(X), binary), paths["scaled_model"]
    )
    paths["array_model"] = folder / "array_model.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(X.to_numpy(), binary), paths["array_model"])
    return paths


@pytest.fixture
def churn_input(tmp_path: Path) -> Path:
    """Two files of 2,500 rows, 1,000-row groups, hive-partitioned by day."""
    root = tmp_path / "input"
    table = churn_table(5_000, seed=1)
    write_parquet(table.slice(0, 2_500), root / "day=1" / "a.parquet")
    write_parquet(table.slice(2_500), root / "day=2" / "b.parquet")
    return root


@pytest.fixture
def sample_df() -> pd.DataFrame:
    return pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted((SAMPLE / "churn").rglob("*.parquet"))]
    )


def run_sample_cli(sample: Path, tmp_path: Path, *extra: str, input_path: Path | None = None):
    """`batch-infer run` of the sample's pipeline into ``tmp_path/scores`` for 2026-01-05,
    through typer's runner (in process), with ``extra`` flags."""
    from typer.testing import CliRunner

    from batch_infer.cli import app

    return CliRunner().invoke(
        app,
        [
            "run",
            "-i",
            str(input_path or sample / "churn"),
            "-m",
            str(sample / "models" / "pipeline.joblib"),
            "-o",
            str(tmp_path / "scores"),
            "--run-date",
            "2026-01-05",
            *extra,
        ],
    )
