"""Bad rows go to a quarantine dataset, or fail the run when more than allowed are found."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from batch_infer import InputError, run

from .conftest import FEATURES, churn_table, make_config, read_output, write_parquet


def _with_bad_rows(tmp_path):
    """1,000 rows in 250-row groups; row 5 has a null age, row 300 NaN tenure, row 999 inf."""
    table = churn_table(1_000, seed=3)
    age = table.column("age").to_pylist()
    age[5] = None
    tenure = table.column("tenure").cast(pa.float64()).to_pylist()
    tenure[300] = float("nan")
    charges = table.column("total_charges").to_pylist()
    charges[999] = float("inf")
    table = table.set_column(1, "age", pa.array(age, pa.int32()))
    table = table.set_column(2, "tenure", pa.array(tenure, pa.float64()))
    table = table.set_column(4, "total_charges", pa.array(charges, pa.float64()))
    return write_parquet(table, tmp_path / "in" / "bad.parquet", row_group_size=250), table


def test_by_default_one_bad_row_fails_the_run_and_names_it(tmp_path, trained_models):
    source, _ = _with_bad_rows(tmp_path)
    with pytest.raises(InputError) as raised:
        run(make_config(source, tmp_path / "out", trained_models["binary"], workers=1))
    message = str(raised.value)
    assert "rejected, more than the 0 allowed" in message
    assert f"{source} row group 0 row 5: null value in feature 'age'" in message
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_allowed_rejects_go_to_the_quarantine_with_their_reasons(tmp_path, trained_models):
    source, table = _with_bad_rows(tmp_path)
    out = tmp_path / "out"
    report = run(make_config(source, out, trained_models["binary"], output={"max_reject_rows": 3}))
    assert (report.rows_out, report.rows_rejected) == (997, 3)
    assert read_output(out).num_rows == 997  # hive-aware readers skip _rejects
    rejects = pq.read_table(out / "_rejects").sort_by("reject_row_index").to_pylist()
    assert [
        (r["reject_row_group"], r["reject_row_index"], r["reject_column"], r["reject_code"])
        for r in rejects
    ] == [
        (0, 5, "age", "NULL"),
        (1, 300, "tenure", "NAN"),
        (3, 999, "total_charges", "INF"),
    ]
    assert {r["reject_source_file"] for r in rejects} == {str(source)}
    assert [r["customer_id"] for r in rejects] == [5, 300, 999]  # every input column kept
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows_rejected"] == 3 and manifest["rows_out"] == 997
    assert sum(f["rows"] for f in manifest["rejects"]) == 3


def test_a_model_that_takes_nan_and_infinity_gets_them(tmp_path):
    """HistGradientBoosting bins NaN and infinities itself: nothing is rejected, scores as pandas."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    frame = churn_table(500, seed=5).to_pandas()
    model = HistGradientBoostingClassifier(max_iter=5).fit(
        frame[FEATURES].astype("float64"), frame["tenure"] > 30
    )
    joblib.dump(model, tmp_path / "hgb.joblib")
    source, _ = _with_bad_rows(tmp_path)
    report = run(make_config(source, tmp_path / "out", tmp_path / "hgb.joblib"))
    assert (report.rows_out, report.rows_rejected) == (1000, 0)
    scored = read_output(tmp_path / "out").to_pandas().sort_values("customer_id")
    frame = pq.read_table(source).to_pandas().sort_values("customer_id")
    expected = model.predict_proba(frame[FEATURES].astype("float64"))[:, 1]
    assert np.array_equal(scored["probability"].to_numpy(), expected)


class Picky(ClassifierMixin, BaseEstimator):
    """Refuses to score customers aged 77, like a model with a lookup that has gaps."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = 4
        return self

    def predict_proba(self, X):
        X = np.asarray(X)
        if (X[:, 0] == 77).any():
            raise ValueError("no tariff for age 77")
        p = (X[:, 1] / 100.0).clip(0, 1)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def test_rows_the_model_raises_on_are_found_by_bisection(tmp_path):
    joblib.dump(Picky().fit(None, None), tmp_path / "picky.joblib")
    table = churn_table(2_000, seed=11)
    source = write_parquet(table, tmp_path / "in.parquet")
    config = make_config(
        source,
        tmp_path / "out",
        tmp_path / "picky.joblib",
        model={"features": FEATURES},
        output={"max_reject_rate": 0.05},
    )
    report = run(config)
    aged_77 = [i for i, a in enumerate(table.column("age").to_pylist()) if a == 77]
    assert aged_77 and report.rows_rejected == len(aged_77)
    rejects = pq.read_table(tmp_path / "out" / "_rejects")
    assert sorted(rejects.column("reject_row_index").to_pylist()) == aged_77
    assert set(rejects.column("reject_code").to_pylist()) == {"MODEL_ERROR"}
    assert set(rejects.column("reject_message").to_pylist()) == {"no tariff for age 77"}
    scored = read_output(tmp_path / "out")
    assert scored.num_rows == 2_000 - len(aged_77)
    assert 77 not in scored.column("age").to_pylist()


def test_reject_rate_limit(tmp_path, trained_models):
    source, _ = _with_bad_rows(tmp_path)
    with pytest.raises(InputError, match="3 row"):
        run(
            make_config(
                source,
                tmp_path / "a",
                trained_models["binary"],
                output={"max_reject_rate": 0.002},
                workers=1,
            )
        )
    report = run(
        make_config(
            source, tmp_path / "b", trained_models["binary"], output={"max_reject_rate": 0.003}
        )
    )
    assert report.rows_rejected == 3


def test_rejects_can_go_elsewhere(tmp_path, trained_models):
    source, _ = _with_bad_rows(tmp_path)
    elsewhere = tmp_path / "quarantine" / "churn"
    run(
        make_config(
            source,
            tmp_path / "out",
            trained_models["binary"],
            output={"max_reject_rows": 5, "rejects": str(elsewhere)},
        )
    )
    assert pq.read_table(elsewhere).num_rows == 3
    assert not (tmp_path / "out" / "_rejects").exists()


def test_all_rows_rejected_still_commits_the_rejects(tmp_path, trained_models):
    table = churn_table(5, seed=2)
    table = table.set_column(1, "age", pa.array([None] * 5, pa.int32()))
    source = write_parquet(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    report = run(make_config(source, out, trained_models["binary"], output={"max_reject_rows": 10}))
    assert (report.rows_out, report.rows_rejected) == (0, 5)
    assert pq.read_table(out / "_rejects").num_rows == 5
    manifest = json.loads((out / "_manifest.json").read_text())
    assert sum(f["rows"] for f in manifest["rejects"]) == 5


def test_overwrite_partitions_replaces_the_rejects_of_rescored_row_groups(tmp_path, trained_models):
    source, _ = _with_bad_rows(tmp_path)
    out = tmp_path / "out"
    options = {"max_reject_rows": 10, "mode": "overwrite-partitions"}
    run(make_config(source, out, trained_models["binary"], output=options))
    fixed = pq.read_table(source)
    fixed = fixed.set_column(
        1,
        "age",
        pa.array([a if a is not None else 40 for a in fixed.column("age").to_pylist()], pa.int32()),
    )
    write_parquet(fixed, source, row_group_size=250)  # row 5 repaired
    report = run(make_config(source, out, trained_models["binary"], output=options))
    assert report.rows_rejected == 2
    manifest = json.loads((out / "_manifest.json").read_text())
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert on_disk == sorted(f["path"] for f in manifest["files"] + manifest["rejects"])
    assert read_output(out).num_rows + pq.read_table(out / "_rejects").num_rows == 1_000
