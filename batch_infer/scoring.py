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


def score_batch(batch: pa.RecordBatch, model: LoadedModel, spec: ScoringSpec) -> pa.RecordBatch:
    """Append prediction, probability, predicted_at and model_version columns to ``batch``."""
    rows = batch.num_rows
    new_fields = output_fields(model, spec, label_type(model))
    if rows == 0:
        new_columns = [pa.array([], type=f.type) for f in new_fields]
    else:
        labels, proba = model.predict(feature_matrix(batch, spec.features))
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
