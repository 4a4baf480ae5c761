"""The input contract (derived, shown, checked, saved) and the choice of output methods."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from typer.testing import CliRunner

from batch_infer import run
from batch_infer.cli import app
from batch_infer.config import ModelConfig
from batch_infer.model import load_model

from . import zoo
from .conftest import make_config, read_output
from .test_bad_input import BAD_INPUT, MODEL, USAGE, assert_fails

PLANS = ["basic", "plus", "premium"]


def _frame(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "row_id": np.arange(rows, dtype="int64"),
            "age": rng.normal(45, 12, rows),
            "plan": rng.choice(PLANS, rows),
            "note": rng.choice(["late payment", "happy customer", "called twice", ""], rows),
        }
    )
    frame["churned"] = ((frame["age"] > 45) ^ (frame["plan"] == "plus")).astype("int64")
    return frame


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    """Scaler on a number, one-hot on a category (unknowns are errors), tf-idf on text."""
    folder = tmp_path_factory.mktemp("mixed")
    frame = _frame()
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), ["age"]),
                ("cat", OneHotEncoder(handle_unknown="error"), ["plan"]),
                ("text", TfidfVectorizer(), "note"),
            ]
        ),
        LogisticRegression(max_iter=500),
    ).fit(frame[["age", "plan", "note"]], frame["churned"])
    path = folder / "mixed.joblib"
    joblib.dump(model, path)
    return path, model


def _write(tmp_path, frame: pd.DataFrame, name: str = "in") -> str:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part.parquet")
    return str(folder)


def test_contract_is_derived_from_the_fitted_steps(mixed_model):
    path, _ = mixed_model
    model = load_model(ModelConfig(path=str(path)))
    by_name = {f.name: f for f in model.contract.features}
    assert model.features == ["age", "plan", "note"]
    assert (by_name["age"].kind, by_name["age"].nullable) == ("numeric", False)
    assert by_name["plan"].kind == "categorical"
    assert by_name["plan"].categories == PLANS
    assert by_name["plan"].unknown == "error"
    assert by_name["note"].kind == "text"
    assert model.outputs.methods == ["predict", "predict_proba"]


def test_imputer_first_makes_missing_values_the_models_business():
    frame = _frame()
    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression())
    model.fit(frame[["age"]], frame["churned"])
    from batch_infer.model.contract import derive_contract

    (spec,) = derive_contract(model, None, ["age"]).features
    assert spec.nullable is True
    (refusing,) = derive_contract(
        make_pipeline(StandardScaler(), LogisticRegression()).fit(frame[["age"]], frame["churned"]),
        None,
        ["age"],
    ).features
    assert refusing.nullable is False


def test_inspect_shows_contract_and_methods(mixed_model):
    path, _ = mixed_model
    text = CliRunner().invoke(app, ["inspect", str(path)])
    assert text.exit_code == 0, text.stderr
    assert "input contract" in text.stdout
    assert "plan" in text.stdout and "categorical" in text.stdout and "basic" in text.stdout
    assert "note" in text.stdout and "text" in text.stdout
    assert "predict, predict_proba, decision_function" in text.stdout
    data = json.loads(
        CliRunner().invoke(app, ["inspect", str(path), "--output-format", "json"]).stdout
    )
    kinds = {f["name"]: f["kind"] for f in data["contract"]["features"]}
    assert kinds == {"age": "numeric", "plan": "categorical", "note": "text"}
    assert data["default_outputs"] == ["predict", "predict_proba"]


def test_mixed_model_scores_like_the_notebook_and_manifest_records_contract(tmp_path, mixed_model):
    path, model = mixed_model
    frame = _frame(400, seed=1)
    source = _write(tmp_path, frame)
    out = tmp_path / "out"
    run(make_config(source, out, path, output={"methods": "predict,decision_function"}))
    scored = read_output(out).to_pandas().sort_values("row_id").reset_index(drop=True)
    methods = ["predict", "decision_function"]
    zoo.assert_models_own(scored, model, frame[["age", "plan", "note"]], methods)
    assert "probability" not in scored.columns
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model"]["methods"] == ["predict", "decision_function"]
    contract_kinds = [f["kind"] for f in manifest["model"]["contract"]["features"]]
    assert contract_kinds == ["numeric", "categorical", "text"]


def test_unknown_category_is_rejected_by_name(tmp_path, mixed_model):
    path, model = mixed_model
    frame = _frame(300, seed=2)
    frame.loc[[3, 150], "plan"] = "platinum"
    source = _write(tmp_path, frame)
    out = tmp_path / "out"
    report = run(make_config(source, out, path, output={"max_reject_rows": 5}))
    assert (report.rows_out, report.rows_rejected) == (298, 2)
    rejects = pq.read_table(out / "_rejects").to_pandas()
    assert rejects["reject_code"].tolist() == ["UNKNOWN_CATEGORY"] * 2
    assert sorted(rejects["reject_row_index"].tolist()) == [3, 150]
    assert "'platinum'" in rejects["reject_message"][0]
    assert rejects["reject_column"].tolist() == ["plan", "plan"]


def test_a_string_column_feeding_a_scaler_is_bad_input(tmp_path, mixed_model):
    path, _ = mixed_model
    frame = _frame(50)
    frame["age"] = frame["age"].astype(str)
    source = _write(tmp_path, frame)
    out = tmp_path / "out"
    args = ["--input", source, "--output", str(out), "--model", str(path)]
    for command in ("run", "validate"):
        result = CliRunner().invoke(app, [command, *args])
        assert_fails(result, BAD_INPUT, "'age'", "part.parquet", "takes numbers", output=out)


def test_outputs_must_be_methods_the_model_has(tmp_path, mixed_model):
    path, _ = mixed_model
    source = _write(tmp_path, _frame(20))
    args = ["run", "--input", source, "--output", str(tmp_path / "o"), "--model", str(path)]
    missing = CliRunner().invoke(app, [*args, "--outputs", "predict,score_samples"])
    assert_fails(missing, MODEL, "score_samples", "decision_function")
    unknown = CliRunner().invoke(app, [*args, "--outputs", "predict,explain"])
    assert_fails(unknown, USAGE, "explain", "predict_proba")


class CategoryLookup(ClassifierMixin, BaseEstimator):
    """A custom model that needs a pandas Categorical with its own category order (codes)."""

    def fit(self, X, y):
        self.feature_names_in_ = np.array(["plan"], dtype=object)
        self.n_features_in_ = 1
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        codes = np.asarray(X["plan"].cat.codes, dtype=float)  # raises unless a Categorical
        p = (codes + 1) / 4.0
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        return tags


def test_a_saved_contract_gives_a_custom_model_its_categories(tmp_path):
    """Derivation cannot know a custom model's categories: the contract command records them
    from a training sample, and runs pick the file up beside the model."""
    frame = _frame(200)
    frame["plan"] = pd.Categorical(frame["plan"], categories=["premium", "basic", "plus"])
    model = CategoryLookup().fit(frame[["plan"]], frame["churned"])
    model_path = tmp_path / "lookup.joblib"
    joblib.dump(model, model_path)
    train = tmp_path / "train"
    train.mkdir()
    frame.to_parquet(train / "train.parquet")
    contract_file = tmp_path / "lookup.contract.json"
    result = CliRunner().invoke(
        app, ["contract", str(model_path), "--sample", str(train), "-w", str(contract_file)]
    )
    assert result.exit_code == 0, result.stderr
    (plan,) = json.loads(contract_file.read_text())["features"]
    assert (plan["kind"], plan["dtype"], plan["categories"]) == (
        "categorical",
        "category",
        ["premium", "basic", "plus"],
    )
    # scoring data written with another dictionary order and plain strings in a second file
    scoring = _frame(90, seed=4)
    folder = tmp_path / "score"
    folder.mkdir()
    first = scoring.iloc[:45].copy()
    first["plan"] = pd.Categorical(first["plan"], categories=["plus", "premium", "basic"])
    first.to_parquet(folder / "a.parquet")
    scoring.iloc[45:].to_parquet(folder / "b.parquet")
    out = tmp_path / "out"
    run(make_config(folder, out, model_path))
    scored = read_output(out).to_pandas().sort_values("row_id")
    expected_input = pd.DataFrame(
        {"plan": pd.Categorical(scoring["plan"], categories=["premium", "basic", "plus"])}
    )
    assert np.array_equal(
        scored["probability"].to_numpy(), model.predict_proba(expected_input)[:, 1]
    )


class SaysItTakesNaN(ClassifierMixin, BaseEstimator):
    """Its tags claim NaN support, yet it raises on NaN: only calling it can tell."""

    def fit(self, X, y):
        self.feature_names_in_ = np.array(["age"], dtype=object)
        self.n_features_in_ = 1
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        values = np.asarray(X["age"], dtype=float)
        if np.isnan(values).any():
            raise ValueError("age must be known")
        p = 1 / (1 + np.exp(-(values - 45) / 10))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def test_missing_value_refused_by_the_model_is_found_and_named(tmp_path):
    """The contract cannot tell beforehand, so the model decides (bisection), and the reason
    names the column and the model's own message."""
    frame = _frame()
    model = SaysItTakesNaN().fit(frame[["age"]], frame["churned"])
    joblib.dump(model, tmp_path / "nan.joblib")
    scoring = _frame(200, seed=6)
    scoring.loc[[17, 120], "age"] = None
    source = _write(tmp_path, scoring)
    out = tmp_path / "out"
    report = run(make_config(source, out, tmp_path / "nan.joblib", output={"max_reject_rows": 2}))
    assert (report.rows_out, report.rows_rejected) == (198, 2)
    rejects = pq.read_table(out / "_rejects").to_pandas().sort_values("reject_row_index")
    assert rejects["reject_row_index"].tolist() == [17, 120]
    assert set(rejects["reject_column"]) == {"age"}
    assert "age must be known" in rejects["reject_message"].iloc[0]
    kept = scoring.drop(index=[17, 120])
    scored = read_output(out).to_pandas().sort_values("row_id")
    assert np.array_equal(scored["probability"].to_numpy(), model.predict_proba(kept)[:, 1])


def test_resume_with_nothing_staged_starts_the_run(tmp_path, trained_models, churn_input):
    """An Airflow retry configured with --resume after a run killed before staging anything."""
    out = tmp_path / "out"
    report = run(make_config(churn_input, out, trained_models["binary"], resume=True))
    assert report.rows_out == 5_000
    assert (out / "_SUCCESS").exists()


def _meta_models():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import StackingClassifier, VotingClassifier
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    def pipeline(final):
        columns = ColumnTransformer(
            [("num", StandardScaler(), ["age"]), ("cat", OneHotEncoder(), ["plan"])]
        )
        return make_pipeline(columns, final)

    def logistic():
        return pipeline(LogisticRegression())

    return {
        "grid_search": lambda: GridSearchCV(
            logistic(), {"logisticregression__C": [0.1, 1.0]}, cv=3
        ),
        "calibrated": lambda: CalibratedClassifierCV(logistic(), cv=3),
        "voting": lambda: VotingClassifier([("a", logistic()), ("b", logistic())], voting="soft"),
        "stacking": lambda: StackingClassifier([("a", logistic())], cv=3),
        "target_transform": lambda: TransformedTargetRegressor(
            regressor=pipeline(Ridge()), func=np.log1p, inverse_func=np.expm1
        ),
    }


@pytest.mark.parametrize("kind", list(_meta_models()))
def test_meta_estimators_are_read_through_to_the_pipeline_inside(tmp_path, kind):
    """A grid search, calibration, voting, stacking or target transform around a mixed-type
    pipeline: the contract comes from the pipeline inside, and scores equal the direct call."""
    frame = _frame(384)
    features = frame[["age", "plan"]]
    target = frame["age"].abs() if kind == "target_transform" else frame["churned"]
    model = _meta_models()[kind]().fit(features, target)
    joblib.dump(model, tmp_path / "meta.joblib")
    loaded = load_model(ModelConfig(path=str(tmp_path / "meta.joblib")))
    assert [(f.name, f.kind) for f in loaded.contract.features] == [
        ("age", "numeric"),
        ("plan", "categorical"),
    ]
    source = _write(tmp_path, frame)
    out = tmp_path / "out"
    run(make_config(source, out, tmp_path / "meta.joblib"))
    scored = read_output(out).to_pandas().sort_values("row_id")
    assert scored["prediction"].tolist() == model.predict(features).tolist()
    if hasattr(model, "predict_proba"):
        assert np.array_equal(scored["probability"].to_numpy(), model.predict_proba(features)[:, 1])
