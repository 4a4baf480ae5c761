"""OIP tensors <-> the Arrow batch `run` would have read for the same rows.

Each input becomes an Arrow column of the type a Parquet file would give it (FP64 -> float64,
INT64 -> int64, BOOL -> bool, BYTES -> string), so the scoring core converts it exactly as in a
nightly run: the same values reach the model, bit for bit. Two layouts are understood, as the
ecosystem sends them:

- one input per feature (``parameters.content_type = "pd"``, the pandas codec), shape [N] or
  [N, 1], strings as BYTES; inputs that are not features are ignored, as `run` passes them by;
- one 2-D numeric tensor [N, n_features] whose columns are the features in the model's order.

Also here: the ``{"features": {...}}`` records of ``/predict`` as a request, and the binary
tensor layout (Triton's binary data extension, gRPC ``raw_input_contents``).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import first_line
from ..model.contract import Contract, FeatureSpec, type_problem
from .protocol import InferInput, InferRequest, ServeError

ARROW_TYPES = {
    "BOOL": pa.bool_(),
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "FP16": pa.float16(),
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "BYTES": pa.string(),
}
NUMPY_TYPES = {
    name: np.dtype(arrow_type.to_pandas_dtype())
    for name, arrow_type in ARROW_TYPES.items()
    if name != "BYTES"
}
DATATYPES = ", ".join(ARROW_TYPES)


def decode_request(request: InferRequest, contract: Contract) -> pa.RecordBatch:
    """The request's rows as an Arrow batch with one column per feature, in the model's order."""
    inputs = request.inputs
    names = contract.names
    if not inputs:
        raise ServeError(
            "the request has no inputs — send one input per feature "
            f"({', '.join(names)}) or one [N, {len(names)}] tensor"
        )
    by_name: dict[str, InferInput] = {}
    for tensor in inputs:  # inputs that are not features are passed by, as `run` does
        if tensor.name in by_name and tensor.name in names:
            raise ServeError(f"input {tensor.name!r} is given twice — send each input once")
        by_name.setdefault(tensor.name, tensor)
    content_type = request.parameters.get("content_type")
    if len(inputs) == 1 and inputs[0].name not in names and content_type != "pd":
        return _from_matrix(inputs[0], contract)
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ServeError(
            f"input {missing[0]!r} is missing — the model takes one input per feature: "
            f"{', '.join(names)} (or one [N, {len(names)}] tensor in that order)"
        )
    columns, rows, first = [], -1, ""
    for spec in contract.features:
        column = _column(by_name[spec.name], spec)
        if rows < 0:
            rows, first = len(column), spec.name
        elif len(column) != rows:
            raise ServeError(
                f"input {spec.name!r} has {len(column)} rows but input {first!r} has {rows} — "
                "every input needs one value per row"
            )
        columns.append(column)
    if rows == 0:
        raise ServeError("the request has no rows — send at least one row")
    return pa.RecordBatch.from_arrays(columns, names=names)


def _column(tensor: InferInput, spec: FeatureSpec) -> pa.Array:
    datatype = _datatype(tensor)
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise ServeError(
            f"input {tensor.name!r} has shape {list(shape)}; an input per feature has shape "
            "[N] or [N, 1]"
        )
    values = _flat(tensor)
    column = _arrow(tensor.name, datatype, values)
    problem = type_problem(spec, column.type)
    if problem is not None:
        raise ServeError(
            f"input {tensor.name!r} is {datatype}, but the model {problem} — send it as "
            f"{input_datatype(spec)}"
        )
    _check_integer_categories(tensor.name, column, spec)
    return column


def _check_integer_categories(name: str, column: pa.Array, spec: FeatureSpec) -> None:
    """A fractional number for a feature whose categories are integers is no category: refused
    here, naming it (the scoring core cannot compare it with the categories)."""
    if not (spec.kind == "categorical" and spec.categories and pa.types.is_floating(column.type)):
        return
    if not all(isinstance(c, int | np.integer) for c in spec.categories):
        return
    values = column.to_numpy(zero_copy_only=False)
    odd = values[np.isfinite(values) & (values != np.round(values))]
    if len(odd):
        shown = ", ".join(map(str, spec.categories[:8]))
        raise ServeError(
            f"input {name!r} holds {odd[0].item()!r}, but feature {spec.name!r} takes the integer "
            f"categories {shown}{', …' if len(spec.categories) > 8 else ''} — send one of them"
        )


def _from_matrix(tensor: InferInput, contract: Contract) -> pa.RecordBatch:
    """A [N, n_features] tensor: its columns are the features, in the model's order."""
    datatype = _datatype(tensor)
    width = len(contract.names)
    shape = list(tensor.shape)
    if len(shape) == 1 and width == 1:
        shape = [shape[0], 1]
    if len(shape) != 2 or shape[1] != width:
        raise ServeError(
            f"input {tensor.name!r} has shape {shape}, but the model takes {width} features "
            f"({', '.join(contract.names)}): send an [N, {width}] tensor in that order, or one "
            'input per feature with parameters.content_type "pd"'
        )
    if datatype == "BYTES":
        raise ServeError(
            f"input {tensor.name!r} is a BYTES tensor; a [N, {width}] tensor must be numeric — "
            'send text features as one input per feature with parameters.content_type "pd"'
        )
    values = _flat(tensor)
    try:
        matrix = np.asarray(values, dtype=NUMPY_TYPES[datatype]).reshape(shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ServeError(
            f"input {tensor.name!r} is declared {datatype} but holds other values "
            f"({first_line(exc)}) — send {datatype} numbers"
        ) from None
    columns = []
    for position, spec in enumerate(contract.features):
        column = pa.array(np.ascontiguousarray(matrix[:, position]))
        problem = type_problem(spec, column.type)
        if problem is not None:
            raise ServeError(
                f"input {tensor.name!r} column {position} (feature {spec.name!r}) is {datatype}, "
                f"but the model {problem} — send that feature as {input_datatype(spec)} in its "
                'own input, with parameters.content_type "pd"'
            )
        _check_integer_categories(tensor.name, column, spec)
        columns.append(column)
    if shape[0] == 0:
        raise ServeError("the request has no rows — send at least one row")
    return pa.RecordBatch.from_arrays(columns, names=contract.names)


def _datatype(tensor: InferInput) -> str:
    datatype = str(tensor.datatype).upper()
    if datatype not in ARROW_TYPES:
        raise ServeError(
            f"input {tensor.name!r} has datatype {tensor.datatype!r} — use one of {DATATYPES}"
        )
    if any(not isinstance(d, int) or d < 0 for d in tensor.shape):
        raise ServeError(
            f"input {tensor.name!r} has shape {tensor.shape!r} — a shape is a list of sizes >= 0"
        )
    return datatype


def _flat(tensor: InferInput) -> Any:
    """The tensor's values in row order (np.ndarray or list), checked against its shape."""
    data = tensor.data
    if isinstance(data, np.ndarray):
        values: Any = data.reshape(-1)
    elif isinstance(data, list | tuple):
        values = list(data)
        while values and isinstance(values[0], list | tuple):
            values = [item for part in values for item in part]
    else:
        values = [data]
    expected = math.prod(tensor.shape)
    if len(values) != expected:
        raise ServeError(
            f"input {tensor.name!r} has shape {list(tensor.shape)} ({expected} values) but holds "
            f"{len(values)} — make the shape match the data"
        )
    return values


def _arrow(name: str, datatype: str, values: Any) -> pa.Array:
    arrow_type = ARROW_TYPES[datatype]
    if datatype == "BYTES":
        values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
        if not all(v is None or isinstance(v, str) for v in values):
            odd = next(v for v in values if not (v is None or isinstance(v, str)))
            raise ServeError(
                f"input {name!r} is declared BYTES but holds {odd!r} — send text, or declare "
                "the input's numeric datatype (FP64, INT64)"
            )
    elif datatype != "BOOL" and not isinstance(values, np.ndarray):
        odd = next((v for v in values if v is True or v is False), None)
        if odd is not None:  # JSON true/false is not a number (Arrow would read 1/0)
            raise ServeError(
                f"input {name!r} holds {str(odd).lower()} where {datatype} numbers are "
                "expected — send numbers (or declare the input BOOL)"
            )
    try:
        if isinstance(values, np.ndarray):
            column = pa.array(values)
            return column if column.type == arrow_type else column.cast(arrow_type)
        if datatype.startswith("FP"):  # JSON integers beyond int64 are numbers all the same
            try:
                return pa.array(values, type=arrow_type)
            except pa.ArrowInvalid:
                values = [float(v) if isinstance(v, int) else v for v in values]
        return pa.array(values, type=arrow_type)
    except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise ServeError(
            f"input {name!r} is declared {datatype} but holds other values "
            f"({first_line(exc)}) — send {datatype} values, or declare the datatype they are"
        ) from None


def input_datatype(spec: FeatureSpec) -> str:
    """The OIP datatype a feature is best sent as (model metadata, error hints)."""
    if spec.kind == "numeric":
        return "FP64"
    if spec.kind == "categorical" and spec.categories:
        if all(isinstance(c, bool | np.bool_) for c in spec.categories):
            return "BOOL"
        if all(isinstance(c, int | np.integer) for c in spec.categories):
            return "INT64"
        if all(isinstance(c, int | float | np.integer | np.floating) for c in spec.categories):
            return "FP64"
    return "BYTES"


def warm_up_batch(contract: Contract) -> pa.RecordBatch:
    """One plausible row (zeros, the first known category, empty text) for the warm-up call."""
    columns = []
    for spec in contract.features:
        if spec.categories:
            value: Any = spec.categories[0]
        elif spec.kind == "text":
            value = ""
        else:
            value = 0.0
        columns.append(pa.array([value]))
    return pa.RecordBatch.from_arrays(columns, names=contract.names)


# ---------------------------------------------------------------- /predict and /batch_predict


def request_from_records(records: Any, contract: Contract, what: str = "instance") -> InferRequest:
    """``[{feature: value, ...}, ...]`` as a pandas-codec request, one input per feature."""
    if not isinstance(records, list) or not records:
        raise ServeError(
            f"expected a non-empty list of {{feature: value}} objects, got {records!r}"[:300]
        )
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ServeError(
                f"{what} {index} is {type(record).__name__}, not an object of feature values"
            )
    inputs = []
    for spec in contract.features:
        values = []
        for index, record in enumerate(records):
            if spec.name not in record:
                where = f"{what} {index}" if len(records) > 1 or what == "instance" else what
                raise ServeError(
                    f"{where} has no feature {spec.name!r} — the model takes "
                    f"{', '.join(contract.names)}"
                )
            values.append(record[spec.name])
        inputs.append(InferInput(spec.name, _guess_datatype(values, spec), [len(values)], values))
    return InferRequest(inputs, parameters={"content_type": "pd"})


def request_from_matrix(rows: Any, contract: Contract, what: str = "instance") -> InferRequest:
    """Rows of numbers in the model's feature order (the seed's gRPC ``repeated float
    features``) as one [N, n_features] FP32 tensor; only for models whose features are all
    numeric, since a position cannot say which category or text it means."""
    names = contract.names
    others = [spec.name for spec in contract.features if spec.kind != "numeric"]
    if others:
        raise ServeError(
            f"features: this model takes non-numeric features ({', '.join(others)}), which a "
            "list of numbers cannot carry — send the rows by name over REST (POST /predict) or "
            "with the Open Inference Protocol (inference.GRPCInferenceService/ModelInfer)"
        )
    if not rows:
        raise ServeError(f"the request has no {what}s — send at least one")
    for index, row in enumerate(rows):
        if len(row) != len(names):
            where = f"{what} {index} features" if len(rows) > 1 else "features"
            raise ServeError(
                f"{where} has {len(row)} values, but the model takes {len(names)}, in this "
                f"order: {', '.join(names)}"
            )
    data = np.asarray(rows, dtype=np.float32)
    name = "features" if "features" not in names else "features[]"  # not a feature: a matrix
    return InferRequest([InferInput(name, "FP32", list(data.shape), data)])


def _guess_datatype(values: list[Any], spec: FeatureSpec) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return input_datatype(spec)
    if any(isinstance(v, str) for v in present):
        return "BYTES"
    if all(isinstance(v, bool) for v in present) and spec.kind != "numeric":
        return "BOOL"
    if any(isinstance(v, float) for v in present) or spec.kind == "numeric":
        return "FP64"
    return "INT64"


# ---------------------------------------------------------------- binary tensors


def from_binary(name: str, datatype: str, shape: list[int], raw: bytes) -> Any:
    """A tensor from its raw little-endian bytes (BYTES: 4-byte length, then the bytes, each)."""
    if datatype == "BYTES":
        items, position = [], 0
        while position < len(raw):
            if position + 4 > len(raw):
                raise ServeError(f"input {name!r}: truncated BYTES element in the binary data")
            (length,) = struct.unpack_from("<I", raw, position)
            position += 4
            if position + length > len(raw):
                raise ServeError(
                    f"input {name!r}: a BYTES element of {length} bytes runs past the end of the "
                    "binary data — prefix each element with its length as a little-endian uint32"
                )
            items.append(raw[position : position + length])
            position += length
        return items
    dtype = NUMPY_TYPES.get(datatype)
    if dtype is None:
        raise ServeError(f"input {name!r} has datatype {datatype!r} — use one of {DATATYPES}")
    if len(raw) % dtype.itemsize:
        raise ServeError(
            f"input {name!r}: {len(raw)} bytes of binary data is not a whole number of "
            f"{datatype} values"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<"))


def to_binary(datatype: str, data: Any) -> bytes:
    """A tensor's raw little-endian bytes, as ``from_binary`` reads them."""
    if datatype == "BYTES":
        parts = []
        for value in data:
            encoded = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(struct.pack("<I", len(encoded)) + encoded)
        return b"".join(parts)
    array = np.ascontiguousarray(data, dtype=NUMPY_TYPES[datatype].newbyteorder("<"))
    return array.tobytes()
