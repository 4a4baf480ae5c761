"""Model loading safety, output location safety and secrets, each a clear error (never a leak)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from batch_infer import ConfigError, InputError, ModelError, run
from batch_infer.cli import app

from .conftest import FEATURES, churn_table, make_config, read_output, write_parquet

runner = CliRunner()


class _Booby:
    """Unpickling this creates a marker file: proof that loading ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_sha256_pin_mismatch_refuses_before_deserializing(tmp_path, churn_input):
    marker = tmp_path / "code-ran"
    model = tmp_path / "evil.joblib"
    model.write_bytes(pickle.dumps(_Booby(str(marker))))
    result = runner.invoke(
        app,
        ["run", "-i", str(churn_input), "-o", str(tmp_path / "out"), "-m", str(model),
         "--model-sha256", "0" * 64],
    )  # fmt: skip
    assert result.exit_code == 4
    assert (
        f"has sha256 {hashlib.sha256(model.read_bytes()).hexdigest()}, not the pinned"
        in result.stderr
    )
    assert not marker.exists()


def test_matching_pin_loads(tmp_path, trained_models, churn_input):
    digest = hashlib.sha256(trained_models["binary"].read_bytes()).hexdigest()
    config = make_config(
        churn_input, tmp_path / "out", trained_models["binary"], model={"sha256": digest.upper()}
    )
    assert run(config).rows_out == 5_000


def test_scaler_pin_is_checked_too(tmp_path, trained_models, churn_input):
    config = make_config(
        churn_input, tmp_path / "out", trained_models["scaled_model"],
        model={"scaler": str(trained_models["scaler"]), "scaler_sha256": "ab" * 32},
    )  # fmt: skip
    with pytest.raises(ModelError, match="scaler file .* not the pinned"):
        run(config)


def test_skops_model_scores_like_its_joblib_twin(tmp_path, trained_models, churn_input):
    import skops.io as sio

    forest = joblib.load(
        trained_models["multiclass"]
    )  # a RandomForest: trees are skops-untrusted by default
    path = tmp_path / "forest.skops"
    sio.dump(forest, path)
    run(make_config(churn_input, tmp_path / "a", path))
    run(make_config(churn_input, tmp_path / "b", trained_models["multiclass"]))
    a, b = (
        read_output(tmp_path / "a").sort_by("customer_id"),
        read_output(tmp_path / "b").sort_by("customer_id"),
    )
    assert a.column("prediction").equals(b.column("prediction"))
    assert np.array_equal(
        a.column("probability_young").to_numpy(), b.column("probability_young").to_numpy()
    )


class UnknownScaler:
    """A type no allowlist knows."""

    def __init__(self) -> None:
        self.factor = 2.0


def test_skops_untrusted_types_are_refused_by_name(tmp_path, churn_input):
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    pipeline = Pipeline([("f", FunctionTransformer(func=UnknownScaler))])
    path = tmp_path / "custom.skops"
    sio.dump(pipeline, path)
    with pytest.raises(ModelError, match=r"not trusted: .*UnknownScaler") as raised:
        run(make_config(churn_input, tmp_path / "out", path, model={"features": FEATURES}))
    assert raised.value.exit_code == 4


def test_version_mismatch_warns_and_strict_versions_refuses(tmp_path, churn_input, monkeypatch):
    import sklearn.base
    from sklearn.linear_model import LogisticRegression

    frame = churn_table(300).to_pandas()
    model = LogisticRegression(max_iter=5_000).fit(
        frame[FEATURES].astype("float64"), frame["tenure"] > 30
    )
    monkeypatch.setattr(sklearn.base, "__version__", "1.0.0")  # as if saved by an old release
    path = tmp_path / "old.joblib"
    joblib.dump(model, path)
    monkeypatch.undo()

    result = runner.invoke(
        app, ["run", "-i", str(churn_input), "-o", str(tmp_path / "a"), "-m", str(path)]
    )
    assert result.exit_code == 0, result.stderr
    assert "saved with scikit-learn 1.0.0" in result.stderr

    strict = runner.invoke(
        app,
        [
            "run",
            "-i",
            str(churn_input),
            "-o",
            str(tmp_path / "b"),
            "-m",
            str(path),
            "--strict-versions",
        ],
    )
    assert strict.exit_code == 4
    assert "was saved with scikit-learn 1.0.0" in strict.stderr


@pytest.mark.parametrize(
    "value", ["..", "../../escape", "a/b", "", None, "%2e%2e", "/abs"], ids=repr
)
def test_partition_values_cannot_escape_the_output_root(tmp_path, trained_models, value):
    table = churn_table(100).append_column("segment", pa.array([value] * 100, pa.string()))
    source = write_parquet(table, tmp_path / "in" / "data.parquet")
    out = tmp_path / "deep" / "out"
    run(make_config(source, out, trained_models["binary"], output={"partition_by": ["segment"]}))
    written = [
        p for p in tmp_path.rglob("*.parquet") if "in" not in p.relative_to(tmp_path).parts[:1]
    ]
    assert written and all(out in p.parents for p in written)
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(pa.schema([("segment", pa.string())]), flavor="hive")
    back = ds.dataset(out, format="parquet", partitioning=partitioning).to_table()
    assert back.num_rows == 100
    assert set(back.column("segment").to_pylist()) == {value}


def test_partition_value_with_nul_is_refused(tmp_path, trained_models):
    """pyarrow would cut the folder name at the NUL, silently changing the value."""
    table = churn_table(10).append_column("segment", pa.array(["nul" + chr(0) + "byte"] * 10))
    source = write_parquet(table, tmp_path / "in" / "data.parquet")
    config = make_config(
        source, tmp_path / "out", trained_models["binary"], output={"partition_by": ["segment"]}
    )
    with pytest.raises(InputError, match="contains a NUL character"):
        run(config)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_partition_value_too_long_is_a_clear_error(tmp_path, trained_models):
    table = churn_table(10).append_column("segment", pa.array(["x" * 300] * 10))
    source = write_parquet(table, tmp_path / "in" / "data.parquet")
    with pytest.raises(InputError, match="too long for a folder name"):
        run(
            make_config(
                source,
                tmp_path / "out",
                trained_models["binary"],
                output={"partition_by": ["segment"]},
            )
        )
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_output_inside_input_is_refused(tmp_path, trained_models, churn_input):
    with pytest.raises(ConfigError, match="inside the input"):
        run(make_config(churn_input, churn_input / "scored", trained_models["binary"]))


def test_incompatible_schemas_are_bad_input(tmp_path, trained_models):
    good = churn_table(100)
    write_parquet(good, tmp_path / "in" / "a.parquet")
    bad = good.set_column(1, "age", pa.array([str(v) for v in good.column("age").to_pylist()]))
    write_parquet(bad, tmp_path / "in" / "b.parquet")
    with pytest.raises(InputError, match=r"column 'age' is string in \S*b\.parquet but int32"):
        run(make_config(tmp_path / "in", tmp_path / "out", trained_models["binary"]))


def test_zero_byte_file_is_bad_input(tmp_path, trained_models, churn_input):
    (churn_input / "day=1" / "empty.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.parquet is not a readable Parquet file"):
        run(make_config(churn_input, tmp_path / "out", trained_models["binary"]))
    assert not (tmp_path / "out").exists()


def test_storage_option_values_never_reach_logs_manifest_or_errors(
    tmp_path, trained_models, churn_input
):
    secret = "SENTINEL-s3cr3t-9f8e7d"
    config = tmp_path / "c.yaml"
    config.write_text(
        "input:\n"
        f"  path: {churn_input}\n"
        f"  storage_options: {{auto_mkdir: true, token: {secret}}}\n"
        f"model: {{path: {trained_models['binary']}}}\n"
        f"output: {{path: {tmp_path / 'out'}, storage_options: {{auto_mkdir: true, password: {secret}}}}}\n"
    )
    ok = runner.invoke(app, ["run", "-c", str(config), "--verbose", "--output-format", "json"])
    assert ok.exit_code == 0, ok.stderr
    failed = runner.invoke(
        app, ["run", "-c", str(config), "--verbose"]
    )  # committed already: exit 5
    assert failed.exit_code == 5
    manifest = (tmp_path / "out" / "_manifest.json").read_text()
    for text in (ok.stdout, ok.stderr, failed.stdout, failed.stderr, manifest):
        assert secret not in text
    assert '"token": "***"' in manifest
