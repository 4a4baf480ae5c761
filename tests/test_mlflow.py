"""Models from the MLflow registry, against a real ``mlflow server`` on loopback.

Models are logged and registered with MLflow's own API (a scikit-learn pipeline with strings,
XGBoost, LightGBM, a pyfunc custom model), aliases set with ``MlflowClient``; expected scores
come from the estimators' own methods and from the same pickle given by path.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import warnings
from importlib.metadata import version
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batch_infer.cli import app
from tests.conftest import churn_table, read_output, write_parquet
from tests.mlflow_helpers import free_port, start_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # MLflow's import-time notes about its own type hints
    mlflow = pytest.importorskip("mlflow")
    import mlflow.pyfunc  # noqa: F811  (the submodule, imported quietly)

NUMERIC = ["age", "tenure", "monthly_charges", "total_charges"]
FEATURES = [*NUMERIC, "region"]


def _train(seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    frame = churn_table(1_500, seed=seed).to_pandas()
    X = frame[FEATURES].astype({c: "float64" for c in NUMERIC})
    y = ((X["tenure"] + (X["region"] == "north") * 20 + seed) > 40).astype("int64").to_numpy()
    return X, y


def _pipeline(C: float, X: pd.DataFrame, y: np.ndarray):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), NUMERIC),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
                    ]
                ),
            ),
            ("model", LogisticRegression(C=C, max_iter=500)),
        ]
    ).fit(X, y)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # MLflow asks for type hints on predict

    class Doubler(mlflow.pyfunc.PythonModel):
        """A custom pyfunc model: two named outputs per row."""

        def predict(self, context, model_input, params=None):
            return pd.DataFrame(
                {
                    "double": model_input["monthly_charges"].astype("float64") * 2,
                    "band": np.where(model_input["age"] < 40, "young", "older"),
                }
            )


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The server, with models registered: churn v1 (@champion) and v2, XGBoost, LightGBM, a
    pyfunc; the churn v1 pipeline also saved with joblib, for scoring by path."""
    root = tmp_path_factory.mktemp("mlflow")
    server = start_server(root / "server")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", server.url)
        env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        env.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        try:
            yield _register(server, root)
        finally:
            server.stop()


def _register(server, root: Path) -> dict:
    from lightgbm import LGBMClassifier
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from xgboost import XGBClassifier

    X, y = _train(0)
    first, second = _pipeline(1.0, X, y), _pipeline(0.01, *_train(5))
    joblib.dump(first, root / "first.joblib")
    numbers = X[NUMERIC]
    xgb = XGBClassifier(n_estimators=5, max_depth=3, random_state=0).fit(numbers, y)
    lgbm = LGBMClassifier(n_estimators=5, num_leaves=7, random_state=0, verbose=-1).fit(numbers, y)
    runs = {}
    # given, not inferred (MLflow would import each model in a subprocess to find them)
    pins = [f"{p}=={version(p)}" for p in ("scikit-learn", "cloudpickle", "lightgbm")]
    pins.append(f"xgboost=={version('xgboost-cpu')}")  # the same module, without CUDA
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own notes while logging are not under test
        mlflow.set_experiment("batch-infer-tests")
        for name, model in (("churn", first), ("churn", second)):
            with mlflow.start_run() as run:
                mlflow.sklearn.log_model(
                    model,
                    name="model",
                    registered_model_name=name,
                    signature=infer_signature(X, model.predict(X)),
                    pip_requirements=pins,
                )
                runs.setdefault(name, run.info.run_id)
        with mlflow.start_run():
            mlflow.xgboost.log_model(
                xgb,
                name="model",
                registered_model_name="churn_xgb",
                signature=infer_signature(numbers, xgb.predict(numbers)),
                pip_requirements=pins,
            )
        with mlflow.start_run():
            mlflow.lightgbm.log_model(
                lgbm,
                name="model",
                registered_model_name="churn_lgbm",
                signature=infer_signature(numbers, lgbm.predict(numbers)),
                pip_requirements=pins,
            )
        with mlflow.start_run():
            sample = X[["age", "monthly_charges"]]
            mlflow.pyfunc.log_model(
                name="model",
                python_model=Doubler(),
                registered_model_name="doubler",
                signature=infer_signature(sample, Doubler().predict(None, sample)),
                pip_requirements=pins,
            )
        MlflowClient().set_registered_model_alias("churn", "champion", "1")
    return {
        "server": server,
        "url": server.url,
        "first": first,
        "second": second,
        "xgb": xgb,
        "lgbm": lgbm,
        "path": root / "first.joblib",
        "run_id": runs["churn"],
    }


@pytest.fixture
def churn_input(tmp_path: Path) -> Path:
    root = tmp_path / "input"
    table = churn_table(3_000, seed=1)
    write_parquet(table.slice(0, 1_500), root / "a.parquet", row_group_size=500)
    write_parquet(table.slice(1_500), root / "b.parquet", row_group_size=500)
    return root


def _run(input_path: Path, output: Path, model: str, *extra: str):
    return CliRunner().invoke(
        app, ["run", "-i", str(input_path), "-m", model, "-o", str(output), *extra]
    )


def _scores(output: Path) -> pd.DataFrame:
    return read_output(output).to_pandas().sort_values("customer_id").reset_index(drop=True)


def _manifest(output: Path) -> dict:
    return json.loads((output / "_manifest.json").read_text())


def test_version_alias_and_run_uris_score_as_the_pickle_by_path(registry, churn_input, tmp_path):
    by_path = _run(churn_input, tmp_path / "path", str(registry["path"]))
    assert by_path.exit_code == 0, by_path.output
    expected = _scores(tmp_path / "path")
    frame = pq.read_table(churn_input).to_pandas().sort_values("customer_id")
    own = registry["first"].predict_proba(frame[FEATURES])[:, 1]
    # a linear model on dense inputs: within the rounding of a dot product (docs/models.md)
    np.testing.assert_allclose(expected["probability"].to_numpy(), own, rtol=1e-12, atol=1e-15)
    uris = {
        "version": "models:/churn/1",
        "alias": "models:/churn@champion",
        "run": f"runs:/{registry['run_id']}/model",
    }
    for label, uri in uris.items():
        done = _run(churn_input, tmp_path / label, uri)
        assert done.exit_code == 0, (label, done.output)
        scored = _scores(tmp_path / label)
        np.testing.assert_array_equal(scored["prediction"], expected["prediction"])
        np.testing.assert_array_equal(scored["probability"], expected["probability"])
    alias = _scores(tmp_path / "alias")
    assert set(alias["model_version"]) == {"churn/1"}
    model = _manifest(tmp_path / "alias")["model"]["registry"]
    assert model["name"] == "churn" and model["version"] == "1"
    assert model["alias"] == "champion" and model["source"] == "models:/churn@champion"
    assert model["run_id"] == registry["run_id"] and len(model["sha256"]) == 64
    run = _scores(tmp_path / "run")
    assert set(run["model_version"]) == {f"{registry['run_id']}/model"}


def test_xgboost_and_lightgbm_flavors_score_as_the_estimators(registry, churn_input, tmp_path):
    frame = pq.read_table(churn_input).to_pandas().sort_values("customer_id")
    for name, key in (("churn_xgb", "xgb"), ("churn_lgbm", "lgbm")):
        done = _run(churn_input, tmp_path / name, f"models:/{name}/1")
        assert done.exit_code == 0, (name, done.output)
        scored = _scores(tmp_path / name)
        own = registry[key].predict_proba(frame[NUMERIC].astype("float64"))[:, 1]
        np.testing.assert_allclose(scored["probability"].to_numpy(), own, rtol=0, atol=1e-6)
        assert set(scored["model_version"]) == {f"{name}/1"}
        assert _manifest(tmp_path / name)["model"]["registry"]["flavor"] == name.split("_")[
            1
        ].replace("lgbm", "lightgbm").replace("xgb", "xgboost")


def test_a_pyfunc_model_scores_through_predict_with_a_column_per_output(
    registry, churn_input, tmp_path
):
    done = _run(churn_input, tmp_path / "out", "models:/doubler/1")
    assert done.exit_code == 0, done.output
    scored = _scores(tmp_path / "out")
    expected = Doubler().predict(None, scored[["age", "monthly_charges"]])
    np.testing.assert_array_equal(scored["prediction_double"], expected["double"])
    assert scored["prediction_band"].tolist() == expected["band"].tolist()


def test_signature_mismatch_exits_3_before_anything_is_written(registry, tmp_path):
    table = churn_table(200, seed=3)
    as_text = table.set_column(
        table.schema.get_field_index("monthly_charges"),
        "monthly_charges",
        pa.array([str(v) for v in table["monthly_charges"].to_pylist()]),
    )
    write_parquet(as_text, tmp_path / "text" / "a.parquet")
    done = _run(tmp_path / "text", tmp_path / "out1", "models:/churn/1")
    assert done.exit_code == 3, done.output
    assert "'monthly_charges'" in done.output and "string" in done.output
    assert "signature" in done.output and "double" in done.output
    assert not (tmp_path / "out1").exists()
    write_parquet(table.drop_columns(["region"]), tmp_path / "lacking" / "a.parquet")
    done = _run(tmp_path / "lacking", tmp_path / "out2", "models:/churn/1")
    assert done.exit_code == 3, done.output
    assert "no column 'region'" in done.output and "lacking" in done.output
    assert not (tmp_path / "out2").exists()


def test_an_optional_signature_column_missing_is_scored_as_missing(registry, tmp_path):
    """A pyfunc logged with an optional column: a file without it is scored, the column None."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        class Fill(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                note = model_input.get("note", pd.Series([None] * len(model_input)))
                return pd.Series(np.where(note.isna(), -1.0, 1.0)) + model_input["age"]

    signature = ModelSignature(
        Schema([ColSpec("long", "age"), ColSpec("string", "note", required=False)]),
        Schema([ColSpec("double")]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="model",
                python_model=Fill(),
                registered_model_name="optional",
                signature=signature,
                pip_requirements=["pandas"],
            )
    table = pa.table({"customer_id": pa.array(range(50), pa.int64()), "age": pa.array(range(50))})
    write_parquet(table, tmp_path / "in" / "a.parquet")
    done = _run(tmp_path / "in", tmp_path / "out", "models:/optional/1")
    assert done.exit_code == 0, done.output
    scored = _scores(tmp_path / "out")
    np.testing.assert_array_equal(scored["prediction"], np.arange(50) - 1.0)


def _subprocess_run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batch_infer", "run", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_alias_moved_while_killed_resume_scores_with_the_first_version_once(
    registry, churn_input, tmp_path
):
    from mlflow import MlflowClient

    output = tmp_path / "scores"
    args = ["-i", str(churn_input), "-m", "models:/churn@champion", "-o", str(output)]
    args += ["--workers", "1"]
    killed = _subprocess_run(args, BATCH_INFER_FAILPOINT="between-fragments")
    assert killed.returncode == -9, killed.stderr
    client = MlflowClient()
    client.set_registered_model_alias("churn", "champion", "2")
    try:
        resumed = _subprocess_run(args)
    finally:
        client.set_registered_model_alias("churn", "champion", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert "version 1" in resumed.stderr and "now points at version 2" in resumed.stderr
    scored = _scores(output)
    assert len(scored) == 3_000 and scored["customer_id"].is_unique
    assert set(scored["model_version"]) == {"churn/1"}
    frame = pq.read_table(churn_input).to_pandas().sort_values("customer_id")
    own = registry["first"].predict_proba(frame[FEATURES])[:, 1]
    np.testing.assert_allclose(scored["probability"].to_numpy(), own, rtol=1e-12, atol=1e-15)
    assert _manifest(output)["model"]["registry"]["version"] == "1"


def test_server_down_nothing_cached_exits_75_cached_pinned_version_resumes(
    registry, churn_input, tmp_path, monkeypatch
):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the refusal, not the retries
    done = _run(churn_input, tmp_path / "none", "models:/churn@champion")
    assert done.exit_code == 75, done.output
    assert dead in done.output and "MLFLOW_TRACKING_URI" in done.output
    # the run starts with the server up (the version is cached), is killed, resumes offline
    output = tmp_path / "scores"
    args = ["-i", str(churn_input), "-m", "models:/churn@champion", "-o", str(output)]
    args += ["--workers", "1"]
    killed = _subprocess_run(
        args, BATCH_INFER_FAILPOINT="between-fragments", MLFLOW_TRACKING_URI=registry["url"]
    )
    assert killed.returncode == -9, killed.stderr
    resumed = _subprocess_run(args, MLFLOW_TRACKING_URI=dead)
    assert resumed.returncode == 0, resumed.stderr
    scored = _scores(output)
    assert len(scored) == 3_000 and set(scored["model_version"]) == {"churn/1"}


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A registry that refuses everyone, as a server behind authentication does."""

    def do_GET(self) -> None:
        status = 401 if "Authorization" not in self.headers else 403
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"You are not authenticated.")

    def log_message(self, *args) -> None:
        pass


def test_a_registry_answering_401_or_403_exits_2_naming_the_variables(
    churn_input, tmp_path, monkeypatch
):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        done = _run(churn_input, tmp_path / "a", "models:/churn@champion")
        assert done.exit_code == 2, done.output
        assert "401" in done.output and "MLFLOW_TRACKING_USERNAME" in done.output
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "scorer")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-very-secret")
        done = _run(churn_input, tmp_path / "b", "models:/churn/3")
        assert done.exit_code == 2, done.output
        assert "403" in done.output and "MLFLOW_TRACKING_TOKEN" in done.output
        assert "hunter2-very-secret" not in done.output
    finally:
        server.shutdown()
        server.server_close()


def test_serve_answers_with_the_registry_name_and_version(registry, churn_input, tmp_path):
    import httpx

    from tests.test_serve_rest import ServeProcess

    frame = pq.read_table(churn_input).to_pandas().head(3)
    with ServeProcess(tmp_path, "models:/churn@champion") as server:
        metadata = httpx.get(f"{server.url}/v2/models/churn/versions/1", timeout=30)
        assert metadata.status_code == 200, metadata.text
        assert metadata.json()["name"] == "churn" and metadata.json()["versions"] == ["1"]
        inputs = [
            {"name": c, "datatype": "FP64", "shape": [3], "data": frame[c].astype(float).tolist()}
            for c in NUMERIC
        ]
        inputs.append(
            {"name": "region", "datatype": "BYTES", "shape": [3], "data": frame["region"].tolist()}
        )
        answer = httpx.post(
            f"{server.url}/v2/models/churn/versions/1/infer", json={"inputs": inputs}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        own = registry["first"].predict_proba(frame[FEATURES].astype({c: float for c in NUMERIC}))
        np.testing.assert_allclose(outputs["probability"], own[:, 1], rtol=1e-12)
        assert answer.json()["model_version"] == "1"
        wrong = httpx.get(f"{server.url}/v2/models/churn/versions/2", timeout=30)
        assert wrong.status_code == 404


def test_inspect_shows_the_resolved_version_signature_and_contract(registry):
    done = CliRunner().invoke(app, ["inspect", "models:/churn@champion"])
    assert done.exit_code == 0, done.output
    assert (
        "models:/churn@champion -> churn version 1 (alias @champion), flavor sklearn" in done.output
    )
    assert "region: string" in done.output and "monthly_charges: double" in done.output
    assert "categorical" in done.output  # the contract: the one-hot encoder's categories
    done = CliRunner().invoke(app, ["inspect", "models:/churn/2", "--output-format", "json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output.strip().splitlines()[-1])
    assert data["mlflow"]["version"] == "2" and data["mlflow"]["name"] == "churn"
    assert [c["name"] for c in data["mlflow"]["signature"]] == FEATURES


def test_recorded_versions_that_differ_warn_and_strict_versions_exits_4(
    registry, churn_input, tmp_path
):
    """A model logged with another scikit-learn: a warning naming both; --strict-versions: 4."""
    import sklearn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run():
            mlflow.sklearn.log_model(
                registry["first"],
                name="model",
                registered_model_name="old_env",
                pip_requirements=["scikit-learn==1.0.2", "cloudpickle"],
            )
    done = _run(churn_input, tmp_path / "a", "models:/old_env/1")
    assert done.exit_code == 0, done.output
    assert f"scikit-learn 1.0.2 (recorded by the model), {sklearn.__version__} installed" in (
        done.output
    )
    done = _run(churn_input, tmp_path / "b", "models:/old_env/1", "--strict-versions")
    assert done.exit_code == 4, done.output
    assert "1.0.2" in done.output and sklearn.__version__ in done.output
    assert not (tmp_path / "b").exists()


def test_a_local_mlmodel_folder_scores_as_the_pickle_by_path(registry, churn_input, tmp_path):
    folder = tmp_path / "saved"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            registry["first"], str(folder), pip_requirements=["scikit-learn", "cloudpickle"]
        )
    assert _run(churn_input, tmp_path / "path", str(registry["path"])).exit_code == 0
    done = _run(churn_input, tmp_path / "folder", str(folder))
    assert done.exit_code == 0, done.output
    expected, scored = _scores(tmp_path / "path"), _scores(tmp_path / "folder")
    np.testing.assert_array_equal(scored["probability"], expected["probability"])
    record = _manifest(tmp_path / "folder")["model"]["registry"]
    assert record["version"] is None and record["source"] == str(folder)
    assert set(scored["model_version"]) == {f"saved@{record['sha256'][:12]}"}
