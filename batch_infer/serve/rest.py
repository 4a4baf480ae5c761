"""The REST front door: the Open Inference Protocol (KServe V2) over HTTP, plus the endpoints
the clients of seed-style apps call (``/predict``, ``/batch_predict``, ``/health``).

Only translation lives here: JSON (and Triton's binary tensor layout) to and from the data
plane. Bodies are parsed with orjson, not pydantic, on the hot path; the pydantic models below
only give the responses' generic shape to the document, which ``openapi.describe_model``
specialises to the served model (its features, outputs, name and version, request bodies and
examples) for ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from ..redaction import redact_text
from .codecs import from_binary, to_binary
from .dataplane import DataPlane, internal_failure
from .openapi import describe_model
from .protocol import InferInput as Tensor
from .protocol import InferRequest, InferResponse, Predictions, RequestedOutput, ServeError

log = logging.getLogger(__name__)
access = logging.getLogger("batch_infer.serve.access")
JSON = "application/json"
HEADER_LENGTH = "inference-header-content-length"


# ---------------------------------------------------------------- documents, for /docs only
# The responses' generic shapes; the request bodies (and PredictResponse, BatchPredictResponse)
# are the served model's own, written by openapi.describe_model.


class ResponseOutput(BaseModel):
    name: str = Field(description="Named like run's columns: prediction, probability, ...")
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong, naming the input, and what to do.")


class PredictResponse(BaseModel):
    prediction: Any = Field(description="The label (classifiers) or the value (regressors).")
    probability: list[float] | None = Field(
        None, description="Classifiers: the whole predict_proba row, in the order of classes_."
    )
    model_version: str


class BatchPredictResponse(BaseModel):
    predictions: list[Any]
    probabilities: list[list[float]] | None = None
    model_version: str


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A bad request, named."},
    404: {"model": ErrorResponse, "description": "Unknown model or version."},
    500: {"model": ErrorResponse, "description": "The model failed: the server's fault."},
    503: {"model": ErrorResponse, "description": "Not ready (loading or shutting down)."},
}


# ---------------------------------------------------------------- the app


def create_app(dataplane: DataPlane, access_log: bool = False) -> FastAPI:
    """The REST app for one data plane (no global state: tests may build several)."""
    app = FastAPI(
        title=f"batch-infer serve: {dataplane.name}",
        version=dataplane.server_version,
        description="The model's predictions over the Open Inference Protocol (KServe V2), "
        "identical to what `batch-infer run` writes for the same rows.",
        # FastAPI's OpenTelemetry hooks read the environment on every request: measured 3-10%
        # of a request's CPU under load (make bench-serve, py-spy); we export our own metrics
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    metrics = dataplane.metrics

    def answer(
        endpoint: str, name: str, work: Callable[[], Awaitable[Response]]
    ) -> Awaitable[Response]:
        async def timed() -> Response:
            start = time.perf_counter()
            status = None
            try:
                return await work()
            except ServeError as exc:
                status = exc.status
                return _error(exc.status, exc.message)
            except Exception:
                status = 500
                log.exception("REST %s failed", endpoint)  # masked by redaction's log filter
                return _error(500, internal_failure(endpoint).message)
            finally:
                metrics.observe(
                    "rest",
                    endpoint,
                    dataplane.metric_model(name),
                    time.perf_counter() - start,
                    status,
                )

        return timed()

    # ---- health and metadata

    @app.get("/v2/health/live", tags=["health"])
    async def server_live() -> Response:
        return _json({"live": dataplane.live()})

    @app.get("/v2/health/ready", tags=["health"], responses={503: {"description": "Not ready."}})
    async def server_ready() -> Response:
        ready = dataplane.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    @app.get("/v2", tags=["metadata"])
    async def server_metadata() -> Response:
        return _json(dataplane.server_metadata())

    async def model_metadata(name: str, version: str | None) -> Response:
        async def work() -> Response:
            return _json(dataplane.model_metadata(name, version))

        return await answer("model_metadata", name, work)

    async def model_ready(name: str, version: str | None) -> Response:
        async def work() -> Response:
            ready = dataplane.model_ready(name, version)
            return _json({"name": name, "ready": ready}, 200 if ready else 503)

        return await answer("model_ready", name, work)

    async def infer(name: str, version: str | None, request: Request) -> Response:
        async def work() -> Response:
            dataplane.check_model(name, version)  # an unknown model is a 404 whatever the body
            body = await request.body()
            infer_request, binary_default = parse_infer_request(
                body, request.headers.get(HEADER_LENGTH)
            )
            response = await dataplane.infer(name, version, infer_request)
            content, headers = encode_infer_response(response, binary_default)
            media = "application/octet-stream" if headers else JSON
            return Response(content, media_type=media, headers=headers)

        return await answer("infer", name, work)

    @app.get("/v2/models/{name}", tags=["metadata"], responses=ERRORS)
    async def get_model(name: str) -> Response:
        return await model_metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", tags=["metadata"], responses=ERRORS)
    async def get_model_version(name: str, version: str) -> Response:
        return await model_metadata(name, version)

    @app.get("/v2/models/{name}/ready", tags=["health"], responses=ERRORS)
    async def get_model_ready(name: str) -> Response:
        return await model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["health"], responses=ERRORS)
    async def get_model_version_ready(name: str, version: str) -> Response:
        return await model_ready(name, version)

    infer_docs: dict[str, Any] = {
        "tags": ["inference"],
        "response_model": InferenceResponse,
        "responses": ERRORS,
    }

    @app.post("/v2/models/{name}/infer", **infer_docs)
    async def post_infer(name: str, request: Request) -> Response:
        """Score N rows: one input per feature (content_type pd) or one [N, n_features] tensor."""
        return await infer(name, None, request)

    @app.post("/v2/models/{name}/versions/{version}/infer", **infer_docs)
    async def post_infer_version(name: str, version: str, request: Request) -> Response:
        """The same, insisting on the model's version (its model_version)."""
        return await infer(name, version, request)

    # ---- the simple endpoints clients of seed-style apps call

    @app.post(
        "/predict",
        tags=["simple"],
        response_model=PredictResponse,
        responses=ERRORS,
    )
    async def predict(request: Request) -> Response:
        """One row in, its prediction (and whole probability row) out.

        The body is ``{"features": {feature: value, ...}}`` or the feature values themselves.
        """

        async def work() -> Response:
            record, what = _one_row(await request.body(), dataplane.model.contract.names)
            answer = await dataplane.predict([record], what)
            document: dict[str, Any] = {"prediction": answer.predictions[0]}
            if answer.probabilities is not None:
                document["probability"] = answer.probabilities[0]
            document["model_version"] = answer.model_version
            return _json(document)

        return await answer("predict", dataplane.name, work)

    @app.post(
        "/batch_predict",
        tags=["simple"],
        response_model=BatchPredictResponse,
        responses=ERRORS,
    )
    async def batch_predict(request: Request) -> Response:
        """Rows in, their predictions (and whole probability rows) out, in order."""

        async def work() -> Response:
            document = _parse_object(await request.body())
            if not isinstance(document.get("instances"), list):
                raise ServeError('expected {"instances": [{feature: value, ...}, ...]}')
            return _json(_batch_answer(await dataplane.predict(document["instances"])))

        return await answer("batch_predict", dataplane.name, work)

    @app.get(
        "/health",
        tags=["health"],
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse}},
    )
    async def health() -> Response:
        """The seed apps' health check: healthy once the model is loaded and its warm-up call
        succeeded (503 before, after a failed warm-up and while shutting down)."""
        ready = dataplane.ready()
        status = "healthy" if ready else "unavailable"
        return _json({"status": status, "model_loaded": ready}, 200 if ready else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = describe_model(schema, dataplane)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if access_log:
        app.add_middleware(AccessLog)
    return app


class AccessLog:
    """One log record per request: method, path, status, duration (JSON with --log-format json)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            client = scope.get("client")
            entry = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status[0],
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                "client": f"{client[0]}:{client[1]}" if client else None,
            }
            access.info(
                "%s %s %s %.3fms",
                entry["method"],
                entry["path"],
                entry["status"],
                entry["duration_ms"],
                extra={"access": entry},
            )


# ---------------------------------------------------------------- JSON <-> data plane


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bool]:
    """An OIP request body (JSON, or JSON + binary tensors) as an InferRequest.

    Also returns whether outputs default to binary (``parameters.binary_data_output``).
    """
    binary = b""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise ServeError(
                f"Inference-Header-Content-Length {header_length!r} is not a number"
            ) from None
        body, binary = body[:split], body[split:]
    document = _parse_object(body)
    tensors = document.get("inputs")
    if not isinstance(tensors, list):
        raise ServeError('the request has no "inputs" list — see the OIP request format at /docs')
    inputs, offset = [], 0
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            raise ServeError(f"inputs[{index}] is not an object with name, shape, datatype, data")
        name = tensor.get("name")
        shape = tensor.get("shape")
        datatype = tensor.get("datatype")
        if not isinstance(name, str):
            raise ServeError(f"inputs[{index}] has no name — name each input after its feature")
        if not isinstance(datatype, str):
            raise ServeError(f'input {name!r} has no datatype — add e.g. "datatype": "FP64"')
        if not isinstance(shape, list):
            raise ServeError(f'input {name!r} has no shape — add e.g. "shape": [N]')
        parameters = _parameters(tensor)
        if parameters is None:
            raise ServeError(f'input {name!r} has "parameters" that are not an object')
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or offset + size > len(binary):
                raise ServeError(
                    f"input {name!r}: binary_data_size {size!r} runs past the request's "
                    "binary data — check Inference-Header-Content-Length"
                )
            data = from_binary(name, datatype.upper(), shape, binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            data = tensor["data"]
            if not isinstance(data, list):
                raise ServeError(
                    f'input {name!r} has "data" that is a JSON {_json_type(data)} — send its '
                    "values as an array, in row order"
                )
        else:
            raise ServeError(f'input {name!r} has no "data" — add its values')
        inputs.append(Tensor(name, datatype, shape, data, parameters))
    outputs = None
    if document.get("outputs") is not None:
        requested = document["outputs"]
        if not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
        ):
            raise ServeError('"outputs" must be a list of {"name": ...} objects')
        for output in requested:
            if _parameters(output) is None:
                raise ServeError(
                    f'output {output["name"]!r} has "parameters" that are not an object'
                )
        outputs = [RequestedOutput(o["name"], _parameters(o) or {}) for o in requested]
    parameters = _parameters(document)
    if parameters is None:
        raise ServeError('"parameters" must be an object')
    content_type = parameters.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise ServeError('"parameters.content_type" must be a string, e.g. "pd"')
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ServeError(f'the request "id" is a JSON {_json_type(request_id)} — send a string')
    request = InferRequest(inputs, outputs, parameters, request_id)
    return request, bool(parameters.get("binary_data_output"))


def encode_infer_response(
    response: InferResponse, binary_default: bool = False
) -> tuple[bytes, dict[str, str]]:
    """The response body, and the headers binary outputs need (none for plain JSON)."""
    outputs, chunks = [], []
    for output in response.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if output.parameters.get("binary_data", binary_default):
            raw = to_binary(output.datatype, output.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = output.data
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def _parameters(document: dict[str, Any]) -> dict[str, Any] | None:
    """Its "parameters" object ({} when absent or null), None when they are not an object."""
    value = document.get("parameters")
    if value is None:
        return {}
    return value if isinstance(value, dict) else None


def _one_row(body: bytes, names: list[str]) -> tuple[dict[str, Any], str]:
    """The row of a ``/predict`` body: ``{"features": {...}}`` (Flask seeds) or the feature
    values themselves (FastAPI seeds' flat model); and what to call it in errors."""
    document = _parse_object(body)
    if all(name in document for name in names):  # the flat body, whatever else it holds
        return document, "the request body"
    if "features" in document and "features" not in names:
        if not isinstance(document["features"], dict):
            raise ServeError(
                f'"features" is a JSON {_json_type(document["features"])}, not an object — send '
                '{"features": {feature: value, ...}}'
            )
        return document["features"], "features"
    return document, "the request body"


def _batch_answer(answer: Predictions) -> dict[str, Any]:
    document: dict[str, Any] = {"predictions": answer.predictions}
    if answer.probabilities is not None:
        document["probabilities"] = answer.probabilities
    document["model_version"] = answer.model_version
    return document


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # NaN and Infinity, as Python's json module writes them by default
            document = json.loads(body)
        except ValueError:
            raise ServeError(
                f"the request body is not valid JSON ({exc}) — send a JSON object"
            ) from None
    if not isinstance(document, dict):
        raise ServeError(f"the request body is a JSON {type(document).__name__}, not an object")
    return document


def _json(document: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type=JSON
    )


def _error(status: int, message: str) -> Response:
    return _json({"error": redact_text(message)}, status)
