"""A fitted ColumnTransformer computed from Arrow, without a pandas DataFrame in between.

A mixed-type Pipeline spends most of its time in its ColumnTransformer: pandas turns string
columns into object arrays, then each encoder matches every value in Python, holding the GIL.
Here the same matrix is computed from the Arrow batch: category codes with
``pyarrow.compute.index_in`` against the fitted ``categories_``, imputers and scalers as NumPy
on the numeric columns, the blocks assembled into the matrix type the ColumnTransformer gives
(its ``sparse_output_``, CSR with the same stored entries in the same order). The steps after
the ColumnTransformer then run as they are.

Only the parts and options ``_numeric_op`` and ``_category_block`` name are covered; a Pipeline
with anything else is scored through pandas by scikit-learn, and why is logged once. What is
covered is checked, not trusted: at load time on probe rows (every category, missing and unseen
values, zeros, signed zeros, extremes) and on the first rows of each new set of Arrow column
types, the matrix must equal the ColumnTransformer's own bit for bit; otherwise scikit-learn
scores.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .contract import Contract, FeatureSpec
from .inputs import category_positions, converted, model_input, numeric_column

log = logging.getLogger(__name__)

PROBE_ROWS = 2048  # rows of each new set of column types checked against scikit-learn


class Unsupported(Exception):
    """A part or option the Arrow transform does not cover: scikit-learn transforms instead."""


@dataclass(frozen=True)
class Encoded:
    """A batch's rows as the ColumnTransformer gives them: the matrix its next step takes.

    ``numeric`` holds the numeric features as converted from Arrow (float64, NaN for missing),
    so the contract's finiteness checks need not convert them again.
    """

    matrix: Any  # a C-ordered ndarray, or a scipy CSR matrix
    numeric: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def rows(self, positions: np.ndarray) -> Encoded:
        """These rows only (a boolean mask or positions), as a fresh matrix."""
        picked = self.matrix[positions]
        if isinstance(picked, np.ndarray):
            picked = np.ascontiguousarray(picked)
        return Encoded(picked, {k: v[positions] for k, v in self.numeric.items()})


Op = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _NumericBlock:
    """Numeric columns through imputers/scalers, written to ``out`` (an output slice)."""

    names: list[str]
    ops: list[Op]
    out: slice
    dtype: np.dtype

    def slots(self, values: dict[str, np.ndarray], batch: pa.RecordBatch) -> np.ndarray:
        """The block's columns after its steps, a fresh array each call (steps work in place)."""
        X = np.empty((batch.num_rows, len(self.names)), dtype=np.float64)
        for position, name in enumerate(self.names):
            X[:, position] = values[name]
        for op in self.ops:
            X = op(X)
        return X


@dataclass(frozen=True)
class _CategoryBlock:
    """Category columns through an optional imputer, then a one-hot or ordinal encoder."""

    names: list[str]
    specs: list[FeatureSpec]
    fills: list[Any] | None  # the imputer's statistics: what a missing value becomes
    categories: list[list[Any]]  # fitted, without the missing-value category
    missing_code: list[int | None]  # the position of the missing-value category, if fitted
    one_hot: bool
    unknown: str  # "error", or "code": unknown values get no one-hot / ``unknown_value``
    drop: list[int | None]  # one-hot: the dropped category of each column
    unknown_value: float
    missing_value: float
    out: slice
    dtype: np.dtype

    def codes(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """Each value's fitted category (n_rows, n_columns), and where one was found."""
        rows = batch.num_rows
        codes = np.empty((rows, len(self.names)), dtype=np.int32)
        for i, (name, spec) in enumerate(zip(self.names, self.specs, strict=True)):
            column = batch.column(name)
            if spec.dtype == "category" and spec.categories is not None:
                # pandas makes a value outside the contract's categories missing
                column = pc.if_else(
                    pc.is_null(category_positions(column, spec.categories)), None, column
                )
            missing = column.is_null()
            position = category_positions(column, self.categories[i])
            if self.fills is not None:
                fill = _position_of(self.fills[i], self.categories[i])
                position = pc.if_else(missing, pa.scalar(fill, pa.int32()), position)
            elif self.missing_code[i] is not None:
                position = pc.if_else(
                    missing, pa.scalar(self.missing_code[i], pa.int32()), position
                )
            codes[:, i] = pc.fill_null(position, -1).to_numpy(zero_copy_only=False)
        found = codes >= 0
        if self.unknown == "error" and not found.all():
            row, i = np.argwhere(~found)[0]
            raise ValueError(
                f"Found unknown categories [{batch.column(self.names[i])[int(row)].as_py()!r}] "
                f"in column {i} during transform"
            )
        return codes, found


def _position_of(value: Any, categories: list[Any]) -> int | None:
    for position, category in enumerate(categories):
        if category == value and type(category) is type(value):
            return position
    return None


class ArrowColumnTransformer:
    """The Pipeline's ColumnTransformer, evaluated from Arrow batches (see the module's text)."""

    def __init__(self, pipeline: Any, contract: Contract):
        self.pipeline = pipeline
        self.column_transformer = pipeline.steps[0][1]
        self.contract = contract
        self.blocks = _blocks(self.column_transformer, contract)
        self.sparse = bool(self.column_transformer.sparse_output_)
        self.width = sum(b.out.stop - b.out.start for b in self.blocks)
        self.dtype = np.result_type(*(b.dtype for b in self.blocks)) if self.blocks else None
        self.numeric_names = sorted({n for b in self.blocks if _is_numeric(b) for n in b.names})
        self._checked: dict[tuple[Any, ...], bool] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ transform

    def transform(self, batch: pa.RecordBatch) -> Encoded:
        """The ColumnTransformer's matrix for this batch (not yet checked: see ``encode``)."""
        numeric = {
            name: converted(batch, name, "numbers", numeric_column) for name in self.numeric_names
        }
        rows = batch.num_rows
        if self.sparse:
            return Encoded(self._sparse(batch, numeric, rows), numeric)
        matrix = np.zeros((rows, self.width), dtype=self.dtype)
        for block in self.blocks:
            if isinstance(block, _NumericBlock):
                matrix[:, block.out] = block.slots(numeric, batch)
            elif block.one_hot:
                codes, found = block.codes(batch)
                columns = self._one_hot_columns(block, codes, found)
                row, col = np.nonzero(columns >= 0)
                matrix[row, columns[row, col]] = 1
            else:
                matrix[:, block.out] = self._ordinal(block, batch)
        return Encoded(matrix, numeric)

    def _sparse(self, batch: pa.RecordBatch, numeric: dict[str, np.ndarray], rows: int) -> Any:
        """CSR as ``scipy.sparse.hstack(blocks).tocsr()`` stores it: per row, each block's
        nonzero entries in column order (a dense block's zeros are not stored)."""
        from scipy import sparse

        width = sum(_slots(b) for b in self.blocks)
        slots = np.empty((rows, width), dtype=np.int32)  # each entry's column, -1: not stored
        values = np.ones((rows, width), dtype=self.dtype)
        at = 0
        for block in self.blocks:
            count = _slots(block)
            here = slice(at, at + count)
            at += count
            if isinstance(block, _NumericBlock) or not block.one_hot:
                dense = (
                    block.slots(numeric, batch)
                    if isinstance(block, _NumericBlock)
                    else self._ordinal(block, batch)
                )
                values[:, here] = dense
                slots[:, here] = np.arange(block.out.start, block.out.stop, dtype=np.int32)
                slots[:, here][dense == 0] = -1
            else:
                codes, found = block.codes(batch)
                slots[:, here] = self._one_hot_columns(block, codes, found)
        stored = slots >= 0
        if stored.all():  # the usual case: no zero, no unknown category
            counts = np.full(rows, width, dtype=np.int64)
            data, indices = values.reshape(-1), slots.reshape(-1)
        else:
            counts = stored.sum(axis=1)
            data, indices = values[stored], slots[stored]
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        if len(data) < 2**31:
            indptr = indptr.astype(np.int32)
        else:
            indices = indices.astype(np.int64)
        return sparse.csr_matrix((data, indices, indptr), shape=(rows, self.width))

    @staticmethod
    def _one_hot_columns(block: _CategoryBlock, codes: np.ndarray, found: np.ndarray) -> Any:
        """Each value's output column, or -1 where it is all zeros (unknown, dropped)."""
        columns = np.empty(codes.shape, dtype=np.int32)
        offset = block.out.start
        for i, categories in enumerate(block.categories):
            code = codes[:, i]
            width = len(categories) + (block.missing_code[i] is not None)
            keep = found[:, i]
            dropped = block.drop[i]
            if dropped is not None:
                keep = keep & (code != dropped)
                code = code - (code > dropped)
                width -= 1
            np.add(code, offset, out=columns[:, i])
            columns[~keep, i] = -1
            offset += width
        return columns

    @staticmethod
    def _ordinal(block: _CategoryBlock, batch: pa.RecordBatch) -> np.ndarray:
        codes, found = block.codes(batch)
        out = codes.astype(block.dtype)
        for i, missing in enumerate(block.missing_code):
            if missing is not None:
                out[codes[:, i] == missing, i] = block.missing_value
        out[~found] = block.unknown_value
        return out

    # ------------------------------------------------------------------ checked use

    def encode(self, batch: pa.RecordBatch, contract: Contract) -> Encoded | None:
        """The matrix, once this batch's column types were checked against scikit-learn's own
        transform; None when they differ (then scikit-learn transforms these batches)."""
        types = tuple(batch.schema.field(name).type for name in contract.names)
        ok = self._checked.get(types)
        if ok is None:
            with self._lock:
                ok = self._checked.get(types)
                if ok is None:
                    ok = self._check(batch.slice(0, PROBE_ROWS), contract, types)
        if not ok:
            return None
        try:
            return self.transform(batch)
        except (pa.ArrowException, ValueError):
            # a value Arrow cannot match, a category the encoder raises on: through pandas,
            # the rows are set aside first (or scikit-learn's own error bisected)
            return None

    def _check(self, sample: pa.RecordBatch, contract: Contract, types: tuple[Any, ...]) -> bool:
        why = self.differs(sample, contract)
        if why == "raised":
            return True  # not decided by this sample: ask again with the next batch
        self._checked[types] = why is None
        if why is not None:
            log.warning(
                "the ColumnTransformer is computed by scikit-learn for input columns of types "
                "%s: the Arrow transform %s",
                ", ".join(map(str, types)),
                why,
            )
        return why is None

    def differs(self, sample: pa.RecordBatch, contract: Contract) -> str | None:
        """How the Arrow transform differs from the ColumnTransformer's on these rows, or None
        when identical ("raised" when scikit-learn raises on them: nothing to compare)."""
        import warnings

        frame = model_input(sample, contract)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. unknown categories of a dropped one-hot
                expected = self.column_transformer.transform(frame)
        except (ValueError, TypeError):
            return "raised"
        try:
            actual = self.transform(sample).matrix
        except (ValueError, TypeError, pa.ArrowException) as exc:
            return f"raised {type(exc).__name__} where scikit-learn did not"
        return _difference(expected, actual)


def _difference(expected: Any, actual: Any) -> str | None:
    """None when both matrices are the same type, dtype, shape and bits (stored entries too)."""
    from scipy import sparse

    if sparse.issparse(expected) != sparse.issparse(actual):
        return "gives another matrix type (sparse or dense) than scikit-learn"
    if expected.dtype != actual.dtype or expected.shape != actual.shape:
        return (
            f"gives {actual.dtype} {actual.shape}, scikit-learn {expected.dtype} {expected.shape}"
        )
    if sparse.issparse(expected):
        expected, actual = expected.tocsr(), actual.tocsr()
        same = (
            np.array_equal(expected.indptr, actual.indptr)
            and np.array_equal(expected.indices, actual.indices)
            and _same_bits(expected.data, actual.data)
        )
    else:
        same = _same_bits(np.asarray(expected), actual)
    return None if same else "gives other values than scikit-learn's transform"


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def _is_numeric(block: Any) -> bool:
    return isinstance(block, _NumericBlock)


# ---------------------------------------------------------------------- what is covered


def arrow_transform(pipeline: Any, contract: Contract) -> tuple[ArrowColumnTransformer | None, str]:
    """The Arrow transform of this Pipeline's ColumnTransformer, checked on probe rows, or None
    and why not."""
    if not leads_with_column_transformer(pipeline):
        return None, "the model is not a Pipeline that starts with a ColumnTransformer"
    try:
        transformer = ArrowColumnTransformer(pipeline, contract)
        _check_pipeline(pipeline)
    except Unsupported as exc:
        return None, str(exc)
    probe = probe_batch(transformer, contract)
    why = transformer.differs(probe, contract)
    if why == "raised":
        return None, "scikit-learn's own transform raised on probe rows"
    if why is not None:
        return None, f"on probe rows the Arrow transform {why}"
    types = tuple(probe.schema.field(name).type for name in contract.names)
    transformer._checked[types] = True
    return transformer, "computed from Arrow"


def leads_with_column_transformer(pipeline: Any) -> bool:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    steps = getattr(pipeline, "steps", None)
    return (
        type(pipeline) is Pipeline
        and isinstance(steps, list)
        and len(steps) >= 2
        and type(steps[0][1]) is ColumnTransformer
        and hasattr(steps[0][1], "transformers_")
    )


def _check_pipeline(pipeline: Any) -> None:
    for name, step in pipeline.steps:
        config = getattr(step, "_sklearn_output_config", {}) or {}
        if config.get("transform") not in (None, "default"):
            raise Unsupported(f"step {name!r} outputs {config['transform']} (set_output)")
    after = next((s for _, s in pipeline.steps[1:] if s not in (None, "passthrough")), None)
    if getattr(after, "feature_names_in_", None) is not None:
        raise Unsupported("the step after the ColumnTransformer was fitted on named columns")


def _blocks(ct: Any, contract: Contract) -> list[Any]:
    specs = {spec.name: spec for spec in contract.features}
    names_in = [str(n) for n in getattr(ct, "feature_names_in_", [])]
    if not names_in:
        raise Unsupported("the ColumnTransformer was not fitted on named columns")
    config = getattr(ct, "_sklearn_output_config", {}) or {}
    if config.get("transform") not in (None, "default"):
        raise Unsupported(f"the ColumnTransformer outputs {config['transform']} (set_output)")
    blocks: list[Any] = []
    for name, part, _ in ct.transformers_:
        if isinstance(part, str) and part == "drop":
            continue
        indices = ct._transformer_to_input_indices.get(name, [])
        if len(indices) == 0:
            continue
        out = ct.output_indices_[name]
        names = [names_in[i] for i in indices]
        if any(n not in specs for n in names):
            raise Unsupported(f"transformer {name!r} takes columns outside the contract")
        block = _block(part, [specs[n] for n in names], out, name)
        if block.out.stop - block.out.start != _width(block):
            raise Unsupported(f"transformer {name!r} gives another number of columns")
        blocks.append(block)
    if not blocks:
        raise Unsupported("the ColumnTransformer gives no columns")
    return sorted(blocks, key=lambda b: b.out.start)


def _slots(block: Any) -> int:
    """Entries a block may store per row: one per column, one per one-hot encoded column."""
    return len(block.names)


def _width(block: Any) -> int:
    if isinstance(block, _NumericBlock) or not block.one_hot:
        return len(block.names)
    return sum(
        len(c) + (m is not None) - (d is not None)
        for c, m, d in zip(block.categories, block.missing_code, block.drop, strict=True)
    )


def _steps(part: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    if type(part) is Pipeline:
        return [s for _, s in part.steps if s is not None and not _is_passthrough(s)]
    return [] if _is_passthrough(part) else [part]


def _is_passthrough(part: Any) -> bool:
    """ "passthrough", or the identity FunctionTransformer a fitted one becomes (remainder)."""
    if isinstance(part, str):
        return part == "passthrough"
    return type(part).__name__ == "FunctionTransformer" and part.func is None


def _block(part: Any, specs: list[FeatureSpec], out: slice, name: str) -> Any:
    steps = _steps(part)
    names = [s.name for s in specs]
    if steps and _is_encoder(steps[-1]):
        return _category_block(steps, specs, out, name)
    for spec in specs:
        if spec.kind != "numeric" or spec.dtype not in (None, "float64"):
            raise Unsupported(f"transformer {name!r} takes the non-numeric column {spec.name!r}")
    return _NumericBlock(names, [_numeric_op(s, name) for s in steps], out, np.dtype(np.float64))


def _is_encoder(step: Any) -> bool:
    return type(step).__name__ in ("OneHotEncoder", "OrdinalEncoder")


def _numeric_op(step: Any, name: str) -> Op:
    """A covered numeric step as NumPy, in the operations its own transform does."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

    kind = type(step)
    if kind is SimpleImputer:
        try:
            statistics = _imputer_statistics(step, name).astype(np.float64).reshape(1, -1)
        except (TypeError, ValueError):
            raise Unsupported(f"transformer {name!r} imputes numbers with a non-number") from None

        def impute(X: np.ndarray) -> np.ndarray:
            np.copyto(X, np.broadcast_to(statistics, X.shape), where=np.isnan(X))
            return X

        return impute
    if kind is StandardScaler:
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None
        return lambda X: _center_scale(X, mean, scale)
    if kind is RobustScaler:
        center = step.center_ if step.with_centering else None
        scale = step.scale_ if step.with_scaling else None
        return lambda X: _center_scale(X, center, scale)
    if kind is MaxAbsScaler:
        return lambda X: _center_scale(X, None, step.scale_)
    if kind is MinMaxScaler:

        def min_max(X: np.ndarray) -> np.ndarray:
            X *= step.scale_
            X += step.min_
            if step.clip:
                np.clip(X, step.feature_range[0], step.feature_range[1], out=X)
            return X

        return min_max
    raise Unsupported(f"transformer {name!r} has a {kind.__name__} step")


def _center_scale(X: np.ndarray, center: Any, scale: Any) -> np.ndarray:
    if center is not None:
        X -= center
    if scale is not None:
        X /= scale
    return X


def _imputer_statistics(step: Any, name: str) -> np.ndarray:
    if step.add_indicator:
        raise Unsupported(f"transformer {name!r} imputes with add_indicator")
    if not _is_nan(step.missing_values):
        raise Unsupported(f"transformer {name!r} imputes {step.missing_values!r}, not NaN")
    statistics = np.asarray(step.statistics_)
    if statistics.dtype.kind == "f" and np.isnan(statistics).any():
        raise Unsupported(f"transformer {name!r} has an imputer with empty features")
    return statistics


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _category_block(steps: list[Any], specs: list[FeatureSpec], out: slice, name: str) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    *before, encoder = steps
    fills = None
    if before:
        if len(before) > 1 or type(before[0]) is not SimpleImputer:
            raise Unsupported(
                f"transformer {name!r} has steps other than one imputer before its encoder"
            )
        fills = [_plain(v) for v in _imputer_statistics(before[0], name)]
    for spec in specs:
        if spec.kind != "categorical":
            raise Unsupported(f"transformer {name!r} takes {spec.name!r} as {spec.kind}")
    one_hot = type(encoder) is OneHotEncoder
    if not one_hot and type(encoder) is not OrdinalEncoder:
        raise Unsupported(f"transformer {name!r} has a {type(encoder).__name__}")
    if getattr(encoder, "_infrequent_enabled", False):
        raise Unsupported(f"transformer {name!r} groups infrequent categories")
    categories, missing_code = [], []
    for fitted in encoder.categories_:
        values = [_plain(v) for v in fitted]
        if values and _is_missing(values[-1]):
            missing_code.append(len(values) - 1)
            values = values[:-1]
        else:
            missing_code.append(None)
        if any(_is_missing(v) for v in values) or not _one_kind(values):
            raise Unsupported(f"transformer {name!r} has categories of mixed or float types")
        categories.append(values)
    if fills is not None and any(
        _position_of(f, c) is None for f, c in zip(fills, categories, strict=True)
    ):
        raise Unsupported(f"transformer {name!r} imputes a value that is not a category")
    handle = encoder.handle_unknown
    if one_hot:
        if handle not in ("error", "ignore", "infrequent_if_exist"):
            raise Unsupported(f"transformer {name!r} has handle_unknown={handle!r}")
        drop_idx = getattr(encoder, "drop_idx_", None)
        drop = [None] * len(categories) if drop_idx is None else [_int_or_none(d) for d in drop_idx]
        unknown_value = missing_value = 0.0
    else:
        if handle not in ("error", "use_encoded_value"):
            raise Unsupported(f"transformer {name!r} has handle_unknown={handle!r}")
        drop = [None] * len(categories)
        unknown_value = float(encoder.unknown_value) if handle != "error" else 0.0
        missing_value = float(encoder.encoded_missing_value)
    return _CategoryBlock(
        names=[s.name for s in specs],
        specs=specs,
        fills=fills,
        categories=categories,
        missing_code=missing_code,
        one_hot=one_hot,
        unknown="error" if handle == "error" else "code",
        drop=drop,
        unknown_value=unknown_value,
        missing_value=missing_value,
        out=out,
        dtype=np.dtype(encoder.dtype),
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_missing(value: Any) -> bool:
    return value is None or _is_nan(value)


def _one_kind(values: list[Any]) -> bool:
    """All strings, or all integers (Arrow matches those by value exactly)."""
    return all(isinstance(v, str) for v in values) or all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


# ---------------------------------------------------------------------- probe rows


def probe_batch(transformer: ArrowColumnTransformer, contract: Contract) -> pa.RecordBatch:
    """Rows that reach every covered rule: each category, missing and unseen values (where the
    model takes them), zeros of both signs, tiny and huge numbers, NaN."""
    numbers = [None, np.nan, 0.0, -0.0, 1.0, -1.5, 0.1, 1e-300, -1e300, 3.0e9, 12345.678]
    columns: dict[str, list[Any]] = {}
    for block in transformer.blocks:
        if isinstance(block, _NumericBlock):
            for name in block.names:
                columns[name] = numbers
            continue
        for i, name in enumerate(block.names):
            values: list[Any] = list(block.categories[i])
            takes_missing = block.fills is not None or block.missing_code[i] is not None
            if takes_missing or block.unknown != "error":
                values.append(None)
            if block.unknown != "error":
                values.append(_unseen(block.categories[i]))
            columns[name] = values
    rows = max(len(v) for v in columns.values()) * 2
    arrays = []
    for spec in contract.features:
        values = columns.get(spec.name)
        if values is None:  # a column the ColumnTransformer drops
            arrays.append(pa.nulls(rows, pa.float64() if spec.kind == "numeric" else pa.string()))
            continue
        stride = 1 + (len(arrays) % 3)
        arrays.append(pa.array([values[(r * stride) % len(values)] for r in range(rows)]))
    return pa.RecordBatch.from_arrays(arrays, names=contract.names)


def _unseen(categories: list[Any]) -> Any:
    if categories and isinstance(categories[0], int):
        return max(categories) + 1
    return "\u2400 unseen by the model"
