"""A column typed differently across input files is read as one type only when no value changes.

Lossless widening (int32 with int64, float32 with float64, dictionary with plain strings) is read
as the wider type; a mix that would change values (int64 with float64: 2^53 + 1 is no double) is
refused at planning, before anything is scored, naming both files, the column and both types,
unless ``input.allow_lossy_types`` accepts the conversion.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from batch_infer.inputs import lossless

from .conftest import churn_table, read_output, write_parquet
from .test_bad_input import BAD_INPUT, assert_fails, assert_nothing_committed, invoke, run_args

BIG = 2**53 + 1  # the first integer a float64 cannot hold


def _two_files(tmp_path: Path, first: pa.Array, second: pa.Array, name="id") -> Path:
    """``in/a.parquet`` and ``in/b.parquet``, 100 churn rows each, ``name`` typed per file."""
    table = churn_table(200, seed=3).drop_columns(["customer_id"])
    a = table.slice(0, 100).append_column(name, first)
    b = table.slice(100).append_column(name, second)
    write_parquet(a, tmp_path / "in" / "a.parquet")
    write_parquet(b, tmp_path / "in" / "b.parquet")
    return tmp_path / "in"


def test_int64_beyond_2_53_with_float64_is_refused_before_scoring(tmp_path, trained_models):
    ids = pa.array([BIG + i for i in range(100)], pa.int64())
    source = _two_files(tmp_path, ids, pa.array([float(i) for i in range(100)], pa.float64()))
    out = tmp_path / "out"

    result = invoke(*run_args(source, out, trained_models["binary"]))

    line = assert_fails(
        result,
        BAD_INPUT,
        f"column 'id' is int64 in {source / 'a.parquet'} but double in {source / 'b.parquet'}",
        "allow_lossy_types",
        output=out,
    )
    assert "corrupt" not in line
    assert not out.exists()  # refused at planning: nothing written, not even staging


def test_small_int64_ids_with_float64_are_refused_not_turned_into_doubles(tmp_path, trained_models):
    source = _two_files(
        tmp_path,
        pa.array(range(100), pa.int64()),
        pa.array([float(i) for i in range(100, 200)], pa.float64()),
    )
    out = tmp_path / "out"

    result = invoke(*run_args(source, out, trained_models["binary"]))

    assert_fails(result, BAD_INPUT, "'id'", "int64", "double", output=out)


def test_allow_lossy_types_reads_the_mix_as_float64(tmp_path, trained_models):
    ids = pa.array([BIG + i for i in range(100)], pa.int64())
    source = _two_files(tmp_path, ids, pa.array([float(i) for i in range(100)], pa.float64()))
    config = tmp_path / "job.yaml"
    config.write_text("input:\n  allow_lossy_types: true\n")
    out = tmp_path / "out"

    result = invoke("--config", config, *run_args(source, out, trained_models["binary"]))

    assert result.exit_code == 0, result.stderr
    table = read_output(out)
    assert table.schema.field("id").type == pa.float64()
    assert table.num_rows == 200
    assert sorted(table.column("id").to_pylist())[-1] == float(BIG + 99)


def test_lossless_widening_keeps_every_value_exactly(tmp_path, trained_models):
    """int32 with int64 stays int64 (2^53 + 1 intact); uint8 with int64, float32 with float64,
    dictionary with plain strings, a column of nulls with strings: all read as the wider type."""
    table = churn_table(200, seed=3).drop_columns(["customer_id"])
    a = (
        table.slice(0, 100)
        .append_column("id", pa.array(range(100), pa.int32()))
        .append_column("small", pa.array([7] * 100, pa.uint8()))
        .append_column("ratio", pa.array([0.5] * 100, pa.float32()))
        .append_column("plan", pa.array(["basic"] * 100).dictionary_encode())
        .append_column("note", pa.nulls(100))
    )
    b = (
        table.slice(100)
        .append_column("id", pa.array([BIG + i for i in range(100)], pa.int64()))
        .append_column("small", pa.array([-1] * 100, pa.int64()))
        .append_column("ratio", pa.array([0.1] * 100, pa.float64()))
        .append_column("plan", pa.array(["plus"] * 100, pa.large_string()))
        .append_column("note", pa.array(["x"] * 100))
    )
    write_parquet(a, tmp_path / "in" / "a.parquet")
    write_parquet(b, tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"

    result = invoke(*run_args(tmp_path / "in", out, trained_models["binary"]))

    assert result.exit_code == 0, result.stderr
    scored = read_output(out)
    assert scored.schema.field("id").type == pa.int64()
    assert sorted(scored.column("id").to_pylist()) == [*range(100), *(BIG + i for i in range(100))]
    assert scored.schema.field("small").type == pa.int64()
    assert scored.schema.field("ratio").type == pa.float64()
    assert sorted(set(scored.column("plan").cast(pa.string()).to_pylist())) == ["basic", "plus"]
    assert scored.column("note").null_count == 100


def test_a_column_no_type_can_hold_names_both_files_and_types(tmp_path, trained_models):
    source = _two_files(
        tmp_path, pa.array(range(100), pa.int64()), pa.array(["x"] * 100, pa.string())
    )
    out = tmp_path / "out"

    result = invoke(*run_args(source, out, trained_models["binary"]))

    assert_fails(
        result,
        BAD_INPUT,
        f"column 'id' is string in {source / 'b.parquet'} but int64 in {source / 'a.parquet'}",
        output=out,
    )
    assert_nothing_committed(out)


@pytest.mark.parametrize(
    ("source", "target", "exact"),
    [
        (pa.int32(), pa.int64(), True),
        (pa.int8(), pa.int16(), True),
        (pa.uint8(), pa.uint64(), True),
        (pa.uint32(), pa.int64(), True),
        (pa.uint8(), pa.int16(), True),
        (pa.float32(), pa.float64(), True),
        (pa.float16(), pa.float32(), True),
        (pa.float16(), pa.float64(), True),
        (pa.dictionary(pa.int32(), pa.string()), pa.string(), True),
        (pa.string(), pa.large_string(), True),
        (pa.null(), pa.int64(), True),
        (pa.null(), pa.string(), True),
        (pa.timestamp("ms"), pa.timestamp("ns"), True),
        (pa.date32(), pa.date64(), True),
        (pa.decimal128(10, 2), pa.decimal128(20, 4), True),
        (pa.list_(pa.int32()), pa.large_list(pa.int64()), True),
        (pa.int64(), pa.float64(), False),
        (pa.float64(), pa.int64(), False),
        (pa.int32(), pa.float64(), False),
        (pa.int8(), pa.float16(), False),
        (pa.uint64(), pa.int64(), False),
        (pa.int64(), pa.uint64(), False),
        (pa.uint32(), pa.int32(), False),
        (pa.timestamp("ns"), pa.timestamp("ms"), False),
        (pa.timestamp("ms"), pa.timestamp("ms", "UTC"), False),
        (pa.string(), pa.int64(), False),
        (pa.int64(), pa.string(), False),
        (pa.string(), pa.binary(), False),
        (pa.decimal128(10, 2), pa.float64(), False),
        (pa.int64(), pa.decimal128(20, 2), False),
        (pa.list_(pa.int64()), pa.list_(pa.float64()), False),
    ],
    ids=str,
)
def test_which_promotions_are_lossless(source, target, exact):
    assert lossless(source, target) is exact
