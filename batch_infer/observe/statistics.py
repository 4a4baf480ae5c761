"""Streaming sketches of a run's columns: what the HTML report plots and drift compares.

Each fragment keeps a ``RunStatistics`` while it scores; the client merges them; the merged
sketch goes into ``_manifest.json`` under ``statistics``. A later run compares its sketch with
the previous committed one (``drift``) without reading either run's data again.

Numbers are counted in FIXED GLOBAL bins, the same for every run and every fragment, so that
merging is adding counts and two runs' histograms line up:

- the log grid: a float64's sign, exponent and top ``LOG_SUB_BITS`` mantissa bits, i.e. each
  power of two split into 8 equal sub-buckets (a bucket's upper bound is at most 1.125 times
  its lower one, like a DDSketch with gamma ~1.09). The bucket is one shift of the float's
  bits, no logarithm, so a column of a million rows costs about 2 ms. Zero and subnormals
  share bucket 0; there are at most 2 x 2048 x 8 buckets, in practice a few hundred per column.
- probabilities: ``UNIT_BINS`` equal bins over [0, 1].

Strings, booleans, dictionaries and integer class labels are counted by value, keeping the
``MAX_VALUES`` most frequent and the rest as ``other`` (after a merge, the top values are
exact only if each fragment kept them). Feature sketches cover every input row, scored or
rejected; output sketches cover scored rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORMAT = 1
LOG_SUB_BITS = 3  # sub-buckets per power of two: 2**3
UNIT_BINS = 50  # probability histogram bins over [0, 1]
MAX_VALUES = 1_000  # distinct values (categories, partitions) kept before "other"
INTEGER_SPAN = 1 << 16  # integer features of a narrower range are counted per value first
PSI_GROUPS = 10  # PSI compares ~10 groups cut at the baseline's deciles
PSI_EPSILON = 1e-4  # share given to an empty group, so PSI stays finite
DRIFT_THRESHOLD = 0.2  # PSI above this is drift worth a look

_SHIFT = np.uint64(52 - LOG_SUB_BITS)
_HALF = 1 << (63 - int(_SHIFT))  # keys of negative numbers start here (the sign bit)
_LOG_KEYS = 2 * _HALF


class RunStatistics:
    """Sketches of the features, the added outputs, partitions and rejects of (part of) a run."""

    def __init__(
        self,
        features: list[str],
        outputs: list[str],
        partition_by: list[str],
        probabilities: list[str] | None = None,
    ) -> None:
        """``probabilities``: the outputs in [0, 1] (default: ``probability`` and
        ``probability_*``); other float outputs use the log grid, labels are counted by value."""
        if probabilities is None:
            probabilities = [
                n for n in outputs if n == "probability" or n.startswith("probability_")
            ]
        self.probabilities = list(probabilities)
        self.partition_by = list(partition_by)
        self.features = {name: _Sketch("log") for name in features}
        self.outputs = {
            name: _Sketch("unit" if name in self.probabilities else "label") for name in outputs
        }
        self.rows_scored = 0
        self.rows_rejected = 0
        self.partitions_scored = _Values()
        self.partitions_rejected = _Values()
        self.rejects_by_reason = _Values()

    def add_scored(self, batch: pa.RecordBatch) -> None:
        """A scored batch: the input columns and the added output columns."""
        self.rows_scored += batch.num_rows
        names = set(batch.schema.names)
        for sketches in (self.features, self.outputs):
            for name, sketch in sketches.items():
                if name in names:
                    sketch.add(batch.column(name))
        if self.partition_by:
            self.partitions_scored.add_counts(_partition_counts(batch, self.partition_by))

    def add_rejected(self, batch: pa.RecordBatch) -> None:
        """A rejects batch (``scoring.REJECT_FIELDS`` then the input columns)."""
        self.rows_rejected += batch.num_rows
        names = set(batch.schema.names)
        for name, sketch in self.features.items():
            if name in names:
                sketch.add(batch.column(name))
        if "reject_code" in names:
            self.rejects_by_reason.add(batch.column("reject_code"))
        if self.partition_by and all(n in names for n in self.partition_by):
            self.partitions_rejected.add_counts(_partition_counts(batch, self.partition_by))

    def merge(self, other: RunStatistics) -> None:
        """Add another fragment's sketch (same features and outputs) into this one."""
        self.rows_scored += other.rows_scored
        self.rows_rejected += other.rows_rejected
        for mine, theirs in ((self.features, other.features), (self.outputs, other.outputs)):
            for name, sketch in theirs.items():
                mine.setdefault(name, _Sketch(sketch.scale)).merge(sketch)
        self.partitions_scored.merge(other.partitions_scored)
        self.partitions_rejected.merge(other.partitions_rejected)
        self.rejects_by_reason.merge(other.rejects_by_reason)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, small (sparse bins), for ``_manifest.json``."""
        return {
            "format": FORMAT,
            "grid": {"log_sub_buckets": 2**LOG_SUB_BITS, "unit_bins": UNIT_BINS},
            "rows_scored": self.rows_scored,
            "rows_rejected": self.rows_rejected,
            "features": {n: s.to_dict() for n, s in self.features.items()},
            "outputs": {n: s.to_dict() for n, s in self.outputs.items()},
            "probabilities": self.probabilities,
            "partition_by": self.partition_by,
            "partitions": {
                "scored": self.partitions_scored.to_dict(),
                "rejected": self.partitions_rejected.to_dict(),
            },
            "rejects_by_reason": self.rejects_by_reason.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStatistics:
        if data.get("format") != FORMAT:
            raise ValueError(f"statistics of format {data.get('format')!r}; expected {FORMAT}")
        stats = cls([], [], data["partition_by"], data["probabilities"])
        stats.features = {n: _Sketch.from_dict(d, "log") for n, d in data["features"].items()}
        stats.outputs = {
            n: _Sketch.from_dict(d, "unit" if n in stats.probabilities else "label")
            for n, d in data["outputs"].items()
        }
        stats.rows_scored = data["rows_scored"]
        stats.rows_rejected = data["rows_rejected"]
        stats.partitions_scored = _Values.from_dict(data["partitions"]["scored"])
        stats.partitions_rejected = _Values.from_dict(data["partitions"]["rejected"])
        stats.rejects_by_reason = _Values.from_dict(data["rejects_by_reason"])
        return stats

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the compact dict (a Dask task returns kilobytes, not dense bin arrays)."""
        return (RunStatistics.from_dict, (self.to_dict(),))


# ---------------------------------------------------------------- one column


class _Sketch:
    """One column: numeric (log or unit bins) or categorical, decided by its first array.

    ``scale``: "unit" (a probability), "log" (a feature: integers are numbers) or "label" (an
    output: integers are class labels, floats regression values on the log grid).
    """

    def __init__(self, scale: str) -> None:
        self.scale = scale
        self.kind: str | None = None  # numeric | categorical | other
        self.rows = 0
        self.nulls = 0
        self.nans = 0
        self.infinite = 0
        self.min = math.inf
        self.max = -math.inf
        self.sum = 0.0
        self.counts: np.ndarray | None = None  # dense bins (numeric)
        self.values = _Values()  # categorical

    def add(self, array: pa.Array) -> None:
        kind = _kind_of(array.type, self.scale)
        if self.kind is None:
            self._become(kind)
        self.rows += len(array)
        self.nulls += array.null_count
        if kind != self.kind:  # a file typed otherwise: counted, not described (never fails a run)
            return
        if kind == "categorical":
            self.values.add(array)
        elif kind == "numeric":
            self._add_numbers(array)

    def _become(self, kind: str) -> None:
        self.kind = kind
        if kind == "numeric":
            if self.scale == "label":
                self.scale = "log"
            self.counts = np.zeros(UNIT_BINS if self.scale == "unit" else _LOG_KEYS, np.int64)

    def _add_numbers(self, array: pa.Array) -> None:
        if pa.types.is_decimal(array.type):
            array = pc.cast(array, pa.float64())
        elif self.scale == "log" and self._add_integers(array):
            return
        values = array.to_numpy(zero_copy_only=False)  # nulls become NaN
        if values.dtype != np.float64:
            values = values.astype(np.float64)
        with np.errstate(all="ignore"):  # inf - inf, or an overflow: the slow path handles it
            total = float(values.sum())
        finite = values
        clean = math.isfinite(total)
        if not clean:  # NaN, null or infinity somewhere: the slow path
            is_nan = np.isnan(values)
            self.nans += int(is_nan.sum()) - array.null_count
            values = values[~is_nan]
            finite = values[np.isfinite(values)]
            self.infinite += len(values) - len(finite)
            with np.errstate(all="ignore"):
                total = float(finite.sum())
        if len(finite):
            self.min = min(self.min, float(finite.min()))
            self.max = max(self.max, float(finite.max()))
            self.sum += total
        if len(values):
            within = clean and 0 <= self.min and self.max <= 1
            self.counts += _bin(values, self.scale, within)

    def _add_integers(self, array: pa.Array) -> bool:
        """Integers of a narrow range without nulls (ages, counts, codes): counted per value,
        then only the distinct values are binned. The same bins, min, max and sum as the float
        path gives them, without converting and shifting every row. False: not such a column."""
        if array.null_count or not len(array) or not pa.types.is_integer(array.type):
            return False
        if pa.types.is_uint64(array.type):
            return False  # past int64: the float path
        numbers = array.to_numpy()
        low, high = int(numbers.min()), int(numbers.max())
        if low >= 0 and high < INTEGER_SPAN:
            offset, counts = 0, np.bincount(numbers)
        elif high - low < INTEGER_SPAN:
            offset, counts = low, np.bincount(numbers.astype(np.int64) - low)
        else:
            return False
        seen = np.flatnonzero(counts)
        values = (seen + offset).astype(np.float64)
        keys = (values.view(np.uint64) >> _SHIFT).astype(np.intp)
        np.add.at(self.counts, keys, counts[seen])
        self.min = min(self.min, float(low))
        self.max = max(self.max, float(high))
        self.sum += float(numbers.sum(dtype=np.float64))
        return True

    def merge(self, other: _Sketch) -> None:
        if other.kind is None:
            return
        if self.kind is None:
            self._become(other.kind)
        self.rows += other.rows
        self.nulls += other.nulls
        if other.kind != self.kind or other.scale != self.scale:  # as in add: counted only
            return
        self.nans += other.nans
        self.infinite += other.infinite
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.sum += other.sum
        if self.counts is not None and other.counts is not None:
            self.counts += other.counts
        self.values.merge(other.values)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "rows": self.rows, "nulls": self.nulls}
        if self.kind == "categorical":
            data.update(self.values.to_dict())
        elif self.kind == "numeric" and self.counts is not None:
            bins = np.flatnonzero(self.counts)
            seen = self.min <= self.max
            data.update(
                scale=self.scale,
                nans=self.nans,
                infinite=self.infinite,
                min=self.min if seen else None,
                max=self.max if seen else None,
                sum=self.sum if math.isfinite(self.sum) else None,
                bins=[_ordinal(int(b), self.scale) for b in bins],
                counts=self.counts[bins].tolist(),
            )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], scale: str) -> _Sketch:
        sketch = cls(data.get("scale", scale))
        if data["kind"] is None:
            return sketch
        sketch._become(data["kind"])
        sketch.rows, sketch.nulls = data["rows"], data["nulls"]
        if sketch.kind == "categorical":
            sketch.values = _Values.from_dict(data)
        elif sketch.kind == "numeric" and sketch.counts is not None:
            sketch.nans, sketch.infinite = data["nans"], data["infinite"]
            sketch.min = math.inf if data["min"] is None else data["min"]
            sketch.max = -math.inf if data["max"] is None else data["max"]
            sketch.sum = math.nan if data["sum"] is None else data["sum"]
            keys = [_key(o, sketch.scale) for o in data["bins"]]
            sketch.counts[keys] = data["counts"]
        return sketch


class _Values:
    """Counts of distinct values (as strings), the top ``MAX_VALUES`` kept, the rest ``other``."""

    def __init__(self) -> None:
        self.top: dict[str, int] = {}
        self.other = 0

    def add(self, array: pa.Array) -> None:
        if pa.types.is_integer(array.type) and len(array) > array.null_count:
            numbers = (array.drop_null() if array.null_count else array).to_numpy()
            smallest, largest = int(numbers.min()), int(numbers.max())
            if largest - smallest <= 1:  # binary labels: one comparison, 8x faster than bincount
                high = int(np.count_nonzero(numbers == largest))
                counts = {str(smallest): len(numbers) - high, str(largest): high}  # one if equal
                self.add_counts({value: n for value, n in counts.items() if n})
                return
            low = min(smallest, 0)
            labels = largest - low < 100_000 and numbers.dtype != np.uint64
            if labels:  # class labels: a bincount is 4x faster than a hash
                counts = np.bincount(numbers.astype(np.int64) - low if low else numbers)
                seen = np.flatnonzero(counts)
                self.add_counts({str(int(v) + low): int(counts[v]) for v in seen})
                return
        pairs = pc.value_counts(array)
        values = pairs.field("values").to_pylist()
        counts = pairs.field("counts").to_pylist()
        self.add_counts(
            {_label(v): n for v, n in zip(values, counts, strict=True) if v is not None}
        )

    def add_counts(self, counts: dict[str, int]) -> None:
        for value, n in counts.items():
            self.top[value] = self.top.get(value, 0) + n
        if len(self.top) > MAX_VALUES:
            ranked = sorted(self.top.items(), key=lambda item: (-item[1], item[0]))
            self.top = dict(ranked[:MAX_VALUES])
            self.other += sum(n for _, n in ranked[MAX_VALUES:])

    def merge(self, other: _Values) -> None:
        self.other += other.other
        self.add_counts(other.top)

    def to_dict(self) -> dict[str, Any]:
        ranked = sorted(self.top.items(), key=lambda item: (-item[1], item[0]))
        return {"top": dict(ranked), "other": self.other}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Values:
        values = cls()
        values.top, values.other = dict(data["top"]), data["other"]
        return values


def _kind_of(type_: pa.DataType, scale: str) -> str:
    if pa.types.is_dictionary(type_):
        return "categorical"
    if pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        return "numeric"
    if pa.types.is_integer(type_):
        return "categorical" if scale == "label" else "numeric"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_boolean(type_):
        return "categorical"
    return "other"  # dates, binaries, nested: rows and nulls only


def _label(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------- the bins


def _bin(values: np.ndarray, scale: str, within_unit: bool) -> np.ndarray:
    """Counts per dense bin of non-NaN float64 values."""
    if scale == "unit":
        if not within_unit:  # outside [0, 1] (infinities too): counted in the end bins
            values = np.clip(values, 0.0, 1.0)
        index = (values * UNIT_BINS).astype(np.int32)  # exact here, and 2x faster than int64
        counts = np.bincount(index, minlength=UNIT_BINS + 1)
        counts[UNIT_BINS - 1] += counts[UNIT_BINS]  # 1.0 belongs to the last bin
        return counts[:UNIT_BINS]
    keys = (values.view(np.uint64) >> _SHIFT).view(np.int64)
    counts = np.bincount(keys, minlength=_LOG_KEYS)
    counts[0] += counts[_HALF]  # -0.0 is zero
    counts[_HALF] = 0
    return counts


def _ordinal(key: int, scale: str) -> int:
    """A log key as an integer that sorts like the values: negatives < 0 <= positives."""
    if scale == "unit" or key < _HALF:
        return key
    return -(key - _HALF) - 1


def _key(ordinal: int, scale: str) -> int:
    if scale == "unit" or ordinal >= 0:
        return ordinal
    return -ordinal - 1 + _HALF


def bin_edges(ordinal: int, scale: str) -> tuple[float, float]:
    """The values a bin holds as floats (what the report plots): [low, high) for positive
    values, (low, high] for negative ones (a bin is a range of magnitudes)."""
    if scale == "unit":
        return ordinal / UNIT_BINS, (ordinal + 1) / UNIT_BINS
    if ordinal < 0:
        low, high = bin_edges(-ordinal - 1, scale)
        return -high, -low
    bounds = np.array([ordinal, ordinal + 1], dtype=np.uint64) << _SHIFT
    low, high = bounds.view(np.float64).tolist()
    return (0.0 if ordinal == 0 else low), high


# ---------------------------------------------------------------- drift


def drift(current: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """Population stability index per feature and output present in both runs' statistics.

    PSI = sum over groups of (cur - base) * ln(cur / base), shares of rows. Numbers are grouped
    by the baseline's deciles over the fixed bins (values past its range join the end groups),
    categories by value (``other`` is one group); nulls and NaN are a group of their own.
    Above ``DRIFT_THRESHOLD`` (0.2) the distribution has moved enough to look at.
    """
    result: dict[str, float] = {}
    for section in ("features", "outputs"):
        mine, theirs = current.get(section, {}), baseline.get(section, {})
        for name, sketch in mine.items():
            base = theirs.get(name)
            if base is None or not sketch.get("rows") or not base.get("rows"):
                continue
            if sketch["kind"] != base["kind"] or sketch.get("scale") != base.get("scale"):
                continue
            if sketch["kind"] == "numeric":
                shares = _numeric_groups(sketch, base)
            elif sketch["kind"] == "categorical":
                shares = _category_groups(sketch, base)
            else:
                continue
            result[name] = round(_psi(*shares), 4)
    return result


def _numeric_groups(sketch: dict[str, Any], base: dict[str, Any]) -> tuple[np.ndarray, ...]:
    base_bins, base_counts = np.array(base["bins"]), np.array(base["counts"], dtype=np.float64)
    cumulative = np.cumsum(base_counts)
    if len(cumulative):
        targets = cumulative[-1] * np.arange(1, PSI_GROUPS) / PSI_GROUPS
        edges = np.unique(base_bins[np.searchsorted(cumulative, targets)])
    else:
        edges = np.empty(0, dtype=np.int64)
    groups = len(edges) + 1

    def shares(data: dict[str, Any]) -> np.ndarray:
        bins = np.array(data["bins"], dtype=np.int64)
        counts = np.array(data["counts"], dtype=np.float64)
        grouped = np.bincount(np.searchsorted(edges, bins), weights=counts, minlength=groups)
        missing = data["nulls"] + data["nans"]
        return np.append(grouped, missing) / data["rows"]

    return shares(sketch), shares(base)


def _category_groups(sketch: dict[str, Any], base: dict[str, Any]) -> tuple[np.ndarray, ...]:
    names = sorted(set(sketch["top"]) | set(base["top"]))

    def shares(data: dict[str, Any]) -> np.ndarray:
        counts = [data["top"].get(n, 0) for n in names] + [data["other"], data["nulls"]]
        return np.array(counts, dtype=np.float64) / data["rows"]

    return shares(sketch), shares(base)


def _psi(current: np.ndarray, baseline: np.ndarray) -> float:
    current = np.maximum(current, PSI_EPSILON)
    baseline = np.maximum(baseline, PSI_EPSILON)
    return float(np.sum((current - baseline) * np.log(current / baseline)))


def _as_text(column: pa.ChunkedArray) -> list[Any]:
    """Partition values as Python values, or as Arrow's text where Python has no such value
    (a timestamp past the year 9999)."""
    try:
        return column.to_pylist()
    except (OverflowError, ValueError):
        return column.cast(pa.string()).to_pylist()


def _partition_counts(batch: pa.RecordBatch, columns: list[str]) -> dict[str, int]:
    """Rows per partition, named like the hive folder (``day=1/region=north``)."""
    table = pa.Table.from_batches([batch.select(columns)])
    grouped = table.group_by(columns).aggregate([([], "count_all")])
    keys = [_as_text(grouped.column(c)) for c in columns]
    counts = grouped.column("count_all").to_pylist()
    return {
        "/".join(f"{c}={_label(v)}" for c, v in zip(columns, values, strict=True)): n
        for *values, n in zip(*keys, counts, strict=True)
    }
