"""Parity: a row scored by `serve` gets the outputs `run` wrote for it, to the last bit.

Each test scores a table with ``batch_infer.run``, reads the committed Parquet, then sends the
same rows to a real ``batch-infer serve`` process one by one, in small concurrent batches and in
large ones, with httpx (plain JSON) and with tritonclient.http (binary tensors), and compares
every output column bit for bit.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import joblib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from batch_infer import run

from . import zoo
from .conftest import SAMPLE, make_config, read_output
from .test_serve_rest import ServeProcess

DATATYPES = {
    pa.int32(): "INT32",
    pa.int64(): "INT64",
    pa.float64(): "FP64",
    pa.string(): "BYTES",
    pa.large_string(): "BYTES",
}


def scored_by_run(tmp_path, input_path, model, scaler=None) -> pa.Table:
    extra: dict[str, Any] = {"run_date": "2026-01-05"}
    if scaler is not None:
        extra["model"] = {"scaler": str(scaler)}
    out = tmp_path / "run-output"
    run(make_config(input_path, out, model, **extra))
    return read_output(out)


def columns_body(table: pa.Table, features: list[str], outputs: list[str]) -> dict:
    """The rows as a pandas-codec request: one input per feature, typed as in the Parquet."""
    return {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {
                "name": name,
                "datatype": DATATYPES[table.schema.field(name).type],
                "shape": [table.num_rows],
                "data": table.column(name).to_pylist(),
            }
            for name in features
        ],
        "outputs": [{"name": name} for name in outputs],
    }


def served(client: httpx.Client, model: str, body: dict) -> dict[str, list[Any]]:
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def assert_identical(expected: pa.Table, got: dict[str, list[Any]], outputs: list[str]) -> None:
    for name in outputs:
        want = expected.column(name).to_numpy(zero_copy_only=False)
        have = np.asarray(got[name], dtype=want.dtype)
        if want.dtype == np.float64:
            differ = np.flatnonzero(want.view(np.int64) != have.view(np.int64))
            assert differ.size == 0, (
                f"{name}: {differ.size} of {len(want)} rows differ from run's, e.g. row "
                f"{differ[0]}: run {want[differ[0]]!r}, serve {have[differ[0]]!r}"
            )
        else:
            assert have.tolist() == want.tolist(), name


def slices(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(start, size) for start in range(0, table.num_rows, size)]


def check_over_rest(
    url: str,
    model: str,
    expected: pa.Table,
    features: list[str],
    outputs: list[str],
    one_by_one: int,
) -> None:
    """Rows alone (the first ``one_by_one``), 37 at a time from 8 threads, 1,000 at a time."""
    with httpx.Client(base_url=url, timeout=120) as client:
        for row in range(one_by_one):
            part = expected.slice(row, 1)
            assert_identical(
                part, served(client, model, columns_body(part, features, outputs)), outputs
            )

        def batch(part: pa.Table) -> dict[str, list[Any]]:
            with httpx.Client(base_url=url, timeout=120) as own:
                return served(own, model, columns_body(part, features, outputs))

        parts = slices(expected, 37)
        with ThreadPoolExecutor(8) as pool:
            for part, got in zip(parts, pool.map(batch, parts), strict=True):
                assert_identical(part, got, outputs)
        for part in slices(expected, 1_000):
            assert_identical(
                part, served(client, model, columns_body(part, features, outputs)), outputs
            )


def outputs_of(table: pa.Table) -> list[str]:
    """The columns run added from the model's methods."""
    return [n for n in table.schema.names if n.startswith(("prediction", "probability"))]


def test_sample_data_served_equals_run_to_the_last_bit(tmp_path):
    model, scaler = SAMPLE / "models" / "model.joblib", SAMPLE / "models" / "scaler.joblib"
    expected = scored_by_run(tmp_path, SAMPLE / "churn", model, scaler)
    features = ["age", "tenure", "monthly_charges", "total_charges"]
    outputs = outputs_of(expected)
    assert outputs == ["prediction", "probability"]
    with ServeProcess(tmp_path, model, scaler, serve={"name": "churn"}) as server:
        check_over_rest(server.url, "churn", expected, features, outputs, one_by_one=300)
        check_with_tritonclient(server.url, "churn", expected, features, outputs)


def check_with_tritonclient(
    url: str, model: str, expected: pa.Table, features: list[str], outputs: list[str]
) -> None:
    """tritonclient.http as the client: binary tensors, one per feature, typed as in Parquet."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url.removeprefix("http://"), concurrency=4)

    def infer(part: pa.Table) -> dict[str, list[Any]]:
        tensors = []
        for name in features:
            values = part.column(name).to_numpy(zero_copy_only=False)
            tensor = triton.InferInput(
                name, [part.num_rows], DATATYPES[part.schema.field(name).type]
            )
            tensor.set_data_from_numpy(values)
            tensors.append(tensor)
        result = client.infer(
            model,
            tensors,
            outputs=[triton.InferRequestedOutput(n) for n in outputs],
            parameters={"content_type": "pd"},
        )
        return {n: _decoded(result.as_numpy(n).tolist()) for n in outputs}

    try:
        for row in range(100):
            part = expected.slice(row, 1)
            assert_identical(part, infer(part), outputs)
        for part in slices(expected, 500):
            assert_identical(part, infer(part), outputs)
    finally:
        client.close()


def _decoded(values: list[Any]) -> list[Any]:
    """BYTES outputs arrive as bytes: the labels as text, as run wrote them."""
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def test_logistic_regression_on_thousands_of_rows_single_row_requests_in_parallel(
    tmp_path, trained_models, churn_input
):
    """A Pipeline(StandardScaler, LogisticRegression): 5,000 rows as concurrent 1-row requests."""
    expected = scored_by_run(tmp_path, churn_input, trained_models["binary"])
    features = ["age", "tenure", "monthly_charges", "total_charges"]
    outputs = outputs_of(expected)
    with ServeProcess(tmp_path, trained_models["binary"]) as server:
        rows = slices(expected, 1)

        def alone(part: pa.Table) -> dict[str, list[Any]]:
            return served(client, "binary", columns_body(part, features, outputs))

        with httpx.Client(
            base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=32)
        ) as client:
            with ThreadPoolExecutor(32) as pool:
                for part, got in zip(rows, pool.map(alone, rows), strict=True):
                    assert_identical(part, got, outputs)
            assert_identical(
                expected,
                served(client, "binary", columns_body(expected, features, outputs)),
                outputs,
            )


def test_pipeline_with_a_categorical_text_column(tmp_path):
    """Penguins: island and sex as text (sex with missing values) one-hot encoded, species out."""
    data = zoo.penguins()
    model_path = tmp_path / "penguins.joblib"
    joblib.dump(zoo.fit_onehot(data), model_path)
    folder = zoo.write_dataset(data.frame, tmp_path / "penguins", "pyarrow")
    expected = scored_by_run(tmp_path, folder, model_path)
    outputs = outputs_of(expected)
    assert "prediction" in outputs and any(n.startswith("probability_") for n in outputs)
    with ServeProcess(tmp_path, model_path) as server:
        check_over_rest(
            server.url, "penguins", expected, data.features, outputs, one_by_one=expected.num_rows
        )
        # tritonclient sends text as binary BYTES (it has no missing value for them)
        complete = expected.filter(pc.invert(pc.is_null(expected.column("sex"))))
        check_with_tritonclient(server.url, "penguins", complete, data.features, outputs)
        # the simple endpoint: the label, and the whole probability row in class order
        row = expected.slice(0, 1).to_pylist()[0]
        answer = httpx.post(
            f"{server.url}/predict", json={"features": {n: row[n] for n in data.features}}
        ).json()
        assert answer["prediction"] == row["prediction"]
        classes = joblib.load(model_path).classes_.tolist()
        assert len(classes) == 3
        assert answer["probability"] == [row[f"probability_{c}"] for c in classes]


@pytest.mark.parametrize("content_type", ["pd", None])
def test_a_two_dimensional_tensor_equals_columns(tmp_path, content_type):
    """The [N, n_features] layout reaches the model as the columns do (sample model)."""
    model, scaler = SAMPLE / "models" / "model.joblib", SAMPLE / "models" / "scaler.joblib"
    expected = scored_by_run(tmp_path, SAMPLE / "churn", model, scaler).slice(0, 500)
    features = ["age", "tenure", "monthly_charges", "total_charges"]
    matrix = np.column_stack(
        [expected.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in features]
    )
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": list(matrix.shape),
                "data": matrix.tolist(),
            }
        ]
    }
    if content_type:
        body["parameters"] = {"content_type": "np"}
    with ServeProcess(tmp_path, model, scaler) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            got = served(client, "model", body)
    assert_identical(expected, got, ["prediction", "probability"])
