"""Output layout, commit protocol, columns and types, read back with pyarrow."""

import datetime as dt
import json
from decimal import Decimal

import joblib
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_infer import OutputConflictError, run, validate

from . import zoo
from .conftest import FEATURES, churn_table, make_config, read_output, write_parquet


def test_hive_keys_become_columns_and_output_is_partitioned(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    run(
        make_config(
            churn_input, out, trained_models["binary"], output={"partition_by": ["day", "region"]}
        )
    )
    dirs = sorted(p.relative_to(out).as_posix() for p in out.glob("day=*/region=*"))
    assert dirs == [
        f"day={d}/region={r}" for d in (1, 2) for r in ("east", "north", "south", "west")
    ]
    table = read_output(out).to_pandas()
    assert table.num_rows if hasattr(table, "num_rows") else len(table) == 5_000
    by_day = table.groupby("day")["customer_id"].agg(["min", "max", "count"])
    assert by_day.loc[1].tolist() == [0, 2_499, 2_500]
    assert by_day.loc[2].tolist() == [2_500, 4_999, 2_500]


def test_manifest_lists_every_file_and_success_is_written(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    report = run(make_config(churn_input, out, trained_models["binary"], run_date="2026-01-31"))
    manifest = json.loads((out / "_manifest.json").read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert sorted(f["path"] for f in manifest["files"]) == files
    assert sum(f["rows"] for f in manifest["files"]) == manifest["rows_out"] == 5_000
    for entry in manifest["files"]:
        assert pq.read_metadata(out / entry["path"]).num_rows == entry["rows"]
    assert manifest["run_id"] == report.run_id
    assert manifest["model"]["sha256"] == report.model_sha256
    assert manifest["sklearn_version"]
    assert [i["rows"] for i in manifest["inputs"]] == [2_500, 2_500]
    assert all(i["bytes"] > 0 for i in manifest["inputs"])
    assert (out / "_SUCCESS").read_bytes() == b""
    assert not (out / "_staging").exists()


def test_rerun_with_same_run_date_is_reproducible(tmp_path, trained_models, churn_input):
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        run(make_config(churn_input, out, trained_models["binary"], run_date="2026-01-31"))
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.parquet"))
    assert names == sorted(p.relative_to(second).as_posix() for p in second.rglob("*.parquet"))
    for name in names:
        assert pq.read_table(first / name).equals(pq.read_table(second / name))
    stamp = read_output(first).column("predicted_at").unique().to_pylist()
    assert stamp == [dt.datetime(2026, 1, 31, tzinfo=dt.UTC)]


def test_predicted_at_is_one_timestamp_for_the_whole_run(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run(make_config(churn_input, out, trained_models["binary"], input={"batch_size": 500}))
    stamps = read_output(out).column("predicted_at").unique().to_pylist()
    assert len(stamps) == 1 and before <= stamps[0] <= dt.datetime.now(dt.UTC)


def test_input_columns_pass_through_unchanged_in_input_order(tmp_path, trained_models):
    rows = 1_500
    base = churn_table(rows, seed=5)
    table = (
        base.append_column(
            "tags", pa.array([[f"t{i}", "x"] for i in range(rows)], pa.list_(pa.string()))
        )
        .append_column("address", pa.array([{"city": f"c{i % 7}", "zip": i} for i in range(rows)]))
        .append_column(
            "signup", pa.array([dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(rows)])
        )
    )
    source = write_parquet(table, tmp_path / "in" / "data.parquet", row_group_size=400)
    out = tmp_path / "out"
    run(make_config(source, out, trained_models["binary"], input={"batch_size": 128}))
    scored = read_output(out)
    assert scored.select(table.column_names).equals(table)
    assert scored.column_names == table.column_names + [
        "prediction",
        "probability",
        "predicted_at",
        "model_version",
    ]


def test_files_with_different_column_order_are_aligned(tmp_path, trained_models):
    table = churn_table(2_000, seed=3)
    write_parquet(table.slice(0, 1_000), tmp_path / "in" / "a.parquet")
    reordered = table.slice(1_000).select(
        ["region", "total_charges", "customer_id", "tenure", "age", "monthly_charges"]
    )
    write_parquet(reordered, tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    run(make_config(tmp_path / "in", out, trained_models["binary"]))
    scored = read_output(out).sort_by("customer_id")
    assert scored.select(table.column_names).equals(table)
    model = joblib.load(trained_models["binary"])
    zoo.assert_models_own(scored.to_pandas(), model, table.to_pandas()[FEATURES])


def test_numeric_feature_types_are_converted(tmp_path, trained_models):
    rows = 600
    base = churn_table(rows, seed=8)
    table = pa.table(
        {
            "customer_id": base.column("customer_id"),
            "age": base.column("age").cast(pa.int8()),
            "tenure": pa.array(
                base.column("tenure").to_numpy().astype("uint16")
            ).dictionary_encode(),
            "monthly_charges": pa.array(
                [Decimal(str(v)) for v in base.column("monthly_charges").to_pylist()],
                pa.decimal128(8, 2),
            ),
            "total_charges": base.column("total_charges").cast(pa.float32()),
        }
    )
    source = write_parquet(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    run(make_config(source, out, trained_models["binary"]))
    model = joblib.load(trained_models["binary"])
    frame = table.to_pandas()
    frame["tenure"] = frame["tenure"].astype("float64")
    scored = read_output(out).sort_by("customer_id")
    zoo.assert_models_own(scored.to_pandas(), model, frame[FEATURES].astype("float64"))
    assert scored.schema.field("monthly_charges").type == pa.decimal128(8, 2)


def test_boolean_features_are_numbers(tmp_path):
    from sklearn.linear_model import LogisticRegression

    frame = churn_table(400, seed=2).to_pandas()
    frame["is_senior"] = frame["age"] > 60
    model = LogisticRegression().fit(
        frame[["is_senior", "tenure"]].astype("float64"), frame["tenure"] > 30
    )
    joblib.dump(model, tmp_path / "m.joblib")
    source = write_parquet(
        pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in.parquet"
    )
    run(make_config(source, tmp_path / "out", tmp_path / "m.joblib"))
    scored = read_output(tmp_path / "out").to_pandas()
    assert (
        scored["prediction"].tolist()
        == model.predict(frame[["is_senior", "tenure"]].astype("float64")).tolist()
    )
    assert scored["prediction"].dtype == bool


def test_model_without_feature_names_uses_configured_features(
    tmp_path, trained_models, churn_input
):
    out = tmp_path / "out"
    run(
        make_config(
            churn_input, out, trained_models["array_model"], model={"features": ",".join(FEATURES)}
        )
    )
    assert read_output(out).num_rows == 5_000


def test_renamed_output_columns_and_model_version(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    config = make_config(
        churn_input,
        out,
        trained_models["binary"],
        model={"version": "v7"},
        output={
            "columns": {
                "prediction": "churn",
                "probability": "churn_p",
                "predicted_at": "at",
                "model_version": "mv",
            }
        },
    )
    run(config)
    scored = read_output(out)
    assert {"churn", "churn_p", "at", "mv"} <= set(scored.column_names)
    assert scored.column("mv").unique().to_pylist() == ["v7"]


def test_mode_error_refuses_and_overwrite_replaces(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["binary"], output={"partition_by": ["day"]}))
    old_manifest = (out / "_manifest.json").read_text()
    with pytest.raises(OutputConflictError, match="already holds a committed result"):
        run(make_config(churn_input, out, trained_models["binary"]))
    assert (out / "_manifest.json").read_text() == old_manifest

    report = run(
        make_config(churn_input, out, trained_models["regressor"], output={"mode": "overwrite"})
    )
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert files == sorted(f["path"] for f in manifest["files"])
    assert not any(name.startswith("day=") for name in files)  # old partitions are gone
    assert manifest["run_id"] == report.run_id
    assert read_output(out).num_rows == 5_000


def test_run_date_fills_output_path(tmp_path, trained_models, churn_input):
    config = make_config(
        churn_input,
        tmp_path / "scores" / "dt={run_date}",
        trained_models["binary"],
        run_date="2026-02-03",
    )
    report = run(config)
    assert (tmp_path / "scores" / "dt=2026-02-03" / "_SUCCESS").exists()
    assert report.output.endswith("dt=2026-02-03")


def test_zero_row_file_commits_empty_output(tmp_path, trained_models):
    source = write_parquet(churn_table(0), tmp_path / "in.parquet")
    report = run(make_config(source, tmp_path / "out", trained_models["multiclass"]))
    assert report.rows_out == 0
    assert (tmp_path / "out" / "_SUCCESS").exists()
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    [entry] = manifest["files"]
    assert (entry["path"], entry["rows"]) == ("part-empty-0.parquet", 0)
    assert entry["bytes"] == (tmp_path / "out" / "part-empty-0.parquet").stat().st_size
    scored = read_output(tmp_path / "out")  # readers still see the columns
    assert scored.num_rows == 0
    assert {"customer_id", "prediction", "probability_young"} <= set(scored.column_names)


def test_validate_reports_without_writing(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    report = validate(make_config(churn_input, out, trained_models["multiclass"]))
    assert (report.rows, report.files, report.fragments) == (5_000, 2, 6)
    assert report.added_columns[:1] == ["prediction"]
    assert not out.exists()


def test_overwrite_refuses_to_delete_files_it_did_not_write(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["binary"]))
    foreign = write_parquet(churn_table(10), out / "someone_else.parquet")
    with pytest.raises(OutputConflictError, match="no batch-infer run wrote"):
        run(make_config(churn_input, out, trained_models["binary"], output={"mode": "overwrite"}))
    assert foreign.exists() and (out / "_SUCCESS").exists()


def test_input_inside_output_is_refused(tmp_path, trained_models, churn_input):
    from batch_infer import ConfigError

    with pytest.raises(ConfigError, match="is inside the output"):
        run(
            make_config(
                churn_input,
                churn_input.parent,
                trained_models["binary"],
                output={"mode": "overwrite"},
            )
        )
    assert len(list(churn_input.rglob("*.parquet"))) == 2


def test_overwrite_after_an_interrupted_commit_recognises_its_own_files(
    tmp_path, trained_models, churn_input
):
    """Files moved in by a commit that died before its manifest are replaced, not refused."""
    out = tmp_path / "out"
    run(make_config(churn_input, out, trained_models["binary"]))
    (out / "_SUCCESS").unlink()
    (out / "_manifest.json").unlink()
    report = run(
        make_config(churn_input, out, trained_models["regressor"], output={"mode": "overwrite"})
    )
    assert read_output(out).num_rows == 5_000
    assert json.loads((out / "_manifest.json").read_text())["run_id"] == report.run_id


def test_added_column_names_must_be_distinct(tmp_path, trained_models, churn_input):
    from batch_infer import ConfigError

    config = make_config(
        churn_input,
        tmp_path / "out",
        trained_models["binary"],
        output={"columns": {"predicted_at": "prediction"}},
    )
    with pytest.raises(ConfigError, match="the same name"):
        run(config)


def test_feature_names_come_from_the_model_when_the_scaler_has_none(tmp_path, churn_input):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    frame = churn_table(500, seed=4).to_pandas()
    X = frame[FEATURES].astype("float64")
    scaler = StandardScaler().fit(X.to_numpy())  # no names
    model = LogisticRegression().fit(pa.table(X).to_pandas(), frame["tenure"] > 30)  # names
    joblib.dump(scaler, tmp_path / "scaler.joblib")
    joblib.dump(model, tmp_path / "model.joblib")
    config = make_config(
        churn_input,
        tmp_path / "out",
        tmp_path / "model.joblib",
        model={"scaler": str(tmp_path / "scaler.joblib")},
    )
    assert run(config).rows_out == 5_000


def test_glob_skips_underscore_and_hidden_files(tmp_path, trained_models, churn_input):
    (churn_input / "day=1" / "_SUCCESS").write_text("")
    (churn_input / "day=1" / ".a.parquet.crc").write_text("x")
    report = run(make_config(f"{churn_input}/day=1/*", tmp_path / "out", trained_models["binary"]))
    assert report.files_in == 1


def test_unrelated_batch_infer_variables_are_ignored(tmp_path, trained_models, churn_input):
    from batch_infer.config import load_config

    config = load_config(
        None,
        {"input": {"path": str(churn_input)}, "model": {"path": "m"}, "output": {"path": "o"}},
        environ={"BATCH_INFER_HOME": "/x", "BATCH_INFER_OUTPUT__MODE": "overwrite"},
    )
    assert config.output.mode == "overwrite"
