"""``--output iceberg:NS.TABLE``: the real CLI into Iceberg tables of pyiceberg's SQLite catalog
(the embedded default, in ./warehouse of the run's folder), read back by pyiceberg and Polars
and compared with the folder output of the same run; crashes are real SIGKILLs."""

from __future__ import annotations

import signal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

pytest.importorskip("pyiceberg")

from pyiceberg.catalog.sql import SqlCatalog  # noqa: E402

from .conftest import churn_table, write_parquet  # noqa: E402
from .tables_helpers import (  # noqa: E402
    BUCKET,  # noqa: E402
    assert_same_rows,
    cli,
    command,
    error_line,
    files_under,
    folder_reference,
    no_staging_left,
)
from .tables_helpers import moto_s3 as _moto_s3  # noqa: E402

RUN_KEY = "batch-infer.run-key"
moto_s3 = _moto_s3  # the fixture (S3 on moto in its own process), for this module
TABLE = "iceberg:db.scores"


@pytest.fixture
def model(trained_models) -> Path:
    return trained_models["binary"]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Where runs start (their ./warehouse), with no pyiceberg configuration of the user's."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-home"))
    monkeypatch.setenv("POLARS_ICEBERG_PLANNER", "pyiceberg")
    for name in [n for n in __import__("os").environ if n.startswith("PYICEBERG_CATALOG")]:
        monkeypatch.delenv(name)
    return folder


def _catalog(workdir: Path) -> SqlCatalog:
    warehouse = workdir / "warehouse"
    return SqlCatalog(
        "default", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )


def _runs(workdir: Path) -> list[tuple[int, str, str, str]]:
    """(snapshot id, operation, run key, run id) of each snapshot, oldest first."""
    table = _catalog(workdir).load_table("db.scores")
    return [
        (
            s.snapshot_id,
            s.summary.operation.value,
            s.summary[RUN_KEY],
            s.summary["batch-infer.run-id"],
        )
        for s in sorted(table.snapshots(), key=lambda s: s.sequence_number)
    ]


def _exists(workdir: Path) -> bool:
    if not (workdir / "warehouse" / "catalog.db").exists():
        return False
    return _catalog(workdir).table_exists("db.scores")


def _data(workdir: Path) -> Path:
    return workdir / "warehouse" / "db" / "scores" / "data"


def _named_files(workdir: Path) -> set[str]:
    table = _catalog(workdir).load_table("db.scores")
    root = str(_data(workdir)) + "/"
    return {
        t.file.file_path.removeprefix("file://").removeprefix(root)
        for t in table.scan().plan_files()
    }


def test_run_into_a_new_iceberg_table_gives_the_folder_rows_in_one_snapshot(
    tmp_path, workdir, churn_input, model
):
    done = cli(command(churn_input, TABLE, model), cwd=workdir)
    assert done.returncode == 0, done.stderr
    want = folder_reference(tmp_path, churn_input, model)

    table = _catalog(workdir).load_table("db.scores")
    assert_same_rows(table.scan().to_arrow(), want)
    assert_same_rows(pl.scan_iceberg(table).collect().to_arrow(), want)
    assert [(f.name, str(f.transform)) for f in table.spec().fields] == [("day", "identity")]
    assert str(table.schema().find_field("predicted_at").field_type) == "timestamptz"
    # every data file's partition is the day of its rows
    for task in table.scan().plan_files():
        days = set(pl.read_parquet(task.file.file_path.removeprefix("file://"))["day"].to_list())
        assert days == {task.file.partition[0]}
    runs = _runs(workdir)
    assert len(runs) == 1 and runs[0][1] == "append" and len(runs[0][2]) == 16
    assert files_under(_data(workdir)) == _named_files(workdir)
    assert no_staging_left(workdir / "warehouse" / "db" / "scores" / "_batch_infer")


def test_kill_while_scoring_leaves_no_table_then_the_rerun_commits_once(
    tmp_path, workdir, churn_input, model
):
    args = command(churn_input, TABLE, model)
    killed = cli(args, cwd=workdir, BATCH_INFER_FAILPOINT="between-fragments")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not _exists(workdir)
    staged = files_under(_data(workdir))
    assert staged

    rerun = cli(args, cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert "already staged" in rerun.stderr
    assert len(_runs(workdir)) == 1
    table = _catalog(workdir).load_table("db.scores")
    assert_same_rows(table.scan().to_arrow(), folder_reference(tmp_path, churn_input, model))
    named = _named_files(workdir)
    assert files_under(_data(workdir)) == named
    assert staged & named


@pytest.mark.parametrize("point", ["before-success", "after-success"])
def test_kill_around_the_commit_never_commits_twice(tmp_path, workdir, churn_input, model, point):
    args = command(churn_input, TABLE, model)
    killed = cli(args, cwd=workdir, BATCH_INFER_FAILPOINT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _exists(workdir) == (point == "after-success")

    rerun = cli(args, cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr
    runs = _runs(workdir)
    assert len(runs) == 1
    if point == "after-success":
        assert "already committed" in rerun.stderr and f"snapshot {runs[0][0]}" in rerun.stderr
    table = _catalog(workdir).load_table("db.scores")
    assert_same_rows(table.scan().to_arrow(), folder_reference(tmp_path, churn_input, model))


def test_same_run_fails_or_skips_other_dates_append_overwrite_keeps_other_partitions(
    tmp_path, workdir, churn_input, model
):
    assert cli(command(churn_input, TABLE, model), cwd=workdir).returncode == 0
    again = cli(command(churn_input, TABLE, model), cwd=workdir)
    assert again.returncode == 5
    first = _runs(workdir)[0][0]
    assert error_line(again).startswith(f"Error: {TABLE} already holds this run")
    assert f"snapshot {first}" in error_line(again)
    skipped = cli(command(churn_input, TABLE, model, "--if-exists", "skip"), cwd=workdir)
    assert skipped.returncode == 0, skipped.stderr
    assert len(_runs(workdir)) == 1

    later = cli(command(churn_input, TABLE, model, run_date="2026-02-02"), cwd=workdir)
    assert later.returncode == 0, later.stderr
    assert pl.scan_iceberg(_catalog(workdir).load_table("db.scores")).collect().height == 10_000

    day2 = tmp_path / "day2"
    write_parquet(churn_table(5_000, seed=1).slice(2_500), day2 / "day=2" / "b.parquet")
    args = command(day2, TABLE, model, "--mode", "overwrite", run_date="2026-03-01")
    replaced = cli(args, cwd=workdir)
    assert replaced.returncode == 0, replaced.stderr
    runs = _runs(workdir)
    assert [op for _, op, _, _ in runs] == ["append", "append", "overwrite"]
    rows = pl.scan_iceberg(_catalog(workdir).load_table("db.scores")).collect()
    counts = (
        rows.group_by("day", pl.col("predicted_at").dt.date().cast(pl.String).alias("date"))
        .len()
        .sort("day", "date")
        .rows()
    )
    assert counts == [(1, "2026-02-01", 2_500), (1, "2026-02-02", 2_500), (2, "2026-03-01", 2_500)]


def test_schema_mismatch_is_an_output_conflict_and_leaves_the_table_alone(
    tmp_path, workdir, churn_input, model
):
    reference = folder_reference(tmp_path, churn_input, model)
    existing = reference.set_column(
        reference.schema.get_field_index("probability"),
        "probability",
        reference.column("probability").cast(pa.string()),
    )
    existing = existing.set_column(
        existing.schema.get_field_index("day"), "day", existing.column("day").cast(pa.int64())
    )
    (workdir / "warehouse").mkdir(exist_ok=True)
    catalog = _catalog(workdir)
    catalog.create_namespace("db")
    table = catalog.create_table("db.scores", schema=existing.schema)
    table.append(existing)
    before = table.current_snapshot().snapshot_id

    done = cli(command(churn_input, TABLE, model), cwd=workdir)
    assert done.returncode == 5, done.stderr
    assert error_line(done) == (
        f"Error: column 'probability' is double in the output but string in {TABLE} "
        "— cast it upstream, or write to another table"
    )
    assert _catalog(workdir).load_table("db.scores").current_snapshot().snapshot_id == before


def test_configured_catalog_with_its_warehouse_on_s3(
    moto_s3, tmp_path, workdir, monkeypatch, churn_input, model
):
    """A catalog configured the pyiceberg way (PYICEBERG_CATALOG__DEFAULT__*): SQLite on disk,
    warehouse on S3 (moto). A kill while scoring, then the rerun commits once."""
    endpoint, s3 = moto_s3
    settings = {
        "TYPE": "sql",
        "URI": f"sqlite:///{tmp_path}/configured.db",
        "WAREHOUSE": f"s3://{BUCKET}/warehouse",
        "S3__ENDPOINT": endpoint,
        "S3__ACCESS_KEY_ID": "testing",
        "S3__SECRET_ACCESS_KEY": "testing",
        "S3__REGION": "us-east-1",
    }
    for key, value in settings.items():
        monkeypatch.setenv(f"PYICEBERG_CATALOG__DEFAULT__{key}", value)
    args = command(churn_input, TABLE, model)
    killed = cli(args, cwd=workdir, BATCH_INFER_FAILPOINT="between-fragments")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = cli(args, cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert not (workdir / "warehouse").exists()  # the configured catalog, not the embedded one

    catalog = SqlCatalog(
        "default",
        uri=settings["URI"],
        warehouse=settings["WAREHOUSE"],
        **{"s3.endpoint": endpoint, "s3.access-key-id": "testing",
           "s3.secret-access-key": "testing", "s3.region": "us-east-1"},
    )  # fmt: skip
    table = catalog.load_table("db.scores")
    assert table.location() == f"s3://{BUCKET}/warehouse/db/scores"
    assert [s.summary[RUN_KEY] for s in table.snapshots()] == [_runs_key(table)]
    want = folder_reference(tmp_path, churn_input, model)
    assert_same_rows(table.scan().to_arrow(), want)
    assert_same_rows(pl.scan_iceberg(table).collect().to_arrow(), want)
    named = {t.file.file_path for t in table.scan().plan_files()}
    s3.invalidate_cache()
    stored = {
        f"s3://{p}" for p in s3.find(f"{BUCKET}/warehouse/db/scores/data") if p.endswith(".parquet")
    }
    assert stored == named  # the killed attempt's unrecorded files are gone
    assert not s3.find(f"{BUCKET}/warehouse/db/scores/_batch_infer/_staging")


def _runs_key(table) -> str:
    (snapshot,) = table.snapshots()
    return snapshot.summary[RUN_KEY]
