"""Arrow batch in, what the model was fitted on out: a float64 matrix or a typed DataFrame.

Numbers-only models get a column-major float64 matrix straight from Arrow (no pandas): the fast
path. Anything else gets a pandas DataFrame built column by column the way the model was fitted:
categories by value with the training categories (never the batch's dictionary codes, which
differ per file and row group), text as strings, missing values as pandas has them (NaN).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError, first_line
from .contract import Contract, FeatureSpec

Reason = tuple[str | None, str, str]  # (column, code, message)


def numeric_column(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column of numbers as float64, nulls as NaN, converted as pandas would.

    Integers beyond 2**53 are rounded to the nearest float64 (pandas and numpy do the same);
    decimals go via text, because Arrow's decimal->double cast is off by an ulp for ~15% of values.
    """
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_decimal(column.type):
        column = pc.cast(column, pa.string())
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def feature_matrix(batch: pa.RecordBatch, features: list[str]) -> np.ndarray:
    """The features as an (n_rows, n_features) float64 matrix; nulls become NaN."""
    # Column-major, like the array pandas hands scikit-learn: BLAS rounds differently for C order,
    # and scoring must equal calling the model on a DataFrame exactly.
    matrix = np.empty((batch.num_rows, len(features)), dtype=np.float64, order="F")
    for position, name in enumerate(features):
        matrix[:, position] = converted(batch, name, "numbers", numeric_column)
    return matrix


def model_input(batch: pa.RecordBatch, contract: Contract, encoder: Any = None) -> Any:
    """The batch as the model takes it: a float64 matrix (all numeric), the matrix its
    ColumnTransformer gives (``encoder``, an ``encoders.ArrowColumnTransformer``), or a typed
    DataFrame."""
    if contract.all_numeric:
        return feature_matrix(batch, contract.names)
    if encoder is not None:
        encoded = encoder.encode(batch, contract)
        if encoded is not None:
            return encoded
    import pandas as pd

    columns = {spec.name: _pandas_column(batch, spec) for spec in contract.features}
    return pd.DataFrame(columns, copy=False)


def _pandas_column(batch: pa.RecordBatch, spec: FeatureSpec) -> Any:
    import pandas as pd

    column = column_of(batch, spec.name)
    if spec.kind == "numeric" and spec.dtype in (None, "float64"):
        return converted(batch, spec.name, "numbers", numeric_column)
    if spec.dtype == "category" and spec.categories is not None:
        codes = converted(batch, spec.name, "categories", lambda c: category_codes(c, spec))
        return pd.Categorical.from_codes(codes, categories=pd.Index(spec.categories))
    if spec.kind in ("categorical", "text") and spec.dtype in ("str", "object", None):
        # plain values, as pandas reads them (CatBoost's integer categories stay integers)
        decoded = column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
        values = decoded.to_pandas()
        return values.astype(object) if spec.dtype == "object" else values
    values = column.to_pandas()  # "any", or a saved dtype: as pandas reads the Parquet column
    if spec.dtype and spec.dtype not in ("category",) and str(values.dtype) != spec.dtype:
        try:
            values = values.astype(spec.dtype)
        except (TypeError, ValueError):
            pass  # e.g. int64 with nulls: pandas would give float64 too
    return values


def category_codes(column: pa.Array, spec: FeatureSpec) -> np.ndarray:
    """Codes into the training categories, matched by value; -1 for missing or unseen values."""
    positions = category_positions(column, spec.categories or [])
    return pc.fill_null(positions, -1).to_numpy(zero_copy_only=False).astype(np.int32)


def category_positions(column: pa.Array, categories: list[Any]) -> pa.Array:
    """Each value's index among ``categories`` (null when missing or unseen)."""
    value_set = pa.array(categories)
    if pa.types.is_dictionary(column.type):
        dictionary_positions = category_positions(column.dictionary, categories)
        return pc.take(dictionary_positions, column.indices)
    if not column.type.equals(value_set.type):
        if _is_stringy(column) != pa.types.is_string(value_set.type):
            return pa.nulls(len(column), pa.int32())
        column = pc.cast(column, value_set.type)
    return pc.index_in(column, value_set=value_set)


def column_of(batch: pa.RecordBatch, name: str) -> pa.Array:
    """The batch's column, or nulls for an optional column no input has (an MLflow signature's
    optional column is passed as missing, as MLflow does)."""
    index = batch.schema.get_field_index(name)
    return batch.column(index) if index >= 0 else pa.nulls(batch.num_rows)


def _is_stringy(column: pa.Array | pa.ChunkedArray) -> bool:
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def converted(batch: pa.RecordBatch, name: str, what: str, convert: Any) -> Any:
    """Run a conversion; a failure is bad input naming the column, never the model's fault."""
    try:
        return convert(column_of(batch, name))
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        raise InputError(
            f"column {name!r} ({batch.schema.field(name).type}) cannot be converted to "
            f"{what}: {first_line(exc)}",
            "fix the column's values upstream, or correct the model's contract",
        ) from None


# ---------------------------------------------------------------- rows set aside before scoring


def unscorable_rows(
    batch: pa.RecordBatch, contract: Contract, features: Any = None
) -> dict[int, Reason]:
    """Rows the model would refuse, found without calling it: row -> (column, code, message).

    Only what the contract knows for sure: infinite numbers where the model cannot take them,
    missing values where it refuses them, categories it never saw where it raises on them.
    Everything else is the model's business (rows it raises on are found by bisection).
    """
    reasons: dict[int, Reason] = {}
    matrix = features if isinstance(features, np.ndarray) else None
    if matrix is not None and np.isfinite(matrix).all():  # the usual case: one vectorised check
        return reasons
    for position, spec in enumerate(contract.features):
        column = column_of(batch, spec.name)
        if spec.kind == "numeric":
            _numeric_reasons(column, spec, reasons, _converted_values(features, spec, position))
        elif spec.nullable is False and column.null_count:
            _note(
                reasons, column.is_null(), spec.name, "NULL", f"null value in feature {spec.name!r}"
            )
        if spec.kind == "categorical" and spec.unknown == "error" and spec.categories is not None:
            _unknown_reasons(column, spec, reasons)
    return reasons


def _converted_values(features: Any, spec: FeatureSpec, position: int) -> np.ndarray | None:
    """A numeric feature's float64 values as already converted for the model, if they were."""
    if isinstance(features, np.ndarray):
        return features[:, position]
    numeric = getattr(features, "numeric", None)  # an encoders.Encoded
    if isinstance(numeric, dict):
        return numeric.get(spec.name)
    column = getattr(features, "get", lambda name: None)(spec.name)
    if column is not None and getattr(column, "dtype", None) == np.float64:
        return column.to_numpy()
    return None


def _numeric_reasons(
    column: pa.Array, spec: FeatureSpec, reasons: dict[int, Reason], values: Any = None
) -> None:
    if not (pa.types.is_floating(column.type) or column.null_count or _decoded_float(column)):
        return  # integers and decimals are always finite
    if values is None:
        values = numeric_column(column)
    finite = np.isfinite(values)
    if finite.all():
        return
    if not spec.accepts_infinity:
        _note(
            reasons, np.isinf(values), spec.name, "INF", f"infinite value in feature {spec.name!r}"
        )
    if spec.nullable is False:
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        _note(reasons, nulls, spec.name, "NULL", f"null value in feature {spec.name!r}")
        _note(
            reasons,
            np.isnan(values) & ~nulls,
            spec.name,
            "NAN",
            f"NaN value in feature {spec.name!r}",
        )


def _decoded_float(column: pa.Array) -> bool:
    return pa.types.is_dictionary(column.type) and pa.types.is_floating(column.type.value_type)


def _unknown_reasons(column: pa.Array, spec: FeatureSpec, reasons: dict[int, Reason]) -> None:
    unseen = pc.and_(
        pc.is_valid(column), pc.is_null(category_positions(column, spec.categories or []))
    )
    mask = unseen.to_numpy(zero_copy_only=False)
    if not mask.any():
        return
    values = column.to_pylist() if mask.sum() > 64 else None
    known = ", ".join(map(str, spec.categories[:10])) + (" …" if len(spec.categories) > 10 else "")
    for row in np.flatnonzero(mask):
        value = values[row] if values is not None else column[int(row)].as_py()
        reasons.setdefault(
            int(row),
            (
                spec.name,
                "UNKNOWN_CATEGORY",
                f"unknown category {value!r} in feature {spec.name!r} (the model knows: {known})",
            ),
        )


def _note(reasons: dict[int, Reason], mask: Any, column: str, code: str, message: str) -> None:
    if isinstance(mask, pa.Array | pa.ChunkedArray):
        mask = mask.to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(mask):
        reasons.setdefault(int(row), (column, code, message))


def missing_in_row(batch: pa.RecordBatch, row: int, contract: Contract) -> Reason | None:
    """The first missing (null or NaN) feature of a row, to say why the model refused it."""
    for spec in contract.features:
        scalar = column_of(batch, spec.name)[row]
        if not scalar.is_valid:
            return spec.name, "NULL", f"null value in feature {spec.name!r}"
        value = scalar.as_py()
        if isinstance(value, float) and value != value:
            return spec.name, "NAN", f"NaN value in feature {spec.name!r}"
    return None
