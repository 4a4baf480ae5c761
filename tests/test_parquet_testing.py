"""Files from apache/parquet-testing (recreated by tests/data/parquet-testing/craft.py)."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression

from .conftest import read_output
from .test_bad_input import BAD_INPUT, assert_fails, invoke, run_args

DATA = Path(__file__).parent / "data" / "parquet-testing"


@pytest.fixture(scope="module")
def id_model(tmp_path_factory) -> Path:
    frame = pd.DataFrame({"id": np.arange(40), "x": np.linspace(-1, 1, 40)})
    path = tmp_path_factory.mktemp("models") / "by_id.joblib"
    joblib.dump(LogisticRegression().fit(frame[["id", "x"]], frame["id"] % 2), path)
    return path


@pytest.fixture(scope="module")
def id_only_model(tmp_path_factory) -> Path:
    frame = pd.DataFrame({"id": np.arange(40)})
    path = tmp_path_factory.mktemp("models") / "id_only.joblib"
    joblib.dump(LogisticRegression().fit(frame[["id"]], frame["id"] % 2), path)
    return path


def test_columns_shorter_than_the_footer_says_is_bad_input(tmp_path, id_model):
    """ARROW-GH-41317: a row group's column chunks do not all hold the rows it declares."""
    source = DATA / "ARROW-GH-41317.parquet"
    out = tmp_path / "out"
    result = invoke(*run_args(source, out, id_model))
    assert_fails(result, BAD_INPUT, str(source), "row group", output=out)


def test_a_footer_saying_zero_rows_scores_the_rows_the_file_holds(tmp_path, id_only_model):
    """repeated_no_annotation.parquet: the footer's total says 0, its row group holds 6 rows.
    Readers read the row groups, so batch-infer scores the 6 rows, nested column untouched."""
    source = DATA / "repeated_no_annotation.parquet"
    assert pq.ParquetFile(source).metadata.num_rows == 0
    out = tmp_path / "out"
    result = invoke(*run_args(source, out, id_only_model, "--output-format", "json"))
    assert result.exit_code == 0, result.stderr
    scored = read_output(out)
    expected = pq.read_table(source)
    assert scored.num_rows == expected.num_rows == 6
    assert scored.column("phoneNumbers").to_pylist() == expected.column("phoneNumbers").to_pylist()
    model = joblib.load(id_only_model)
    assert (
        scored.column("prediction").to_pylist()
        == model.predict(expected.select(["id"]).to_pandas()).tolist()
    )
