"""A model that fails whatever the rows is a model error (exit 4), not 5,000 rejected rows.

The models are defined here, at module level, so that the joblib files they are saved in can be
loaded again (by the in-process CLI) from ``tests.test_model_errors``.
"""

from __future__ import annotations

import datetime as dt
import time

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from batch_infer.config import ModelConfig, OutputColumns
from batch_infer.errors import InputError, ModelError
from batch_infer.model import load_model
from batch_infer.scoring import ScoringSpec, score_batch

from .conftest import FEATURES, churn_table, read_output, write_parquet
from .test_bad_input import BAD_INPUT, MODEL, assert_fails, invoke, run_args

CALLS: list[int] = []  # rows of each call of a model below, in order


class Broken(ClassifierMixin, BaseEstimator):
    """Raises on every row, as a model whose lookup table was saved empty would."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = len(FEATURES)
        return self

    def predict_proba(self, X):
        CALLS.append(len(X))
        raise ValueError("tariff table is empty\nsecond line of the model's message")

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class Picky(Broken):
    """Raises only for customers aged 77 (a lookup with a gap); scores everyone else."""

    def predict_proba(self, X):
        CALLS.append(len(X))
        X = np.asarray(X)
        if (X[:, 0] == 77).any():
            raise ValueError("no tariff for age 77")
        p = (X[:, 1] / 100.0).clip(0, 1)
        return np.column_stack([1 - p, p])


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()


def _saved(model, tmp_path, name: str):
    path = tmp_path / f"{name}.joblib"
    joblib.dump(model.fit(None, None), path)
    return path


def _with_ages(rows: int, ages: dict[int, int], seed: int = 11) -> pa.Table:
    """The churn table with the given rows' age set (age is the first feature)."""
    table = churn_table(rows, seed=seed)
    age = table.column("age").to_numpy().copy()
    age[age == 77] = 78  # no 77 but where asked for
    for row, value in ages.items():
        age[row] = value
    return table.set_column(1, "age", pa.array(age, pa.int32()))


def test_a_model_that_raises_on_every_row_is_a_model_error_at_once(tmp_path):
    """5,000 rows in 5 row groups: exit 4 with the model's own message, after a handful of
    calls (bisection made about 2 calls per row, 9 s), and nothing committed."""
    source = write_parquet(churn_table(5_000, seed=2), tmp_path / "in" / "x.parquet")
    model = _saved(Broken(), tmp_path, "broken")
    out = tmp_path / "out"
    started = time.perf_counter()
    result = invoke(*run_args(source, out, model, "--features", ",".join(FEATURES)))
    seconds = time.perf_counter() - started
    line = assert_fails(result, MODEL, "ValueError: tariff table is empty", "the model", output=out)
    assert "second line" not in line
    assert "reject" not in line
    # each row group: the whole batch, then its first, middle and last rows alone
    assert len(CALLS) <= 5 * 4, CALLS
    assert CALLS.count(1) <= 5 * 3, CALLS
    assert seconds < 5, seconds


def test_score_batch_raises_model_error_for_a_model_that_fails_on_every_row(tmp_path):
    """What ``serve`` calls: a ModelError (HTTP 500), not an InputError (a 4xx about rows)."""
    model = load_model(
        ModelConfig(path=str(_saved(Broken(), tmp_path, "broken")), features=FEATURES)
    )
    spec = ScoringSpec(FEATURES, OutputColumns(), dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "v")
    batch = churn_table(40).to_batches()[0]
    with pytest.raises(ModelError) as raised:
        score_batch(batch, model, spec)
    assert not isinstance(raised.value, InputError)
    assert raised.value.what.endswith("ValueError: tariff table is empty")
    assert len(CALLS) == 4  # the batch, then three rows alone


def test_rows_the_model_raises_on_stay_rejects_wherever_they_are(tmp_path):
    """Failing rows first in the file, in the middle of a batch and last: only they are
    rejected, with the model's message; the others are scored by the model."""
    bad = [0, 1, 999, 1_000, 2_998, 2_999]
    table = _with_ages(3_000, dict.fromkeys(bad, 77))
    source = write_parquet(table, tmp_path / "in" / "x.parquet")
    model = _saved(Picky(), tmp_path, "picky")
    out = tmp_path / "out"
    result = invoke(
        *run_args(source, out, model, "--features", ",".join(FEATURES), "--max-reject-rows", "10")
    )
    assert result.exit_code == 0, result.stderr
    rejects = pq.read_table(out / "_rejects").sort_by("reject_row_index")
    assert rejects.column("reject_row_index").to_pylist() == bad
    assert set(rejects.column("reject_code").to_pylist()) == {"MODEL_ERROR"}
    assert set(rejects.column("reject_message").to_pylist()) == {"no tariff for age 77"}
    scored = read_output(out).sort_by("customer_id").to_pandas()
    assert len(scored) == 3_000 - len(bad)
    expected = joblib.load(model).predict_proba(scored[FEATURES])[:, 1]
    assert np.array_equal(scored["probability"].to_numpy(), expected)


def test_too_many_rows_the_model_raises_on_is_still_bad_input(tmp_path):
    """The same rows without an allowance fail the run as bad input (exit 3), naming the first."""
    table = _with_ages(2_000, {5: 77, 1_500: 77})
    source = write_parquet(table, tmp_path / "in" / "x.parquet")
    model = _saved(Picky(), tmp_path, "picky")
    out = tmp_path / "out"
    result = invoke(*run_args(source, out, model, "--features", ",".join(FEATURES)))
    assert_fails(result, BAD_INPUT, "no tariff for age 77", "rejected", output=out)
