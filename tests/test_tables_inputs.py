"""``--input delta:...`` and ``--input iceberg:...``: tables written by deltalake's and pyiceberg's
own writers, scored by the real CLI, compared with the same rows scored from a Parquet folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from .conftest import churn_table, read_output, write_parquet
from .tables_helpers import BUCKET, assert_same_rows, cli, command, error_line, folder_reference
from .tables_helpers import moto_s3 as _moto_s3

moto_s3 = _moto_s3  # the fixture (S3 on moto in its own process), for this module

deltalake = pytest.importorskip("deltalake")


@pytest.fixture
def model(trained_models) -> Path:
    return trained_models["binary"]


def _rows() -> tuple[pa.Table, pa.Table]:
    """Two batches of rows with a ``day`` column: version/snapshot 0 and the appended one."""
    table = churn_table(4_000, seed=3)
    day = pa.array([1 + (i % 2) for i in range(table.num_rows)], pa.int64())
    table = table.append_column("day", day)
    return table.slice(0, 2_500), table.slice(2_500)


def _folder(tmp_path: Path, name: str, *tables: pa.Table) -> Path:
    """The same rows as a hive folder by day: the reference input."""
    root = tmp_path / name
    for index, table in enumerate(tables):
        for day in (1, 2):
            rows = table.filter(pa.compute.equal(table["day"], day)).drop_columns(["day"])
            write_parquet(rows, root / f"day={day}" / f"part-{index}.parquet")
    return root


def test_delta_input_reads_the_latest_or_the_named_version(tmp_path, model):
    first, second = _rows()
    table = tmp_path / "source"
    deltalake.write_deltalake(str(table), first, partition_by=["day"])
    deltalake.write_deltalake(str(table), second, partition_by=["day"], mode="append")

    out_all = tmp_path / "out-all"
    done = cli(command(f"delta:{table}", str(out_all), model))
    assert done.returncode == 0, done.stderr
    want_all = folder_reference(tmp_path, _folder(tmp_path, "ref-all", first, second), model)
    assert_same_rows(read_output(out_all), want_all)
    manifest = json.loads((out_all / "_manifest.json").read_text())
    assert manifest["input_version"] == {"format": "delta", "version": 1}

    out_v0 = tmp_path / "out-v0"
    done = cli(command(f"delta:{table}@0", str(out_v0), model))
    assert done.returncode == 0, done.stderr
    want_v0 = read_output(
        cli_folder(tmp_path, _folder(tmp_path, "ref-v0", first), model, "reference-v0")
    )
    assert_same_rows(read_output(out_v0), want_v0)
    manifest = json.loads((out_v0 / "_manifest.json").read_text())
    assert manifest["input_version"] == {"format": "delta", "version": 0}


def cli_folder(tmp_path: Path, input_path: Path, model: Path, name: str) -> Path:
    out = tmp_path / name
    done = cli(command(input_path, str(out), model))
    assert done.returncode == 0, done.stderr
    return out


def test_delta_input_errors_are_one_line_with_exit_codes(tmp_path, model):
    done = cli(command(f"delta:{tmp_path / 'no-such-table'}", str(tmp_path / "o1"), model))
    assert done.returncode == 3, done.stderr
    assert "is not a Delta table" in error_line(done)

    first, _ = _rows()
    table = tmp_path / "source"
    deltalake.write_deltalake(str(table), first, partition_by=["day"])
    done = cli(command(f"delta:{table}@7", str(tmp_path / "o2"), model))
    assert done.returncode == 3, done.stderr
    assert "at version 7" in error_line(done)

    mapped = tmp_path / "mapped"
    deltalake.write_deltalake(
        str(mapped),
        first,
        configuration={
            "delta.columnMapping.mode": "name",
            "delta.minReaderVersion": "2",
            "delta.minWriterVersion": "5",
        },
    )
    done = cli(command(f"delta:{mapped}", str(tmp_path / "o3"), model))
    assert done.returncode == 2, done.stderr
    assert "column mapping" in error_line(done)


def test_iceberg_input_reads_the_current_or_the_named_snapshot(tmp_path, model, monkeypatch):
    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog.sql import SqlCatalog

    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-home"))
    for name in [n for n in __import__("os").environ if n.startswith("PYICEBERG_CATALOG")]:
        monkeypatch.delenv(name)
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    catalog = SqlCatalog(
        "default", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )
    catalog.create_namespace("db")
    first, second = _rows()
    table = catalog.create_table("db.source", schema=first.schema)
    table.append(first)
    snapshot0 = table.current_snapshot().snapshot_id
    table.append(second)
    snapshot1 = table.current_snapshot().snapshot_id

    out_all = tmp_path / "out-all"
    done = cli(command("iceberg:db.source", str(out_all), model, "--warehouse", str(warehouse)))
    assert done.returncode == 0, done.stderr
    want_all = folder_reference(tmp_path, _folder(tmp_path, "ref-all", first, second), model)
    assert_same_rows(read_output(out_all), want_all)
    manifest = json.loads((out_all / "_manifest.json").read_text())
    assert manifest["input_version"] == {"format": "iceberg", "snapshot": snapshot1}

    out_s0 = tmp_path / "out-s0"
    done = cli(
        command(f"iceberg:db.source@{snapshot0}", str(out_s0), model, "--warehouse", str(warehouse))
    )
    assert done.returncode == 0, done.stderr
    want_s0 = read_output(
        cli_folder(tmp_path, _folder(tmp_path, "ref-s0", first), model, "reference-s0")
    )
    assert_same_rows(read_output(out_s0), want_s0)
    manifest = json.loads((out_s0 / "_manifest.json").read_text())
    assert manifest["input_version"] == {"format": "iceberg", "snapshot": snapshot0}

    done = cli(
        command("iceberg:db.nope", str(tmp_path / "o"), model, "--warehouse", str(warehouse))
    )
    assert done.returncode == 3, done.stderr
    assert "does not exist" in error_line(done)
    done = cli(
        command(
            "iceberg:db.source@12345", str(tmp_path / "o"), model, "--warehouse", str(warehouse)
        )
    )
    assert done.returncode == 3, done.stderr
    assert "no snapshot 12345" in error_line(done)


def test_delta_version_is_pinned_at_planning_so_a_resume_reads_the_same_rows(tmp_path, model):
    import signal

    first, second = _rows()
    table = tmp_path / "source"
    deltalake.write_deltalake(str(table), first, partition_by=["day"])
    out = tmp_path / "out"
    killed = cli(
        command(f"delta:{table}", str(out), model), BATCH_INFER_FAILPOINT="between-fragments"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # a commit lands while the run is down: the latest version is no longer what was planned
    deltalake.write_deltalake(str(table), second, partition_by=["day"], mode="append")

    refused = cli(command(f"delta:{table}", str(out), model, "--resume"))
    assert refused.returncode == 2, refused.stderr
    assert "cannot resume" in error_line(refused) and "input" in error_line(refused)

    resumed = cli(command(f"delta:{table}@0", str(out), model, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "already staged" in resumed.stderr  # the killed run's key: version 0, resumed
    want = read_output(cli_folder(tmp_path, _folder(tmp_path, "ref-v0", first), model, "ref-out"))
    assert_same_rows(read_output(out), want)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["input_version"] == {"format": "delta", "version": 0}


def test_a_missing_extra_is_a_config_error_naming_the_pip_extra(monkeypatch):
    import sys

    from batch_infer.config import InputConfig
    from batch_infer.errors import ConfigError
    from batch_infer.inputs import plan_input

    monkeypatch.setitem(sys.modules, "deltalake", None)
    with pytest.raises(ConfigError) as caught:
        plan_input(InputConfig(path="delta:/nowhere"))
    assert "pip install 'batch-infer[delta]'" in str(caught.value)
    monkeypatch.setitem(sys.modules, "pyiceberg.catalog", None)
    with pytest.raises(ConfigError) as caught:
        plan_input(InputConfig(path="iceberg:db.t"))
    assert "pip install 'batch-infer[iceberg]'" in str(caught.value)


def test_delta_partition_values_come_typed_from_the_log(tmp_path):
    """Dates, strings with path-hostile characters and nulls as partition values: the rows read
    back equal the rows written, with the partition columns in the table's types."""
    import datetime as dt

    from batch_infer.config import InputConfig
    from batch_infer.inputs import plan_input, read_fragment

    rows = pa.table(
        {
            "x": pa.array(range(6), pa.int64()),
            "when": pa.array([dt.date(2026, 1, 1 + i % 2) for i in range(6)], pa.date32()),
            "label": pa.array(["a b/c", "ü=1%", None, "a b/c", "ü=1%", None], pa.string()),
        }
    )
    table = tmp_path / "typed"
    deltalake.write_deltalake(str(table), rows, partition_by=["when", "label"])
    plan = plan_input(InputConfig(path=f"delta:{table}"))
    assert plan.version == {"format": "delta", "version": 0}
    assert plan.partition_schema.names == ["when", "label"]
    assert pa.types.is_date32(plan.partition_schema.field("when").type)
    assert all(f.version.startswith("0:") for f in plan.files)
    batches = [
        batch
        for fragment in plan.fragments
        for batch in read_fragment(plan.fs, fragment, plan.schema, plan.partition_schema)
    ]
    got = pa.Table.from_batches(batches, plan.schema).sort_by("x")
    assert got.column("x").to_pylist() == rows.column("x").to_pylist()
    assert got.column("when").to_pylist() == rows.column("when").to_pylist()
    assert got.column("label").cast(pa.string()).to_pylist() == rows.column("label").to_pylist()


def test_delta_input_on_s3(moto_s3, tmp_path, model):
    moto_endpoint, _ = moto_s3
    first, second = _rows()
    uri = f"s3://{BUCKET}/inputs/source"
    options = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ALLOW_HTTP": "true"}
    deltalake.write_deltalake(uri, first, partition_by=["day"], storage_options=options)
    deltalake.write_deltalake(
        uri, second, partition_by=["day"], mode="append", storage_options=options
    )
    out = tmp_path / "out"
    done = cli(command(f"delta:{uri}", str(out), model))
    assert done.returncode == 0, done.stderr
    want = folder_reference(tmp_path, _folder(tmp_path, "ref-all", first, second), model)
    assert_same_rows(read_output(out), want)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["input_version"] == {"format": "delta", "version": 1}
    assert all(url.startswith(f"s3://{BUCKET}/inputs/source/day=") for url in manifest_inputs(out))


def manifest_inputs(out: Path) -> list[str]:
    manifest = json.loads((out / "_manifest.json").read_text())
    return [entry["path"] for entry in manifest["inputs"]]
