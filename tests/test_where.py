"""``--where``: rows filtered before scoring, partitions pruned unread, for hive folders, Delta and
Iceberg tables. Expected rows come from the libraries' own filtered reads (pyarrow datasets,
deltalake, pyiceberg) and the model's own ``predict_proba``."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from batch_infer import run
from batch_infer.cli import app
from batch_infer.errors import ConfigError
from batch_infer.inputs.where import parse_where

from .conftest import FEATURES, churn_table, make_config, read_output, write_parquet
from .test_s3 import BUCKET as S3_BUCKET
from .test_s3 import moto_endpoint as _moto_endpoint
from .test_s3 import s3 as _s3
from .test_s3 import s3_input as _s3_input
from .test_s3 import s3_model as _s3_model

# the S3 fixtures (moto's server on loopback, a bucket, the churn input and model on it)
moto_endpoint, s3, s3_input, s3_model = _moto_endpoint, _s3, _s3_input, _s3_model

DATES = ["2026-01-04", "2026-01-05", "2026-01-06"]


@pytest.fixture
def model(trained_models) -> Path:
    return trained_models["binary"]


@pytest.fixture
def by_date(tmp_path: Path) -> Path:
    """A hive folder by event_date: two files per day, 600 rows each, 250-row groups."""
    root = tmp_path / "events"
    table = churn_table(3_600, seed=5)
    for index, day in enumerate(DATES):
        for part in range(2):
            rows = table.slice((2 * index + part) * 600, 600)
            write_parquet(rows, root / f"event_date={day}" / f"part-{part}.parquet", 250)
    return root


def _expected(model: Path, rows: pa.Table) -> np.ndarray:
    """The model's own probabilities for these rows, in customer_id order."""
    rows = rows.sort_by("customer_id")
    features = rows.select(FEATURES).to_pandas().astype("float64")  # as the model was fitted
    return joblib.load(model).predict_proba(features)[:, 1]


def _scored(out: Path) -> pa.Table:
    return read_output(out).sort_by("customer_id")


def test_where_on_the_hive_key_reads_only_matching_files(tmp_path, model, by_date):
    out = tmp_path / "out"
    report = run(make_config(by_date, out, model, input={"where": "event_date = '2026-01-05'"}))

    manifest = json.loads((out / "_manifest.json").read_text())
    read = sorted(Path(f["path"]).relative_to(by_date).as_posix() for f in manifest["inputs"])
    assert read == ["event_date=2026-01-05/part-0.parquet", "event_date=2026-01-05/part-1.parquet"]
    assert manifest["where"] == {
        "text": "event_date = '2026-01-05'",
        "files_pruned": 4,
        "row_groups_pruned": 0,
    }
    assert manifest["rows_selected"] == 1_200
    want = ds.dataset(by_date, partitioning="hive").to_table(
        filter=pc.field("event_date") == "2026-01-05"
    )
    got = _scored(out)
    assert got["customer_id"].to_pylist() == sorted(want["customer_id"].to_pylist())
    np.testing.assert_allclose(got["probability"].to_numpy(), _expected(model, want))
    assert report.rows_out == want.num_rows == 1_200
    assert (report.rows_in, report.rows_selected) == (1_200, 1_200)  # pruned files are not read
    assert "1,200 rows selected by event_date = '2026-01-05'" in report.summary()

    # a DATE literal against the hive key (text) reads the same files
    out_date = tmp_path / "out-date"
    run(make_config(by_date, out_date, model, input={"where": "event_date = DATE '2026-01-05'"}))
    assert _scored(out_date)["customer_id"] == got["customer_id"]


def test_where_on_data_columns_filters_rows_like_pyarrow(tmp_path, model, by_date):
    text = "(region = 'north' OR region IN ('east')) AND age BETWEEN 30 AND 60 AND NOT tenure < 12"
    out = tmp_path / "out"
    report = run(make_config(by_date, out, model, input={"where": text}))

    region, age, tenure = pc.field("region"), pc.field("age"), pc.field("tenure")
    want = ds.dataset(by_date, partitioning="hive").to_table(
        filter=((region == "north") | region.isin(["east"]))
        & (age >= 30)
        & (age <= 60)
        & ~(tenure < 12)
    )
    got = _scored(out)
    assert 0 < got.num_rows < 3_600
    assert got["customer_id"].to_pylist() == sorted(want["customer_id"].to_pylist())
    np.testing.assert_allclose(got["probability"].to_numpy(), _expected(model, want))
    assert report.rows_in == 3_600  # rows read: no file is pruned by data columns
    assert report.rows_out == report.rows_selected == want.num_rows


def test_where_mixing_keys_and_data_prunes_only_what_cannot_match(tmp_path, model, by_date):
    text = "event_date >= '2026-01-05' AND age > 50 OR event_date IS NULL"
    out = tmp_path / "out"
    run(make_config(by_date, out, model, input={"where": text}))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["where"]["files_pruned"] == 2
    key = pc.field("event_date")
    want = ds.dataset(by_date, partitioning="hive").to_table(
        filter=((key >= "2026-01-05") & (pc.field("age") > 50)) | key.is_null()
    )
    assert _scored(out)["customer_id"].to_pylist() == sorted(want["customer_id"].to_pylist())


def test_where_selecting_nothing_commits_an_empty_output(tmp_path, model, by_date):
    for index, text in enumerate(["event_date = '1999-01-01'", "age > 1000"]):
        out = tmp_path / f"out-{index}"
        report = run(make_config(by_date, out, model, input={"where": text}))
        assert report.rows_out == 0
        assert (out / "_SUCCESS").exists()
        got = read_output(out)
        assert got.num_rows == 0
        assert {"customer_id", "probability", "prediction"} <= set(got.column_names)


def test_rejected_rows_keep_their_index_in_the_file(tmp_path, model):
    """A row the model cannot take, behind rows --where dropped, is named by its file index."""
    table = churn_table(500, seed=2)
    charges = table["monthly_charges"].to_numpy().copy()
    charges[300] = np.inf
    table = table.set_column(
        table.schema.get_field_index("monthly_charges"), "monthly_charges", pa.array(charges)
    )
    write_parquet(table, tmp_path / "in" / "a.parquet", 500)
    out = tmp_path / "out"
    run(
        make_config(
            tmp_path / "in",
            out,
            model,
            input={"where": "customer_id >= 200"},
            output={"max_reject_rows": 5},
        )
    )
    rejects = ds.dataset(out / "_rejects", partitioning="hive").to_table()
    assert rejects["reject_row_index"].to_pylist() == [300]
    assert rejects["customer_id"].to_pylist() == [300]
    assert read_output(out).num_rows == 299


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("age = 'old'", ["column 'age' is int32", "'old' is a string", "position 7"]),
        ("agee > 3", ["no column 'agee'", "position 1", "columns: customer_id"]),
        ("age > ", ["expected a column or a value", "position 6"]),
        ("age > 3 AND (tenure < 2", ["expected ')'", "position 24"]),
        ("region = 'north", ["unclosed quote", "position 10"]),
        ("age = NULL", ["use IS NULL"]),
        ("day = 'x'", ["column 'day' is int64", "'x' is a string"]),
    ],
)
def test_bad_where_is_exit_2_naming_what_and_where(tmp_path, model, churn_input, text, words):
    done = CliRunner().invoke(
        app,
        ["run", "-i", str(churn_input), "-m", str(model), "-o", str(tmp_path / "out")]
        + ["--where", text],
    )
    assert done.exit_code == 2, done.output
    lines = [line for line in done.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, done.output
    assert "Traceback" not in done.output
    for word in words:
        assert word in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_validate_takes_where_and_refuses_a_bad_one(tmp_path, model, churn_input):
    common = ["validate", "-i", str(churn_input), "-m", str(model), "-o", str(tmp_path / "o")]
    assert CliRunner().invoke(app, [*common, "--where", "day = 2"]).exit_code == 0
    done = CliRunner().invoke(app, [*common, "--where", "dya = 2"])
    assert done.exit_code == 2 and "no column 'dya'" in done.output


def test_parse_errors_before_reading_anything():
    with pytest.raises(ConfigError, match="found .=. at position 7"):
        parse_where("a = b = c")
    assert parse_where("   ") is None
    with pytest.raises(ConfigError, match='a column of that name: write "date"'):
        parse_where("date = '2026-01-05'")
    assert parse_where("\"date\" = '2026-01-05'") is not None


def test_another_where_is_another_run_key(tmp_path, model, by_date):
    """Two runs differing only by --where into one Delta table: both commit (none is taken for
    the other, already committed); the table holds both selections."""
    deltalake = pytest.importorskip("deltalake")
    table = tmp_path / "scores"
    texts = ["event_date = '2026-01-04'", "event_date = '2026-01-06'"]
    for text in texts:
        report = run(make_config(by_date, f"delta:{table}", model, input={"where": text}))
        assert report.status == "committed" and report.rows_out == 1_200
    assert deltalake.DeltaTable(str(table)).version() == 1  # two commits: versions 0 and 1
    got = deltalake.DeltaTable(str(table)).to_pyarrow_table()
    want = ds.dataset(by_date, partitioning="hive").to_table(
        filter=pc.field("event_date").isin(["2026-01-04", "2026-01-06"])
    )
    assert sorted(got["customer_id"].to_pylist()) == sorted(want["customer_id"].to_pylist())


def test_delta_input_where_prunes_by_partition_values(tmp_path, model):
    deltalake = pytest.importorskip("deltalake")
    table = churn_table(3_000, seed=4)
    table = table.append_column("day", pa.array([1 + i % 3 for i in range(3_000)], pa.int64()))
    source = tmp_path / "source"
    deltalake.write_deltalake(str(source), table, partition_by=["day"])

    out = tmp_path / "out"
    run(make_config(f"delta:{source}", out, model, input={"where": "day IN (1, 3) AND age < 40"}))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert {Path(f["path"]).parent.name for f in manifest["inputs"]} == {"day=1", "day=3"}
    assert manifest["where"]["files_pruned"] == 1
    want = deltalake.DeltaTable(str(source)).to_pyarrow_table(
        filters=pc.field("day").isin([1, 3]) & (pc.field("age") < 40)
    )
    got = _scored(out)
    assert got["customer_id"].to_pylist() == sorted(want["customer_id"].to_pylist())
    np.testing.assert_allclose(got["probability"].to_numpy(), _expected(model, want))


def test_iceberg_input_where_goes_to_the_scan(tmp_path, model, monkeypatch):
    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
    from pyiceberg.transforms import IdentityTransform

    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-home"))
    for name in [n for n in os.environ if n.startswith("PYICEBERG_CATALOG")]:
        monkeypatch.delenv(name)
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    catalog = SqlCatalog(
        "default", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )
    catalog.create_namespace("db")
    rows = churn_table(3_000, seed=6)
    rows = rows.append_column("day", pa.array([1 + i % 3 for i in range(3_000)], pa.int64()))
    created = catalog.create_table("db.events", schema=rows.schema)
    with created.update_spec() as spec:
        spec.add_field("day", IdentityTransform(), "day")
    catalog.load_table("db.events").append(rows)

    out = tmp_path / "out"
    config = make_config(
        "iceberg:db.events",
        out,
        model,
        input={"where": "day >= 2 AND tenure < 30"},
        catalog={"warehouse": str(warehouse)},
    )
    run(config)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(manifest["inputs"]) == 2 and manifest["where"]["files_pruned"] == 1
    want = (
        catalog.load_table("db.events")
        .scan(row_filter=And(GreaterThanOrEqual("day", 2), LessThan("tenure", 30)))
        .to_arrow()
    )
    got = _scored(out)
    assert got["customer_id"].to_pylist() == sorted(want["customer_id"].to_pylist())
    np.testing.assert_allclose(got["probability"].to_numpy(), _expected(model, want))


def test_row_groups_whose_statistics_cannot_match_are_not_read(tmp_path, model, by_date):
    out = tmp_path / "out"
    report = run(
        make_config(by_date, out, model, input={"where": "customer_id BETWEEN 100 AND 399"})
    )
    manifest = json.loads((out / "_manifest.json").read_text())
    # ids 0-599 are the first file's three 250-row groups; the other five files hold higher ids
    assert manifest["where"]["row_groups_pruned"] == 1 + 5 * 3
    assert report.rows_in == 500 and report.rows_out == 300
    want = ds.dataset(by_date, partitioning="hive").to_table(
        filter=(pc.field("customer_id") >= 100) & (pc.field("customer_id") <= 399)
    )
    assert _scored(out)["customer_id"].to_pylist() == sorted(want["customer_id"].to_pylist())


def _selected(plan) -> pa.Table:
    """Every row the plan reads (pruned files and row groups left out), filtered by --where."""
    from batch_infer.inputs import read_fragment

    batches = [
        batch.filter(plan.row_filter)
        for fragment in plan.fragments
        for batch in read_fragment(plan.fs, fragment, plan.schema, plan.partition_schema)
    ]
    return pa.Table.from_batches(batches, plan.schema)


@pytest.mark.parametrize(
    ("text", "expected", "pruned"),
    [
        # NaN is left out of statistics (rows 0-1 say 1.0 only), yet NaN != 1.0
        ("x != 1.0", ~(pc.field("x") == 1.0), 0),
        ("NOT x = 1.0", ~(pc.field("x") == 1.0), 0),
        ("x > 5", pc.field("x") > 5, 2),
        ("n IS NULL", pc.field("n").is_null(), 2),
        (
            "n IS NOT NULL AND n NOT IN (3, 4)",
            pc.field("n").is_valid() & ~pc.field("n").isin([3, 4]),
            1,
        ),
        ("NOT (n BETWEEN 0 AND 2)", ~((pc.field("n") >= 0) & (pc.field("n") <= 2)), 1),
        ("s < 'b' OR flag", (pc.field("s") < "b") | pc.field("flag"), 0),
        ("d >= DATE '2026-01-03'", pc.field("d") >= pa.scalar(dt.date(2026, 1, 3)), 1),
        (
            "t < '2026-01-01 00:00:03'",
            pc.field("t") < pa.scalar(dt.datetime(2026, 1, 1, 0, 0, 3), pa.timestamp("us")),
            1,
        ),
    ],
)
def test_pruning_and_filtering_select_what_pyarrow_selects(tmp_path, text, expected, pruned):
    """Three row groups of two rows, so statistics rule some out; NaN and nulls among them."""
    from batch_infer.config import InputConfig
    from batch_infer.inputs import plan_input

    table = pa.table(
        {
            "x": pa.array([1.0, float("nan"), 1.0, 7.0, None, 2.0]),
            "n": pa.array([None, None, 3, 4, 0, 5], pa.int64()),
            "s": ["a", "a", "b", "c", "a", None],
            "flag": [False, False, True, False, None, False],
            "d": pa.array([dt.date(2026, 1, day) for day in range(1, 7)]),
            "t": pa.array([dt.datetime(2026, 1, 1, 0, 0, s) for s in range(6)], pa.timestamp("us")),
        }
    )
    path = write_parquet(table, tmp_path / "in" / "a.parquet", row_group_size=2)
    plan = plan_input(InputConfig(path=str(path.parent), where=text))
    # the in-memory table: a pyarrow dataset would prune by statistics too, and its own pruning
    # drops the NaN row of `~(x == 1.0)` (its statistics say 1.0 only)
    want = table.filter(expected)
    got = _selected(plan)
    assert got.to_pylist() == want.to_pylist() or (
        # NaN != NaN: compare the rows' text
        str(got.to_pylist()) == str(want.to_pylist())
    )
    assert plan.row_groups_pruned == pruned  # of the three two-row groups


def test_dask_workers_filter_as_the_local_engine_does(tmp_path, model, by_date):
    """The row filter travels to the workers with the job: the same rows as the local engine."""
    pytest.importorskip("distributed")
    where = {"where": "event_date != '2026-01-04' AND tenure >= 36"}
    local = run(make_config(by_date, tmp_path / "local", model, input=where, run_date="2026-01-05"))
    dask = run(
        make_config(
            by_date,
            tmp_path / "dask",
            model,
            input=where,
            run_date="2026-01-05",
            engine={"kind": "dask", "workers": 1},
        )
    )
    assert dask.engine == "dask" and dask.rows_out == local.rows_out > 0
    assert _scored(tmp_path / "dask").equals(_scored(tmp_path / "local"))


def test_delta_input_where_prunes_by_the_logs_statistics(tmp_path, model):
    """Three appends of ascending ids: the add actions' min/max rule out two files unread."""
    deltalake = pytest.importorskip("deltalake")
    table = churn_table(3_000, seed=8)
    source = tmp_path / "source"
    for start in (0, 1_000, 2_000):
        deltalake.write_deltalake(str(source), table.slice(start, 1_000), mode="append")

    out = tmp_path / "out"
    text = "customer_id >= 2500 OR customer_id IS NULL"
    report = run(make_config(f"delta:{source}", out, model, input={"where": text}))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(manifest["inputs"]) == 1 and manifest["where"]["files_pruned"] == 2
    want = deltalake.DeltaTable(str(source)).to_pyarrow_table(
        filters=(pc.field("customer_id") >= 2500) | pc.field("customer_id").is_null()
    )
    assert report.rows_in == 1_000 and report.rows_out == want.num_rows == 500
    assert _scored(out)["customer_id"].to_pylist() == sorted(want["customer_id"].to_pylist())


def test_where_on_s3_reads_only_the_matching_partition(s3, s3_input, s3_model, moto_endpoint):
    """Hive keys are read from the listing: the other day's file is never opened on S3."""
    input_url, table = s3_input
    model_url, model_local = s3_model
    options = {"endpoint_url": moto_endpoint}
    output_url = f"s3://{S3_BUCKET}/scored/where"
    report = run(
        make_config(
            input_url,
            output_url,
            model_url,
            input={"storage_options": options, "where": "day = 2 AND region <> 'west'"},
            model={"storage_options": options},
            output={"storage_options": options},
        )
    )
    manifest = json.loads(s3.cat_file(f"{S3_BUCKET}/scored/where/_manifest.json"))
    assert [f["path"] for f in manifest["inputs"]] == [f"{input_url}/day=2/b.parquet"]
    assert manifest["where"]["files_pruned"] == 1
    want = table.slice(2_500).filter(pc.field("region") != "west")
    assert report.rows_in == 2_500 and report.rows_out == want.num_rows
    got = ds.dataset(
        f"{S3_BUCKET}/scored/where", filesystem=s3, format="parquet", partitioning="hive"
    ).to_table()
    assert sorted(got["customer_id"].to_pylist()) == want["customer_id"].to_pylist()
    np.testing.assert_allclose(
        got.sort_by("customer_id")["probability"].to_numpy(), _expected(model_local, want)
    )
