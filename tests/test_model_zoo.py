"""Golden tests for the model zoo: batch-infer scores real mixed-type data exactly as the model
does when called on the notebook's DataFrame.

Each test writes a real data set (tests/zoo.py) as several Parquet files with pyarrow, pandas
or polars, with categorical dictionaries that differ between files and row groups, runs
batch-infer on it, and compares the added columns, rows ordered by ``row_id``, with the fitted
model called directly on the folder read back with the training dtypes: labels identical, numbers
within the bound the README states (``zoo.assert_models_own``), whatever the batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_infer import run
from batch_infer.errors import InputError

from . import zoo
from .conftest import make_config, read_output

ROW_ID = zoo.ROW_ID
ALL_WRITERS = pytest.mark.parametrize("writer", zoo.WRITERS)


class Fitted(NamedTuple):
    model: Any  # loaded back from ``path``: the very object batch-infer will run
    path: Path


class Written(NamedTuple):
    folder: Path
    frame: pd.DataFrame  # the folder read back with the training dtypes, ordered by row_id


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="module")
def data():
    """``data(name)``: a zoo data set by loader name, loaded once per module."""
    cache: dict[str, zoo.DataSet] = {}

    def get(name: str) -> zoo.DataSet:
        if name not in cache:
            cache[name] = getattr(zoo, name)()
        return cache[name]

    return get


@pytest.fixture(scope="module")
def written(zoo_dir):
    """``written(data_set, writer)``: the data set written as a folder of Parquet files, and
    read back (checked equal to the frame written), once per module."""
    cache: dict[tuple[str, str], Written] = {}

    def write(data_set: zoo.DataSet, writer: str) -> Written:
        key = (data_set.name, writer)
        if key not in cache:
            folder = zoo_dir / "data" / f"{data_set.name}-{writer}"
            zoo.write_dataset(data_set.frame, folder, writer)
            cache[key] = Written(folder, zoo.check_round_trip(folder, data_set.frame))
        return cache[key]

    return write


@pytest.fixture(scope="module")
def fitted(zoo_dir):
    """``fitted(fit, data_set)``: ``zoo.<fit>(data_set)`` saved with joblib, once per module."""
    cache: dict[tuple[str, str], Fitted] = {}

    def fit(name: str, data_set: zoo.DataSet) -> Fitted:
        key = (name, data_set.name)
        if key not in cache:
            path = zoo.save(getattr(zoo, name)(data_set), zoo_dir / "models" / f"{name}.joblib")
            cache[key] = Fitted(joblib.load(path), path)
        return cache[key]

    return fit


class Scored(NamedTuple):
    report: Any
    frame: pd.DataFrame  # the output, ordered by row_id
    schema: pa.Schema


def score(source: Path, out: Path, model_path: Path, **sections) -> Scored:
    report = run(make_config(source, out, model_path, **sections))
    table = read_output(out)
    frame = table.to_pandas().sort_values(ROW_ID, kind="stable").reset_index(drop=True)
    return Scored(report, frame, table.schema)


def values(series: pd.Series) -> list:
    """A column's values as Python objects, missing as None, whatever its dtype."""
    return [None if pd.isna(v) else v for v in series.astype(object)]


def assert_scored(
    scored: pd.DataFrame,
    frame: pd.DataFrame,
    model: Any,
    methods: list[str] | None = None,
    features: list[str] | None = None,
) -> None:
    """Every row once; input columns first and unchanged; exactly the added columns the model's
    own methods give (and predicted_at, model_version), equal to them within the README's bound
    (``zoo.assert_models_own``)."""
    assert scored[ROW_ID].tolist() == frame[ROW_ID].tolist()
    inputs = list(frame.columns)
    assert list(scored.columns[: len(inputs)]) == inputs
    added = list(scored.columns[len(inputs) :])
    expected = zoo.expected_outputs(model, frame, methods, features)
    assert sorted(added) == sorted([*expected, *zoo.ADDED_ALWAYS])
    for name in inputs:
        assert values(scored[name]) == values(frame[name]), name
    zoo.assert_models_own(scored, model, frame[zoo.model_features(model, features)], methods)


def arrow_type(schema: pa.Schema, name: str) -> pa.DataType:
    return schema.field(name).type


def is_text(arrow: pa.DataType) -> bool:
    return pa.types.is_string(arrow) or pa.types.is_large_string(arrow)


# --------------------------------------------------------------------------------------------
# The harness: the trap is set
# --------------------------------------------------------------------------------------------


@ALL_WRITERS
def test_written_folders_disagree_on_category_dictionaries(data, written, writer):
    """The files (and pyarrow's row groups) hold cut under different dictionaries, in other
    orders and with fewer values: by code, the same number means another cut in another file."""
    folder = written(data("diamonds"), writer).folder
    assert len(list(folder.glob("*.parquet"))) == 3
    found = [group for groups in zoo.dictionaries(folder, "cut") for group in groups]
    assert all(d is not None for d in found)
    levels = zoo.DIAMOND_LEVELS["cut"]
    distinct = {tuple(d) for d in found}
    assert len({d for d in distinct if len(d) == len(levels)}) >= 2  # all cuts, in other orders
    assert any(len(d) < len(levels) for d in distinct)  # some cut missing


# --------------------------------------------------------------------------------------------
# scikit-learn pipelines on mixed types
# --------------------------------------------------------------------------------------------


@ALL_WRITERS
def test_onehot_pipeline_on_penguins_with_missing_values(tmp_path, data, written, fitted, writer):
    penguins = data("penguins")
    model = fitted("fit_onehot", penguins)
    source, frame = written(penguins, writer)
    assert frame[zoo.PENGUIN_NUMERIC].isna().any().any() and frame["sex"].isna().any()

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0
    assert_scored(scored.frame, frame, model.model)
    assert {"probability_Adelie", "probability_Chinstrap", "probability_Gentoo"} <= set(
        scored.frame.columns
    )
    assert is_text(arrow_type(scored.schema, "prediction"))


@ALL_WRITERS
def test_ordinal_encoder_pipeline_on_penguins(tmp_path, data, written, fitted, writer):
    penguins = data("penguins")
    model = fitted("fit_ordinal", penguins)
    source, frame = written(penguins, writer)

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0
    assert_scored(scored.frame, frame, model.model)
    assert is_text(arrow_type(scored.schema, "prediction"))


@ALL_WRITERS
def test_target_encoder_pipeline_on_default(tmp_path, data, written, fitted, writer):
    default = data("default_with_missing")
    model = fitted("fit_target_encoder", default)
    source, frame = written(default, writer)
    assert frame["student"].isna().any() and frame["income"].isna().any()

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0
    expected = zoo.expected_outputs(model.model, frame)
    assert set(expected) == {"prediction", "probability"}  # binary: P(class "Yes")
    assert_scored(scored.frame, frame, model.model)
    assert is_text(arrow_type(scored.schema, "prediction"))


@ALL_WRITERS
def test_tfidf_of_a_text_column_in_a_column_transformer(tmp_path, data, written, fitted, writer):
    titanic = data("titanic")
    model = fitted("fit_tfidf", titanic)
    source, frame = written(titanic, writer)
    assert list(model.model.feature_names_in_) == ["name", "sex", "age", "passengerClass"]

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0  # age is missing for a fifth of the passengers
    assert_scored(scored.frame, frame, model.model)
    assert is_text(arrow_type(scored.schema, "prediction"))


@ALL_WRITERS
def test_imputer_pipeline_gets_its_nans(tmp_path, data, written, fitted, writer):
    penguins = data("penguins")
    model = fitted("fit_imputed_logistic", penguins)
    source, frame = written(penguins, writer)
    assert frame[zoo.PENGUIN_NUMERIC].isna().any(axis=1).sum() >= 2

    scored = score(source, tmp_path / "out", model.path)

    assert (scored.report.rows_rejected, scored.report.rows_out) == (0, len(frame))
    assert_scored(scored.frame, frame, model.model)


# --------------------------------------------------------------------------------------------
# Categorical dtypes: HistGradientBoosting, XGBoost, LightGBM, CatBoost
# --------------------------------------------------------------------------------------------


@ALL_WRITERS
def test_hist_gradient_boosting_on_pandas_categoricals(tmp_path, data, written, fitted, writer):
    diamonds = data("diamonds")
    model = fitted("fit_hist_gradient_boosting", diamonds)
    source, frame = written(diamonds, writer)
    assert frame["depth"].isna().any()

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0
    expected = zoo.expected_outputs(model.model, frame)
    assert set(expected) == {"prediction", "probability_high", "probability_low", "probability_mid"}
    assert_scored(scored.frame, frame, model.model)
    assert is_text(arrow_type(scored.schema, "prediction"))


@ALL_WRITERS
def test_xgboost_on_pandas_categoricals(tmp_path, data, written, fitted, writer):
    pytest.importorskip("xgboost")
    diamonds = data("diamonds")
    model = fitted("fit_xgboost", diamonds)
    source, frame = written(diamonds, writer)

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0  # NaN depth is XGBoost's "missing"
    # XGBoost's predict_proba is float32; the comparison widens it, exactly
    assert_scored(scored.frame, frame, model.model)
    assert arrow_type(scored.schema, "prediction") == pa.int64()


@ALL_WRITERS
def test_lightgbm_on_pandas_categoricals(tmp_path, data, written, fitted, writer):
    pytest.importorskip("lightgbm")
    penguins = data("penguins_categorical")
    model = fitted("fit_lightgbm", penguins)
    source, frame = written(penguins, writer)
    assert frame["sex"].isna().any()

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0
    assert_scored(scored.frame, frame, model.model)
    assert is_text(arrow_type(scored.schema, "prediction"))


@ALL_WRITERS
def test_catboost_on_string_categories(tmp_path, data, written, fitted, writer):
    pytest.importorskip("catboost")
    penguins = data("penguins_filled")
    model = fitted("fit_catboost", penguins)
    source, frame = written(penguins, writer)

    # CatBoost has feature_names_, not feature_names_in_: the features are configured
    scored = score(source, tmp_path / "out", model.path, model={"features": penguins.features})

    assert scored.report.rows_rejected == 0  # numeric NaN is fine for CatBoost
    # its multiclass predict is an (n, 1) array: one ``prediction`` column
    assert_scored(scored.frame, frame, model.model, features=penguins.features)
    assert is_text(arrow_type(scored.schema, "prediction"))


# --------------------------------------------------------------------------------------------
# Other output shapes and methods
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("methods", [None, ["predict"]], ids=["default", "predict"])
@ALL_WRITERS
def test_multioutput_regressor_gets_one_column_per_output(
    tmp_path, data, written, fitted, writer, methods
):
    cards = data("credit_card")
    model = fitted("fit_multioutput_ridge", cards)
    source, frame = written(cards, writer)
    output = {} if methods is None else {"methods": methods}

    scored = score(source, tmp_path / "out", model.path, output=output)

    expected = zoo.expected_outputs(model.model, frame, methods)
    assert set(expected) == {"prediction_0", "prediction_1"}
    assert_scored(scored.frame, frame, model.model, methods)
    assert arrow_type(scored.schema, "prediction_0") == pa.float64()
    assert arrow_type(scored.schema, "prediction_1") == pa.float64()


@ALL_WRITERS
def test_isolation_forest_predict_and_score_samples(tmp_path, data, written, fitted, writer):
    cards = data("credit_card")
    model = fitted("fit_isolation_forest", cards)
    source, frame = written(cards, writer)
    methods = ["predict", "score_samples"]

    scored = score(source, tmp_path / "out", model.path, output={"methods": methods})

    expected = zoo.expected_outputs(model.model, frame, methods)
    assert set(expected) == {"prediction", "score"}
    assert set(expected["prediction"].tolist()) == {-1, 1}
    assert_scored(scored.frame, frame, model.model, methods)
    assert arrow_type(scored.schema, "prediction") == pa.int64()
    assert arrow_type(scored.schema, "score") == pa.float64()


@ALL_WRITERS
def test_kmeans_predicts_cluster_ids(tmp_path, data, written, fitted, writer):
    default = data("default")
    model = fitted("fit_kmeans", default)
    source, frame = written(default, writer)

    scored = score(source, tmp_path / "out", model.path)

    expected = zoo.expected_outputs(model.model, frame)
    assert set(expected) == {"prediction"}  # no predict_proba: predict only by default
    assert_scored(scored.frame, frame, model.model)
    assert pa.types.is_integer(arrow_type(scored.schema, "prediction"))


@ALL_WRITERS
def test_linear_svc_binary_decision_function(tmp_path, data, written, fitted, writer):
    cards = data("credit_card")
    model = fitted("fit_linear_svc_binary", cards)
    source, frame = written(cards, writer)
    methods = ["predict", "decision_function"]

    scored = score(source, tmp_path / "out", model.path, output={"methods": methods})

    expected = zoo.expected_outputs(model.model, frame, methods)
    assert set(expected) == {"prediction", "decision"}
    assert_scored(scored.frame, frame, model.model, methods)
    assert is_text(arrow_type(scored.schema, "prediction"))


@ALL_WRITERS
def test_linear_svc_multiclass_decision_function(tmp_path, data, written, fitted, writer):
    penguins = data("penguins")
    model = fitted("fit_linear_svc_multiclass", penguins)
    source, frame = written(penguins, writer)
    methods = ["predict", "decision_function"]

    scored = score(source, tmp_path / "out", model.path, output={"methods": methods})

    expected = zoo.expected_outputs(model.model, frame, methods)
    assert set(expected) == {
        "prediction",
        "decision_Adelie",
        "decision_Chinstrap",
        "decision_Gentoo",
    }
    assert_scored(scored.frame, frame, model.model, methods)


# --------------------------------------------------------------------------------------------
# Unknown categories and big integers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def atlantis():
    """Penguins to score with a few birds from "Atlantis", an island the models never saw."""
    data_set, row_ids = zoo.penguins_with_atlantis()
    return data_set, row_ids


@ALL_WRITERS
def test_unknown_category_ignored_scores_like_the_model(
    tmp_path, data, written, fitted, atlantis, writer
):
    model = fitted("fit_onehot", data("penguins"))
    penguins, row_ids = atlantis
    source, frame = written(penguins, writer)
    assert frame.loc[frame[ROW_ID].isin(row_ids), "island"].eq("Atlantis").all()

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0
    assert_scored(scored.frame, frame, model.model)


@pytest.mark.parametrize("writer", ["pyarrow", "polars"])
def test_unknown_category_refused_by_the_model_fails_the_run_by_default(
    tmp_path, data, written, fitted, atlantis, writer
):
    model = fitted("fit_onehot_strict", data("penguins"))
    source, _ = written(atlantis[0], writer)

    with pytest.raises(InputError) as raised:
        run(make_config(source, tmp_path / "out", model.path))

    assert "Atlantis" in str(raised.value)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@ALL_WRITERS
def test_unknown_category_rows_go_to_the_rejects_when_allowed(
    tmp_path, data, written, fitted, atlantis, writer
):
    model = fitted("fit_onehot_strict", data("penguins"))
    penguins, row_ids = atlantis
    source, frame = written(penguins, writer)
    out = tmp_path / "out"

    scored = score(source, out, model.path, output={"max_reject_rows": 100})

    assert (scored.report.rows_rejected, scored.report.rows_out) == (
        len(row_ids),
        len(frame) - len(row_ids),
    )
    rejects = pq.read_table(out / "_rejects").to_pandas().sort_values(ROW_ID)
    assert rejects[ROW_ID].tolist() == sorted(row_ids)
    assert set(rejects["reject_code"]) == {"UNKNOWN_CATEGORY"}
    assert set(rejects["reject_column"]) == {"island"}
    assert all("Atlantis" in message for message in rejects["reject_message"])
    assert set(rejects["island"]) == {"Atlantis"}  # every input column kept

    kept = frame[~frame[ROW_ID].isin(row_ids)].reset_index(drop=True)
    # rejected rows leave batches of odd sizes (bisection may even score rows one by one): the
    # same bound holds, a row's outputs do not depend on its batch
    assert_scored(scored.frame, kept, model.model)


@ALL_WRITERS
def test_int64_features_beyond_2_53_are_rounded_like_pandas(
    tmp_path, data, written, fitted, writer
):
    cards = data("credit_card_hashed")
    model = fitted("fit_hashed_logistic", cards)
    source, frame = written(cards, writer)
    hashes = frame["customer_hash"]
    assert hashes.dtype == np.int64
    assert sum(int(float(v)) != v for v in hashes.tolist()) > len(hashes) // 2  # float64 rounds

    scored = score(source, tmp_path / "out", model.path)

    assert scored.report.rows_rejected == 0
    assert_scored(scored.frame, frame, model.model)
    assert scored.frame["customer_hash"].tolist() == hashes.tolist()  # passed through exactly
