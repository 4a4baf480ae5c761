"""Everything around a run for tables: ``inspect`` of a Delta or Iceberg table, ``validate`` with
tables (checks, nothing written), the HTML report (in headless Chromium) and the metrics file
naming the version read and the commit made, and tables whose rows a delete changed. Expected
values come from deltalake's and pyiceberg's own readers."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from batch_infer import run
from batch_infer.cli import app

from .conftest import churn_table, make_config, read_output
from .tables_helpers import assert_same_rows, folder_reference
from .test_report_html import browser as _browser

browser = _browser  # the fixture (headless Chromium), for this module

deltalake = pytest.importorskip("deltalake")
pytest.importorskip("pyiceberg")

from pyiceberg.catalog.sql import SqlCatalog  # noqa: E402

RUN_DATE = "2026-02-01"


@pytest.fixture
def model(trained_models) -> Path:
    return trained_models["binary"]


@pytest.fixture(autouse=True)
def no_pyiceberg_configuration(tmp_path, monkeypatch):
    """Only each test's embedded SQLite catalog, none of the user's pyiceberg configuration."""
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-home"))
    for name in [n for n in os.environ if n.startswith(("PYICEBERG_CATALOG", "BATCH_INFER_"))]:
        monkeypatch.delenv(name)


def _catalog(warehouse: Path) -> SqlCatalog:
    warehouse.mkdir(exist_ok=True)
    return SqlCatalog(
        "default", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )


def _source_rows() -> pa.Table:
    rows = churn_table(2_000, seed=6)
    return rows.append_column("day", pa.array([1 + i % 2 for i in range(2_000)], pa.int64()))


def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def test_inspect_a_delta_table_and_an_iceberg_table(tmp_path, churn_input, model):
    """What ``inspect`` says is what the tables' own libraries say: version/snapshot, rows,
    files, schema, partitioning, and batch-infer's commits (newest first) with their run ids."""
    table, warehouse = tmp_path / "scores", tmp_path / "warehouse"
    reports = []
    for run_date in ("2026-02-01", "2026-02-02"):
        for output in (f"delta:{table}", "iceberg:db.scores"):
            config = make_config(
                churn_input,
                output,
                model,
                run_date=run_date,
                output={"partition_by": ["day"]},
                catalog={"warehouse": str(warehouse)},
            )
            reports.append(run(config))
    foreign = deltalake.DeltaTable(str(table)).to_pyarrow_table().slice(0, 7)
    deltalake.write_deltalake(str(table), foreign, mode="append", partition_by=["day"])

    shown = _invoke("inspect", f"delta:{table}", "--output-format", "json")
    assert shown.exit_code == 0, shown.stderr
    data = json.loads(shown.stdout.strip().splitlines()[-1])
    delta = deltalake.DeltaTable(str(table))
    actions = pa.table(delta.get_add_actions(flatten=True))
    assert data["kind"] == "delta" and data["version"] == delta.version() == 2
    assert data["rows"] == delta.to_pyarrow_table().num_rows == 10_007
    assert data["files"] == actions.num_rows
    assert data["partition_by"] == ["day"]
    assert list(data["schema"]) == pa.schema(delta.schema().to_arrow()).names
    delta_runs = [r.run_id for r in reports[0::2]]
    assert [(c["version"], c["run_id"]) for c in data["batch_infer_commits"]] == [
        (1, delta_runs[1]),
        (0, delta_runs[0]),
    ]
    at_zero = _invoke("inspect", f"delta:{table}@0")
    assert at_zero.exit_code == 0, at_zero.stderr
    assert "version 0: 5,000 rows" in at_zero.stdout
    assert "version 0  " in at_zero.stdout and f"run {delta_runs[0]}" in at_zero.stdout
    assert f"run {delta_runs[1]}" not in at_zero.stdout  # committed after version 0

    shown = _invoke(
        "inspect", "iceberg:db.scores", "--warehouse", str(warehouse), "--output-format", "json"
    )
    assert shown.exit_code == 0, shown.stderr
    data = json.loads(shown.stdout.strip().splitlines()[-1])
    iceberg = _catalog(warehouse).load_table("db.scores")
    snapshots = sorted(iceberg.snapshots(), key=lambda s: s.sequence_number, reverse=True)
    assert data["snapshot"] == iceberg.current_snapshot().snapshot_id == snapshots[0].snapshot_id
    assert data["rows"] == iceberg.scan().to_arrow().num_rows == 10_000
    assert data["files"] == len(list(iceberg.scan().plan_files()))
    assert data["partition_by"] == ["day"] and "probability" in data["schema"]
    assert [(c["snapshot"], c["run_id"]) for c in data["batch_infer_commits"]] == [
        (snapshots[0].snapshot_id, reports[3].run_id),
        (snapshots[1].snapshot_id, reports[1].run_id),
    ]

    missing = _invoke("inspect", "iceberg:db.nope", "--warehouse", str(warehouse))
    assert missing.exit_code == 3
    assert missing.stderr.strip().splitlines()[-1] == (
        "Error: iceberg:db.nope does not exist in the Iceberg catalog 'default' — check the "
        "name (NAMESPACE.TABLE), --catalog and --warehouse"
    )
    nothing = _invoke("inspect", f"delta:{tmp_path / 'nothing'}")
    assert nothing.exit_code == 3 and "cannot read the Delta table" in nothing.stderr


def test_validate_checks_table_inputs_and_outputs_and_writes_nothing(tmp_path, model):
    source, table = tmp_path / "source", tmp_path / "scores"
    deltalake.write_deltalake(str(source), _source_rows(), partition_by=["day"])
    common = ("-m", str(model), "--partition-by", "day", "--run-date", RUN_DATE)

    fresh = _invoke("validate", "-i", f"delta:{source}@0", "-o", f"delta:{table}", *common,
                    "--output-format", "json")  # fmt: skip
    assert fresh.exit_code == 0, fresh.stderr
    report = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert report["rows"] == 2_000 and report["output_state"] == "empty or new"
    assert not table.exists()  # nothing created

    done = _invoke("run", "-i", f"delta:{source}@0", "-o", f"delta:{table}", *common)
    assert done.exit_code == 0, done.stderr
    after_run = sorted(p.relative_to(table) for p in table.rglob("*"))
    again = _invoke("validate", "-i", f"delta:{source}@0", "-o", f"delta:{table}", *common,
                    "--output-format", "json")  # fmt: skip
    assert again.exit_code == 5  # the run key is committed: --mode error would refuse it
    assert "already holds this run" in again.stderr and "version 0" in again.stderr
    skip = _invoke("validate", "-i", f"delta:{source}@0", "-o", f"delta:{table}", *common,
                   "--output-format", "json", env={"BATCH_INFER_OUTPUT__IF_EXISTS": "skip"})  # fmt: skip
    assert skip.exit_code == 0, skip.stderr
    assert json.loads(skip.stdout.strip().splitlines()[-1])["output_state"] == (
        "holds a committed result"
    )

    # an existing table without a column the output has: exit 5 naming it
    other = tmp_path / "other"
    wrong = _source_rows().slice(0, 3).append_column("probability", pa.array(["x"] * 3))
    deltalake.write_deltalake(str(other), wrong, partition_by=["day"])
    refused = _invoke("validate", "-i", f"delta:{source}", "-o", f"delta:{other}", *common)
    assert refused.exit_code == 5
    assert refused.stderr.strip().splitlines()[-1] == (
        f"Error: delta:{other} has no column 'prediction' (int64) that the output has — add "
        "the column to the table, or write to another table"
    )
    assert sorted(p.relative_to(table) for p in table.rglob("*")) == after_run
    assert not (other / "_batch_infer").exists()
    assert deltalake.DeltaTable(str(table)).version() == 0
    assert deltalake.DeltaTable(str(other)).version() == 0

    warehouse = tmp_path / "warehouse"
    catalog = _catalog(warehouse)
    catalog.create_namespace("db")
    catalog.create_table("db.source", schema=_source_rows().schema).append(_source_rows())
    iceberg = _invoke("validate", "-i", "iceberg:db.source", "-o", "iceberg:db.scores",
                      "--warehouse", str(warehouse), *common)  # fmt: skip
    assert iceberg.exit_code == 0, iceberg.stderr
    assert not catalog.table_exists("db.scores")
    assert len(catalog.load_table("db.source").snapshots()) == 1


def test_report_and_metrics_name_the_version_read_and_the_commit(tmp_path, model, browser):
    """A run from ``delta:SRC@0`` into ``iceberg:db.scores``: the metrics file has the version
    read and the snapshot committed; the HTML report, opened in headless Chromium, shows both."""
    from prometheus_client.parser import text_string_to_metric_families

    from .test_report_html import open_offline  # noqa: PLC0415

    source, warehouse = tmp_path / "source", tmp_path / "warehouse"
    rows = _source_rows()
    deltalake.write_deltalake(str(source), rows.slice(0, 1_500), partition_by=["day"])
    deltalake.write_deltalake(str(source), rows.slice(1_500), partition_by=["day"], mode="append")
    metrics_file, html_file = tmp_path / "scores.prom", tmp_path / "report.html"
    done = _invoke(
        "run", "-i", f"delta:{source}@0", "-o", "iceberg:db.scores", "-m", str(model),
        "--warehouse", str(warehouse), "--run-date", RUN_DATE,
        "--metrics-file", str(metrics_file), "--report-html", str(html_file),
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    snapshot = _catalog(warehouse).load_table("db.scores").current_snapshot().snapshot_id

    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics_file.read_text())
        for sample in family.samples
    }
    assert values["batch_infer_input_table_version"] == 0
    assert values["batch_infer_output_table_version"] == float(snapshot)
    assert values["batch_infer_rows_in"] == 1_500

    page, errors, requests = open_offline(browser, html_file)
    assert errors == [] and requests == [html_file.as_uri()]
    run_rows = {
        row.query_selector("th").inner_text(): row.query_selector("td").inner_text()
        for row in page.query_selector_all("section:has(h2:text('Run')) tr")
    }
    assert run_rows["Input table"] == f"delta:{source} at version 0"
    assert run_rows["Table commit"] == f"snapshot {snapshot}"
    page.close()

    folder = tmp_path / "folder"
    plain = _invoke("run", "-i", f"delta:{source}@0", "-o", str(folder), "-m", str(model),
                    "--run-date", RUN_DATE, "--metrics-file", str(metrics_file))  # fmt: skip
    assert plain.exit_code == 0, plain.stderr
    names = {f.name for f in text_string_to_metric_families(metrics_file.read_text())}
    assert "batch_infer_input_table_version" in names
    assert "batch_infer_output_table_version" not in names  # a folder has no table version


def test_a_delta_table_with_deletion_vectors_enabled_reads_the_rows_a_delete_kept(tmp_path, model):
    """delta-rs enables the deletionVectors feature (with variantType) but writes no deletion
    vector: its DELETE rewrites the files. Such a table is read, without the deleted rows.
    (A table whose files do have deletion vectors, as Spark writes them, is refused with an
    error naming them; delta-rs cannot make one here.)"""
    table = tmp_path / "source"
    rows = _source_rows()
    deltalake.write_deltalake(
        str(table), rows, partition_by=["day"],
        configuration={"delta.enableDeletionVectors": "true"},
    )  # fmt: skip
    delta = deltalake.DeltaTable(str(table))
    assert "deletionVectors" in (delta.protocol().reader_features or [])
    delta.delete("customer_id < 500")
    assert deltalake.DeltaTable(str(table)).deletion_vectors().read_all().num_rows == 0

    out = tmp_path / "out"
    report = run(make_config(f"delta:{table}", out, model, run_date=RUN_DATE))
    assert report.rows_in == 1_500
    kept = rows.filter(pc.greater_equal(rows["customer_id"], 500))
    folder = tmp_path / "kept"
    for day in (1, 2):
        part = kept.filter(pc.equal(kept["day"], day)).drop_columns(["day"])
        (folder / f"day={day}").mkdir(parents=True)
        import pyarrow.parquet as pq

        pq.write_table(part, folder / f"day={day}" / "part.parquet")
    assert_same_rows(read_output(out), folder_reference(tmp_path, folder, model))


def test_an_iceberg_delete_is_read_as_pyiceberg_scans_it(tmp_path, model):
    """pyiceberg's ``delete`` on a v2 table asked for merge-on-read falls back to
    copy-on-write (it warns: it writes no delete files), so the snapshot after it names
    rewritten data files: the run reads exactly the rows pyiceberg's scan gives."""
    warehouse = tmp_path / "warehouse"
    catalog = _catalog(warehouse)
    catalog.create_namespace("db")
    rows = _source_rows()
    table = catalog.create_table(
        "db.source", schema=rows.schema, properties={"write.delete.mode": "merge-on-read"}
    )
    table.append(rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table.delete("customer_id < 500")
    assert any("copy-on-write" in str(w.message) for w in caught)
    table = catalog.load_table("db.source")
    assert table.format_version == 2
    assert all(not task.delete_files for task in table.scan().plan_files())
    scanned = table.scan().to_arrow()
    assert scanned.num_rows == 1_500

    out = tmp_path / "out"
    report = run(
        make_config(
            "iceberg:db.source",
            out,
            model,
            run_date=RUN_DATE,
            catalog={"warehouse": str(warehouse)},
        )  # fmt: skip
    )
    assert report.rows_in == 1_500
    got = read_output(out)
    assert sorted(got.column("customer_id").to_pylist()) == sorted(
        scanned.column("customer_id").to_pylist()
    )
