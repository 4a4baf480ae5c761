"""What an inference does, whatever protocol asked: REST and gRPC only translate to and from it.

A request is decoded into the Arrow batch `run` would have read for the same rows
(``codecs.decode_request``), scored by ``scoring.score_batch`` (through the micro-batcher and the
optional row cache), and answered with `run`'s output columns: a row scored here and in the
nightly batch gets the same outputs. Errors are ``ServeError``: a status and one line naming the
input and what to do.

Notes for the protocol layers:
- ``InferInput.data`` may be an ``np.ndarray`` (any shape; flattened in row order) or a Python
  list (flat or nested; ``None`` is a missing value), or a list of ``bytes``/``str`` for BYTES.
- ``InferOutput.data`` is a 1-D ``np.ndarray``, or a ``list[str]`` for BYTES (string labels).
- ``RequestedOutput.parameters`` and ``InferRequest.parameters`` pass through untouched
  (``binary_data`` and the like are the protocol layer's business).
- ``metrics`` is a ``serve.metrics.ServeMetrics``: call ``metrics.observe(protocol, endpoint,
  model, seconds, status)`` once per answered request (``status`` None on success); use
  ``dataplane.metric_model(name)`` for the model label (unknown names are not labels).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import ServeConfig
from ..errors import BatchInferError, InputError, first_line
from ..model import LoadedModel
from ..scoring import ScoringSpec, score_batch
from .batching import AdaptiveBatcher
from .cache import LRUCache, row_keys
from .metrics import ServeMetrics

log = logging.getLogger(__name__)


@dataclass
class InferInput:
    """One OIP input tensor, decoded."""

    name: str
    datatype: str  # BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64, BYTES
    shape: list[int]
    data: Any  # np.ndarray, a (nested) list, or list[bytes | str] for BYTES
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None  # None: all of the model's outputs
    parameters: dict[str, Any] = field(default_factory=dict)  # e.g. {"content_type": "pd"}
    id: str | None = None


@dataclass
class InferOutput:
    name: str  # run's column names: prediction, probability / probability_<class>, ...
    datatype: str
    shape: list[int]
    data: Any  # 1-D np.ndarray, or list[str] for BYTES
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


class ServeError(Exception):
    """A request we refuse: ``status`` 400 bad request, 404 unknown model/version, 503 not ready."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def oip_datatype(arrow_type: pa.DataType) -> str:
    """The OIP datatype of an Arrow type (strings and anything else travel as BYTES)."""
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    if pa.types.is_floating(arrow_type):
        return f"FP{arrow_type.bit_width}"
    if pa.types.is_signed_integer(arrow_type):
        return f"INT{arrow_type.bit_width}"
    if pa.types.is_unsigned_integer(arrow_type):
        return f"UINT{arrow_type.bit_width}"
    return "BYTES"


class DataPlane:
    """One loaded model behind the Open Inference Protocol's operations."""

    def __init__(
        self, model: LoadedModel, config: ServeConfig, metrics: ServeMetrics | None = None
    ) -> None:
        self.model = model
        self.name = config.serve.name or model_name(config.model.path)
        self.version = model.version
        self.metrics = metrics or ServeMetrics()
        self.server_version = _package_version()
        self.spec = ScoringSpec(
            features=model.features,
            columns=config.columns,
            predicted_at=dt.datetime.now(dt.UTC),
            model_version=model.version,
        )
        self.output_fields = model.outputs.fields()
        self.output_names = [f.name for f in self.output_fields]
        self.output_types = {f.name: oip_datatype(f.type) for f in self.output_fields}
        self.cache = LRUCache(config.serve.cache_size) if config.serve.cache_size else None
        self.batcher = AdaptiveBatcher(
            self._score_many,
            config.serve.max_batch_size,
            config.serve.max_batch_time_ms,
            on_batch=self._count_batch,
            on_queue=self.metrics.queue_depth.labels(self.name).set,
        )
        self._ready = False
        self._stopping = False

    @classmethod
    def load(cls, config: ServeConfig, metrics: ServeMetrics | None = None) -> DataPlane:
        """Load the model as `run` does (pins, trusted types, contract, outputs)."""
        from ..model import load_model

        model = load_model(config.model, config.columns, config.methods)
        return cls(model, config, metrics)

    # ------------------------------------------------------------------ lifecycle and health

    def warm(self) -> None:
        """Score one made-up row so the first request pays no first-call costs; then ready."""
        from .codecs import warm_up_batch

        try:
            score_batch(warm_up_batch(self.model.contract), self.model, self.spec)
        except Exception as exc:  # a model that refuses the made-up row is still servable
            log.info("warm-up call failed (%s); serving anyway", first_line(exc))
        self._ready = True
        log.info("model %r version %s ready (%s)", self.name, self.version, self.model.runtime)

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
        from .codecs import input_datatype

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

    # ------------------------------------------------------------------ inference

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        """Score the request's rows; outputs named like `run`'s columns, each of length N."""
        from .codecs import decode_request

        self.check_model(name, version)
        if not self.ready():
            raise ServeError(f"model {name!r} is not ready — retry shortly", 503)
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
        """Every output column for the batch's rows (np.ndarray, or list[str] for labels)."""
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
            values = [_as_list(scored[name]) for name in self.output_names]
            for position, row in enumerate(zip(*values, strict=True)):
                rows[missing[position]] = row
                self.cache.put(keys[missing[position]], row)
        return {
            name: _column_like(self.output_types[name], [row[i] for row in rows])
            for i, name in enumerate(self.output_names)
        }

    def _count_batch(self, rows: int, requests: int) -> None:
        self.metrics.batch_rows.labels(self.name).observe(rows)
        self.metrics.batch_requests.labels(self.name).observe(requests)
        self.metrics.rows.labels(self.name).inc(rows)

    def _score_many(self, batches: list[pa.RecordBatch]) -> list[Any]:
        """One model call for several requests' rows; each gets its own outputs or its error.

        Runs in the batcher's thread. A conversion error raised for the combined batch is
        retried request by request, so only the request that caused it fails.
        """
        combined = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
        try:
            result = score_batch(combined, self.model, self.spec)
        except InputError as exc:
            if len(batches) == 1:
                return [ServeError(f"{exc.what} — {exc.fix}")]
            return [self._score_many([batch])[0] for batch in batches]
        except BatchInferError as exc:
            return [ServeError(f"the model failed: {exc}", 500)] * len(batches)
        return self._split(result, [batch.num_rows for batch in batches])

    def _split(self, result: Any, sizes: list[int]) -> list[Any]:
        scored = result.scored
        columns = {
            name: _column_values(scored.column(name), self.output_types[name])
            for name in self.output_names
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
                rejected_rows[row] = (column, message)
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


class RowRejected(ServeError):
    """A row the model cannot take: which row (of the request), which input, and why."""

    def __init__(self, row: int, column: str | None, reason: str, others: int = 0) -> None:
        where = f"input {column!r}, " if column else ""
        more = f" (and {others} more row(s))" if others else ""
        super().__init__(f"{where}row {row}: {reason}{more} — send values the model takes")
        self.row, self.column, self.reason, self.others = row, column, reason, others

    def renumbered(self, positions: list[int]) -> RowRejected:
        """The same rejection with the row numbered as in the request ``positions`` index."""
        return RowRejected(positions[self.row], self.column, self.reason, self.others)


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
