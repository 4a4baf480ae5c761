"""Table commits side by side and cleanup: runs of other run keys into one Delta or Iceberg table
at the same time both land, each once; the same run key twice is locked out; what abandoned
runs left is removed by a later successful run, by age and only under the abandoned run's own
lock. Real CLI processes, read back with deltalake and pyiceberg."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

deltalake = pytest.importorskip("deltalake")
pytest.importorskip("pyiceberg")

from pyiceberg.catalog.sql import SqlCatalog  # noqa: E402

from batch_infer import lock  # noqa: E402
from batch_infer.targets.delta import open_delta  # noqa: E402

from .tables_helpers import (  # noqa: E402
    assert_same_rows,
    cli,
    command,
    error_line,
    files_under,
    finish,
    folder_reference,
    no_staging_left,
    staging_keys,
    start,
)

RUN_KEY = "batch-infer.run-key"
DATES = ("2026-02-01", "2026-02-02")
TWO_DAYS = 2 * 24 * 3600


@pytest.fixture
def model(trained_models) -> Path:
    return trained_models["binary"]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Where Iceberg runs start (their ./warehouse), with no pyiceberg configuration of the user's."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-home"))
    for name in [n for n in os.environ if n.startswith("PYICEBERG_CATALOG")]:
        monkeypatch.delenv(name)
    return folder


def _delta_runs(table: Path) -> list[tuple[int, str]]:
    """(version, run key) of each commit carrying a batch-infer run key, oldest first."""
    history = deltalake.DeltaTable(str(table)).history()
    return sorted((e["version"], e[RUN_KEY]) for e in history if RUN_KEY in e)


def _by_date(table: pa.Table, date: str) -> pa.Table:
    rows = pl.from_arrow(table)
    return rows.filter(pl.col("predicted_at").dt.date().cast(pl.String) == date).to_arrow()


def _age(paths: list[Path], seconds: float) -> None:
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def test_two_runs_into_one_delta_table_at_once_both_land_once(tmp_path, churn_input, model):
    table = tmp_path / "scores"
    running = [start(command(churn_input, f"delta:{table}", model, run_date=d)) for d in DATES]
    results = [finish(p) for p in running]
    for result in results:
        assert result.returncode == 0, result.stderr

    runs = _delta_runs(table)
    assert len(runs) == 2 and runs[0][1] != runs[1][1]  # one commit per run, none lost
    assert len(deltalake.DeltaTable(str(table)).history()) == 2  # nothing else committed
    rows = deltalake.DeltaTable(str(table)).to_pyarrow_table()
    assert rows.num_rows == 10_000
    for date in DATES:
        assert_same_rows(
            _by_date(rows, date), folder_reference(tmp_path, churn_input, model, run_date=date)
        )
    named = set(
        pa.table(deltalake.DeltaTable(str(table)).get_add_actions(flatten=True))
        .column("path")
        .to_pylist()
    )
    assert files_under(table) == named
    assert no_staging_left(table / "_batch_infer")
    assert not any((table / "_batch_infer" / "_locks").glob("*"))


def test_the_lock_is_per_run_key_another_date_commits_the_same_key_waits(
    tmp_path, churn_input, model
):
    """Run A killed, its lock then held live (by this test); run B of another date commits
    meanwhile; A itself is refused (exit 75, naming the holder) until the lock is free, then
    resumes and commits once."""
    table = tmp_path / "scores"
    args_a = command(churn_input, f"delta:{table}", model, run_date=DATES[0])
    killed = cli(args_a, BATCH_INFER_FAILPOINT="between-fragments")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (key_a,) = staging_keys(table / "_batch_infer")
    held = lock.acquire(open_delta(f"delta:{table}", {}, key_a), "run-holding-a")
    try:
        other = cli(command(churn_input, f"delta:{table}", model, run_date=DATES[1]))
        assert other.returncode == 0, other.stderr
        again = cli(args_a)
        assert again.returncode == 75, again.stderr
        assert error_line(again).startswith(
            f"Error: delta:{table} (run key {key_a}) is locked by run run-holding-a (pid "
            f"{os.getpid()} on "
        )
        assert staging_keys(table / "_batch_infer") == [key_a]  # the other run left it alone
    finally:
        held.release()
    resumed = cli(args_a)
    assert resumed.returncode == 0, resumed.stderr
    assert "already staged" in resumed.stderr
    runs = _delta_runs(table)
    assert [key for _, key in runs].count(key_a) == 1 and len(runs) == 2
    rows = deltalake.DeltaTable(str(table)).to_pyarrow_table()
    for date in DATES:
        assert_same_rows(
            _by_date(rows, date), folder_reference(tmp_path, churn_input, model, run_date=date)
        )


def test_two_runs_into_one_iceberg_table_at_once_both_land_once(
    tmp_path, workdir, churn_input, model
):
    running = [
        start(command(churn_input, "iceberg:db.scores", model, run_date=d), cwd=workdir)
        for d in DATES
    ]
    results = [finish(p) for p in running]
    for result in results:
        assert result.returncode == 0, result.stderr

    warehouse = workdir / "warehouse"
    catalog = SqlCatalog(
        "default", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )
    table = catalog.load_table("db.scores")
    keys = [s.summary[RUN_KEY] for s in table.snapshots()]
    assert len(keys) == 2 and len(set(keys)) == 2  # one snapshot per run, nothing else
    rows = table.scan().to_arrow()
    assert rows.num_rows == 10_000
    for date in DATES:
        assert_same_rows(
            _by_date(rows, date), folder_reference(tmp_path, churn_input, model, run_date=date)
        )
    # pyiceberg's add_files computed each file's column statistics from its footer
    schema = table.schema()
    for task in table.scan().plan_files():
        file = task.file
        assert file.record_count > 0
        for name in ("customer_id", "probability", "predicted_at", "day"):
            field_id = schema.find_field(name).field_id
            assert field_id in file.lower_bounds and field_id in file.upper_bounds, name
            assert file.null_value_counts[field_id] == 0
            assert file.value_counts[field_id] == file.record_count
    data = warehouse / "db" / "scores" / "data"
    named = {
        t.file.file_path.removeprefix("file://").removeprefix(f"{data}/")
        for t in table.scan().plan_files()
    }
    assert files_under(data) == named
    assert no_staging_left(warehouse / "db" / "scores" / "_batch_infer")


def test_a_successful_run_removes_only_old_unlocked_leftovers_of_runs_that_never_committed(
    tmp_path, churn_input, model
):
    """Three killed runs: one two days old (removed by the next successful run, data files,
    records and stale lock), one as old but whose lock is live (kept), one fresh (kept). Every
    file a table version names stays: time travel to the first version reads the same rows."""
    table = tmp_path / "scores"
    side = table / "_batch_infer"
    first = cli(command(churn_input, f"delta:{table}", model, run_date="2026-01-31"))
    assert first.returncode == 0, first.stderr
    version0 = deltalake.DeltaTable(str(table)).to_pyarrow_table()

    def killed_run(date: str) -> tuple[str, set[str]]:
        before = set(staging_keys(side))
        done = cli(
            command(churn_input, f"delta:{table}", model, run_date=date),
            BATCH_INFER_FAILPOINT="between-fragments",
        )
        assert done.returncode == -signal.SIGKILL, done.stderr
        (key,) = set(staging_keys(side)) - before
        files = {p for p in files_under(table) if f"part-{key}-" in p}
        assert files  # some fragments were staged before the kill
        return key, files

    old, old_files = killed_run("2026-02-03")
    locked, locked_files = killed_run("2026-02-04")
    fresh, fresh_files = killed_run("2026-02-05")
    for key, files in ((old, old_files), (locked, locked_files)):
        _age([table / f for f in files], TWO_DAYS)
        _age([p for p in (side / "_staging" / key).rglob("*")], TWO_DAYS)
    assert (side / "_locks" / f"{old}.lock").exists()  # left by the SIGKILL, its pid dead
    held = lock.acquire(open_delta(f"delta:{table}", {}, locked), "run-still-alive")
    try:
        done = cli(command(churn_input, f"delta:{table}", model, run_date=DATES[1]))
        assert done.returncode == 0, done.stderr
        assert f"removed the staged files of 1 run(s) that never committed: {old}" in done.stderr
    finally:
        held.release()

    assert staging_keys(side) == sorted([locked, fresh])
    assert not (side / "_locks" / f"{old}.lock").exists()
    on_disk = files_under(table)
    assert not old_files & on_disk
    assert locked_files <= on_disk and fresh_files <= on_disk
    named = set(
        pa.table(deltalake.DeltaTable(str(table)).get_add_actions(flatten=True))
        .column("path")
        .to_pylist()
    )
    assert on_disk == named | locked_files | fresh_files
    assert deltalake.DeltaTable(str(table), version=0).to_pyarrow_table().equals(version0)
    rows = deltalake.DeltaTable(str(table)).to_pyarrow_table()
    assert rows.num_rows == 10_000
    assert_same_rows(
        _by_date(rows, DATES[1]),
        folder_reference(tmp_path, churn_input, model, run_date=DATES[1]),
    )


# -- Delta statistics ---------------------------------------------------------------------------


def _logged_stats(table: Path) -> dict[str, dict]:
    """{data file: its parsed ``stats``} from the JSON commits of a table's log."""
    import json

    found = {}
    for commit in sorted((table / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                found[action["add"]["path"]] = json.loads(action["add"]["stats"])
    return found


def _reference_stats(rows: pa.Table, where: Path) -> tuple[dict, dict]:
    """What delta-rs itself records for ``rows`` in one file: (stats JSON, flattened add action)."""
    deltalake.write_deltalake(str(where), rows)
    (stats,) = _logged_stats(where).values()
    (action,) = pa.table(deltalake.DeltaTable(str(where)).get_add_actions(flatten=True)).to_pylist()
    return stats, action


def _footer(rows: pa.Table, row_group_size: int) -> pq.FileMetaData:
    """The footer of ``rows`` written as Parquet, as the table targets write them."""
    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink, row_group_size=row_group_size)
    return pq.read_metadata(pa.BufferReader(sink.getvalue()))


def _stat_columns(action: dict) -> dict:
    return {
        k: v
        for k, v in action.items()
        if k == "num_records" or k.startswith(("min.", "max.", "null_count."))
    }


def test_delta_statistics_are_what_delta_rs_writes_for_the_same_rows(tmp_path):
    """Hostile values: NaN, signed zeros, strings past the 64-byte cut (multibyte too),
    timestamps with microseconds and before 1970, nulls, all-null and all-NaN columns, nested,
    list and binary columns; ``delta_stats`` of the file's footer (one row group or several)
    gives delta-rs's own answer for each."""
    import datetime as dt
    import decimal
    import json

    from batch_infer.targets.delta import delta_stats

    utc = dt.UTC
    rows = pa.table(
        {
            "i": pa.array([3, None, -7], pa.int64()),
            "small": pa.array([1, 2, None], pa.int16()),
            "f": pa.array([1.5, float("nan"), -2.25]),
            "zeros": pa.array([0.0, -0.0, 0.0]),
            "f32": pa.array([0.1, 2.5, None], pa.float32()),
            "nan": pa.array([float("nan")] * 3),
            "empty": pa.array([None, None, None], pa.string()),
            "s": pa.array(["b" * 100, "a", None]),
            "wide": pa.array(["é" * 50, "ü" * 40, "z" * 64]),
            "ts": pa.array(
                [
                    dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=utc),
                    dt.datetime(1960, 5, 1, 0, 0, 0, 1, tzinfo=utc),
                    None,
                ],
                pa.timestamp("us", "UTC"),
            ),
            "naive": pa.array(
                [dt.datetime(2026, 1, 1, 0, 0, 0, 999999), dt.datetime(2020, 1, 1), None],
                pa.timestamp("us"),
            ),
            "d": pa.array([dt.date(2026, 1, 1), dt.date(999, 2, 2), None]),
            "b": pa.array([True, False, None]),
            "dec": pa.array(
                [decimal.Decimal("1.25"), None, decimal.Decimal("-3.50")], pa.decimal128(10, 2)
            ),  # fmt: skip
            "nested": pa.array(
                [{"x": 1, "y": "q"}, None, {"x": 5, "y": None}],
                pa.struct([("x", pa.int64()), ("y", pa.string())]),
            ),
            "l": pa.array([[1], None, [2, 3]], pa.list_(pa.int64())),
            "bin": pa.array([b"x", None, b"y"]),
        }
    )
    want, action = _reference_stats(rows, tmp_path / "reference")
    for row_group_size in (2, 1_000):  # bounds gathered over row groups, or from one
        got = json.loads(json.dumps(delta_stats(_footer(rows, row_group_size), rows.schema)))
        for part in ("minValues", "maxValues", "nullCount"):  # one at a time: readable failures
            assert got[part] == want[part], (row_group_size, part)
        assert got == want
    # signed zeros compare equal as numbers: their signs, as delta-rs writes them
    assert str(got["minValues"]["zeros"]) == "-0.0" and str(want["minValues"]["zeros"]) == "-0.0"
    assert str(got["maxValues"]["zeros"]) == "0.0"
    assert set(want["minValues"]) >= {"s", "wide", "ts", "naive", "d", "dec", "nested"}

    # only the first 32 columns get statistics (delta.dataSkippingNumIndexedCols), as delta-rs
    many = pa.table({f"c{i:02d}": pa.array([i, i + 1]) for i in range(40)})
    ours = delta_stats(_footer(many, 1_000), many.schema)
    assert json.loads(json.dumps(ours)) == _reference_stats(many, tmp_path / "m")[0]


def test_a_delta_run_records_statistics_for_data_skipping(tmp_path, churn_input, model):
    """Every add action of a run carries min/max/null counts equal to those delta-rs writes for
    the same rows (``get_add_actions(flatten=True)``), and a filtered read skips files."""
    table = tmp_path / "scores"
    done = cli(command(churn_input, f"delta:{table}", model))
    assert done.returncode == 0, done.stderr
    ours = pa.table(deltalake.DeltaTable(str(table)).get_add_actions(flatten=True)).to_pylist()
    logged = _logged_stats(table)
    assert len(ours) >= 2
    for i, action in enumerate(ours):
        rows = pq.read_table(table / action["path"])
        want, reference = _reference_stats(rows, tmp_path / f"reference-{i}")
        assert logged[action["path"]] == want
        assert _stat_columns(action) == _stat_columns(reference)
        assert action["min.probability"] is not None and action["null_count.customer_id"] == 0
    # a predicate the statistics exclude for some files: delta-rs skips them
    lowest = min(a["max.customer_id"] for a in ours)
    kept = deltalake.DeltaTable(str(table)).file_uris(
        file_pruning_predicate=f"customer_id <= {lowest}"
    )
    assert 0 < len(kept) < len(ours)


# -- rejected rows: a sibling table ---------------------------------------------------------------


def main_run_id(table: Path) -> str:
    (entry,) = [e for e in deltalake.DeltaTable(str(table)).history() if RUN_KEY in e]
    return entry["batch-infer.run-id"]


def _with_rejects(tmp_path: Path) -> tuple[Path, list[int]]:
    """The churn input with three rows the model refuses (an infinite monthly charge)."""
    import numpy as np

    from .conftest import churn_table, write_parquet

    table = churn_table(5_000, seed=1)
    charges = table["monthly_charges"].to_numpy().copy()
    bad = [10, 2_600, 4_999]
    charges[bad] = np.inf
    table = table.set_column(
        table.schema.get_field_index("monthly_charges"), "monthly_charges", pa.array(charges)
    )
    root = tmp_path / "input-rejects"
    write_parquet(table.slice(0, 2_500), root / "day=1" / "a.parquet")
    write_parquet(table.slice(2_500), root / "day=2" / "b.parquet")
    return root, bad


def test_rejects_go_to_a_sibling_delta_table_once_after_the_main_commit(tmp_path, model):
    source, bad = _with_rejects(tmp_path)
    table, sibling = tmp_path / "scores", tmp_path / "scores_rejects"
    args = command(source, f"delta:{table}", model, "--max-reject-rows", "10")
    killed = cli(args, BATCH_INFER_FAILPOINT="after-success")  # main committed, rejects not
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(_delta_runs(table)) == 1
    assert not deltalake.DeltaTable.is_deltatable(str(sibling))

    rerun = cli(args)
    assert rerun.returncode == 0, rerun.stderr
    assert "already committed" in rerun.stderr
    assert f"committed 3 rejected row(s) of run {main_run_id(table)} to delta:{sibling}" in (
        rerun.stderr
    )
    skipped = cli([*args, "--if-exists", "skip"])
    assert skipped.returncode == 0, skipped.stderr
    (main_run,) = _delta_runs(table)
    assert _delta_runs(sibling) == [(0, main_run[1])]  # once, under the same run key
    rejects = deltalake.DeltaTable(str(sibling)).to_pyarrow_table().sort_by("customer_id")
    assert rejects["customer_id"].to_pylist() == bad
    # the same rows, reasons and origins as the folder output of the same run writes
    folder = tmp_path / "folder"
    done = cli(command(source, str(folder), model, "--max-reject-rows", "10"))
    assert done.returncode == 0, done.stderr
    want = pq.read_table(folder / "_rejects").sort_by("customer_id")
    for name in ("reject_source_file", "reject_row_index", "reject_code", "reject_message"):
        assert rejects[name].to_pylist() == want[name].to_pylist(), name
    assert deltalake.DeltaTable(str(table)).to_pyarrow_table().num_rows == 5_000 - 3
    assert not (table / "_batch_infer" / "_rejects").exists()


def test_rejects_with_an_explicit_folder_stay_a_folder(tmp_path, model):
    source, bad = _with_rejects(tmp_path)
    table, folder = tmp_path / "scores", tmp_path / "rejected"
    done = cli(
        command(
            source, f"delta:{table}", model, "--max-reject-rows", "10", "--rejects", str(folder)
        )
    )
    assert done.returncode == 0, done.stderr
    (key,) = [p.name for p in folder.iterdir()]
    assert key == _delta_runs(table)[0][1]
    rejects = pq.read_table(folder / key).sort_by("customer_id")
    assert rejects["customer_id"].to_pylist() == bad
    assert not (tmp_path / "scores_rejects").exists()


def test_rejects_go_to_a_sibling_iceberg_table(tmp_path, workdir, model):
    source, bad = _with_rejects(tmp_path)
    args = command(source, "iceberg:db.scores", model, "--max-reject-rows", "10")
    done = cli(args, cwd=workdir)
    assert done.returncode == 0, done.stderr
    warehouse = workdir / "warehouse"
    catalog = SqlCatalog(
        "default", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )
    (main,) = catalog.load_table("db.scores").snapshots()
    sibling = catalog.load_table("db.scores_rejects")
    (snapshot,) = sibling.snapshots()
    assert snapshot.summary[RUN_KEY] == main.summary[RUN_KEY]
    rejects = sibling.scan().to_arrow().sort_by("customer_id")
    assert rejects["customer_id"].to_pylist() == bad
    assert set(rejects["reject_code"].to_pylist()) != {None}


def test_an_iceberg_run_removes_an_old_abandoned_runs_files_and_keeps_every_snapshots(
    tmp_path, workdir, churn_input, model
):
    location = workdir / "warehouse" / "db" / "scores"
    side, data = location / "_batch_infer", location / "data"

    def run(date: str, **extra: str):
        return cli(
            command(churn_input, "iceberg:db.scores", model, run_date=date), workdir, **extra
        )

    assert run("2026-01-31").returncode == 0
    warehouse = workdir / "warehouse"
    catalog = SqlCatalog(
        "default", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )
    first = catalog.load_table("db.scores").current_snapshot().snapshot_id
    before = catalog.load_table("db.scores").scan(snapshot_id=first).to_arrow()
    killed = run("2026-02-03", BATCH_INFER_FAILPOINT="between-fragments")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (old,) = staging_keys(side)
    old_files = {p for p in files_under(data) if f"part-{old}-" in p}
    assert old_files
    _age([data / f for f in old_files], TWO_DAYS)
    _age(list((side / "_staging" / old).rglob("*")), TWO_DAYS)

    done = run(DATES[1])
    assert done.returncode == 0, done.stderr
    assert staging_keys(side) == []
    assert not old_files & files_under(data)
    table = catalog.load_table("db.scores")
    assert table.scan(snapshot_id=first).to_arrow().equals(before)
    named = {
        t.file.file_path.removeprefix("file://").removeprefix(f"{data}/")
        for t in table.scan().plan_files()
    }
    assert files_under(data) == named
    assert table.scan().to_arrow().num_rows == 10_000
