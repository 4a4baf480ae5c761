"""Record batch in, scored record batch out. Pure: no files, no global state.

Features go from Arrow straight to a float64 numpy matrix (no pandas round trip); the new
columns are built as Arrow arrays and appended to the batch, so input columns pass through
untouched whatever their type.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import OutputColumns
from .errors import first_line
from .model import LoadedModel

PREDICTED_AT_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ScoringSpec:
    """What the added columns are called and hold; the same for every batch of a run."""

    features: list[str]
    columns: OutputColumns
    predicted_at: dt.datetime
    model_version: str


def is_numeric(arrow_type: pa.DataType) -> bool:
    """Types we convert to float64 features: ints, floats, decimals, bools, dictionaries of those."""
    if pa.types.is_dictionary(arrow_type):
        return is_numeric(arrow_type.value_type)
    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_null(arrow_type)
    )


def feature_matrix(batch: pa.RecordBatch, features: list[str]) -> np.ndarray:
    """The features as an (n_rows, n_features) float64 matrix; nulls become NaN."""
    # Column-major, like the array pandas hands scikit-learn: BLAS rounds differently for C order,
    # and scoring must equal calling the model on a DataFrame exactly.
    matrix = np.empty((batch.num_rows, len(features)), dtype=np.float64, order="F")
    for position, name in enumerate(features):
        column = batch.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if pa.types.is_decimal(column.type):
            # Arrow's decimal->double cast is off by an ulp for ~15% of values; via text it is
            # correctly rounded, like float(Decimal) in pandas.
            column = pc.cast(column, pa.string())
        column = pc.cast(column, pa.float64())
        matrix[:, position] = column.to_numpy(zero_copy_only=False)
    return matrix


def output_fields(model: LoadedModel, spec: ScoringSpec, label_type: pa.DataType) -> list[pa.Field]:
    """The columns a run adds, in order."""
    names = spec.columns
    fields = [pa.field(names.prediction, label_type)]
    if model.has_probability:
        if model.kind == "binary":
            fields.append(pa.field(names.probability, pa.float64()))
        else:
            fields.extend(
                pa.field(f"{names.probability}_{c}", pa.float64()) for c in model.classes or []
            )
    fields.append(pa.field(names.predicted_at, PREDICTED_AT_TYPE))
    fields.append(pa.field(names.model_version, pa.string()))
    return fields


def label_type(model: LoadedModel) -> pa.DataType:
    """The Arrow type of the prediction column: the classes' own type, float64 for regressors."""
    if model.classes is None:
        return pa.float64()
    return pa.array(np.asarray(model.estimator.obj.classes_)).type


@dataclass(frozen=True)
class RowOrigin:
    """Where a batch's rows come from, to name rejected rows precisely."""

    file: str
    row_group: int
    first_row: int  # index in the file of the batch's first row


@dataclass(frozen=True)
class ScoredBatch:
    """Accepted rows with the added columns, and rejected rows with why (None when none)."""

    scored: pa.RecordBatch
    rejected: pa.RecordBatch | None


REJECT_FIELDS = [
    pa.field("reject_source_file", pa.string()),
    pa.field("reject_row_group", pa.int32()),
    pa.field("reject_row_index", pa.int64()),
    pa.field("reject_column", pa.string()),
    pa.field("reject_code", pa.string()),
    pa.field("reject_message", pa.string()),
]


def reject_schema(input_schema: pa.Schema) -> pa.Schema:
    """Rejected rows: why and where first, then every input column."""
    return pa.schema(REJECT_FIELDS + list(input_schema))


def score_batch(
    batch: pa.RecordBatch,
    model: LoadedModel,
    spec: ScoringSpec,
    origin: RowOrigin | None = None,
) -> ScoredBatch:
    """Score the rows the model can take; set aside the others with the reason.

    Rows with an infinite feature, or a null/NaN one when the model does not accept NaN, are
    rejected before scoring; rows the model itself raises on are found by bisecting the batch.
    """
    origin = origin or RowOrigin("", 0, 0)
    matrix = feature_matrix(batch, spec.features)
    reasons = _invalid_rows(batch, matrix, spec.features, model.allows_nan)
    keep = np.ones(batch.num_rows, dtype=bool)
    keep[list(reasons)] = False
    label_chunks, proba_chunks, failed = _predict_rows(
        model, matrix if keep.all() else np.asfortranarray(matrix[keep])
    )
    kept_positions = np.flatnonzero(keep)
    for position, message in failed.items():
        row = int(kept_positions[position])
        reasons[row] = (None, "MODEL_ERROR", message)
        keep[row] = False
    labels = np.concatenate(label_chunks) if label_chunks else np.empty(0)
    proba = np.concatenate(proba_chunks) if proba_chunks else None
    accepted = batch.filter(pa.array(keep)) if not keep.all() else batch
    scored = _append_outputs(accepted, labels, proba, model, spec)
    if keep.all():
        return ScoredBatch(scored, None)
    return ScoredBatch(scored, _rejected(batch, keep, reasons, origin))


def _invalid_rows(
    batch: pa.RecordBatch, matrix: np.ndarray, features: list[str], allows_nan: bool
) -> dict[int, tuple[str | None, str, str]]:
    """Rows that cannot be scored: row -> (column, code, message) for its first bad feature."""
    bad = np.isinf(matrix) if allows_nan else ~np.isfinite(matrix)
    if not bad.any():  # the usual case: one vectorised check per batch
        return {}
    reasons: dict[int, tuple[str | None, str, str]] = {}
    for position, name in enumerate(features):
        values = matrix[:, position]
        infinite = np.isinf(values)
        nulls = batch.column(name).is_null().to_numpy(zero_copy_only=False)
        nans = np.isnan(values) & ~nulls
        checks = [(infinite, "INF", "infinite value")]
        if not allows_nan:
            checks += [(nulls, "NULL", "null value"), (nans, "NAN", "NaN value")]
        for mask, code, message in checks:
            for row in np.flatnonzero(mask):
                reasons.setdefault(int(row), (name, code, f"{message} in feature {name!r}"))
    return reasons


def _predict_rows(
    model: LoadedModel, matrix: np.ndarray, offset: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str]]:
    """Predict every row; where the model raises, bisect down to the rows it raises on.

    Returns label and probability chunks, in order, for the rows that scored, and the failed
    rows' positions (in ``matrix``) with the model's message.
    """
    if len(matrix) == 0:
        return [], [], {}
    try:
        labels, proba = model.predict(matrix)
        return [labels], [] if proba is None else [proba], {}
    except (ValueError, TypeError, ArithmeticError) as exc:
        if len(matrix) == 1:
            return [], [], {offset: first_line(exc)}
    middle = len(matrix) // 2
    left = _predict_rows(model, matrix[:middle], offset)
    right = _predict_rows(model, matrix[middle:], offset + middle)
    return left[0] + right[0], left[1] + right[1], {**left[2], **right[2]}


def _append_outputs(
    batch: pa.RecordBatch,
    labels: np.ndarray,
    proba: np.ndarray | None,
    model: LoadedModel,
    spec: ScoringSpec,
) -> pa.RecordBatch:
    rows = batch.num_rows
    new_fields = output_fields(model, spec, label_type(model))
    if rows == 0:
        new_columns = [pa.array([], type=f.type) for f in new_fields]
    else:
        new_columns = [pa.array(labels, type=new_fields[0].type)]
        if proba is not None:
            if model.kind == "binary":
                new_columns.append(pa.array(proba[:, 1], type=pa.float64()))
            else:
                new_columns.extend(
                    pa.array(proba[:, i], type=pa.float64()) for i in range(proba.shape[1])
                )
        new_columns.append(pa.repeat(pa.scalar(spec.predicted_at, PREDICTED_AT_TYPE), rows))
        new_columns.append(pa.repeat(pa.scalar(spec.model_version, pa.string()), rows))
    return pa.RecordBatch.from_arrays(
        list(batch.columns) + new_columns,
        schema=pa.schema(list(batch.schema) + new_fields, metadata=batch.schema.metadata),
    )


def _rejected(
    batch: pa.RecordBatch,
    keep: np.ndarray,
    reasons: dict[int, tuple[str | None, str, str]],
    origin: RowOrigin,
) -> pa.RecordBatch:
    rows = np.flatnonzero(~keep)
    why = [reasons[int(r)] for r in rows]
    count = len(rows)
    columns = [
        pa.repeat(pa.scalar(origin.file, pa.string()), count),
        pa.repeat(pa.scalar(origin.row_group, pa.int32()), count),
        pa.array(origin.first_row + rows, pa.int64()),
        pa.array([w[0] for w in why], pa.string()),
        pa.array([w[1] for w in why], pa.string()),
        pa.array([w[2] for w in why], pa.string()),
    ]
    rejected = batch.filter(pa.array(~keep))
    return pa.RecordBatch.from_arrays(
        columns + list(rejected.columns), schema=reject_schema(batch.schema)
    )
