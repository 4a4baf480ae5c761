"""What an inference does, whatever protocol asked: REST and gRPC only translate to and from it.

A request is decoded into the Arrow batch `run` would have read for the same rows
(``codecs.decode_request``), scored by ``scoring.score_batch`` (through the micro-batcher and the
optional row cache), and answered with `run`'s output columns: a row scored here and in the
nightly batch gets the same outputs. The simple clients (``predict``) get the same scores as
labels and whole probability rows.

Refusals are ``protocol.ServeError``: a status and one line naming the input and what to do. A
model that fails as a whole (the scoring core's ``ModelError``, or anything unexpected) is a 500
whose message names the model and says the failure is the server's; what failed goes to the log,
with secrets masked (``batch_infer.redaction``), never to the client.

``metrics`` is a ``serve.metrics.ServeMetrics``: the protocol layers call ``metrics.observe(
protocol, endpoint, model, seconds, status)`` once per answered request (``status`` None on
success), with ``dataplane.metric_model(name)`` as the model label (unknown names are not labels).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import ServeConfig
from ..errors import BatchInferError, InputError, ModelError, explain
from ..model import LoadedModel, OutputPlan, load_model
from ..model.outputs import OutputColumn
from ..redaction import redact_text
from ..scoring import ScoringSpec, score_batch
from .batching import AdaptiveBatcher
from .cache import LRUCache, row_keys
from .codecs import (
    decode_request,
    input_datatype,
    request_from_matrix,
    request_from_records,
    warm_up_batch,
)
from .metrics import ServeMetrics
from .protocol import (
    InferOutput,
    InferRequest,
    InferResponse,
    Predictions,
    RequestedOutput,
    RowRejected,
    ServeError,
    oip_datatype,
)

log = logging.getLogger(__name__)

# The probability of a binary model's first class: `run` writes only the second one's, but the
# simple clients get the whole predict_proba row; scored with the others, never answered as an
# OIP output.
FIRST_CLASS_PROBABILITY = "__serve_probability_of_first_class"


class DataPlane:
    """One loaded model behind the Open Inference Protocol's operations."""

    def __init__(
        self, model: LoadedModel, config: ServeConfig, metrics: ServeMetrics | None = None
    ) -> None:
        registry = model.registry  # an MLflow model: the registry's name and version
        self.name = config.serve.name or (
            registry.name if registry and registry.name else model_name(config.model.path)
        )
        self.version = registry.version if registry and registry.version else model.version
        self.metrics = metrics or ServeMetrics()
        self.server_version = _package_version()
        self.spec = ScoringSpec(
            features=model.features,
            columns=config.columns,
            predicted_at=dt.datetime.now(dt.UTC),
            model_version=model.version,
        )
        # what OIP clients get: `run`'s columns
        self.output_fields = model.outputs.fields()
        self.output_names = [f.name for f in self.output_fields]
        self.output_types = {f.name: oip_datatype(f.type) for f in self.output_fields}
        # what is scored: those, and what the simple clients need besides (same model call)
        self.model, self.probability_names = _with_whole_probability_rows(model)
        self.scored_names = [c.name for c in self.model.outputs.columns]
        self.scored_types = {f.name: oip_datatype(f.type) for f in self.model.outputs.fields()}
        self.label_names = [c.name for c in model.outputs.columns if c.method == "predict"]
        self.cache = LRUCache(config.serve.cache_size) if config.serve.cache_size else None
        self.batcher = AdaptiveBatcher(
            self._score_many,
            config.serve.max_batch_size,
            config.serve.max_batch_time_ms,
            on_batch=self._count_batch,
            on_queue=self.metrics.queue_depth.labels(self.name).set,
        )
        self._warmed = False  # the warm-up call was made (whatever its outcome)
        self._ready = False  # ... and it succeeded
        self._stopping = False
        self._failures_seen: set[tuple[str, str]] = set()  # failures whose traceback was logged

    @classmethod
    def load(cls, config: ServeConfig, metrics: ServeMetrics | None = None) -> DataPlane:
        """Load the model as `run` does (pins, trusted types, contract, outputs)."""
        model = load_model(config.model, config.columns, config.methods)
        return cls(model, config, metrics)

    # ------------------------------------------------------------------ lifecycle and health

    def warm(self) -> bool:
        """Score one made-up row so the first request pays no first-call costs.

        Ready only when that call succeeds (the model neither fails nor refuses the row, which
        the contract says it takes): a model that fails on it would fail every request, so
        probes keep traffic away and the log says why. Requests that arrive anyway are still
        scored (a model may refuse the made-up row yet take real ones); a failure is their 500.
        """
        try:
            warmed = score_batch(warm_up_batch(self.model.contract), self.model, self.spec)
            if warmed.rejected is not None:  # the made-up row is valid: the model raised on it
                raise ModelError(
                    "the model raised on the made-up row: "
                    + str(warmed.rejected.column("reject_message")[0])
                )
        except Exception as exc:
            log.error(
                "model %r version %s is NOT READY: its warm-up call on one made-up row failed: "
                "%s (health checks answer not ready; fix the model or its environment and "
                "restart)",
                self.name,
                self.version,
                _describe(exc),
                exc_info=not isinstance(exc, InputError),
            )
            self._warmed = True
            return False
        self._warmed = self._ready = True
        log.info("model %r version %s ready (%s)", self.name, self.version, self.model.runtime)
        return True

    def stop_accepting(self) -> None:
        """Shutting down: readiness turns false so load balancers stop sending requests."""
        self._stopping = True

    async def close(self) -> None:
        await self.batcher.close()

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready and not self._stopping

    def model_ready(self, name: str, version: str | None) -> bool:
        self.check_model(name, version)
        return self.ready()

    def metric_model(self, name: str) -> str:
        """The model label for metrics: the name if it is ours, else "unknown" (bounded labels)."""
        return name if name == self.name else "unknown"

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "batch-infer",
            "version": self.server_version,
            "extensions": ["binary_tensor_data"],
        }

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        self.check_model(name, version)
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": f"batch-infer-{self.model.runtime}",
            "inputs": [
                {"name": spec.name, "datatype": input_datatype(spec), "shape": [-1]}
                for spec in self.model.contract.features
            ],
            "outputs": [
                {"name": name, "datatype": self.output_types[name], "shape": [-1]}
                for name in self.output_names
            ],
            "parameters": {"content_type": "pd"},
        }

    def check_model(self, name: str, version: str | None) -> None:
        if name != self.name:
            raise ServeError(
                f"unknown model {name!r} — this server serves model {self.name!r}", 404
            )
        if version is not None and version != self.version:
            raise ServeError(
                f"model {name!r} has no version {version!r} — it serves version "
                f"{self.version!r} (or leave the version out)",
                404,
            )

    def _check_accepting(self) -> None:
        if self._stopping or not self._warmed:
            raise ServeError(f"model {self.name!r} is not ready — retry shortly", 503)

    # ------------------------------------------------------------------ inference

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        """Score the request's rows; outputs named like `run`'s columns, each of length N."""
        self.check_model(name, version)
        self._check_accepting()
        wanted = self._requested_outputs(request.outputs)
        batch = decode_request(request, self.model.contract)
        columns = await self.score(batch)
        outputs = [
            InferOutput(
                output.name,
                self.output_types[output.name],
                [batch.num_rows],
                columns[output.name],
                output.parameters,
            )
            for output in wanted
        ]
        return InferResponse(self.name, self.version, outputs, id=request.id)

    async def predict(self, records: Any, what: str = "instance") -> Predictions:
        """The simple clients' answer for ``[{feature: value, ...}, ...]``: labels (or values)
        and whole probability rows, from the same scores as ``infer``."""
        self._check_accepting()
        request = request_from_records(records, self.model.contract, what)
        return await self._predictions(decode_request(request, self.model.contract))

    async def predict_positional(self, rows: list[list[float]], what: str) -> Predictions:
        """The same for rows of numbers in the model's feature order (the seed's gRPC service)."""
        self._check_accepting()
        request = request_from_matrix(rows, self.model.contract, what)
        return await self._predictions(decode_request(request, self.model.contract))

    async def _predictions(self, batch: pa.RecordBatch) -> Predictions:
        columns = {name: _as_list(values) for name, values in (await self.score(batch)).items()}
        rows = batch.num_rows
        if len(self.label_names) == 1:
            predictions = columns[self.label_names[0]]
        else:  # several outputs (multi-output models): one {column: label} per row
            predictions = [{n: columns[n][i] for n in self.label_names} for i in range(rows)]
        probabilities = None
        if self.probability_names:
            probabilities = [[columns[n][i] for n in self.probability_names] for i in range(rows)]
        classes = self.model.classes if self.probability_names else None
        return Predictions(predictions, probabilities, classes, self.version)

    def _requested_outputs(self, requested: list[RequestedOutput] | None) -> list[RequestedOutput]:
        if not requested:
            return [RequestedOutput(name) for name in self.output_names]
        for output in requested:
            if output.name not in self.output_types:
                raise ServeError(
                    f"unknown output {output.name!r} — model {self.name!r} gives "
                    f"{', '.join(self.output_names)}"
                )
        return requested

    async def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """Every scored column for the batch's rows (np.ndarray, or list[str] for labels)."""
        if self.cache is None:
            return await self.batcher.submit(batch, batch.num_rows, batch.schema)
        return await self._score_cached(batch)

    async def _score_cached(self, batch: pa.RecordBatch) -> dict[str, Any]:
        keys = row_keys(batch, self.model.features, self.model.sha256)
        rows: list[tuple | None] = [self.cache.get(key) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        self.metrics.cache_hits.labels(self.name).inc(len(rows) - len(missing))
        if missing:
            self.metrics.cache_misses.labels(self.name).inc(len(missing))
            subset = batch if len(missing) == len(rows) else batch.take(pa.array(missing))
            try:
                scored = await self.batcher.submit(subset, subset.num_rows, subset.schema)
            except RowRejected as exc:  # name the row as the caller numbered it
                raise exc.renumbered(missing) from None
            values = [_as_list(scored[name]) for name in self.scored_names]
            for position, row in enumerate(zip(*values, strict=True)):
                rows[missing[position]] = row
                self.cache.put(keys[missing[position]], row)
        return {
            name: _column_like(self.scored_types[name], [row[i] for row in rows])
            for i, name in enumerate(self.scored_names)
        }

    def _count_batch(self, rows: int, requests: int) -> None:
        self.metrics.batch_rows.labels(self.name).observe(rows)
        self.metrics.batch_requests.labels(self.name).observe(requests)
        self.metrics.rows.labels(self.name).inc(rows)

    def _score_many(self, batches: list[pa.RecordBatch]) -> list[Any]:
        """One model call for several requests' rows; each gets its own outputs or its error.

        Runs in the batcher's thread. A combined batch that fails is retried request by request,
        so only the request that caused the failure fails.
        """
        combined = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
        try:
            result = score_batch(combined, self.model, self.spec)
        except Exception as exc:
            if len(batches) > 1:
                return [self._score_many([batch])[0] for batch in batches]
            if isinstance(exc, InputError):  # values that do not convert: the request's fault
                return [ServeError(redact_text(f"{exc.what} — {exc.fix}"))]
            return [self._model_failed(exc)]
        return self._split(result, [batch.num_rows for batch in batches])

    def _model_failed(self, exc: BaseException) -> ServeError:
        """The model failed as a whole: the details to the log (masked), a 500 to the client.

        The traceback is logged the first time each kind of failure happens; after that one line
        per failed request, so a model that fails every request does not flood the log."""
        kind = (type(exc).__qualname__, _describe(exc))
        first = kind not in self._failures_seen
        if first and len(self._failures_seen) < 100:
            self._failures_seen.add(kind)
        log.error(
            "model %r version %s failed to score a request: %s",
            self.name,
            self.version,
            kind[1],
            exc_info=exc if first else None,
        )
        return model_failure(self.name)

    def _split(self, result: Any, sizes: list[int]) -> list[Any]:
        scored = result.scored
        columns = {
            name: _column_values(scored.column(name), self.scored_types[name])
            for name in self.scored_names
        }
        rejected_rows: dict[int, tuple[str | None, str]] = {}
        if result.rejected is not None:
            rejected = result.rejected
            for row, column, message in zip(
                rejected.column("reject_row_index").to_pylist(),
                rejected.column("reject_column").to_pylist(),
                rejected.column("reject_message").to_pylist(),
                strict=True,
            ):
                rejected_rows[row] = (column, redact_text(message))
        answers: list[Any] = []
        offset = start = 0  # start: where this request's accepted rows begin in ``scored``
        for size in sizes:
            refused = sorted(r for r in rejected_rows if offset <= r < offset + size)
            if refused:
                answers.append(_rejection(refused, offset, rejected_rows))
            else:
                answers.append(
                    {name: values[start : start + size] for name, values in columns.items()}
                )
            start += size - len(refused)
            offset += size
        return answers


def model_failure(name: str) -> ServeError:
    """The 500 a client gets when the model (or the server) fails: no internal details."""
    return ServeError(
        f"model {name!r} failed to score this request — the failure is the server's, not the "
        "request's; the server's log has the details",
        500,
    )


def internal_failure(what: str) -> ServeError:
    """The 500 for anything else that went wrong inside the server while answering."""
    return ServeError(
        f"the server failed while answering {what} — the failure is the server's, not the "
        "request's; the server's log has the details",
        500,
    )


def _with_whole_probability_rows(model: LoadedModel) -> tuple[LoadedModel, list[str]]:
    """The model with a binary classifier's first-class probability scored too, and the names
    of the columns that make up a whole ``predict_proba`` row, in the order of its classes."""
    plan = model.outputs
    probabilities = [c for c in plan.columns if c.method == "predict_proba" and c.output is None]
    if not probabilities:
        return model, []
    if len(probabilities) == 1 and probabilities[0].index == 1:  # binary: run keeps classes_[1]
        first = OutputColumn(FIRST_CLASS_PROBABILITY, pa.float64(), "predict_proba", index=0)
        extended = OutputPlan(plan.methods, [*plan.columns, first], plan.labels_from_probability)
        return (
            dataclasses.replace(model, outputs=extended),
            [FIRST_CLASS_PROBABILITY, probabilities[0].name],
        )
    ordered = sorted(probabilities, key=lambda c: c.index if c.index is not None else 0)
    return model, [c.name for c in ordered]


def _describe(exc: BaseException) -> str:
    """One log line's worth of what failed, secrets masked (ours: what and fix; others: type and
    first line)."""
    text = str(exc) if isinstance(exc, BatchInferError) else explain(exc).what
    return redact_text(text)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batch-infer")
    except PackageNotFoundError:
        return "unknown"


def model_name(path: str) -> str:
    """The default model name: the model file's stem (``models/churn.joblib`` -> ``churn``)."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base.split(".", 1)[0] or base


def _rejection(
    refused: list[int], offset: int, reasons: dict[int, tuple[str | None, str]]
) -> RowRejected:
    column, reason = reasons[refused[0]]
    return RowRejected(refused[0] - offset, column, reason, len(refused) - 1)


def _column_values(column: pa.Array, datatype: str) -> Any:
    if datatype == "BYTES":
        return column.to_pylist()
    return column.to_numpy(zero_copy_only=False)


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _column_like(datatype: str, values: list[Any]) -> Any:
    if datatype == "BYTES":
        return values
    return np.array(values, dtype=_NUMPY_TYPES[datatype])


_NUMPY_TYPES = {
    "BOOL": np.bool_,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}
