"""The clients of the seed apps `batch-infer serve` replaces, unchanged, against a real server.

REST: ``POST /predict`` with ``{"features": {...}}`` (Flask seed) and with the flat body (FastAPI
seed), ``POST /batch_predict``, ``GET /health``. gRPC: ``prediction.PredictionService`` with stubs
generated here from ``batch_infer/serve/_proto/prediction.proto``, as a seed client builds them,
on the same port as the Open Inference Protocol. Expected values come from the model's own
``predict`` / ``predict_proba``.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import grpc
import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from grpc_tools import protoc
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from .conftest import REPO
from .test_serve_rest import FEATURES, MODEL, SCALER, ServeProcess, churn_rows

PROTO = REPO / "batch_infer" / "serve" / "_proto" / "prediction.proto"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """``prediction_pb2`` and ``prediction_pb2_grpc`` compiled from the proto file, as a client
    of the seed service does (into the default descriptor pool, like any generated code)."""
    folder = tmp_path_factory.mktemp("stubs")
    shutil.copy(PROTO, folder / "prediction.proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{folder}",
            f"--python_out={folder}",
            f"--grpc_python_out={folder}",
            str(folder / "prediction.proto"),
        ]
    )
    assert code == 0
    sys.path.insert(0, str(folder))
    try:
        yield (
            importlib.import_module("prediction_pb2"),
            importlib.import_module("prediction_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def churn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("churn")
    with ServeProcess(folder, MODEL, SCALER, serve={"name": "churn"}, grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def reference():
    """The sample model's own methods, on rows as a float32 client sends them."""
    scaler, model = joblib.load(SCALER), joblib.load(MODEL)

    def score(rows: list[list[float]]) -> tuple[list, np.ndarray]:
        as_sent = np.asarray(rows, dtype=np.float32).astype(np.float64)
        scaled = scaler.transform(pd.DataFrame(as_sent, columns=FEATURES))
        return model.predict(scaled).tolist(), model.predict_proba(scaled)

    return score


def test_grpc_predict_batch_predict_and_health_check(stubs, churn, reference):
    pb, pb_grpc = stubs
    version = httpx.get(f"{churn.url}/v2/models/churn").json()["versions"][0]
    rows = churn_rows(5, start=3)
    labels, probabilities = reference(rows)
    with grpc.insecure_channel(f"127.0.0.1:{churn.grpc_port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        health = stub.HealthCheck(pb.HealthCheckRequest())
        assert (health.status, health.model_loaded) == ("healthy", True)
        one = stub.Predict(pb.PredictRequest(features=rows[0]))
        assert one.prediction == labels[0] and one.model_version == version
        np.testing.assert_allclose(one.probabilities, probabilities[0], rtol=1e-6)
        assert one.probability == one.probabilities[1]  # binary: the positive class
        several = stub.BatchPredict(
            pb.BatchPredictRequest(instances=[pb.PredictRequest(features=r) for r in rows])
        )
        assert [p.prediction for p in several.predictions] == labels
        np.testing.assert_allclose(
            [list(p.probabilities) for p in several.predictions], probabilities, rtol=1e-6
        )
        assert several.predictions[0] == one


def test_grpc_wrong_number_of_features_is_invalid_argument_naming_the_order(stubs, churn):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(f"127.0.0.1:{churn.grpc_port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(pb.PredictRequest(features=[35.0, 24.0]))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details() == (
            "features has 2 values, but the model takes 4, in this order: age, tenure, "
            "monthly_charges, total_charges"
        )
        with pytest.raises(grpc.RpcError) as raised:
            stub.BatchPredict(
                pb.BatchPredictRequest(
                    instances=[pb.PredictRequest(features=[1, 2, 3, 4]), pb.PredictRequest()]
                )
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details().startswith("instance 1 features has 0 values")
        # the server keeps serving
        assert stub.Predict(pb.PredictRequest(features=[35, 24, 70.5, 1500])).model_version


def test_rest_seed_bodies_and_health(churn, reference):
    rows = churn_rows(3, start=11)
    labels, probabilities = reference(rows)  # float32 rounding is within the tolerance below
    records = [dict(zip(FEATURES, r, strict=True)) for r in rows]
    with httpx.Client(base_url=churn.url, timeout=60) as http:
        assert http.get("/health").json() == {"status": "healthy", "model_loaded": True}
        for body in ({"features": records[0]}, records[0]):
            answer = http.post("/predict", json=body).json()
            assert answer["prediction"] == labels[0]
            assert isinstance(answer["probability"], list)
            np.testing.assert_allclose(answer["probability"], probabilities[0], rtol=1e-6)
        batch = http.post("/batch_predict", json={"instances": records}).json()
        assert batch["predictions"] == labels
        np.testing.assert_allclose(batch["probabilities"], probabilities, rtol=1e-6)


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    """A regressor with a text category: no probabilities, and no positional features."""
    folder = tmp_path_factory.mktemp("regressor")
    rows = churn_rows(200)
    frame = pd.DataFrame(rows, columns=FEATURES)
    frame["region"] = [("north", "south", "east")[k % 3] for k in range(len(rows))]
    target = frame["monthly_charges"] * 3 + frame["region"].map(
        {"north": 5, "south": -2, "east": 0}
    )
    model = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), FEATURES),
                        ("region", OneHotEncoder(), ["region"]),
                    ]
                ),
            ),
            ("ridge", Ridge()),
        ]
    ).fit(frame, target)
    joblib.dump(model, folder / "charges.joblib")
    with ServeProcess(folder, folder / "charges.joblib", grpc=True) as running:
        yield running, model


def test_a_regressor_answers_its_number_without_probability(regressor):
    running, model = regressor
    row = {"age": 40.0, "tenure": 10.0, "monthly_charges": 55.5, "total_charges": 555.0}
    expected = model.predict(pd.DataFrame([{**row, "region": "south"}]))[0]
    answer = httpx.post(f"{running.url}/predict", json={**row, "region": "south"}).json()
    assert list(answer) == ["prediction", "model_version"]
    assert answer["prediction"] == pytest.approx(expected, rel=1e-12)
    batch = httpx.post(
        f"{running.url}/batch_predict", json={"instances": [{**row, "region": "south"}]}
    ).json()
    assert list(batch) == ["predictions", "model_version"]
    unknown = httpx.post(f"{running.url}/predict", json={**row, "region": "atlantis"})
    assert unknown.status_code == 400 and "'region'" in unknown.json()["error"]


def test_grpc_positional_features_need_an_all_numeric_model(stubs, regressor):
    pb, pb_grpc = stubs
    running, _ = regressor
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.PredictionServiceStub(channel).Predict(
                pb.PredictRequest(features=[40, 10, 55.5, 555, 1])
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(
        "features: this model takes non-numeric features (region), which a list of numbers "
        "cannot carry"
    )


def test_the_package_proto_is_the_one_the_generated_modules_come_from():
    """scripts/gen_proto.sh was run after the last edit of prediction.proto."""
    from batch_infer.serve._proto import prediction_pb2

    source = Path(PROTO).read_text()
    descriptor = prediction_pb2.DESCRIPTOR
    assert descriptor.package == "prediction" and "package prediction;" in source
    for message in descriptor.message_types_by_name.values():
        assert f"message {message.name} " in source
        for field in message.fields:
            assert f" {field.name} = {field.number};" in source
