"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``, the standard
``grpc.health.v1.Health`` service for Kubernetes probes, and the seed apps'
``prediction.PredictionService`` (``_proto/prediction.proto``) for their clients, on one port.

This module only translates protobuf messages to and from the data plane (tensors in typed
``contents`` or in ``raw_input_contents``, parameters, errors to status codes); what an inference
does lives in ``dataplane``, so REST and gRPC answer alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..errors import ConfigError
from ..redaction import redact_text
from ._proto import grpc_predict_v2_pb2 as pb
from ._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from ._proto import prediction_pb2 as seed_pb
from ._proto import prediction_pb2_grpc as seed_pb_grpc
from .codecs import DATATYPES, NUMPY_TYPES, from_binary, to_binary
from .dataplane import DataPlane, internal_failure
from .protocol import (
    InferInput,
    InferRequest,
    InferResponse,
    Predictions,
    RequestedOutput,
    ServeError,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
SEED_SERVICE_NAME = "prediction.PredictionService"

# The InferTensorContents field that holds each OIP datatype's values (FP16 travels raw only)
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    503: grpc.StatusCode.UNAVAILABLE,
}

MESSAGE_OPTIONS = [
    # 1,000-row requests with string columns are larger than gRPC's 4 MiB default
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

READINESS_POLL_SECONDS = 0.05


# --- requests -------------------------------------------------------------------------------


def infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """A ``ModelInferRequest`` as the data plane's request; ServeError(400) naming what is wrong."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ServeError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one entry per input, in the order of `inputs`"
        )
    inputs = [
        _infer_input(tensor, raw[index] if raw else None)
        for index, tensor in enumerate(request.inputs)
    ]
    outputs = [RequestedOutput(o.name, parameters(o.parameters)) for o in request.outputs]
    return InferRequest(
        inputs=inputs,
        outputs=outputs or None,
        parameters=parameters(request.parameters),
        id=request.id or None,
    )


def _infer_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> InferInput:
    """One input, its values flat in row order (the codecs check them against the shape)."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if raw is None:
        data = _typed_values(tensor)
    elif tensor.HasField("contents"):
        raise ServeError(
            f"input {name!r} has both contents and raw_input_contents — send its values in one"
        )
    else:
        data = from_binary(name, datatype, shape, raw)
    return InferInput(name, datatype, shape, data, parameters(tensor.parameters))


def _typed_values(tensor: pb.ModelInferRequest.InferInputTensor) -> Any:
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELDS.get(datatype)
    filled = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    wrong = [other for other in filled if other != field]
    if datatype not in NUMPY_TYPES and datatype != "BYTES":
        raise ServeError(f"input {name!r} has datatype {datatype!r} — use one of {DATATYPES}")
    if wrong:
        where = f"in {field}" if field else "in raw_input_contents (it has no typed contents)"
        raise ServeError(
            f"input {name!r} is {datatype} but its values are in {wrong[0]} — send them {where}"
        )
    values = getattr(tensor.contents, field) if field else ()
    if datatype == "BYTES":
        return list(values)
    try:
        return np.array(values, dtype=NUMPY_TYPES[datatype])
    except OverflowError:
        raise ServeError(
            f"input {name!r} holds a value out of range for {datatype} — send a wider datatype"
        ) from None


def parameters(mapping: Any) -> dict[str, Any]:
    """An ``InferParameter`` map as plain Python values."""
    values = {}
    for key, parameter in mapping.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def _set_parameters(target: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int | np.integer):
            if value >= 2**63:
                target[key].uint64_param = int(value)
            else:
                target[key].int64_param = int(value)
        elif isinstance(value, float | np.floating):
            target[key].double_param = float(value)
        else:
            target[key].string_param = str(value)


# --- responses ------------------------------------------------------------------------------


def infer_response(answer: InferResponse, raw: bool) -> pb.ModelInferResponse:
    """The data plane's answer as a ``ModelInferResponse``: raw output contents when the request
    came raw (as Triton answers; tritonclient reads numbers from raw contents only), else typed.
    """
    response = pb.ModelInferResponse(
        model_name=answer.model_name, model_version=answer.model_version, id=answer.id or ""
    )
    _set_parameters(response.parameters, answer.parameters)
    # FP16 has no typed field: one FP16 output makes the whole answer raw
    raw = raw or any(output.datatype == "FP16" for output in answer.outputs)
    for output in answer.outputs:
        tensor = response.outputs.add(
            name=output.name, datatype=output.datatype, shape=output.shape
        )
        _set_parameters(tensor.parameters, output.parameters)
        if raw:
            response.raw_output_contents.append(to_binary(output.datatype, _flat(output.data)))
        elif output.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(_as_bytes(item) for item in _flat(output.data))
        else:
            values = np.asarray(output.data, dtype=NUMPY_TYPES[output.datatype])
            getattr(tensor.contents, CONTENTS_FIELDS[output.datatype]).extend(
                values.ravel().tolist()
            )
    return response


def _flat(data: Any) -> Any:
    return data.ravel() if isinstance(data, np.ndarray) else data


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()


def model_metadata(metadata: dict) -> pb.ModelMetadataResponse:
    def tensors(entries: list[dict]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=entry["name"], datatype=entry["datatype"], shape=entry["shape"]
            )
            for entry in entries
        ]

    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata.get("versions", []),
        platform=metadata.get("platform", ""),
        inputs=tensors(metadata.get("inputs", [])),
        outputs=tensors(metadata.get("outputs", [])),
    )


# --- the services ---------------------------------------------------------------------------


class _Calls:
    """What every service's method does around its work: errors to status codes, metrics."""

    dataplane: DataPlane

    async def _answer(
        self, context: Any, endpoint: str, model: str | None, work: Callable[[], Any]
    ) -> Any:
        """Run one call; a ServeError becomes its status code with its one-line message, any
        other failure INTERNAL with one line (the traceback goes to the server's log only).
        Calls about a model are counted in the metrics, as REST counts them (probes are not)."""
        started = time.perf_counter()
        try:
            answer = work()
            if isinstance(answer, Awaitable):
                answer = await answer
        except ServeError as exc:
            status, message = exc.status, exc.message
        except Exception:
            log.exception("gRPC %s failed", endpoint)  # masked by redaction's log filter
            status, message = 500, internal_failure(endpoint).message
        else:
            self._record(endpoint, model, started, None)
            return answer
        self._record(endpoint, model, started, status)
        await context.abort(
            STATUS_CODES.get(status, grpc.StatusCode.INTERNAL), redact_text(message)
        )

    def _record(self, endpoint: str, model: str | None, started: float, status: int | None) -> None:
        if model is not None:
            seconds = time.perf_counter() - started
            label = self.dataplane.metric_model(model)
            self.dataplane.metrics.observe("grpc", endpoint, label, seconds, status)


class InferenceServicer(_Calls, pb_grpc.GRPCInferenceServiceServicer):
    """The six methods of the protocol, each a call into the data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return await self._answer(
            context, "server_live", None, lambda: pb.ServerLiveResponse(live=self.dataplane.live())
        )

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        return await self._answer(
            context,
            "server_ready",
            None,
            lambda: pb.ServerReadyResponse(ready=self.dataplane.ready()),
        )

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        def ready() -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(
                ready=self.dataplane.model_ready(request.name, request.version or None)
            )

        return await self._answer(context, "model_ready", request.name, ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        def metadata() -> pb.ServerMetadataResponse:
            found = self.dataplane.server_metadata()
            return pb.ServerMetadataResponse(
                name=found["name"],
                version=str(found.get("version", "")),
                extensions=found.get("extensions", []),
            )

        return await self._answer(context, "server_metadata", None, metadata)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        return await self._answer(
            context,
            "model_metadata",
            request.name,
            lambda: model_metadata(
                self.dataplane.model_metadata(request.name, request.version or None)
            ),
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        async def infer() -> pb.ModelInferResponse:
            answer = await self.dataplane.infer(
                request.model_name, request.model_version or None, infer_request(request)
            )
            return infer_response(answer, raw=bool(request.raw_input_contents))

        return await self._answer(context, "infer", request.model_name, infer)


class PredictionServicer(_Calls, seed_pb_grpc.PredictionServiceServicer):
    """The seed apps' ``prediction.PredictionService``: positional features in, labels and
    probabilities out, from the same data plane (and the same scores) as the OIP service."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def Predict(self, request: seed_pb.PredictRequest, context: Any) -> Any:
        async def predict() -> seed_pb.PredictResponse:
            answer = await self.dataplane.predict_positional([list(request.features)], "features")
            return _seed_predictions(answer, self.dataplane.name)[0]

        return await self._answer(context, "seed_predict", self.dataplane.name, predict)

    async def BatchPredict(self, request: seed_pb.BatchPredictRequest, context: Any) -> Any:
        async def predict() -> seed_pb.BatchPredictResponse:
            rows = [list(instance.features) for instance in request.instances]
            answer = await self.dataplane.predict_positional(rows, "instance")
            return seed_pb.BatchPredictResponse(
                predictions=_seed_predictions(answer, self.dataplane.name)
            )

        return await self._answer(context, "seed_batch_predict", self.dataplane.name, predict)

    async def HealthCheck(self, request: seed_pb.HealthCheckRequest, context: Any) -> Any:
        ready = self.dataplane.ready()
        return seed_pb.HealthCheckResponse(
            status="healthy" if ready else "unavailable", model_loaded=ready
        )


INT32 = (-(2**31), 2**31 - 1)


def _seed_predictions(answer: Predictions, model: str) -> list[seed_pb.PredictResponse]:
    """The answer in the seed's messages: an int32 label, the positive (binary) or predicted
    class's probability, and the whole probability row."""
    classes = answer.classes or []
    responses = []
    for index, label in enumerate(answer.predictions):
        if isinstance(label, bool | np.bool_) or not isinstance(label, int | np.integer):
            raise ServeError(
                f"model {model!r} predicts {type(label).__name__} values, which the seed's int32 "
                "`prediction` cannot carry — use inference.GRPCInferenceService/ModelInfer or "
                "REST POST /predict",
                412,
            )
        if not INT32[0] <= label <= INT32[1]:
            raise ServeError(f"label {label} does not fit the seed's int32 `prediction`", 412)
        response = seed_pb.PredictResponse(
            prediction=int(label), model_version=answer.model_version
        )
        if answer.probabilities is not None:
            row = answer.probabilities[index]
            response.probabilities.extend(row)
            if len(row) == 2:
                response.probability = row[1]
            elif label in classes:
                response.probability = row[classes.index(label)]
        responses.append(response)
    return responses


@dataclass
class _Health:
    servicer: health.aio.HealthServicer
    follower: asyncio.Task


# what stop_grpc needs to find for a server that start_grpc started
_HEALTH: weakref.WeakKeyDictionary[grpc.aio.Server, _Health] = weakref.WeakKeyDictionary()


async def start_grpc(
    dataplane: DataPlane, host: str, port: int, *, reuse_port: bool = True
) -> grpc.aio.Server:
    """A started gRPC server on host:port: the inference service and the health service, which
    says SERVING (overall, for the service and for the model) only while the data plane is ready.

    ``reuse_port``: share the port with other processes that also ask to (``--workers``; the
    kernel spreads connections). Without it, a port already taken is an error, as for HTTP.
    """
    options = [*MESSAGE_OPTIONS, ("grpc.so_reuseport", int(reuse_port))]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), server)
    seed_pb_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(dataplane), server)
    health_servicer = health.aio.HealthServicer()
    services = ["", SERVICE_NAME, SEED_SERVICE_NAME, dataplane.name]
    for service in services:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        raise ConfigError(
            f"cannot listen on {host}:{port} for gRPC: the address is in use or not allowed",
            "choose another --grpc-port (or --host), or stop what uses it",
        ) from None
    await server.start()
    follower = asyncio.create_task(_follow_readiness(dataplane, health_servicer, services))
    _HEALTH[server] = _Health(health_servicer, follower)
    return server


async def stop_grpc(server: grpc.aio.Server, grace: float) -> None:
    """Say NOT_SERVING, stop taking calls, and give in-flight calls ``grace`` seconds to finish."""
    found = _HEALTH.pop(server, None)
    if found is not None:
        found.follower.cancel()
        await found.servicer.enter_graceful_shutdown()
    await server.stop(grace)


async def _follow_readiness(
    dataplane: DataPlane, servicer: health.aio.HealthServicer, services: list[str]
) -> None:
    """Keep the health service's status equal to the data plane's readiness."""
    serving = False
    while True:
        ready = dataplane.ready()
        if ready != serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in services:
                await servicer.set(service, status)
            serving = ready
        await asyncio.sleep(READINESS_POLL_SECONDS)
