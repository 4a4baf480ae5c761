"""Record batch in, scored record batch out. Pure: no files, no global state; used by every engine.

The model's input is built from the batch the way the model was fitted (``model.inputs``); the
model's methods are called once per batch; their results become named Arrow columns appended to
the batch (``model.outputs``), so input columns pass through untouched whatever their type.
Rows the model cannot take are set aside with the reason, never dropped silently.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .config import OutputColumns
from .errors import BatchInferError, ModelError, first_line
from .model import LoadedModel
from .model.inputs import Reason, column_of, missing_in_row, model_input, unscorable_rows
from .model.outputs import columns_from_results

PREDICTED_AT_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ScoringSpec:
    """What the added columns are called and hold; the same for every batch of a run."""

    features: list[str]
    columns: OutputColumns
    predicted_at: dt.datetime
    model_version: str


def output_fields(model: LoadedModel, spec: ScoringSpec) -> list[pa.Field]:
    """The columns a run adds, in order: the model's outputs, then when and by which model."""
    return [
        *model.outputs.fields(),
        pa.field(spec.columns.predicted_at, PREDICTED_AT_TYPE),
        pa.field(spec.columns.model_version, pa.string()),
    ]


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

    Rows the contract says the model refuses (an infinite number, a missing value where it takes
    none, a category it raises on) are set aside first; rows the model itself raises on are
    found by bisecting the batch. A model that raises whatever the rows is a ModelError, not
    rejected rows (see ``_score_rows``).
    """
    origin = origin or RowOrigin("", 0, 0)
    # a conversion error is bad input: raised
    features = model_input(batch, model.contract, model.encoder)
    reasons = unscorable_rows(batch, model.contract, features)
    keep = np.ones(batch.num_rows, dtype=bool)
    keep[list(reasons)] = False
    candidates = batch
    if not keep.all():
        candidates = batch.filter(pa.array(keep))
        features = (
            np.asfortranarray(features[keep])
            if isinstance(features, np.ndarray)
            else model_input(candidates, model.contract, model.encoder)
        )
    _, results, failed = _score_rows(model, candidates, features, probe=True)
    if failed and len(failed) == candidates.num_rows > 1:
        raise _fails_whatever_the_rows(
            next(iter(failed.values())), f"on every one of the batch's {len(failed)} rows"
        )
    if failed:
        kept_positions = np.flatnonzero(keep)
        for position, (_, message) in failed.items():
            row = int(kept_positions[position])
            missing = missing_in_row(candidates, position, model.contract)
            if missing is not None:
                column, code, why = missing
                reasons[row] = (column, code, f"{why}, refused by the model: {message}")
            else:
                reasons[row] = (None, "MODEL_ERROR", message)
            keep[row] = False
        candidates = batch.filter(pa.array(keep))
    scored = _append_outputs(candidates, results, model, spec)
    if keep.all():
        return ScoredBatch(scored, None)
    return ScoredBatch(scored, _rejected(batch, keep, reasons, origin))


Failure = tuple[str, str]  # the model's exception: its type's name, the first line of its message


def _score_rows(
    model: LoadedModel, batch: pa.RecordBatch, features: Any = None, probe: bool = False
) -> tuple[np.ndarray, dict[str, Any] | None, dict[int, Failure]]:
    """Call the model on every row; where it raises, find the rows it raises on.

    Returns the positions that scored (in order), their results by method, and the failed
    positions with the model's exception (type, first line). A failing batch is first split
    into rows with and without missing features (the usual culprit), then bisected.

    With ``probe``, a batch that fails as a whole is first tried on its first, middle and last
    rows (without missing features where there are such), each alone: if all of them fail too,
    the model fails whatever the rows, and ModelError is raised at once. Bisecting would take
    seconds on thousands of rows, only to reject them all as bad input.
    """
    everything = np.arange(batch.num_rows)
    if batch.num_rows == 0:
        return everything, None, {}
    if features is None:
        features = model_input(batch, model.contract, model.encoder)
    try:
        return everything, model.call(features), {}
    except Exception as exc:
        if not refuses_rows(exc):
            raise
        if batch.num_rows == 1:
            return np.empty(0, dtype=np.int64), None, {0: _failure(exc)}
        failure = _failure(exc)
    incomplete = _rows_with_missing(batch, model.features)
    if probe and all(_score_rows(model, batch.slice(row, 1))[2] for row in _probes(incomplete)):
        raise _fails_whatever_the_rows(
            failure, "on a whole batch and on its first, middle and last rows alone"
        )
    groups = [np.flatnonzero(~incomplete), np.flatnonzero(incomplete)]
    if not (len(groups[0]) and len(groups[1])):
        middle = batch.num_rows // 2
        groups = [everything[:middle], everything[middle:]]
    positions, chunks, failed = [], [], {}
    for group in groups:
        rows, results, errors = _score_rows(model, batch.take(pa.array(group)))
        positions.append(group[rows])
        if results is not None:
            chunks.append(results)
        failed.update({int(group[p]): m for p, m in errors.items()})
    order = np.concatenate(positions)
    if not chunks:
        return order, None, failed
    merged = _concatenate(chunks)
    sort = np.argsort(order, kind="stable")
    return order[sort], {m: _take(v, sort) for m, v in merged.items()}, failed


def _probes(incomplete: np.ndarray) -> list[int]:
    """The first, middle and last rows, among those without missing features if any."""
    rows = np.flatnonzero(~incomplete)
    if not len(rows):
        rows = np.arange(len(incomplete))
    return sorted({int(rows[0]), int(rows[len(rows) // 2]), int(rows[-1])})


def _failure(exc: BaseException) -> Failure:
    """What is kept of an exception: not the exception, whose traceback holds the batch."""
    return type(exc).__name__, first_line(exc)


def _fails_whatever_the_rows(failure: Failure, how: str) -> ModelError:
    kind, message = failure
    return ModelError(
        f"the model raised {how}, so it is the model that fails, not the data: {kind}: {message}",
        "call the model's predict on a few rows of the input, with the library versions "
        "batch-infer runs with, to see why (batch-infer inspect MODEL shows what it expects)",
    )


def refuses_rows(exc: BaseException) -> bool:
    """Whether a model's exception means "these values, not others" (then rows are bisected).

    scikit-learn raises ValueError/TypeError on values it cannot take; XGBoost's error is a
    ValueError; LightGBM and CatBoost raise their own. Anything else (a missing attribute, an
    import, memory) is the model failing as a whole, and bisecting would only repeat it.
    """
    if isinstance(exc, BatchInferError | MemoryError | RecursionError):
        return False
    if isinstance(exc, ValueError | TypeError | ArithmeticError | KeyError | IndexError):
        return True
    return type(exc).__name__ in ("LightGBMError", "CatBoostError")


def _rows_with_missing(batch: pa.RecordBatch, features: list[str]) -> np.ndarray:
    import pyarrow.compute as pc

    missing = np.zeros(batch.num_rows, dtype=bool)
    for name in features:
        column = column_of(batch, name)
        if column.null_count:
            missing |= column.is_null().to_numpy(zero_copy_only=False)
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if pa.types.is_floating(kind):
            values = column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
            missing |= pc.fill_null(pc.is_nan(values), False).to_numpy(zero_copy_only=False)
    return missing


def _concatenate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    merged = {}
    for method in chunks[0]:
        parts = [c[method] for c in chunks]
        if isinstance(parts[0], list):  # a multi-output classifier's list of arrays
            merged[method] = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
        else:
            merged[method] = np.concatenate([np.asarray(p) for p in parts])
    return merged


def _take(values: Any, order: np.ndarray) -> Any:
    if isinstance(values, list):
        return [np.asarray(v)[order] for v in values]
    return np.asarray(values)[order]


def _append_outputs(
    batch: pa.RecordBatch,
    results: dict[str, Any] | None,
    model: LoadedModel,
    spec: ScoringSpec,
) -> pa.RecordBatch:
    rows = batch.num_rows
    new_fields = output_fields(model, spec)
    if rows == 0 or results is None:
        new_columns = [pa.array([], type=f.type) for f in new_fields]
    else:
        new_columns = columns_from_results(results, model.outputs, rows)
        new_columns.append(pa.repeat(pa.scalar(spec.predicted_at, PREDICTED_AT_TYPE), rows))
        new_columns.append(pa.repeat(pa.scalar(spec.model_version, pa.string()), rows))
    return pa.RecordBatch.from_arrays(
        list(batch.columns) + new_columns,
        schema=pa.schema(list(batch.schema) + new_fields, metadata=batch.schema.metadata),
    )


def _rejected(
    batch: pa.RecordBatch,
    keep: np.ndarray,
    reasons: dict[int, Reason],
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
