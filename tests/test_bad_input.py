"""Bad input through the real CLI: one clear error line, the right exit code, nothing committed.

Every case drives ``batch-infer run`` with typer's CliRunner on real Parquet files written by
pyarrow and real fitted models (``trained_models``). A failure must print exactly one line
``Error: <what> — <how to fix>`` on stderr (no traceback unless ``--verbose``), exit with the code
of its class (2 usage/config, 3 bad input, 4 model, 5 output conflict), name what is wrong, and
leave the output without ``_SUCCESS`` and without any visible Parquet file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batch_infer.cli import app

from .conftest import FEATURES, churn_table, read_output, write_parquet

ERROR_LINE = re.compile(r"^Error: (?P<what>\S.*?) — (?P<fix>\S.*)$")

USAGE, BAD_INPUT, MODEL, CONFLICT = 2, 3, 4, 5


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch):
    """BATCH_INFER_* variables of the developer's shell must not change what the CLI sees."""
    import os

    for name in list(os.environ):
        if name.startswith("BATCH_INFER_"):
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------------------------
# helpers


def invoke(*args: str | Path):
    """``batch-infer run ARGS`` in-process; stderr is captured apart from stdout."""
    result = CliRunner().invoke(app, ["run", *map(str, args)])
    # click >= 8.2 always separates stderr; make sure this is such a click, or the checks below
    # would silently look at mixed output.
    assert isinstance(result.stderr, str)
    return result


def run_args(input_path, output_path, model_path, *extra: str | Path) -> list[str | Path]:
    return ["--input", input_path, "--output", output_path, "--model", model_path, *extra]


def error_line(result) -> str:
    """The one ``Error:`` line of a failed run; asserts the shape of stderr around it."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, f"expected exactly one Error: line on stderr, got:\n{result.stderr}"
    assert lines[-1] == errors[0], (
        f"the Error: line must be the last line of stderr:\n{result.stderr}"
    )
    match = ERROR_LINE.match(errors[0])
    assert match, f"not of the form 'Error: <what> — <how to fix>': {errors[0]!r}"
    assert not match["what"].startswith("unexpected"), errors[0]
    assert "Error:" not in result.stdout
    return errors[0]


def assert_fails(result, code: int, *mentions: str, output: Path | None = None) -> str:
    """Exit ``code``, a well-formed error line that contains every string in ``mentions``."""
    line = error_line(result)
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}: {line}"
    for text in mentions:
        assert text in line, f"{text!r} not named in: {line}"
    if output is not None:
        assert_nothing_committed(output)
    return line


def assert_nothing_committed(output: Path) -> None:
    if not output.exists():
        return
    assert not (output / "_SUCCESS").exists()
    assert not (output / "_manifest.json").exists()
    visible = [
        p
        for p in output.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(output).parts)
    ]
    assert visible == [], f"visible Parquet files left in the output: {visible}"
    assert not (output / "_staging").exists(), "staging folder left behind"


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def no_tenure_file(tmp_path: Path) -> Path:
    """Churn data without the 'tenure' column, a feature of every trained model."""
    table = churn_table(50).drop_columns(["tenure"])
    return write_parquet(table, tmp_path / "in" / "no_tenure.parquet")


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    return write_parquet(churn_table(300, seed=3), tmp_path / "input" / "part-0.parquet")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


# --------------------------------------------------------------------------------------------
# input data that does not fit the model


def test_missing_feature_column(tmp_path, out, trained_models):
    path = no_tenure_file(tmp_path)
    result = invoke(*run_args(path, out, trained_models["binary"]))
    assert_fails(result, BAD_INPUT, str(path), "'tenure'", output=out)


def test_string_feature_column(tmp_path, out, trained_models):
    table = churn_table(50)
    index = table.schema.get_field_index("age")
    table = table.set_column(index, "age", table.column("age").cast(pa.string()))
    path = write_parquet(table, tmp_path / "in" / "age_as_text.parquet")
    result = invoke(*run_args(path, out, trained_models["binary"]))
    line = assert_fails(result, BAD_INPUT, str(path), "'age'", "takes numbers", output=out)
    assert "string" in line and "StandardScaler" in line


# --------------------------------------------------------------------------------------------
# input that is missing or is not Parquet


@pytest.mark.parametrize("kind", ["empty_directory", "glob_matching_nothing"])
def test_empty_input(tmp_path, out, trained_models, kind):
    folder = tmp_path / "in"
    folder.mkdir()
    if kind == "empty_directory":
        (folder / "_SUCCESS").write_bytes(b"")  # skipped like every _-prefixed file
        spec = str(folder)
    else:
        write_parquet(churn_table(10), folder / "data.parquet")
        spec = str(folder / "*.parq")  # matches nothing: data.parquet does not end with .parq
    result = invoke(*run_args(spec, out, trained_models["binary"]))
    assert_fails(result, BAD_INPUT, spec, "no Parquet file", output=out)


def test_nonexistent_input_path(tmp_path, out, trained_models):
    missing = tmp_path / "nowhere"
    result = invoke(*run_args(missing, out, trained_models["binary"]))
    assert_fails(result, BAD_INPUT, str(missing), "does not exist", output=out)


def test_zero_row_file_commits_empty_output(tmp_path, out, trained_models):
    path = write_parquet(churn_table(0), tmp_path / "in" / "empty.parquet")
    assert pq.ParquetFile(path).metadata.num_rows == 0
    result = invoke(*run_args(path, out, trained_models["binary"]))
    assert result.exit_code == 0, result.stderr
    assert "Error:" not in result.stderr and "Traceback" not in result.stderr
    assert (out / "_SUCCESS").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows_in"] == 0
    assert manifest["rows_out"] == 0
    assert not (out / "_staging").exists()
    if any(out.rglob("*.parquet")):
        assert read_output(out).num_rows == 0


@pytest.mark.parametrize("layout", ["csv_named_parquet", "text_file_in_directory"])
def test_not_a_parquet_file(tmp_path, out, trained_models, layout):
    folder = tmp_path / "in"
    folder.mkdir()
    if layout == "csv_named_parquet":
        bad = folder / "data.parquet"
        bad.write_text("customer_id,age,tenure,monthly_charges,total_charges\n1,30,12,50.0,600.0\n")
        spec = bad
    else:
        write_parquet(churn_table(20), folder / "part-0.parquet")
        bad = folder / "README.txt"
        bad.write_text("this folder holds the churn extract\n")
        spec = folder
    result = invoke(*run_args(spec, out, trained_models["binary"]))
    assert_fails(result, BAD_INPUT, str(bad), "not a readable Parquet file", output=out)


@pytest.mark.parametrize("cut", [1, 8, 200])
def test_truncated_parquet_file(tmp_path, out, trained_models, good_file, cut):
    data = good_file.read_bytes()
    good_file.write_bytes(data[:-cut])
    result = invoke(*run_args(good_file, out, trained_models["binary"]))
    assert_fails(result, BAD_INPUT, str(good_file), output=out)


def _corrupt_second_row_group(path: Path) -> None:
    """Overwrite the start of every column chunk of row group 1 (its page headers and first
    values), located through the footer's column chunk offsets; the footer stays intact."""
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 2
    data = bytearray(path.read_bytes())
    group = meta.row_group(1)
    for c in range(group.num_columns):
        column = group.column(c)
        start = column.data_page_offset
        if column.dictionary_page_offset is not None:
            start = min(start, column.dictionary_page_offset)
        end = start + column.total_compressed_size
        span = min(64, end - start)
        data[start : start + span] = b"\xff" * span
    path.write_bytes(bytes(data))


def test_corrupt_row_group(tmp_path, out, trained_models):
    path = tmp_path / "in" / "two_groups.parquet"
    path.parent.mkdir()
    pq.write_table(
        churn_table(400), path, row_group_size=200, compression="none", use_dictionary=False
    )
    _corrupt_second_row_group(path)

    # the damage is where we meant it: footer readable, row group 0 fine, row group 1 broken
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_rows == 400
    assert parquet.read_row_group(0).num_rows == 200
    with pytest.raises((pa.ArrowException, OSError)):
        parquet.read_row_group(1)

    result = invoke(*run_args(path, out, trained_models["binary"], "--batch-size", "50"))
    assert_fails(result, BAD_INPUT, str(path), "row group 1", output=out)


# --------------------------------------------------------------------------------------------
# the output already holds a result


def test_output_already_committed(out, trained_models, good_file):
    first = invoke(*run_args(good_file, out, trained_models["binary"]))
    assert first.exit_code == 0, first.stderr
    assert (out / "_SUCCESS").exists()
    before = snapshot(out)

    second = invoke(*run_args(good_file, out, trained_models["binary"]))
    assert_fails(second, CONFLICT, str(out), "already holds a committed result", "--mode overwrite")
    assert snapshot(out) == before
    assert read_output(out).num_rows == 300


# --------------------------------------------------------------------------------------------
# model problems


def test_missing_model_file(tmp_path, out, good_file):
    missing = tmp_path / "models" / "nope.joblib"
    result = invoke(*run_args(good_file, out, missing))
    assert_fails(result, MODEL, str(missing), "does not exist", output=out)


@pytest.mark.parametrize(
    "content", [b"not a pickle at all\n", b"PAR1" + b"\x00" * 64 + b"PAR1"], ids=["text", "parquet"]
)
def test_model_file_not_a_pickle(tmp_path, out, good_file, content):
    bogus = tmp_path / "model.joblib"
    bogus.write_bytes(content)
    result = invoke(*run_args(good_file, out, bogus))
    assert_fails(result, MODEL, str(bogus), "cannot load model file", output=out)


def test_model_without_feature_names_needs_features(out, trained_models, good_file):
    result = invoke(*run_args(good_file, out, trained_models["array_model"]))
    assert_fails(result, USAGE, str(trained_models["array_model"]), "--features", output=out)


def test_model_without_feature_names_with_features(out, trained_models, good_file):
    result = invoke(
        *run_args(good_file, out, trained_models["array_model"], "--features", ",".join(FEATURES))
    )
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "_SUCCESS").exists()
    assert read_output(out).num_rows == 300


@pytest.mark.parametrize(
    "features",
    ["age,tenure", "age,tenure,monthly_charges,total_charges,region", "age,tenure,monthly,total"],
    ids=["too_few", "too_many", "wrong_names"],
)
def test_features_not_matching_model(out, trained_models, good_file, features):
    result = invoke(*run_args(good_file, out, trained_models["binary"], "--features", features))
    assert_fails(result, MODEL, "--features", "tenure", output=out)


def test_features_count_not_matching_array_model(out, trained_models, good_file):
    result = invoke(
        *run_args(good_file, out, trained_models["array_model"], "--features", "age,tenure")
    )
    assert_fails(result, MODEL, "--features", "expects 4", output=out)


# --------------------------------------------------------------------------------------------
# usage and configuration errors


def test_partition_by_unknown_column(out, trained_models, good_file):
    result = invoke(
        *run_args(good_file, out, trained_models["binary"], "--partition-by", "country")
    )
    assert_fails(result, USAGE, "--partition-by", "country", output=out)


def test_output_column_collides_with_input_column(tmp_path, out, trained_models):
    table = churn_table(40).append_column("prediction", pa.array([0] * 40, pa.int64()))
    path = write_parquet(table, tmp_path / "in" / "already_scored.parquet")
    result = invoke(*run_args(path, out, trained_models["binary"]))
    assert_fails(result, USAGE, "'prediction'", output=out)


@pytest.mark.parametrize(
    ("flag", "value", "mentions"),
    [
        ("--mode", "append", ["output.mode"]),
        ("--run-date", "2026-13-45", ["run_date"]),
        ("--run-date", "yesterday", ["run_date"]),
    ],
    ids=["mode", "run_date_out_of_range", "run_date_not_a_date"],
)
def test_invalid_flag_values(out, trained_models, good_file, flag, value, mentions):
    result = invoke(*run_args(good_file, out, trained_models["binary"], flag, value))
    assert_fails(result, USAGE, *mentions, output=out)


def test_run_date_placeholder_without_run_date(tmp_path, trained_models, good_file):
    output = tmp_path / "scored" / "{run_date}"
    result = invoke(*run_args(good_file, output, trained_models["binary"]))
    assert_fails(result, USAGE, "{run_date}", "--run-date")
    assert not (tmp_path / "scored").exists()


def test_run_date_placeholder_with_run_date(tmp_path, trained_models, good_file):
    output = tmp_path / "scored" / "{run_date}"
    result = invoke(
        *run_args(good_file, output, trained_models["binary"], "--run-date", "2026-01-31")
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "scored" / "2026-01-31" / "_SUCCESS").exists()


# --------------------------------------------------------------------------------------------
# tracebacks only on request


def test_verbose_prints_traceback(tmp_path, out, trained_models):
    path = no_tenure_file(tmp_path)
    quiet = invoke(*run_args(path, out, trained_models["binary"]))
    assert "Traceback" not in quiet.stderr
    loud = invoke(*run_args(path, out, trained_models["binary"], "--verbose"))
    assert loud.exit_code == BAD_INPUT
    assert "Traceback (most recent call last)" in loud.stderr
    assert "InputError" in loud.stderr
    # the one-line summary still comes last, after the traceback
    last = [line for line in loud.stderr.splitlines() if line.strip()][-1]
    assert ERROR_LINE.match(last) and "'tenure'" in last
    assert_nothing_committed(out)


def test_quiet_failure_is_exactly_one_line(tmp_path, out, trained_models):
    path = no_tenure_file(tmp_path)
    result = invoke(*run_args(path, out, trained_models["binary"], "--quiet"))
    assert result.exit_code == BAD_INPUT
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert ERROR_LINE.match(result.stderr.strip())
