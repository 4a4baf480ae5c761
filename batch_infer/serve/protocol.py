"""The data plane's vocabulary: inference requests and responses, tensors, and refusals.

Every other serve module speaks these types: the protocol layers (``rest``, ``grpc``) build
requests and read responses, the codecs turn tensors into Arrow and back, the data plane scores.
They import this module and nothing here imports them, so dependencies point one way.

- ``InferInput.data`` may be an ``np.ndarray`` (any shape; flattened in row order) or a Python
  list (flat or nested; ``None`` is a missing value), or a list of ``bytes``/``str`` for BYTES.
- ``InferOutput.data`` is a 1-D ``np.ndarray``, or a ``list[str]`` for BYTES (string labels).
- ``RequestedOutput.parameters`` and ``InferRequest.parameters`` pass through untouched
  (``binary_data`` and the like are the protocol layer's business).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


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


@dataclass
class Predictions:
    """What the simple clients (``/predict``, ``/batch_predict``, ``prediction.PredictionService``)
    get for N rows: the labels (or values), and each row's whole ``predict_proba`` row in the
    order of the model's classes (None when the model gives no probabilities)."""

    predictions: list[Any]
    probabilities: list[list[float]] | None
    classes: list[Any] | None
    model_version: str


class ServeError(Exception):
    """A request we refuse or cannot answer: ``status`` 400 bad request, 404 unknown model or
    version, 412 the model's answer does not fit the protocol's messages, 500 the model failed
    (the server's fault), 503 not ready. ``message`` is what the client reads: one line naming
    the input and what to do, never an internal exception's text."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


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
