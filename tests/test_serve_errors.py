"""`batch-infer serve` when the model fails: a real server process on loopback, real clients.

A model that fails as a whole answers HTTP 500 / gRPC INTERNAL with one generic line naming the
model (the details go to the server's log, secrets masked); bad input stays a 400 naming the
input; a model whose warm-up call fails is live but never ready. The failing models are classes
of ``tests/serve_models.py``, which the server process imports to load them.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from batch_infer.serve._proto import prediction_pb2, prediction_pb2_grpc

from .serve_models import SECRET_VARIABLE, AlwaysFails, AlwaysRefuses, FailsOnAge99
from .test_serve_rest import FEATURES, ServeProcess, churn_rows, columns_request, tensor_request

PLANTED = "pl4nted-st0rage-t0ken-9f3a"  # a storage option's value: never to be seen unmasked


def failure(name: str) -> str:
    return (
        f"model {name!r} failed to score this request — the failure is the server's, not the "
        "request's; the server's log has the details"
    )


def fitted(model_class: type, folder: Path, name: str) -> Path:
    rows = np.array(churn_rows(40))
    frame = pd.DataFrame(rows, columns=FEATURES)
    path = folder / f"{name}.joblib"
    joblib.dump(model_class().fit(frame, (rows[:, 1] > 30).astype(int)), path)
    return path


def test_a_model_failing_its_warm_up_is_live_never_ready_and_answers_500(tmp_path):
    model = fitted(AlwaysFails, tmp_path, "failing")
    running = ServeProcess(
        tmp_path,
        model,
        grpc=True,
        env={SECRET_VARIABLE: PLANTED},
        model_section={"storage_options": {"token": PLANTED}},
    ).wait_live()
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            assert http.get("/v2/health/ready").status_code == 503
            assert http.get("/v2/models/failing/ready").status_code == 503
            health = http.get("/health")
            assert health.status_code == 503
            assert health.json() == {"status": "unavailable", "model_loaded": False}
            for path, body in [
                ("/v2/models/failing/infer", columns_request(churn_rows(2))),
                ("/predict", {"features": dict(zip(FEATURES, churn_rows(1)[0], strict=True))}),
                (
                    "/batch_predict",
                    {"instances": [dict(zip(FEATURES, r, strict=True)) for r in churn_rows(3)]},
                ),
            ]:
                response = http.post(path, json=body)
                assert response.status_code == 500, (path, response.text)
                assert response.json() == {"error": failure("failing")}
            bad = http.post("/predict", json={"features": {"age": 30}})  # still the request's
            assert bad.status_code == 400
            assert "has no feature 'tenure'" in bad.json()["error"]
        address = f"127.0.0.1:{running.grpc_port}"
        client = triton.InferenceServerClient(address)
        assert client.is_server_live() and not client.is_server_ready()
        tensor = triton.InferInput("x", [1, 4], "FP64")
        tensor.set_data_from_numpy(np.array(churn_rows(1)))
        with pytest.raises(triton.InferenceServerException) as raised:
            client.infer("failing", [tensor])
        assert raised.value.status() == "StatusCode.INTERNAL"
        assert raised.value.message() == failure("failing")
        client.close()
        with grpc.insecure_channel(address) as channel:
            checked = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
            seed = prediction_pb2_grpc.PredictionServiceStub(channel)
            answer = seed.HealthCheck(prediction_pb2.HealthCheckRequest())
            assert (answer.status, answer.model_loaded) == ("unavailable", False)
    finally:
        running.stop()
    log = running.log.read_text()
    assert PLANTED not in log
    assert "model 'failing' version" in log and "is NOT READY: its warm-up call" in log
    assert "RuntimeError: feature store refused token ***" in log  # why, masked
    assert "failed to score a request" in log  # each failed request, for the operator


def test_a_model_refusing_any_row_is_never_ready_and_its_batches_are_500(tmp_path):
    running = ServeProcess(tmp_path, fitted(AlwaysRefuses, tmp_path, "refusing")).wait_live()
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            assert http.get("/v2/health/ready").status_code == 503
            assert http.get("/health").json() == {"status": "unavailable", "model_loaded": False}
            several = http.post("/v2/models/refusing/infer", json=tensor_request(churn_rows(3)))
            assert several.status_code == 500
            assert several.json() == {"error": failure("refusing")}
            # one row alone is a row the model refuses: the request's, named, as the core says
            one = http.post("/v2/models/refusing/infer", json=tensor_request(churn_rows(1)))
            assert one.status_code == 400
            assert one.json()["error"].startswith("row 0: X has feature names")
    finally:
        running.stop()
    log = running.log.read_text()
    assert (
        "is NOT READY: its warm-up call on one made-up row failed: the model raised on the "
        "made-up row: X has feature names, but this model was fitted without them"
    ) in log


def test_a_model_failing_on_some_batches_fails_only_those_requests(tmp_path):
    model = fitted(FailsOnAge99, tmp_path, "flaky")
    with ServeProcess(tmp_path, model, grpc=True, serve={"max_batch_time_ms": 20}) as running:
        rows = churn_rows(30)
        poisoned = 7
        rows[poisoned][0] = 99.0

        def call(index: int) -> httpx.Response:
            with httpx.Client(base_url=running.url, timeout=60) as http:
                return http.post("/v2/models/flaky/infer", json=tensor_request([rows[index]]))

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(call, range(len(rows))))
        statuses = [answer.status_code for answer in answers]
        assert statuses == [500 if i == poisoned else 200 for i in range(len(rows))]
        assert answers[poisoned].json() == {"error": failure("flaky")}
        expected = FailsOnAge99().fit(pd.DataFrame(rows, columns=FEATURES), [0, 1])
        for index, answer in enumerate(answers):
            if index != poisoned:
                probability = answer.json()["outputs"][1]["data"][0]
                frame = pd.DataFrame([rows[index]], columns=FEATURES)
                assert probability == pytest.approx(expected.predict_proba(frame)[0, 1], rel=1e-12)
        assert httpx.get(f"{running.url}/v2/health/ready").status_code == 200  # still serving
        client = triton.InferenceServerClient(f"127.0.0.1:{running.grpc_port}")
        tensor = triton.InferInput("x", [1, 4], "FP64")
        tensor.set_data_from_numpy(np.array([rows[poisoned]]))
        with pytest.raises(triton.InferenceServerException) as raised:
            client.infer("flaky", [tensor])
        assert raised.value.status() == "StatusCode.INTERNAL"
        assert raised.value.message() == failure("flaky")
        client.close()
    log = running.log.read_text()
    assert "model 'flaky' version" in log and "the model's backend crashed — restart it" in log


def test_a_credential_in_the_model_url_never_reaches_the_error_line(tmp_path):
    secret = "Pl4ntedUrlS3cret"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_infer.serve",
            "--model",
            f"memory://reader:{secret}@bucket/{tmp_path.name}/nope.joblib",
            "--verbose",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 4
    assert secret not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: model file memory://***@bucket/{tmp_path.name}/nope.joblib does not exist "
        "— check --model"
    ]
