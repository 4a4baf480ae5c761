"""`batch-infer serve` over gRPC: the Open Inference Protocol with real clients on loopback.

tritonclient (which always sends raw_input_contents), the standard grpc.health.v1 client and our
own generated stubs (typed contents) talk to a real gRPC server; what they get back must be what
`batch_infer.run` wrote for the same rows, to the last bit, one row at a time and in batches.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from batch_infer import run
from batch_infer.config import load_serve_config
from batch_infer.serve._proto import grpc_predict_v2_pb2 as pb
from batch_infer.serve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from batch_infer.serve.dataplane import DataPlane
from batch_infer.serve.grpc import infer_request, start_grpc, stop_grpc

from . import zoo
from .conftest import FEATURES, SAMPLE, make_config, read_output

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MODEL = SAMPLE / "models" / "model.joblib"
SCALER = SAMPLE / "models" / "scaler.joblib"
CHURN_TYPES = {
    "age": "INT32",
    "tenure": "INT32",
    "monthly_charges": "FP64",
    "total_charges": "FP64",
}


# --- servers and batch outputs -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerLoop:
    """An event loop in a thread of its own, where the servers under test run (as in `serve`)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine, timeout: float = 60):
        return self.submit(coroutine).result(timeout)

    def submit(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


class GrpcServer:
    """A data plane and its gRPC server on a free loopback port."""

    def __init__(self, loop: ServerLoop, model: Path, scaler: Path | None = None, warm=True):
        overrides = {"model": {"path": str(model), **({"scaler": str(scaler)} if scaler else {})}}
        self.dataplane = DataPlane.load(load_serve_config(None, overrides, environ={}))
        if warm:
            self.dataplane.warm()
        self.loop = loop
        self.name = self.dataplane.name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.server = loop.call(start_grpc(self.dataplane, "127.0.0.1", self.port))

    def close(self) -> None:
        if self.server is not None:
            self.loop.call(stop_grpc(self.server, 5))
            self.server = None
        self.loop.call(self.dataplane.close())


@pytest.fixture(scope="module")
def server_loop():
    loop = ServerLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """Module-scoped fixtures get a private compiled-runtime cache too (see conftest)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BATCH_INFER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def churn_batch(tmp_path_factory, module_cache) -> pd.DataFrame:
    """`run` on sample_data/ with the sample scaler + model, by customer_id."""
    out = tmp_path_factory.mktemp("churn") / "out"
    run(make_config(SAMPLE / "churn", out, MODEL, model={"scaler": str(SCALER)}))
    return read_output(out).to_pandas().set_index("customer_id").sort_index()


@pytest.fixture(scope="module")
def churn_server(server_loop, module_cache):
    server = GrpcServer(server_loop, MODEL, SCALER)
    yield server
    server.close()


@pytest.fixture(scope="module")
def penguins(tmp_path_factory, server_loop, module_cache):
    """A model with text features (one-hot island and sex), `run` on its table, and its server.

    Rows with a missing sex are left out: BYTES has no missing value to send.
    """
    folder = tmp_path_factory.mktemp("penguins")
    data = zoo.penguins()
    frame = data.frame[data.frame["sex"].notna()].reset_index(drop=True)
    joblib.dump(zoo.fit_onehot(data), folder / "penguins.joblib")
    (folder / "in").mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "in" / "p.parquet")
    run(make_config(folder / "in", folder / "out", folder / "penguins.joblib"))
    batch = read_output(folder / "out").to_pandas().set_index(zoo.ROW_ID).sort_index()
    server = GrpcServer(server_loop, folder / "penguins.joblib")
    yield frame.set_index(zoo.ROW_ID).sort_index(), batch, server
    server.close()


@pytest.fixture
def client(churn_server):
    with triton.InferenceServerClient(churn_server.address) as connection:
        yield connection


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    expected = np.asarray(expected)
    assert got.dtype == expected.dtype
    assert got.tobytes() == expected.tobytes()


# --- tritonclient -------------------------------------------------------------------------


def matrix_input(rows: pd.DataFrame) -> triton.InferInput:
    values = rows[FEATURES].to_numpy(dtype="float64")
    tensor = triton.InferInput("input-0", list(values.shape), "FP64")
    tensor.set_data_from_numpy(values)
    return tensor


def column_inputs(rows: pd.DataFrame, types: dict[str, str]) -> list[triton.InferInput]:
    """One input per column, as the pandas codec of the OIP clients sends a frame."""
    inputs = []
    for name, datatype in types.items():
        tensor = triton.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(rows[name].to_numpy(dtype=triton_to_np_dtype(datatype)))
        inputs.append(tensor)
    return inputs


def test_server_and_model_state(client, churn_server):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(churn_server.name)
    assert client.is_model_ready(churn_server.name, churn_server.dataplane.version)
    server = client.get_server_metadata()
    assert server.name == "batch-infer"
    model = client.get_model_metadata(churn_server.name)
    assert model.name == churn_server.name
    assert list(model.versions) == [churn_server.dataplane.version]
    assert [tensor.name for tensor in model.inputs] == FEATURES
    assert [tensor.name for tensor in model.outputs] == ["prediction", "probability"]
    assert [tensor.datatype for tensor in model.outputs] == ["INT64", "FP64"]


def test_unknown_model_or_version_is_not_found(client, churn_server):
    with pytest.raises(InferenceServerException) as unknown:
        client.is_model_ready("no-such-model")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "'no-such-model'" in unknown.value.message()
    with pytest.raises(InferenceServerException) as version:
        client.get_model_metadata(churn_server.name, "no-such-version")
    assert version.value.status() == "StatusCode.NOT_FOUND"


def test_rows_one_by_one_match_run(client, churn_server, churn_batch):
    for customer in churn_batch.index[::797]:
        rows = churn_batch.loc[[customer]]
        result = client.infer(churn_server.name, [matrix_input(rows)])
        assert_same_bits(result.as_numpy("prediction"), rows["prediction"].to_numpy())
        assert_same_bits(result.as_numpy("probability"), rows["probability"].to_numpy())


@pytest.mark.parametrize("size", [1_000, 333, 64, 7])
def test_batches_match_run(client, churn_server, churn_batch, size):
    rows = churn_batch if size == 1_000 else churn_batch.iloc[: size * 12]
    for start in range(0, len(rows), size):
        chunk = rows.iloc[start : start + size]
        result = client.infer(churn_server.name, [matrix_input(chunk)])
        assert_same_bits(result.as_numpy("prediction"), chunk["prediction"].to_numpy())
        assert_same_bits(result.as_numpy("probability"), chunk["probability"].to_numpy())


def test_concurrent_callers_each_get_their_own_rows(churn_server, churn_batch):
    """Requests gathered into one model call still answer each caller with its own rows."""
    sizes = [1, 3, 1, 17, 2, 1, 64, 5] * 4
    starts = np.cumsum([0, *sizes[:-1]])

    def call(start: int, size: int) -> bool:
        chunk = churn_batch.iloc[start : start + size]
        with triton.InferenceServerClient(churn_server.address) as connection:
            result = connection.infer(churn_server.name, [matrix_input(chunk)])
        return result.as_numpy("probability").tobytes() == chunk["probability"].to_numpy().tobytes()

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(call, starts, sizes))


def test_columns_with_content_type_pd(client, churn_server, churn_batch):
    rows = churn_batch.iloc[100:160]
    result = client.infer(
        churn_server.name,
        column_inputs(rows, CHURN_TYPES),
        parameters={"content_type": "pd"},
        request_id="req-7",
        priority=1,  # sent as a uint64 parameter, which KServe's proto lacks and Triton's has
    )
    assert result.get_response().id == "req-7"
    assert result.get_response().model_version == churn_server.dataplane.version
    assert_same_bits(result.as_numpy("probability"), rows["probability"].to_numpy())


def test_text_columns_as_bytes_with_requested_outputs(penguins):
    frame, batch, server = penguins
    types = {"island": "BYTES", "sex": "BYTES", **dict.fromkeys(zoo.PENGUIN_NUMERIC, "FP64")}
    types["year"] = "INT64"
    wanted = ["prediction", "probability_Gentoo"]
    with triton.InferenceServerClient(server.address) as connection:
        for rows in (frame.iloc[:1], frame.iloc[5:6], frame):
            result = connection.infer(
                server.name,
                column_inputs(rows, types),
                outputs=[triton.InferRequestedOutput(name) for name in wanted],
                parameters={"content_type": "pd"},
            )
            assert [output.name for output in result.get_response().outputs] == wanted
            expected = batch.loc[rows.index]
            labels = [label.decode() for label in result.as_numpy("prediction")]
            assert labels == expected["prediction"].tolist()
            assert_same_bits(
                result.as_numpy("probability_Gentoo"), expected["probability_Gentoo"].to_numpy()
            )


# --- typed contents through the generated stubs -------------------------------------------


@pytest.fixture
def stub(churn_server):
    with grpc.insecure_channel(churn_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def typed_request(name: str, rows: pd.DataFrame, types: dict[str, str]) -> pb.ModelInferRequest:
    fields = {"INT32": "int_contents", "INT64": "int64_contents", "FP64": "fp64_contents"}
    request = pb.ModelInferRequest(model_name=name)
    request.parameters["content_type"].string_param = "pd"
    for column, datatype in types.items():
        tensor = request.inputs.add(name=column, datatype=datatype, shape=[len(rows)])
        if datatype == "BYTES":
            tensor.parameters["content_type"].string_param = "str"  # as MLServer's codecs send
            tensor.contents.bytes_contents.extend(v.encode() for v in rows[column])
        else:
            getattr(tensor.contents, fields[datatype]).extend(rows[column].tolist())
    return request


def test_typed_contents_get_typed_outputs(stub, churn_server, churn_batch):
    rows = churn_batch.iloc[::1000]
    response = stub.ModelInfer(typed_request(churn_server.name, rows, CHURN_TYPES))
    assert not response.raw_output_contents
    prediction, probability = response.outputs
    assert (prediction.name, prediction.datatype, list(prediction.shape)) == (
        "prediction",
        "INT64",
        [len(rows)],
    )
    assert list(prediction.contents.int64_contents) == rows["prediction"].tolist()
    assert_same_bits(np.array(probability.contents.fp64_contents), rows["probability"].to_numpy())


def test_typed_bytes_contents_get_typed_string_outputs(penguins):
    frame, batch, server = penguins
    types = {"island": "BYTES", "sex": "BYTES", **dict.fromkeys(zoo.PENGUIN_NUMERIC, "FP64")}
    types["year"] = "INT64"
    rows = frame.iloc[::40]
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            typed_request(server.name, rows, types)
        )
    answer = {output.name: output for output in response.outputs}
    assert answer["prediction"].datatype == "BYTES"
    labels = [label.decode() for label in answer["prediction"].contents.bytes_contents]
    assert labels == batch.loc[rows.index, "prediction"].tolist()


def test_parameters_become_python_values():
    request = pb.ModelInferRequest()
    request.parameters["content_type"].string_param = "pd"
    request.parameters["strict"].bool_param = True
    request.parameters["timeout"].int64_param = -5
    request.parameters["priority"].uint64_param = 2**64 - 1
    request.parameters["threshold"].double_param = 0.25
    request.parameters["unset"].SetInParent()
    tensor = request.inputs.add(name="island", datatype="BYTES", shape=[1])
    tensor.parameters["content_type"].string_param = "str"
    tensor.contents.bytes_contents.append(b"Biscoe")
    request.outputs.add(name="prediction").parameters["binary_data"].bool_param = False
    decoded = infer_request(pb.ModelInferRequest.FromString(request.SerializeToString()))
    assert decoded.parameters == {
        "content_type": "pd",
        "strict": True,
        "timeout": -5,
        "priority": 2**64 - 1,
        "threshold": 0.25,
    }
    assert decoded.inputs[0].parameters == {"content_type": "str"}
    assert decoded.inputs[0].data == [b"Biscoe"]
    assert decoded.outputs[0].name == "prediction"
    assert decoded.outputs[0].parameters == {"binary_data": False}
    assert decoded.id is None


# --- bad requests -------------------------------------------------------------------------


def churn_rows(count: int = 2) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [40, 61][:count],
            "tenure": [12, 3][:count],
            "monthly_charges": [70.5, 20.0][:count],
            "total_charges": [800.0, 60.0][:count],
        }
    )


def bad_requests(name: str) -> dict[str, tuple[pb.ModelInferRequest, grpc.StatusCode, str]]:
    rows = churn_rows()
    missing = typed_request(name, rows, {k: v for k, v in CHURN_TYPES.items() if k != "tenure"})
    short = typed_request(name, rows, CHURN_TYPES)
    short.inputs[0].shape[:] = [3]
    wrong_field = typed_request(name, rows, CHURN_TYPES)
    wrong_field.inputs[2].datatype = "FP32"
    unknown_type = typed_request(name, rows, CHURN_TYPES)
    unknown_type.inputs[1].datatype = "FLOAT"
    text_for_number = typed_request(name, rows, CHURN_TYPES)
    text_for_number.inputs[3].datatype = "BYTES"
    text_for_number.inputs[3].contents.Clear()
    text_for_number.inputs[3].contents.bytes_contents.extend([b"lots", b"little"])
    raw = pb.ModelInferRequest(model_name=name)
    raw.inputs.add(name="input-0", datatype="FP64", shape=[2, 4])
    raw.raw_input_contents.append(np.zeros(7).tobytes())
    raw_count = pb.ModelInferRequest(model_name=name)
    raw_count.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    raw_count.raw_input_contents.extend([np.zeros(4).tobytes()] * 2)
    both = pb.ModelInferRequest(model_name=name)
    both.inputs.add(name="input-0", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(
        [1.0] * 4
    )
    both.raw_input_contents.append(np.zeros(4).tobytes())
    unknown_output = typed_request(name, rows, CHURN_TYPES)
    unknown_output.outputs.add(name="probability_1")
    unknown_model = typed_request("no-such-model", rows, CHURN_TYPES)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return {
        "missing column": (missing, invalid, "'tenure'"),
        "shape and values disagree": (short, invalid, "'age'"),
        "values in another datatype's field": (wrong_field, invalid, "'monthly_charges'"),
        "unknown datatype": (unknown_type, invalid, "'tenure'"),
        "text for a number": (text_for_number, invalid, "'total_charges'"),
        "raw bytes for another shape": (raw, invalid, "'input-0'"),
        "raw contents for other inputs": (raw_count, invalid, "raw_input_contents"),
        "contents and raw contents": (both, invalid, "'input-0'"),
        "unknown output": (unknown_output, invalid, "'probability_1'"),
        "unknown model": (unknown_model, grpc.StatusCode.NOT_FOUND, "'no-such-model'"),
    }


@pytest.mark.parametrize("case", list(bad_requests("model")))
def test_bad_request_is_refused_and_server_keeps_serving(stub, churn_server, churn_batch, case):
    request, code, named = bad_requests(churn_server.name)[case]
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request)
    assert refused.value.code() == code
    message = refused.value.details()
    assert named in message
    assert "\n" not in message and "Traceback" not in message
    rows = churn_batch.iloc[:3]
    response = stub.ModelInfer(typed_request(churn_server.name, rows, CHURN_TYPES))
    assert list(response.outputs[0].contents.int64_contents) == rows["prediction"].tolist()


def test_tritonclient_sees_the_error_message(client, churn_server):
    tensor = triton.InferInput("age", [2], "FP64")
    tensor.set_data_from_numpy(np.array([40.0, 61.0]))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(churn_server.name, [tensor], parameters={"content_type": "pd"})
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'tenure' is missing" in refused.value.message()


def test_metrics_count_grpc_requests_and_errors(stub, churn_server):
    registry = churn_server.dataplane.metrics.registry
    labels = {"protocol": "grpc", "endpoint": "infer", "model": churn_server.name}

    def count(metric: str, **extra: str) -> float:
        return registry.get_sample_value(metric, {**labels, **extra}) or 0.0

    before = count("batch_infer_serve_requests_total")
    errors_before = count("batch_infer_serve_errors_total", status="400")
    stub.ModelInfer(typed_request(churn_server.name, churn_rows(), CHURN_TYPES))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(bad_requests(churn_server.name)["missing column"][0])
    assert count("batch_infer_serve_requests_total") == before + 2
    assert count("batch_infer_serve_errors_total", status="400") == errors_before + 1
    unknown = {**labels, "model": "unknown", "status": "404"}
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(bad_requests(churn_server.name)["unknown model"][0])
    assert registry.get_sample_value("batch_infer_serve_errors_total", unknown) >= 1


# --- health -------------------------------------------------------------------------------


def test_health_check(churn_server):
    with grpc.insecure_channel(churn_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", churn_server.name):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_serving_only_between_ready_and_shutdown(server_loop):
    """NOT_SERVING until the model is warmed, SERVING then, NOT_SERVING once shutdown starts;
    a Watch sees each change."""
    server = GrpcServer(server_loop, MODEL, SCALER, warm=False)
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=server.name)
            assert health.Check(request, timeout=10).status == NOT_SERVING
            with triton.InferenceServerClient(server.address) as connection:
                assert connection.is_server_live()
                assert not connection.is_server_ready()
                with pytest.raises(InferenceServerException) as early:
                    connection.infer(server.name, [matrix_input(churn_rows())])
                assert early.value.status() == "StatusCode.UNAVAILABLE"
            watch = health.Watch(request, timeout=60)
            assert next(watch).status == NOT_SERVING
            server.dataplane.warm()
            assert next(watch).status == SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
            stopping = server_loop.submit(stop_grpc(server.server, 5))
            assert next(watch).status == NOT_SERVING
            watch.cancel()
            stopping.result(30)
            server.server = None
    finally:
        server.close()


def test_workers_share_the_port(churn_server, churn_batch):
    """Worker processes each start a server on the same port; the kernel spreads connections."""
    loop = churn_server.loop
    second = loop.call(start_grpc(churn_server.dataplane, "127.0.0.1", churn_server.port))
    try:
        with triton.InferenceServerClient(churn_server.address) as connection:
            rows = churn_batch.iloc[:5]
            result = connection.infer(churn_server.name, [matrix_input(rows)])
            assert_same_bits(result.as_numpy("probability"), rows["probability"].to_numpy())
    finally:
        loop.call(stop_grpc(second, 5))


def test_port_in_use_is_a_clear_error(churn_server):
    from batch_infer.errors import ConfigError

    start = start_grpc(churn_server.dataplane, "127.0.0.1", churn_server.port, reuse_port=False)
    with pytest.raises(ConfigError) as refused:
        churn_server.loop.call(start)
    assert str(refused.value) == (
        f"cannot listen on 127.0.0.1:{churn_server.port} for gRPC: the address is in use or not "
        "allowed — choose another --grpc-port (or --host), or stop what uses it"
    )
    with socket.socket() as taken:  # another program's port, not shared with anyone
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError):
            churn_server.loop.call(start_grpc(churn_server.dataplane, "127.0.0.1", port))


# --- the real command -----------------------------------------------------------------------


def wait_until_serving(address: str, process: subprocess.Popen) -> None:
    """Block until the server's health service says SERVING (or the process died)."""
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for answer in health.Watch(request, wait_for_ready=True, timeout=180):
            if answer.status == SERVING:
                return
    raise AssertionError(f"the server stopped (exit code {process.poll()})")


def test_serve_command_over_grpc(module_cache, churn_batch):
    """`python -m batch_infer.serve ... --grpc-port P`: the whole path, then SIGTERM exits 0."""
    grpc_port = free_port()
    address = f"127.0.0.1:{grpc_port}"
    command = [sys.executable, "-m", "batch_infer.serve", "--model", str(MODEL)]
    command += ["--scaler", str(SCALER), "--name", "churn"]
    command += ["--http-port", str(free_port()), "--grpc-port", str(grpc_port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_serving(address, process)
        with triton.InferenceServerClient(address) as connection:
            assert connection.is_model_ready("churn")
            for rows in (churn_batch.iloc[[17]], churn_batch.iloc[[4242]], churn_batch.iloc[:1000]):
                result = connection.infer("churn", [matrix_input(rows)])
                assert_same_bits(result.as_numpy("prediction"), rows["prediction"].to_numpy())
                assert_same_bits(result.as_numpy("probability"), rows["probability"].to_numpy())
            with pytest.raises(InferenceServerException) as refused:
                connection.infer("churn", column_inputs(churn_batch.iloc[:2], {"age": "INT32"}))
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert connection.is_server_ready()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
