"""Integer features are counted per distinct value before binning (a shortcut for speed): the
sketch must be exactly the one their float64 values give, and each value in the bin holding it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batch_infer.observe.statistics import RunStatistics, bin_edges

RNG = np.random.default_rng(19)

CASES = {
    "ages int32": pa.array(RNG.integers(18, 90, 5_000).astype("int32")),
    "int8 over its whole range": pa.array(np.arange(-128, 128, dtype="int8").repeat(3)),
    "negative int64 far from zero": pa.array(RNG.integers(-(10**12), -(10**12) + 500, 4_000)),
    "uint16 from zero": pa.array(RNG.integers(0, 65_535, 3_000).astype("uint16")),
    "wider than the span": pa.array(RNG.integers(-(10**9), 10**9, 3_000)),
    "uint64 past int64": pa.array([2**64 - 1, 0, 5], pa.uint64()),
    "with nulls": pa.array([1, None, 3, 3], pa.int64()),
    "one value": pa.array([7] * 10, pa.int16()),
    "large magnitudes": pa.array([2**62, 2**62 + 1, 2**62 + 3], pa.int64()),
}


def sketch_of(array: pa.Array) -> dict:
    stats = RunStatistics(["x"], [], [])
    for start in range(0, len(array), 1_000):  # several batches, as a fragment adds them
        stats.add_scored(pa.record_batch({"x": array.slice(start, 1_000)}))
    return stats.to_dict()["features"]["x"]


@pytest.mark.parametrize("name", CASES)
def test_an_integer_column_sketches_exactly_as_its_float_values(name):
    array = CASES[name]
    got = sketch_of(array)
    expected = sketch_of(array.cast(pa.float64(), safe=False))
    assert got == expected
    values = array.drop_null().to_numpy().astype(np.float64)
    assert got["min"] == values.min() and got["max"] == values.max()
    assert sum(got["counts"]) == len(values)
    assert got["sum"] == pytest.approx(float(np.sum(values)), rel=1e-15)


def test_each_integer_lands_in_the_log_bin_that_holds_it():
    values = np.array([0, 1, -1, 2, 3, 7, 8, 9, 17, 100, -100, 65_535, -65_536], dtype="int64")
    for value in values:
        stats = RunStatistics(["x"], [], [])
        stats.add_scored(pa.record_batch({"x": pa.array([value, value])}))
        data = stats.to_dict()["features"]["x"]
        [ordinal] = data["bins"]
        low, high = bin_edges(ordinal, "log")
        holds = low <= value < high if ordinal >= 0 else low < value <= high
        assert holds or (value == 0 and ordinal == 0), (value, low, high)
        assert data["counts"] == [2]


LABELS = {
    "binary int64": pa.array(RNG.integers(0, 2, 3_000)),
    "one class": pa.array([1] * 50, pa.int64()),
    "-1 and 1, with nulls": pa.array([-1, 1, None, 1, 1], pa.int8()),
    "two adjacent classes far from zero": pa.array([10**12, 10**12 + 1, 10**12], pa.int64()),
    "three classes": pa.array(RNG.integers(0, 3, 3_000).astype("int32")),
    "uint64 extremes": pa.array([2**64 - 1, 2**64 - 2, 2**64 - 1], pa.uint64()),
}


@pytest.mark.parametrize("name", LABELS)
def test_integer_labels_are_counted_per_value(name):
    array = LABELS[name]
    stats = RunStatistics([], ["prediction"], [])
    stats.add_scored(pa.record_batch({"prediction": array}))
    data = stats.to_dict()["outputs"]["prediction"]
    counts = array.value_counts().to_pylist()  # pyarrow's own count, the reference
    expected = {str(c["values"]): c["counts"] for c in counts if c["values"] is not None}
    assert data["top"] == dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0])))
    assert (data["rows"], data["nulls"]) == (len(array), array.null_count)
