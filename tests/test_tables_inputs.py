"""``--input delta:...`` and ``--input iceberg:...``: tables written by deltalake's and pyiceberg's
own writers, scored by the real CLI, compared with the same rows scored from a Parquet folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from .conftest import churn_table, read_output, write_parquet
from .tables_helpers import assert_same_rows, cli, command, error_line, folder_reference

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
