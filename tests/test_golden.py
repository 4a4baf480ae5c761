"""The output's prediction and probability columns are the model's own, called on the whole table:
labels identical, numbers within the README's bound (``zoo.assert_models_own``)."""

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_infer import run

from . import zoo
from .conftest import FEATURES, make_config, read_output


def _input_frame(root):
    return pa.concat_tables(pq.read_table(p) for p in sorted(root.rglob("*.parquet"))).to_pandas()


def _scored(out):
    return read_output(out).to_pandas().sort_values("customer_id").reset_index(drop=True)


def test_binary_classifier_matches_direct_call(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["binary"], input={"batch_size": 700}))
    model = joblib.load(trained_models["binary"])
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)

    zoo.assert_models_own(scored, model, frame[FEATURES])
    assert scored["prediction"].dtype == np.int64


def test_multiclass_string_labels_get_one_probability_column_per_class(
    tmp_path, trained_models, churn_input
):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["multiclass"]))
    model = joblib.load(trained_models["multiclass"])
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)

    zoo.assert_models_own(scored, model, frame[FEATURES])
    assert {f"probability_{label}" for label in model.classes_} <= set(scored.columns)
    assert "probability" not in scored.columns
    assert read_output(out).schema.field("prediction").type == pa.string()


def test_regressor_has_prediction_and_no_probability(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["regressor"]))
    model = joblib.load(trained_models["regressor"])
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)

    zoo.assert_models_own(scored, model, frame[FEATURES])
    assert not [c for c in scored.columns if c.startswith("probability")]


def test_separate_scaler_and_model_match_direct_call(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    config = make_config(
        churn_input,
        out,
        trained_models["scaled_model"],
        model={"scaler": str(trained_models["scaler"])},
    )
    report = run(config)
    scaler = joblib.load(trained_models["scaler"])
    model = joblib.load(trained_models["scaled_model"])
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)

    zoo.assert_models_own(scored, model, scaler.transform(frame[FEATURES]))
    # model_version defaults to the estimator's file hash, not the scaler's
    assert set(scored["model_version"]) == {report.model_sha256[:12]}


@pytest.mark.parametrize("batch_size", [7, 64, 333, 1_000])
def test_batch_size_does_not_change_results(tmp_path, trained_models, churn_input, batch_size):
    """Batches of any size, odd ones too (BLAS would round their ragged tail rows differently),
    give the bits of one whole batch, and the model's own results within the bound."""
    whole, out = tmp_path / "whole", tmp_path / "out"
    run(make_config(churn_input, whole, trained_models["binary"], input={"batch_size": 100_000}))
    run(make_config(churn_input, out, trained_models["binary"], input={"batch_size": batch_size}))
    model = joblib.load(trained_models["binary"])
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)

    zoo.assert_models_own(scored, model, frame[FEATURES])
    expected = _scored(whole)
    assert scored["prediction"].tolist() == expected["prediction"].tolist()
    assert np.array_equal(
        scored["probability"].to_numpy().view(np.uint64),
        expected["probability"].to_numpy().view(np.uint64),
    )
