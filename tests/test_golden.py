"""The output's prediction and probability columns equal calling the model on the whole table."""

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_infer import run
from batch_infer.model.rowwise import as_scored

from .conftest import FEATURES, make_config, read_output


def _input_frame(root):
    return pa.concat_tables(pq.read_table(p) for p in sorted(root.rglob("*.parquet"))).to_pandas()


def _scored(out):
    return read_output(out).to_pandas().sort_values("customer_id").reset_index(drop=True)


def test_binary_classifier_matches_direct_call(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["binary"], input={"batch_size": 700}))
    model = as_scored(joblib.load(trained_models["binary"]))
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)

    assert scored["prediction"].tolist() == model.predict(frame[FEATURES]).tolist()
    assert np.array_equal(
        scored["probability"].to_numpy(), model.predict_proba(frame[FEATURES])[:, 1]
    )
    assert scored["prediction"].dtype == np.int64


def test_multiclass_string_labels_get_one_probability_column_per_class(
    tmp_path, trained_models, churn_input
):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["multiclass"]))
    model = as_scored(joblib.load(trained_models["multiclass"]))
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)

    assert scored["prediction"].tolist() == model.predict(frame[FEATURES]).tolist()
    expected = model.predict_proba(frame[FEATURES])
    for index, label in enumerate(model.classes_):
        assert np.array_equal(scored[f"probability_{label}"].to_numpy(), expected[:, index])
    assert "probability" not in scored.columns
    assert read_output(out).schema.field("prediction").type == pa.string()


def test_regressor_has_prediction_and_no_probability(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["regressor"]))
    model = as_scored(joblib.load(trained_models["regressor"]))
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)

    assert np.array_equal(scored["prediction"].to_numpy(), model.predict(frame[FEATURES]))
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
    model = as_scored(joblib.load(trained_models["scaled_model"]))
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scaled = scaler.transform(frame[FEATURES])
    scored = _scored(out)

    assert np.array_equal(scored["probability"].to_numpy(), model.predict_proba(scaled)[:, 1])
    assert scored["prediction"].tolist() == model.predict(scaled).tolist()
    # model_version defaults to the estimator's file hash, not the scaler's
    assert set(scored["model_version"]) == {report.model_sha256[:12]}


@pytest.mark.parametrize("batch_size", [64, 1_000, 100_000])
def test_batch_size_does_not_change_results(tmp_path, trained_models, churn_input, batch_size):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["binary"], input={"batch_size": batch_size}))
    model = as_scored(joblib.load(trained_models["binary"]))
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    assert np.array_equal(
        _scored(out)["probability"].to_numpy(), model.predict_proba(frame[FEATURES])[:, 1]
    )


@pytest.mark.parametrize("batch_size", [7, 333])
def test_odd_batch_sizes_agree_to_the_last_bits(tmp_path, trained_models, churn_input, batch_size):
    """Batches of odd sizes (BLAS would round their ragged tail rows differently) give the same
    bits as one call on the whole table: a row's outputs do not depend on its batch."""
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["binary"], input={"batch_size": batch_size}))
    model = as_scored(joblib.load(trained_models["binary"]))
    frame = _input_frame(churn_input).sort_values("customer_id").reset_index(drop=True)
    scored = _scored(out)
    assert scored["prediction"].tolist() == model.predict(frame[FEATURES]).tolist()
    assert np.array_equal(
        scored["probability"].to_numpy(), model.predict_proba(frame[FEATURES])[:, 1]
    )
