"""The Dask engine into and from tables: a real LocalCluster (2 worker processes, 1 thread each)
runs ``engine: dask`` with ``--output delta:...``/``iceberg:...`` and ``--input delta:...@V`` /
``iceberg:...``; the workers write the data files, the client commits. What deltalake and
pyiceberg read back equals the local engine's output of the same run; a SIGKILLed Dask run into a
table commits exactly once when rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest

from batch_infer import run

from .conftest import churn_table, make_config, read_output, write_parquet
from .tables_helpers import (
    assert_same_rows,
    cli,
    command,
    env,
    files_under,
    folder_reference,
)
from .test_dask import cluster as _cluster

deltalake = pytest.importorskip("deltalake")
pytest.importorskip("pyiceberg")
pytest.importorskip("distributed")

from pyiceberg.catalog.sql import SqlCatalog  # noqa: E402

DASK = {"kind": "dask", "workers": 2}
cluster = _cluster  # the fixture (`dask scheduler` and `dask worker` processes), for this module
RUN_KEY = "batch-infer.run-key"


@pytest.fixture
def model(trained_models) -> Path:
    return trained_models["binary"]


@pytest.fixture(autouse=True)
def no_pyiceberg_configuration(tmp_path, monkeypatch):
    """Only the embedded SQLite catalog of each test's warehouse: none of the user's."""
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-home"))
    for name in [n for n in os.environ if n.startswith("PYICEBERG_CATALOG")]:
        monkeypatch.delenv(name)


def _catalog(warehouse: Path) -> SqlCatalog:
    return SqlCatalog(
        "default", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )


def _config(source, output, model, warehouse: Path, engine=None, **output_options):
    return make_config(
        source,
        output,
        model,
        run_date="2026-02-01",
        output={"partition_by": ["day"], **output_options},
        catalog={"warehouse": str(warehouse)},
        **({"engine": engine} if engine else {}),
    )


def _delta_runs(uri: str) -> list[tuple[int, str]]:
    table = deltalake.DeltaTable(uri)
    return sorted((e["version"], e[RUN_KEY]) for e in table.history() if RUN_KEY in e)


def test_dask_into_delta_and_iceberg_gives_the_local_engines_table(tmp_path, churn_input, model):
    warehouse = tmp_path / "warehouse"
    for engine, suffix in ((None, "local"), (DASK, "dask")):
        delta = run(_config(churn_input, f"delta:{tmp_path / suffix}", model, warehouse, engine))
        iceberg = run(_config(churn_input, f"iceberg:db.{suffix}", model, warehouse, engine))
        for report in (delta, iceberg):
            assert report.status == "committed" and report.rows_out == 5_000
            assert report.engine == ("dask" if engine else "local")
        if engine:
            assert delta.workers_used == 2 and delta.scheduler.startswith("LocalCluster tcp://")
    assert delta.table_commit == "version 0"
    want = folder_reference(tmp_path, churn_input, model)

    local_delta = deltalake.DeltaTable(str(tmp_path / "local")).to_pyarrow_table()
    dask_delta = deltalake.DeltaTable(str(tmp_path / "dask"))
    assert_same_rows(local_delta, want)
    assert_same_rows(dask_delta.to_pyarrow_table(), want)
    assert len(_delta_runs(str(tmp_path / "dask"))) == 1
    assert files_under(tmp_path / "dask") == set(
        pa.table(dask_delta.get_add_actions(flatten=True)).column("path").to_pylist()
    )
    catalog = _catalog(warehouse)
    local_iceberg = catalog.load_table("db.local").scan().to_arrow()
    dask_table = catalog.load_table("db.dask")
    assert_same_rows(local_iceberg, want)
    assert_same_rows(dask_table.scan().to_arrow(), want)
    assert [s.summary[RUN_KEY] for s in dask_table.snapshots()] == [
        s.summary[RUN_KEY] for s in catalog.load_table("db.local").snapshots()
    ]  # one snapshot each, the same run key: the engine is not part of what a run is


def test_dask_reads_a_delta_version_and_an_iceberg_snapshot(tmp_path, churn_input, model):
    """Tables as inputs on the cluster: the version/snapshot pinned by the client is what the
    workers read, the same rows as the local engine's run of it."""
    source = read_output(churn_input)
    day = pa.array([int(v) for v in source.column("day").to_pylist()], pa.int64())
    rows = source.drop_columns(["day"]).append_column("day", day).sort_by("customer_id")
    first, second = rows.slice(0, 3_000), rows.slice(3_000)
    table = tmp_path / "source"
    deltalake.write_deltalake(str(table), first, partition_by=["day"])
    deltalake.write_deltalake(str(table), second, partition_by=["day"], mode="append")
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    catalog = _catalog(warehouse)
    catalog.create_namespace("db")
    iceberg = catalog.create_table("db.source", schema=rows.schema)
    iceberg.append(first)
    iceberg.append(second)

    for source_url in (f"delta:{table}@0", "iceberg:db.source"):
        outputs = {}
        for engine, name in ((None, "local"), (DASK, "dask")):
            out = tmp_path / f"{source_url.split(':')[0]}-{name}"
            report = run(_config(source_url, str(out), model, warehouse, engine))
            assert report.status == "committed"
            outputs[name] = read_output(out)
        assert outputs["local"].num_rows == (3_000 if source_url.endswith("@0") else 5_000)
        assert_same_rows(outputs["dask"], outputs["local"])


def test_a_killed_dask_run_into_a_table_commits_once_when_rerun(tmp_path, model):
    """SIGKILL of the client and its LocalCluster (a lost machine) once workers have staged some
    fragments, then the rerun on Dask: the killed attempt committed nothing, the rerun reuses
    what it staged, commits once, and leaves nothing the commit does not name."""
    source = tmp_path / "many-row-groups"  # 20 fragments: the kill lands while work is left
    rows = churn_table(5_000, seed=1)
    write_parquet(rows.slice(0, 2_500), source / "day=1" / "a.parquet", row_group_size=250)
    write_parquet(rows.slice(2_500), source / "day=2" / "b.parquet", row_group_size=250)
    table = tmp_path / "scores"
    args = command(source, f"delta:{table}", model, "--engine", "dask", "--batch-size", "100")
    client = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    records = table / "_batch_infer" / "_staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and client.poll() is None:
        if len(list(records.glob("*/_done/*.json"))) >= 1:
            break
        time.sleep(0.05)
    assert client.poll() is None, "the run ended before it could be killed"
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    assert not deltalake.DeltaTable.is_deltatable(str(table))  # nothing committed
    staged = files_under(table)
    assert staged

    rerun = cli(args)
    assert rerun.returncode == 0, rerun.stderr
    assert "already staged" in rerun.stderr
    assert len(_delta_runs(str(table))) == 1
    delta = deltalake.DeltaTable(str(table))
    assert_same_rows(delta.to_pyarrow_table(), folder_reference(tmp_path, source, model))
    named = set(pa.table(delta.get_add_actions(flatten=True)).column("path").to_pylist())
    assert files_under(table) == named
    assert staged & named  # the killed attempt's complete files were committed, not redone


def test_a_dask_run_killed_after_its_iceberg_commit_does_not_commit_again(
    tmp_path, churn_input, model
):
    """The client dies right after the table commit (its records not yet cleaned): the rerun
    on Dask finds its run key in the snapshot summaries and does not commit a second time."""
    warehouse = tmp_path / "warehouse"
    args = command(churn_input, "iceberg:db.scores", model, "--engine", "dask",
                   "--warehouse", str(warehouse))  # fmt: skip
    killed = cli(args, BATCH_INFER_FAILPOINT="after-success")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [snapshot] = _catalog(warehouse).load_table("db.scores").snapshots()

    rerun = cli(args)
    assert rerun.returncode == 0, rerun.stderr
    assert (
        f"snapshot {snapshot.snapshot_id}" in rerun.stderr and "already committed" in rerun.stderr
    )
    table = _catalog(warehouse).load_table("db.scores")
    assert [s.snapshot_id for s in table.snapshots()] == [snapshot.snapshot_id]
    assert_same_rows(table.scan().to_arrow(), folder_reference(tmp_path, churn_input, model))


def test_workers_elsewhere_open_the_clients_iceberg_catalog(tmp_path, churn_input, model, cluster):
    """`dask worker` processes started in another folder than the client's, a relative
    ``--warehouse``: the workers only write data files (the table layout the client checked
    travels with the task), they open no catalog of their own, and the client's one commit
    holds the local engine's rows."""
    address, start_worker = cluster
    elsewhere, home = tmp_path / "worker-home", tmp_path / "client-home"
    elsewhere.mkdir()
    home.mkdir()
    start_worker(cwd=elsewhere)
    args = command(churn_input, "iceberg:db.scores", model, "--warehouse", "wh",
                   "--engine", "dask", "--scheduler", address)  # fmt: skip
    done = cli(args, cwd=home, BATCH_INFER_ENGINE__SHARED_FILESYSTEM="true")
    assert done.returncode == 0, done.stderr
    assert not (elsewhere / "wh").exists()  # no catalog of the workers' own
    table = _catalog(home / "wh").load_table("db.scores")
    assert len(table.snapshots()) == 1
    assert_same_rows(table.scan().to_arrow(), folder_reference(tmp_path, churn_input, model))
