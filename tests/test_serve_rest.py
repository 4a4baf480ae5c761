"""`batch-infer serve` over REST: a real server process on loopback, real HTTP clients.

``ServeProcess`` (also used by test_serve_parity.py) starts ``python -m batch_infer.serve`` with a
config file on free ports and waits until it is ready.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from batch_infer.serve.cache import LRUCache

from .conftest import REPO, SAMPLE

FEATURES = ["age", "tenure", "monthly_charges", "total_charges"]
MODEL = SAMPLE / "models" / "model.joblib"
SCALER = SAMPLE / "models" / "scaler.joblib"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``python -m batch_infer.serve -c <config>`` on a free port, until ``stop()``."""

    def __init__(
        self,
        folder: Path,
        model: Path,
        scaler: Path | None = None,
        serve: dict[str, Any] | None = None,
        args: list[str] | None = None,
        grpc: bool = False,
        env: dict[str, str] | None = None,
        model_section: dict[str, Any] | None = None,
    ) -> None:
        self.port = free_port()
        self.grpc_port = free_port() if grpc else None
        section = {"http_port": self.port, "grpc_port": self.grpc_port, **(serve or {})}
        config = {"model": {"path": str(model), **(model_section or {})}, "serve": section}
        if scaler is not None:
            config["model"]["scaler"] = str(scaler)
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / f"serve-{self.port}.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = folder / f"serve-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batch_infer.serve", "-c", str(self.config), *(args or [])],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO,  # tests.* importable there: models of test classes load
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 120) -> ServeProcess:
        """Poll readiness; a process that exits first fails the test with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"server not ready within {timeout}s:\n{self.log.read_text()}")

    def wait_live(self, timeout: float = 120) -> ServeProcess:
        """Poll liveness only (a server whose model fails its warm-up is live, never ready)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/v2/health/live", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"server not live within {timeout}s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode

    def __enter__(self) -> ServeProcess:
        return self.wait_ready()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            return float(value)
    return 0.0


def columns_request(rows: list[list[float]], outputs: list[str] | None = None, **extra) -> dict:
    """One FP64 input per feature, the pandas codec's layout."""
    body: dict[str, Any] = {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": name, "datatype": "FP64", "shape": [len(rows)], "data": [r[i] for r in rows]}
            for i, name in enumerate(FEATURES)
        ],
        **extra,
    }
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def tensor_request(rows: list[list[float]]) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(rows), 4], "data": rows}]}


def churn_rows(count: int, start: int = 0) -> list[list[float]]:
    """Distinct, plausible rows: no two share an age-tenure pair or charges."""
    return [
        [float(18 + k % 70), float(k % 72), round(20 + 0.37 * k, 2), round(15.5 * k, 2)]
        for k in range(start, start + count)
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    with ServeProcess(folder, MODEL, SCALER, serve={"name": "churn", "cache_size": 0}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_health_and_metadata_answer_as_the_protocol_says(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/health").json() == {"status": "healthy", "model_loaded": True}
    server = client.get("/v2").json()
    assert server["name"] == "batch-infer" and "extensions" in server
    model = client.get("/v2/models/churn").json()
    assert model["name"] == "churn"
    assert model["platform"] == "batch-infer-sklearn"
    assert [i["name"] for i in model["inputs"]] == FEATURES
    assert {i["datatype"] for i in model["inputs"]} == {"FP64"}
    assert [o["name"] for o in model["outputs"]] == ["prediction", "probability"]
    version = model["versions"][0]
    assert client.get(f"/v2/models/churn/versions/{version}").json() == model
    assert client.get("/v2/models/churn/ready").json() == {"name": "churn", "ready": True}
    assert client.get(f"/v2/models/churn/versions/{version}/ready").status_code == 200


def test_unknown_model_and_version_are_404_naming_them(client):
    response = client.get("/v2/models/fraud")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown model 'fraud' — this server serves model 'churn'"}
    response = client.post("/v2/models/fraud/infer", json=tensor_request(churn_rows(1)))
    assert response.status_code == 404
    response = client.post("/v2/models/churn/versions/v0/infer", json=tensor_request(churn_rows(1)))
    assert response.status_code == 404
    assert "has no version 'v0'" in response.json()["error"]


def test_columns_and_tensor_give_the_same_outputs_named_like_run(client, server):
    rows = churn_rows(5)
    version = client.get("/v2/models/churn").json()["versions"][0]
    by_columns = client.post("/v2/models/churn/infer", json=columns_request(rows, id="r-1"))
    by_tensor = client.post(f"/v2/models/churn/versions/{version}/infer", json=tensor_request(rows))
    assert by_columns.status_code == by_tensor.status_code == 200
    first, second = by_columns.json(), by_tensor.json()
    assert first["id"] == "r-1" and first["model_name"] == "churn"
    assert first["model_version"] == version
    assert first["outputs"] == second["outputs"]
    prediction, probability = first["outputs"]
    assert (prediction["name"], prediction["datatype"], prediction["shape"]) == (
        "prediction",
        "INT64",
        [5],
    )
    assert (probability["name"], probability["datatype"], probability["shape"]) == (
        "probability",
        "FP64",
        [5],
    )
    assert all(0 <= p <= 1 for p in probability["data"])
    assert prediction["data"] == [int(p > 0.5) for p in probability["data"]]


def test_a_request_gets_only_the_outputs_it_asks_for(client):
    response = client.post(
        "/v2/models/churn/infer", json=columns_request(churn_rows(3), outputs=["probability"])
    ).json()
    assert [o["name"] for o in response["outputs"]] == ["probability"]


def test_integer_json_numbers_and_int_datatypes_score_like_floats(client):
    rows = [[30, 12, 50, 600], [61, 3, 99, 300]]
    as_ints = {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": n, "datatype": "INT64" if n in ("age", "tenure") else "FP64", "shape": [2]}
            | {"data": [r[i] for r in rows]}
            for i, n in enumerate(FEATURES)
        ],
    }
    floats = [[float(v) for v in r] for r in rows]
    first = client.post("/v2/models/churn/infer", json=as_ints).json()
    second = client.post("/v2/models/churn/infer", json=columns_request(floats)).json()
    assert first["outputs"] == second["outputs"]


BAD_REQUESTS = [
    ("no inputs", {"inputs": []}, "the request has no inputs"),
    (
        "missing column",
        {
            "parameters": {"content_type": "pd"},
            "inputs": [{"name": "age", "datatype": "FP64", "shape": [1], "data": [30.0]}],
        },
        "input 'tenure' is missing",
    ),
    (
        "wrong datatype for a feature",
        {
            "parameters": {"content_type": "pd"},
            "inputs": [
                {"name": n, "datatype": "BYTES", "shape": [1], "data": ["x"]} for n in FEATURES
            ],
        },
        "input 'age' is BYTES, but the model takes numbers",
    ),
    (
        "data that is not its datatype",
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": ["a", 1, 2, 3]}]},
        "input 'x' is declared FP64 but holds other values",
    ),
    (
        "unknown datatype",
        {"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        "input 'x' has datatype 'FLOAT'",
    ),
    (
        "wrong shape",
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]},
        "input 'x' has shape [1, 3], but the model takes 4 features",
    ),
    (
        "shape and data disagree",
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": [1, 2, 3, 4]}]},
        "input 'x' has shape [2, 4] (8 values) but holds 4",
    ),
    (
        "columns of different lengths",
        {
            "parameters": {"content_type": "pd"},
            "inputs": [
                {"name": n, "datatype": "FP64", "shape": [2 if n == "age" else 1]}
                | {"data": [1.0] * (2 if n == "age" else 1)}
                for n in FEATURES
            ],
        },
        "has 1 rows but input 'age' has 2",
    ),
    ("no rows", tensor_request([]), "the request has no rows"),
    (
        "unknown output",
        columns_request(churn_rows(1), outputs=["score"]),
        "unknown output 'score' — model 'churn' gives prediction, probability",
    ),
    ("not an object", [1, 2], "not an object"),
]


@pytest.mark.parametrize(
    "body, message", [(b, m) for _, b, m in BAD_REQUESTS], ids=[i for i, _, _ in BAD_REQUESTS]
)
def test_bad_requests_get_a_400_naming_the_problem_and_the_server_keeps_serving(
    client, body, message
):
    response = client.post("/v2/models/churn/infer", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert (
        client.post("/v2/models/churn/infer", json=tensor_request(churn_rows(2))).status_code == 200
    )


def test_malformed_json_is_a_400(client):
    response = client.post(
        "/v2/models/churn/infer",
        content=b'{"inputs": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("the request body is not valid JSON")


@pytest.mark.parametrize("missing, word", [(math.nan, "NaN"), (None, "null")])
def test_a_row_the_model_refuses_is_a_400_naming_the_row_and_the_column(client, missing, word):
    rows: list[list[Any]] = churn_rows(3)
    rows[1][2] = missing  # the model refuses missing values (LogisticRegression)
    body = json.dumps(columns_request(rows), allow_nan=True)  # NaN as Python writes it
    response = client.post(
        "/v2/models/churn/infer", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": f"input 'monthly_charges', row 1: {word} value in feature 'monthly_charges' — "
        "send values the model takes"
    }


def test_predict_and_batch_predict_for_simple_clients(client):
    """The seed apps' clients, unchanged: {"features": {...}} (Flask) and the flat body
    (FastAPI), answered with the label and the whole predict_proba row of the model itself."""
    import joblib
    import pandas as pd

    rows = churn_rows(4)
    records = [dict(zip(FEATURES, r, strict=True)) for r in rows]
    version = client.get("/v2/models/churn").json()["versions"][0]
    scaler, model = joblib.load(SCALER), joblib.load(MODEL)
    scaled = scaler.transform(pd.DataFrame(rows, columns=FEATURES))
    labels, probabilities = model.predict(scaled).tolist(), model.predict_proba(scaled)
    nested = client.post("/predict", json={"features": records[0]}).json()
    flat = client.post("/predict", json=records[0]).json()
    assert nested == flat
    assert list(flat) == ["prediction", "probability", "model_version"]
    assert flat["prediction"] == labels[0] and flat["model_version"] == version
    np.testing.assert_allclose(flat["probability"], probabilities[0], rtol=1e-12, atol=0)
    several = client.post("/batch_predict", json={"instances": records}).json()
    assert several["predictions"] == labels
    np.testing.assert_allclose(several["probabilities"], probabilities, rtol=1e-12, atol=0)
    assert [len(p) for p in several["probabilities"]] == [2] * 4
    missing = client.post("/predict", json={"features": {"age": 30}})
    assert missing.status_code == 400
    assert "features has no feature 'tenure'" in missing.json()["error"]
    flat_missing = client.post("/predict", json={"age": 30})
    assert flat_missing.status_code == 400
    assert "the request body has no feature 'tenure'" in flat_missing.json()["error"]
    assert client.post("/batch_predict", json={"rows": []}).status_code == 400
    wrong = client.post("/predict", json={**records[0], "age": True})
    assert wrong.status_code == 400 and "input 'age' holds true" in wrong.json()["error"]


def test_the_openapi_document_describes_the_served_model(client):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    features = schemas["Features"]
    assert features["required"] == FEATURES
    assert {name: features["properties"][name]["type"] for name in FEATURES} == dict.fromkeys(
        FEATURES, "number"
    )
    assert set(features["example"]) == set(FEATURES)

    def body(path: str) -> dict:
        return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]

    assert body("/predict")["schema"]["anyOf"] == [
        {"$ref": "#/components/schemas/PredictRequest"},
        {"$ref": "#/components/schemas/Features"},
    ]
    assert schemas["PredictRequest"]["required"] == ["features"]
    instances = schemas["BatchPredictRequest"]["properties"]["instances"]
    assert instances["items"] == {"$ref": "#/components/schemas/Features"}
    infer = schemas["InferenceRequest"]
    tensors = infer["properties"]["inputs"]["prefixItems"]
    assert [
        (t["properties"]["name"]["const"], t["properties"]["datatype"]["const"]) for t in tensors
    ] == [(name, "FP64") for name in FEATURES]
    assert infer["properties"]["outputs"]["items"]["properties"]["name"]["enum"] == [
        "prediction",
        "probability",
    ]
    assert body("/v2/models/{name}/infer")["schema"] == {
        "$ref": "#/components/schemas/InferenceRequest"
    }
    version = client.get("/v2/models/churn").json()["versions"][0]
    parameters = document["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"][
        "parameters"
    ]
    assert {p["name"]: p["schema"]["enum"] for p in parameters} == {
        "name": ["churn"],
        "version": [version],
    }
    assert schemas["PredictResponse"]["properties"]["probability"]["minItems"] == 2
    # the documented examples are accepted as they stand (what Swagger UI's form sends)
    for path in ("/predict", "/batch_predict", "/v2/models/churn/infer"):
        template = path.replace("churn", "{name}")
        response = client.post(path, json=body(template)["example"])
        assert response.status_code == 200, (path, response.text)
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_errors_and_latency_by_endpoint(client):
    client.get("/v2/models/churn/ready")
    client.post("/v2/models/churn/infer", json={"inputs": []})
    text = client.get("/metrics").text
    labels = {"protocol": "rest", "model": "churn"}
    assert metric(text, "batch_infer_serve_requests_total", endpoint="model_ready", **labels) >= 1
    assert (
        metric(text, "batch_infer_serve_errors_total", endpoint="infer", status="400", **labels)
        >= 1
    )
    assert (
        metric(text, "batch_infer_serve_request_duration_seconds_count", endpoint="infer", **labels)
        >= 1
    )
    assert "batch_infer_serve_queue_depth" in text


def test_concurrent_clients_each_get_exactly_their_rows_and_outputs(client, server):
    subsets = [["prediction"], ["probability"], ["probability", "prediction"], None]
    jobs = [(k, churn_rows(1 + k % 3, start=10 * k), subsets[k % 4]) for k in range(240)]
    # the reference: every row scored alone, while nothing else runs
    alone = {}
    for _, rows, _ in jobs:
        for row in rows:
            outputs = client.post("/v2/models/churn/infer", json=tensor_request([row])).json()
            alone[tuple(row)] = {o["name"]: o["data"][0] for o in outputs["outputs"]}
    before = client.get("/metrics").text

    def call(job):
        _, rows, outputs = job
        with httpx.Client(base_url=server.url, timeout=60) as own:
            return own.post("/v2/models/churn/infer", json=columns_request(rows, outputs)).json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, jobs))
    for (_, rows, outputs), answer in zip(jobs, answers, strict=True):
        names = [o["name"] for o in answer["outputs"]]
        assert names == (outputs or ["prediction", "probability"])
        for output in answer["outputs"]:
            assert output["shape"] == [len(rows)]
            expected = [alone[tuple(row)][output["name"]] for row in rows]
            # the same rows, whatever their batch (bit-exactness is test_serve_parity's job)
            np.testing.assert_allclose(output["data"], expected, rtol=1e-12, atol=0)
    after = client.get("/metrics").text
    batches = metric(after, "batch_infer_serve_batch_requests_count", model="churn") - metric(
        before, "batch_infer_serve_batch_requests_count", model="churn"
    )
    alone_batches = metric(
        after, "batch_infer_serve_batch_requests_bucket", model="churn", le="1.0"
    ) - metric(before, "batch_infer_serve_batch_requests_bucket", model="churn", le="1.0")
    assert batches < len(jobs)  # requests shared model calls
    assert batches - alone_batches >= 1  # some call held more than one request


def test_a_request_larger_than_the_batch_size_is_scored_whole(client):
    rows = churn_rows(1_000)
    before = client.get("/metrics").text
    response = client.post("/v2/models/churn/infer", json=tensor_request(rows)).json()
    assert [o["shape"] for o in response["outputs"]] == [[1_000], [1_000]]
    after = client.get("/metrics").text

    def over_64(text: str) -> float:
        rows = "batch_infer_serve_batch_rows_bucket"
        return metric(text, rows, model="churn", le="1024.0") - metric(
            text, rows, model="churn", le="64.0"
        )

    assert over_64(after) - over_64(before) == 1


def test_tritonclient_http_with_binary_and_json_tensors(server):
    import tritonclient.http as triton

    rows = np.array(churn_rows(6), dtype=np.float64)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("churn")
    assert client.get_model_metadata("churn")["name"] == "churn"
    answers = []
    for binary in (True, False):
        tensor = triton.InferInput("x", [6, 4], "FP64")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = [triton.InferRequestedOutput("probability", binary_data=binary)]
        result = client.infer("churn", [tensor], outputs=outputs)
        assert result.as_numpy("prediction") is None
        answers.append(result.as_numpy("probability"))
        everything = client.infer("churn", [tensor])  # no outputs named: all, in binary
        assert everything.as_numpy("prediction").shape == (6,)
    assert answers[0].dtype == np.float64
    assert np.array_equal(answers[0].view(np.int64), answers[1].view(np.int64))
    with pytest.raises(triton.InferenceServerException, match="unknown model 'fraud'"):
        client.infer("fraud", [tensor])
    client.close()


def test_lru_cache_evicts_the_least_recently_used():
    cache = LRUCache(2)
    cache.put("a", (1,))
    cache.put("b", (2,))
    assert cache.get("a") == (1,)  # a is now the most recent
    cache.put("c", (3,))
    assert cache.get("b") is None and cache.get("a") == (1,) and cache.get("c") == (3,)
    assert len(cache) == 2


def test_cached_rows_come_back_identical_and_are_counted(tmp_path):
    rows = churn_rows(8)
    with ServeProcess(tmp_path, MODEL, SCALER, serve={"cache_size": 100}) as running:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            first = http.post("/v2/models/model/infer", json=tensor_request(rows)).json()
            partly = http.post(
                "/v2/models/model/infer", json=tensor_request(rows[4:] + churn_rows(4, 500))
            ).json()
            again = http.post("/v2/models/model/infer", json=tensor_request(rows)).json()
            text = http.get("/metrics").text
            refused = http.post(  # two cached rows, then one the model refuses
                "/v2/models/model/infer", json=tensor_request([*rows[:2], [30.0, 1.0, None, 5.0]])
            )
    assert again["outputs"] == first["outputs"]
    assert [o["data"][:4] for o in partly["outputs"]] == [o["data"][4:] for o in first["outputs"]]
    assert metric(text, "batch_infer_serve_cache_hits_total", model="model") == 4 + 8
    assert metric(text, "batch_infer_serve_cache_misses_total", model="model") == 8 + 4
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("input 'monthly_charges', row 2: NaN value")


def test_sigterm_lets_requests_in_flight_finish_and_exits_0(tmp_path):
    running = ServeProcess(tmp_path, MODEL, SCALER).wait_ready()
    rows = churn_rows(100_000)
    body = json.dumps(tensor_request(rows)).encode()
    sent = threading.Barrier(9)

    def call() -> tuple[int, int]:
        with httpx.Client(base_url=running.url, timeout=120) as http:
            request = http.build_request(
                "POST",
                "/v2/models/model/infer",
                content=body,
                headers={"content-type": "application/json"},
            )
            response = http.send(request, stream=True)  # returns once the request is sent
            sent.wait()
            response.read()
            return response.status_code, len(response.json()["outputs"][0]["data"])

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call) for _ in range(8)]
        sent.wait()  # every request is on the server (bodies sent) before the signal
        running.process.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    assert results == [(200, 100_000)] * 8
    assert running.process.wait(60) == 0
    running.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{running.url}/v2/health/live", timeout=2)


def test_json_access_logs_name_method_path_and_status(tmp_path):
    with ServeProcess(tmp_path, MODEL, SCALER, args=["--log-format", "json"]) as running:
        httpx.post(f"{running.url}/v2/models/model/infer", json=tensor_request(churn_rows(1)))
    lines = [json.loads(line) for line in running.log.read_text().splitlines() if line]
    access = [line for line in lines if line["logger"] == "batch_infer.serve.access"]
    infer = [line for line in access if line["path"] == "/v2/models/model/infer"]
    assert infer and infer[0]["method"] == "POST" and infer[0]["status"] == 200
    assert isinstance(infer[0]["duration_ms"], float)


def test_two_workers_share_the_ports_and_stop_cleanly(tmp_path):
    with ServeProcess(tmp_path, MODEL, SCALER, serve={"workers": 2}, grpc=True) as running:
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda k: (
                        httpx.post(
                            f"{running.url}/v2/models/model/infer",
                            json=tensor_request(churn_rows(2, k)),
                            timeout=60,
                        ).status_code
                    ),
                    range(40),
                )
            )
        assert codes == [200] * 40
        # whichever worker takes the scrape, /metrics counts the requests of both
        for _ in range(6):
            text = httpx.get(f"{running.url}/metrics", timeout=10).text
            answered = [
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "batch_infer_serve_requests_total"
                and sample.labels["endpoint"] == "infer"
            ]
            assert sum(answered) == 40
        import tritonclient.grpc as triton_grpc

        grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{running.grpc_port}")
        assert grpc_client.is_server_ready() and grpc_client.is_model_ready("model")
        grpc_client.close()
    assert running.process.returncode == 0


def test_a_missing_model_is_one_error_line_and_exit_4(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "batch_infer.serve", "--model", str(tmp_path / "nope.joblib")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: model file {tmp_path / 'nope.joblib'} does not exist — check --model"
    ]
