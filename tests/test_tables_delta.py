"""``--output delta:...``: the real CLI into Delta tables on disk and on S3 (moto), read back by
deltalake and Polars and compared with the folder output of the same run; crashes are real
SIGKILLs (BATCH_INFER_FAILPOINT)."""

from __future__ import annotations

import signal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

deltalake = pytest.importorskip("deltalake")

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


def _runs(uri: str, **options) -> list[tuple[int, str, str]]:
    """(version, run key, run id) of each commit carrying a batch-infer run key, oldest first."""
    table = deltalake.DeltaTable(uri, storage_options=options or None)
    return sorted(
        (e["version"], e[RUN_KEY], e["batch-infer.run-id"]) for e in table.history() if RUN_KEY in e
    )


def _named_files(uri: str) -> set[str]:
    return set(
        pa.table(deltalake.DeltaTable(uri).get_add_actions(flatten=True)).column("path").to_pylist()
    )


@pytest.fixture
def model(trained_models) -> Path:
    return trained_models["binary"]


def test_run_into_a_new_delta_table_gives_the_folder_rows_in_one_commit(
    tmp_path, churn_input, model
):
    table = tmp_path / "scores"
    done = cli(command(churn_input, f"delta:{table}", model))
    assert done.returncode == 0, done.stderr
    want = folder_reference(tmp_path, churn_input, model)

    delta = deltalake.DeltaTable(str(table))
    assert_same_rows(delta.to_pyarrow_table(), want)
    assert_same_rows(pl.read_delta(str(table)).to_arrow(), want)
    assert delta.metadata().partition_columns == ["day"]
    # each file's partition value in the log is the day of its rows
    actions = pa.table(delta.get_add_actions(flatten=True)).to_pylist()
    for action in actions:
        rows = pl.read_parquet(table / action["path"])
        assert "day" not in rows.columns  # Delta keeps partition values in the log only
        assert action["path"].startswith(f"day={action['partition.day']}/")
    assert sum(a["num_records"] for a in actions) == 5_000
    # one commit, carrying the run key; nothing unnamed left in the table's folder
    runs = _runs(str(table))
    assert len(runs) == 1 and len(runs[0][1]) == 16
    assert delta.transaction_version(f"batch-infer:{runs[0][1]}") is not None
    assert files_under(table) == _named_files(str(table))
    assert no_staging_left(table / "_batch_infer")
    assert (table / "_batch_infer" / "_manifests" / f"{runs[0][2]}.json").exists()


def test_kill_while_scoring_leaves_no_table_then_the_rerun_commits_once(
    tmp_path, churn_input, model
):
    table = tmp_path / "scores"
    args = command(churn_input, f"delta:{table}", model)
    killed = cli(args, BATCH_INFER_FAILPOINT="between-fragments")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not deltalake.DeltaTable.is_deltatable(str(table))  # nothing committed
    staged = files_under(table)
    assert staged  # some fragments were written before the kill
    # what a writer killed inside a file leaves: a torn file under this run's prefix, unrecorded
    (key,) = [p.name for p in (table / "_batch_infer" / "_staging").iterdir()]
    attempts = table / "_batch_infer" / "_staging" / key / "_attempts"
    (attempts / "0badf11e").write_text("b-00000000-rg00009")  # noted before writing, as always
    torn = table / "day=2" / f"part-{key}-0badf11e-b-00000000-rg00009-0.parquet"
    torn.parent.mkdir(exist_ok=True)
    torn.write_bytes(b"PAR1 torn")
    # a file of the same run key from an attempt never noted here (say, a commit long ago)
    kept = table / "day=1" / f"part-{key}-00000000-a-00000000-rg00000-0.parquet"
    kept.write_bytes(b"PAR1 someone else's")

    rerun = cli(args)
    assert rerun.returncode == 0, rerun.stderr
    assert "already staged" in rerun.stderr  # resumed, not started over
    assert len(_runs(str(table))) == 1
    assert_same_rows(
        deltalake.DeltaTable(str(table)).to_pyarrow_table(),
        folder_reference(tmp_path, churn_input, model),
    )
    named = _named_files(str(table))
    assert files_under(table) - {kept.relative_to(table).as_posix()} == named
    assert not torn.exists()  # removed by the rerun, never committed
    assert kept.exists()  # only files of this run's own attempts are ever removed
    assert staged & named  # the complete files of the killed attempt were reused


@pytest.mark.parametrize("point", ["before-success", "after-success"])
def test_kill_around_the_commit_never_commits_twice(tmp_path, churn_input, model, point):
    table = tmp_path / "scores"
    args = command(churn_input, f"delta:{table}", model)
    killed = cli(args, BATCH_INFER_FAILPOINT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed = deltalake.DeltaTable.is_deltatable(str(table))
    assert committed == (point == "after-success")

    rerun = cli(args)
    assert rerun.returncode == 0, rerun.stderr
    runs = _runs(str(table))
    assert len(runs) == 1
    if point == "after-success":
        assert "already committed" in rerun.stderr and "version 0" in rerun.stderr
    assert deltalake.DeltaTable(str(table)).version() == 0
    assert_same_rows(
        deltalake.DeltaTable(str(table)).to_pyarrow_table(),
        folder_reference(tmp_path, churn_input, model),
    )
    assert no_staging_left(table / "_batch_infer")


def test_same_run_again_fails_or_skips_and_other_dates_append(tmp_path, churn_input, model):
    table = tmp_path / "scores"
    first = cli(command(churn_input, f"delta:{table}", model))
    assert first.returncode == 0, first.stderr

    again = cli(command(churn_input, f"delta:{table}", model))
    assert again.returncode == 5
    assert error_line(again).startswith(f"Error: delta:{table} already holds this run")
    assert "version 0" in error_line(again)
    skipped = cli(command(churn_input, f"delta:{table}", model, "--if-exists", "skip"))
    assert skipped.returncode == 0, skipped.stderr
    assert deltalake.DeltaTable(str(table)).version() == 0

    later = cli(command(churn_input, f"delta:{table}", model, run_date="2026-02-02"))
    assert later.returncode == 0, later.stderr
    runs = _runs(str(table))
    assert [v for v, _, _ in runs] == [0, 1] and runs[0][1] != runs[1][1]
    rows = pl.read_delta(str(table))
    assert rows.height == 10_000
    dates = rows.group_by(pl.col("predicted_at").dt.date()).len().sort("predicted_at")
    assert dates["len"].to_list() == [5_000, 5_000]
    # the next date's drift baseline: the manifest of the latest run into the table
    from batch_infer.targets.delta import open_delta

    baseline = open_delta(f"delta:{table}", {}, "ffffffffffffffff").previous_manifest()
    assert baseline is not None
    assert baseline["run_id"] == runs[1][2] and baseline["rows_out"] == 5_000
    assert baseline["run_date"] == "2026-02-02" and baseline["table"] == str(table)


def test_overwrite_replaces_only_the_partitions_the_run_writes(tmp_path, churn_input, model):
    table = tmp_path / "scores"
    first = cli(command(churn_input, f"delta:{table}", model))
    assert first.returncode == 0, first.stderr
    # a later run over day 2 only, overwriting: day 1 must stay as the first run wrote it
    day2 = tmp_path / "day2"
    write_parquet(churn_table(5_000, seed=1).slice(2_500), day2 / "day=2" / "b.parquet")
    args = command(day2, f"delta:{table}", model, "--mode", "overwrite", run_date="2026-03-01")
    second = cli(args)
    assert second.returncode == 0, second.stderr

    rows = pl.read_delta(str(table))
    assert rows.height == 5_000
    by_day = rows.group_by("day", pl.col("predicted_at").dt.date().alias("date")).len().sort("day")
    assert by_day.select("day", pl.col("date").cast(pl.String), "len").rows() == [
        (1, "2026-02-01", 2_500),
        (2, "2026-03-01", 2_500),
    ]
    assert len(_runs(str(table))) == 2  # the overwrite is one commit too
    history = deltalake.DeltaTable(str(table)).history(limit=1)[0]
    assert history["operation"] == "WRITE" and history["batch-infer.mode"] == "overwrite"


def test_schema_mismatch_is_an_output_conflict_and_leaves_the_table_alone(
    tmp_path, churn_input, model
):
    table = tmp_path / "scores"
    reference = folder_reference(tmp_path, churn_input, model)
    existing = reference.set_column(
        reference.schema.get_field_index("probability"),
        "probability",
        reference.column("probability").cast(pa.string()),
    )
    existing = existing.set_column(
        existing.schema.get_field_index("day"), "day", existing.column("day").cast(pa.int64())
    )
    deltalake.write_deltalake(str(table), existing, partition_by=["day"])
    done = cli(command(churn_input, f"delta:{table}", model))
    assert done.returncode == 5, done.stderr
    assert error_line(done) == (
        f"Error: column 'probability' is double in the output but string in delta:{table} "
        "— cast it upstream, or write to another table"
    )
    assert deltalake.DeltaTable(str(table)).version() == 0
    assert files_under(table) == _named_files(str(table))


def test_delta_table_on_s3(moto_s3, tmp_path, churn_input, model):
    moto_endpoint, s3 = moto_s3
    uri = f"s3://{BUCKET}/tables/scores"
    args = command(churn_input, f"delta:{uri}", model)
    killed = cli(args, BATCH_INFER_FAILPOINT="between-fragments")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    options = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ALLOW_HTTP": "true"}
    assert not deltalake.DeltaTable.is_deltatable(uri, storage_options=options)

    rerun = cli(args)
    assert rerun.returncode == 0, rerun.stderr
    table = deltalake.DeltaTable(uri, storage_options=options)
    want = folder_reference(tmp_path, churn_input, model)
    assert_same_rows(table.to_pyarrow_table(), want)
    assert_same_rows(pl.read_delta(uri, storage_options=options).to_arrow(), want)
    assert len(_runs(uri, **options)) == 1
    named = set(pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist())
    s3.invalidate_cache()
    stored = {
        p.split("/tables/scores/", 1)[1]
        for p in s3.find(f"{BUCKET}/tables/scores")
        if p.endswith(".parquet") and "/_" not in p.split("/tables/scores", 1)[1]
    }
    assert stored == named  # the killed attempt's orphans are gone
    assert not s3.find(f"{BUCKET}/tables/scores/_batch_infer/_staging")


def test_check_refuses_before_scoring_when_given_the_output_schema(tmp_path):
    """What ``check`` does once ``open_target`` hands tables the run's schema: exit-5 errors
    naming the column and both types, or the partitioning, with nothing written."""
    from batch_infer.errors import OutputConflictError
    from batch_infer.targets.delta import open_delta

    table = tmp_path / "scores"
    deltalake.write_deltalake(
        str(table), pa.table({"id": pa.array([1], pa.int64()), "score": ["high"]})
    )
    output = pa.schema([("id", pa.int32()), ("score", pa.float64())])
    target = open_delta(f"delta:{table}", {}, "0123456789abcdef", schema=output, partition_by=[])
    with pytest.raises(OutputConflictError) as raised:
        target.check("error", set())
    assert str(raised.value) == (
        f"column 'score' is double in the output but string in delta:{table} "
        "— cast it upstream, or write to another table"
    )
    assert raised.value.exit_code == 5
    narrower = pa.schema([("id", pa.int32()), ("score", pa.string())])
    by_id = open_delta(
        f"delta:{table}", {}, "0123456789abcdef", schema=narrower, partition_by=["id"]
    )
    with pytest.raises(OutputConflictError, match=r"partitioned by nothing, the run by \['id'\]"):
        by_id.check("error", set())
    fits = open_delta(f"delta:{table}", {}, "0123456789abcdef", schema=narrower, partition_by=[])
    fits.check("error", set())  # int32 widens to the table's long
    unsigned = pa.schema([("id", pa.uint64()), ("score", pa.string())])
    too_wide = open_delta(
        f"delta:{table}", {}, "0123456789abcdef", schema=unsigned, partition_by=[]
    )
    with pytest.raises(OutputConflictError, match="uint64, which a Delta table cannot hold"):
        too_wide.check("error", set())
    assert deltalake.DeltaTable(str(table)).version() == 0
    assert not (table / "_batch_infer").exists()


@pytest.mark.parametrize(
    ("module", "output", "extra"),
    [("deltalake", "delta:scores", "delta"), ("pyiceberg", "iceberg:db.scores", "iceberg")],
)
def test_a_missing_extra_is_a_config_error_naming_it(
    tmp_path, churn_input, model, module, output, extra
):
    """The real CLI in a Python where the package cannot be imported (``sys.modules[name] =
    None``, as if not installed): exit 2, saying which extra to install."""
    import subprocess
    import sys

    from .tables_helpers import env

    code = (
        f"import sys; sys.modules[{module!r}] = None; "
        "from batch_infer.cli import main; sys.argv[0] = 'batch-infer'; main()"
    )
    args = command(churn_input, output, model)[3:]  # without python -m batch_infer
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, env=env(), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert error_line(done).endswith(f"— pip install 'batch-infer[{extra}]'")
    assert not (tmp_path / "scores").exists() and not (tmp_path / "warehouse").exists()


def test_commits_while_another_writer_appends_lose_nothing_and_land_once(
    tmp_path, churn_input, model
):
    """Another writer commits to the table every few milliseconds while a run commits: the
    run's commit is rebased on the newer versions (delta-rs, then batch-infer from a fresh
    snapshot), so both writers' rows are there, the run's exactly once."""
    import threading

    table = tmp_path / "scores"
    first = cli(command(churn_input, f"delta:{table}", model))
    assert first.returncode == 0, first.stderr
    schema = pa.schema(deltalake.DeltaTable(str(table)).schema().to_arrow())
    rows = deltalake.DeltaTable(str(table)).to_pyarrow_table().slice(0, 10)
    foreign = rows.set_column(
        rows.schema.get_field_index("day"), "day", pa.array([3] * 10, pa.int64())
    ).cast(schema)
    stop, appended = threading.Event(), []

    def other_writer() -> None:
        while not stop.is_set():
            try:
                deltalake.write_deltalake(str(table), foreign, mode="append", partition_by=["day"])
                appended.append(1)
            except Exception:  # noqa: BLE001  lost the race to our run: try again
                pass
            stop.wait(0.01)

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        second = cli(command(churn_input, f"delta:{table}", model, run_date="2026-02-02"))
    finally:
        stop.set()
        writer.join()
    assert second.returncode == 0, second.stderr
    assert len(appended) > 1
    runs = _runs(str(table))
    assert len(runs) == 2 and runs[0][1] != runs[1][1]
    history = deltalake.DeltaTable(str(table)).history()
    others = [e for e in history if e["operation"] == "WRITE" and RUN_KEY not in e]
    assert len(others) >= len(appended)  # (a commit may land and still report an error)
    result = pl.read_delta(str(table))
    assert result.filter(pl.col("day") == 3).height == 10 * len(others)
    ours = result.filter(pl.col("predicted_at").dt.date() == pl.date(2026, 2, 2), pl.col("day") < 3)
    assert ours.height == 5_000 and ours["customer_id"].n_unique() == 5_000
