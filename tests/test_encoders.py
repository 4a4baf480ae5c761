"""The ColumnTransformer computed from Arrow (model/encoders.py) against scikit-learn's own.

Expected values are always the fitted model's own: ``ColumnTransformer.transform`` and the
Pipeline's ``predict``/``predict_proba`` on the DataFrame pandas reads back from the Parquet
files. Generated data with missing numbers and categories, categories the model never saw,
integer categories, pandas categoricals, written as plain, dictionary and large strings.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import sparse
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)
from sklearn.tree import DecisionTreeClassifier

from batch_infer.config import ModelConfig
from batch_infer.model import load_model
from batch_infer.model.inputs import model_input
from tests.conftest import read_output
from tests.zoo import assert_models_own

NUMBERS = ["x0", "x1", "x2"]
STRINGS = ["c0", "c1", "c3"]
FEATURES = [*NUMBERS, *STRINGS, "c2"]
C0 = [f"c0_{i}" for i in range(5)]
C1 = [f"c1_{i}" for i in range(12)]
C2 = [10, 20, 30, 40]  # integer categories


def table(rows: int, seed: int, unseen: bool) -> pa.Table:
    """Rows with ~5% missing x0 and c0; with ``unseen``, categories no fit saw in c0 and c2."""
    rng = np.random.default_rng(seed)
    c0 = np.array(C0 + (["never-seen"] if unseen else []))[rng.integers(0, 5 + unseen, rows)]
    c2 = np.array(C2 + ([50] if unseen else []))[rng.integers(0, 4 + unseen, rows)]
    x2 = rng.integers(-3, 4, rows)  # integers, zeros among them
    return pa.table(
        {
            "row_id": np.arange(rows, dtype="int64"),
            "x0": pa.array(rng.normal(0, 2, rows), mask=rng.uniform(size=rows) < 0.05),
            "x1": np.round(rng.uniform(-5, 5, rows), 1),
            "x2": pa.array(x2, pa.int32()),
            "c0": pa.array(c0, mask=rng.uniform(size=rows) < 0.05),
            "c1": pa.array(np.array(C1)[rng.integers(0, 12, rows)]),
            "c3": pa.array(np.array(["yes", "no"])[rng.integers(0, 2, rows)]),
            "c2": pa.array(c2, pa.int64()),
            "y": pa.array(rng.integers(0, 2, rows)),
        }
    )


def num(*steps):
    return make_pipeline(*steps) if len(steps) > 1 else steps[0]


SUPPORTED = {
    # the pipeline: imputer + scaler, imputer + one-hot (ignore); sparse output
    "imputed-one-hot": lambda: ColumnTransformer(
        [
            ("num", num(SimpleImputer(), StandardScaler()), NUMBERS),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                STRINGS,
            ),
        ]
    ),
    # missing values as a category (fitted with them), dense one-hot, passthrough remainder
    "missing-category-dense": lambda: ColumnTransformer(
        [
            ("num", num(SimpleImputer(strategy="median"), RobustScaler()), ["x0", "x1"]),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), STRINGS),
            ("unused", "drop", ["c2"]),
        ],
        remainder="passthrough",  # x2
    ),
    # drop="first", integer categories, MinMaxScaler with clip, dense by sparse_threshold=0
    "drop-first-ints": lambda: ColumnTransformer(
        [
            (
                "num",
                num(SimpleImputer(strategy="constant", fill_value=0.0), MinMaxScaler(clip=True)),
                NUMBERS,
            ),
            ("cat", OneHotEncoder(drop="first", handle_unknown="ignore"), [*STRINGS, "c2"]),
        ],
        sparse_threshold=0,
        verbose_feature_names_out=False,
    ),
    # drop="if_binary", float32 one-hot, MaxAbsScaler, remainder dropped
    "if-binary-float32": lambda: ColumnTransformer(
        [
            ("num", num(SimpleImputer(), MaxAbsScaler()), ["x0", "x2"]),
            (
                "cat",
                OneHotEncoder(drop="if_binary", dtype=np.float32, handle_unknown="ignore"),
                ["c3", "c1", "c2", "c0"],
            ),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    ),
    # ordinal codes, unknown and missing values encoded, sparse_threshold=1 (still dense)
    "ordinal": lambda: ColumnTransformer(
        [
            ("num", SimpleImputer(), ["x0", "x1"]),
            (
                "ord",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2
                ),
                ["c0", "c2", "c1", "c3"],
            ),
        ],
        sparse_threshold=1.0,
    ),
}

UNSUPPORTED = {
    "infrequent categories": lambda: ColumnTransformer(
        [
            ("num", SimpleImputer(), NUMBERS),
            (
                "cat",
                OneHotEncoder(min_frequency=0.1, handle_unknown="infrequent_if_exist"),
                STRINGS,
            ),
        ]
    ),
    "add_indicator": lambda: ColumnTransformer(
        [
            ("num", num(SimpleImputer(add_indicator=True), StandardScaler()), NUMBERS),
            ("cat", OneHotEncoder(handle_unknown="ignore"), STRINGS),
        ]
    ),
    "FunctionTransformer": lambda: ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), FunctionTransformer(np.tanh)), NUMBERS),
            ("cat", OneHotEncoder(handle_unknown="ignore"), STRINGS),
        ]
    ),
    "set_output(pandas)": lambda: ColumnTransformer(
        [
            ("num", SimpleImputer(), NUMBERS),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), STRINGS),
        ]
    ).set_output(transform="pandas"),
}


def fitted(make, final=None) -> Pipeline:
    train = table(600, seed=1, unseen=False).to_pandas()
    pipeline = Pipeline([("columns", make()), ("model", final or LogisticRegression(max_iter=500))])
    return pipeline.fit(train[FEATURES], train["y"])


def saved(tmp_path: Path, pipeline: Pipeline) -> Path:
    path = tmp_path / "model.joblib"
    joblib.dump(pipeline, path)
    return path


def as_written(data: pa.Table, how: str) -> pa.RecordBatch:
    """The string columns as plain, dictionary or large strings, as writers give them."""
    columns = []
    for name in data.column_names:
        column = data.column(name).combine_chunks()
        if name in ("c0", "c1", "c3") and how == "dictionary":
            column = column.dictionary_encode()
        elif name in ("c0", "c1", "c3") and how == "large_string":
            column = column.cast(pa.large_string())
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=data.column_names)


def read_back(tmp_path: Path, batch: pa.RecordBatch) -> pd.DataFrame:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_batches([batch]), path)
    return pd.read_parquet(path)[FEATURES]


def assert_same_matrix(expected, actual) -> None:
    """Same matrix type, dtype and bits; for CSR also the same stored entries in order."""
    assert sparse.issparse(expected) == sparse.issparse(actual)
    assert expected.dtype == actual.dtype and expected.shape == actual.shape
    if sparse.issparse(expected):
        expected = expected.tocsr()
        np.testing.assert_array_equal(actual.indptr, expected.indptr)
        np.testing.assert_array_equal(actual.indices, expected.indices)
        expected, actual = expected.data, actual.data
    assert np.ascontiguousarray(expected).tobytes() == np.ascontiguousarray(actual).tobytes()


@pytest.mark.filterwarnings("ignore:Found unknown categories")  # drop= with unknowns: zeros
@pytest.mark.parametrize("name", sorted(SUPPORTED))
@pytest.mark.parametrize("how", ["string", "dictionary", "large_string"])
def test_arrow_transform_equals_column_transformer(tmp_path, name, how):
    pipeline = fitted(SUPPORTED[name])
    model = load_model(ModelConfig(path=str(saved(tmp_path, pipeline))), runtime="sklearn")
    assert model.encoding == "arrow"
    batch = as_written(table(500, seed=2, unseen=True), how)
    encoded = model_input(batch, model.contract, model.encoder)
    frame = read_back(tmp_path, batch)
    assert_same_matrix(pipeline[0].transform(frame), encoded.matrix)
    results = model.call(encoded)
    np.testing.assert_array_equal(results["predict"], pipeline.predict(frame))
    # the same rows through pandas and scikit-learn's own transform: the same bits
    through_pandas = model.call(model_input(batch, model.contract))
    for method, values in results.items():
        assert np.asarray(values).tobytes() == np.asarray(through_pandas[method]).tobytes()


def test_pandas_categorical_fit_dictionary_rows(tmp_path):
    """Fitted on pandas categoricals, scored from dictionary columns with other dictionaries."""
    train = table(600, seed=1, unseen=False).to_pandas()
    train["c1"] = train["c1"].astype("category")
    pipeline = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), ["x1"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["c1"]),
                    ]
                ),
            ),
            ("model", LogisticRegression()),
        ]
    ).fit(train[["x1", "c1"]], train["y"])
    model = load_model(ModelConfig(path=str(saved(tmp_path, pipeline))), runtime="sklearn")
    assert model.encoding == "arrow"
    rows = table(300, seed=3, unseen=True)
    reversed_dictionary = pa.DictionaryArray.from_arrays(
        pa.array([11 - C1.index(v) for v in rows.column("c1").to_pylist()], pa.int32()),
        pa.array(C1[::-1]),
    )
    batch = pa.RecordBatch.from_arrays(
        [rows.column("x1").combine_chunks(), reversed_dictionary], names=["x1", "c1"]
    )
    encoded = model_input(batch, model.contract, model.encoder)
    frame = batch.to_pandas()
    assert_same_matrix(pipeline[0].transform(frame), encoded.matrix)
    np.testing.assert_array_equal(model.call(encoded)["predict"], pipeline.predict(frame))


@pytest.mark.parametrize("why", sorted(UNSUPPORTED))
def test_unsupported_options_fall_back_to_scikit_learn(tmp_path, why):
    pipeline = fitted(UNSUPPORTED[why])
    model = load_model(ModelConfig(path=str(saved(tmp_path, pipeline))), runtime="sklearn")
    assert model.encoder is None
    assert model.encoding.startswith("scikit-learn: ")
    batch = as_written(table(200, seed=2, unseen=True), "string")
    features = model_input(batch, model.contract, model.encoder)
    assert isinstance(features, pd.DataFrame)
    frame = read_back(tmp_path, batch)
    results = model.call(features)
    np.testing.assert_array_equal(results["predict"], pipeline.predict(frame))


def test_a_run_scores_as_the_model_does(tmp_path):
    """A whole run (files with small row groups, plain and dictionary strings, missing values,
    unseen categories): every output row equals the Pipeline's own on the rows pandas reads."""
    from typer.testing import CliRunner

    from batch_infer.cli import app

    pipeline = fitted(SUPPORTED["imputed-one-hot"])
    model_path = saved(tmp_path, pipeline)
    folder = tmp_path / "input"
    folder.mkdir()
    data = table(2000, seed=4, unseen=True)
    pq.write_table(data.slice(0, 1000), folder / "a.parquet", row_group_size=256)
    pq.write_table(
        pa.Table.from_batches([as_written(data.slice(1000), "dictionary")]),
        folder / "b.parquet",
        row_group_size=300,
    )
    out = tmp_path / "scores"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "-i",
            str(folder),
            "-m",
            str(model_path),
            "-o",
            str(out),
            "--run-date",
            "2026-01-05",
        ],
    )
    assert result.exit_code == 0, result.output
    got = read_output(out).to_pandas().sort_values("row_id").reset_index(drop=True)
    X = pd.read_parquet(folder).sort_values("row_id").reset_index(drop=True)[FEATURES]
    assert len(got) == 2000
    assert_models_own(got, pipeline, X)


def test_unknown_categories_with_handle_unknown_error_are_rejected(tmp_path):
    """handle_unknown="error": the rows the encoder would raise on are set aside with the
    value named; the others score as the Pipeline does."""
    from batch_infer.config import OutputColumns
    from batch_infer.scoring import ScoringSpec, score_batch

    pipeline = fitted(
        lambda: ColumnTransformer(
            [
                ("num", num(SimpleImputer(), StandardScaler()), NUMBERS),
                ("cat", OneHotEncoder(handle_unknown="error"), [*STRINGS, "c2"]),
            ]
        )
    )
    model = load_model(ModelConfig(path=str(saved(tmp_path, pipeline))), runtime="sklearn")
    assert model.encoding == "arrow"
    batch = as_written(table(400, seed=5, unseen=True), "string")
    spec = ScoringSpec(model.features, OutputColumns(), pd.Timestamp.now(tz="UTC"), "v")
    outcome = score_batch(batch, model, spec)
    frame = read_back(tmp_path, batch)
    unseen = ((frame["c2"] == 50) | (frame["c0"] == "never-seen")).to_numpy()
    assert outcome.rejected.num_rows == int(unseen.sum()) > 0
    assert set(outcome.rejected.column("reject_code").to_pylist()) == {"UNKNOWN_CATEGORY"}
    kept = frame[~unseen]
    np.testing.assert_array_equal(
        outcome.scored.column("prediction").to_numpy(), pipeline.predict(kept)
    )


def test_a_tree_after_ordinal_codes(tmp_path):
    pipeline = fitted(SUPPORTED["ordinal"], DecisionTreeClassifier(max_depth=6, random_state=0))
    model = load_model(ModelConfig(path=str(saved(tmp_path, pipeline))), runtime="sklearn")
    assert model.encoding == "arrow"
    batch = as_written(table(500, seed=6, unseen=True), "dictionary")
    frame = read_back(tmp_path, batch)
    results = model.call(model_input(batch, model.contract, model.encoder))
    np.testing.assert_array_equal(results["predict_proba"], pipeline.predict_proba(frame))
    np.testing.assert_array_equal(results["predict"], pipeline.predict(frame))
