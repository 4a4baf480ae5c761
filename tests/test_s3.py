"""End-to-end runs against a real S3 HTTP API: moto's server on loopback, reached through s3fs.

Nothing in batch_infer is mocked or patched: the code under test builds its own s3fs
filesystems from URLs, storage options and the standard AWS environment, exactly as for a user.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.request
from pathlib import Path

import joblib
import numpy as np
import pyarrow.dataset as ds
import pytest
import s3fs
from typer.testing import CliRunner

from batch_infer import run
from batch_infer.cli import app

from .conftest import FEATURES, churn_table, make_config, write_parquet

BUCKET = "batch-infer-test"
INPUT_ROWS = 5_000

# Variables that could point the code at real AWS, a real profile, or change endpoint handling.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CA_BUNDLE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


_CLI_TUNED_LOGGERS = ("botocore", "s3fs", "fsspec", "aiobotocore", "urllib3")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with fake credentials and no ~/.aws; yields its URL."""
    from moto.server import ThreadedMotoServer

    aws_home = tmp_path_factory.mktemp("aws-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in _AWS_VARS_TO_CLEAR:
            mp.delenv(name, raising=False)
        for name in [n for n in os.environ if n.startswith("BATCH_INFER_")]:
            mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(aws_home / "no-such-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws_home / "no-such-credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, "127.0.0.1,localhost")

        # one log line per request from moto's werkzeug server is noise in failure reports
        werkzeug_logger = logging.getLogger("werkzeug")
        werkzeug_level = werkzeug_logger.level
        werkzeug_logger.setLevel(logging.WARNING)

        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()
            werkzeug_logger.setLevel(werkzeug_level)


@pytest.fixture(autouse=True)
def _isolate_logging():
    """Undo the CLI's logging setup after each test.

    ``batch-infer`` calls ``logging.basicConfig(force=True)`` on the stderr CliRunner captures;
    after the invocation that stream is closed, and later records (moto's server thread, botocore)
    would print "--- Logging error ---" noise. A real process exits instead, so this is test-only.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = {name: logging.getLogger(name).level for name in _CLI_TUNED_LOGGERS}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    for name, old_level in named.items():
        logging.getLogger(name).setLevel(old_level)


@pytest.fixture
def s3(moto_endpoint):
    """A clean moto state with one empty bucket; yields a private s3fs view of it for checks.

    The view skips fsspec's instance cache, so what the tests see is what S3 holds, not what
    the code under test's filesystem objects have cached.
    """
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_input(s3, tmp_path):
    """Two files of 2,500 rows (1,000-row groups), hive-partitioned by day, uploaded to S3.

    Returns (s3:// URL of the dataset root, the full input table).
    """
    table = churn_table(INPUT_ROWS, seed=1)
    local = tmp_path / "upload"
    files = {
        "day=1/a.parquet": write_parquet(table.slice(0, 2_500), local / "day=1" / "a.parquet"),
        "day=2/b.parquet": write_parquet(table.slice(2_500), local / "day=2" / "b.parquet"),
    }
    for relative, path in files.items():
        s3.put_file(str(path), f"{BUCKET}/input/{relative}")
    # a marker a hive-aware reader skips; the run must skip it too
    s3.pipe_file(f"{BUCKET}/input/_SUCCESS", b"")
    return f"s3://{BUCKET}/input", table


@pytest.fixture
def s3_model(s3, trained_models):
    """The binary Pipeline uploaded to S3; returns (s3:// URL, local path)."""
    local = trained_models["binary"]
    s3.put_file(str(local), f"{BUCKET}/models/binary.joblib")
    return f"s3://{BUCKET}/models/binary.joblib", local


def _objects(fs: s3fs.S3FileSystem, prefix: str) -> dict[str, dict]:
    """Every object under a prefix with the facts that change when it is rewritten."""
    fs.invalidate_cache()
    found = fs.find(prefix, detail=True)
    return {
        path: {"size": info["size"], "etag": info.get("ETag"), "modified": info.get("LastModified")}
        for path, info in found.items()
    }


def _assert_committed(
    fs: s3fs.S3FileSystem, out_prefix: str, input_table, model_path: Path
) -> None:
    """_SUCCESS + manifest present, nothing staged, every input row exactly once and well scored."""
    fs.invalidate_cache()
    assert fs.isfile(f"{out_prefix}/_SUCCESS")
    manifest = json.loads(fs.cat_file(f"{out_prefix}/_manifest.json"))
    assert manifest["rows_in"] == manifest["rows_out"] == INPUT_ROWS
    assert not fs.find(f"{out_prefix}/_staging"), "staged objects were left behind"
    assert not [p for p in fs.find(out_prefix) if p.endswith(".staged")]
    for entry in manifest["files"]:
        assert fs.isfile(f"{out_prefix}/{entry['path']}")

    output = (
        ds.dataset(out_prefix, format="parquet", partitioning="hive", filesystem=fs)
        .to_table()
        .sort_by("customer_id")
    )
    assert output.num_rows == INPUT_ROWS
    assert output.column("customer_id").to_pylist() == list(range(INPUT_ROWS))
    assert output.column("day").to_pylist() == [1] * 2_500 + [2] * 2_500

    frame = input_table.sort_by("customer_id").to_pandas()
    model = joblib.load(model_path)
    X = frame[FEATURES].astype("float64")
    expected_labels = model.predict(X)
    expected_proba = model.predict_proba(X)[:, 1]
    np.testing.assert_array_equal(output.column("prediction").to_numpy(), expected_labels)
    np.testing.assert_allclose(output.column("probability").to_numpy(), expected_proba, rtol=1e-12)
    # input columns pass through untouched
    for name in ("age", "tenure", "monthly_charges", "total_charges"):
        np.testing.assert_array_equal(output.column(name).to_numpy(), frame[name].to_numpy())
    assert output.column("region").cast("string").to_pylist() == frame["region"].tolist()


def _cli(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def _versions(fs: s3fs.S3FileSystem, prefix: str) -> list[tuple[str, str, str]]:
    """Every object version and delete marker under a prefix of a versioned bucket.

    Any PUT, copy or DELETE adds an entry, even one that rewrites identical bytes within the
    same second, so equal lists before and after prove nothing was touched.
    """
    response = fs.call_s3("list_object_versions", Bucket=BUCKET, Prefix=prefix)
    assert not response.get("IsTruncated")
    entries = [("version", v["Key"], v["VersionId"]) for v in response.get("Versions", [])]
    entries += [("delete", m["Key"], m["VersionId"]) for m in response.get("DeleteMarkers", [])]
    return sorted(entries)


def _error_line(stderr: str) -> str:
    """The CLI's one error line: the last stderr line (INFO log lines may come before it)."""
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert sum(line.startswith("Error: ") for line in lines) == 1, stderr
    return lines[-1]


def test_library_run_reads_and_writes_s3_with_storage_options(
    s3, s3_input, s3_model, moto_endpoint
):
    input_url, table = s3_input
    model_url, model_local = s3_model
    options = {"endpoint_url": moto_endpoint}
    output_url = f"s3://{BUCKET}/scored/run"

    config = make_config(
        input_url,
        output_url,
        model_url,
        input={"storage_options": options},
        model={"storage_options": options},
        output={"storage_options": options, "partition_by": ["region"]},
    )
    report = run(config)

    assert report.status == "committed"
    assert report.rows_in == report.rows_out == INPUT_ROWS
    assert report.files_in == 2
    assert report.fragments == 6  # 2 files x 3 row groups of <= 1,000 rows
    assert report.output == output_url
    assert report.files_out >= 4  # at least one file per region
    manifest = json.loads(s3.cat_file(f"{BUCKET}/scored/run/_manifest.json"))
    assert manifest["run_id"] == report.run_id
    assert manifest["model"]["path"] == model_url
    assert {f["path"].split("/")[0] for f in manifest["files"]} == {
        "region=east",
        "region=north",
        "region=south",
        "region=west",
    }
    # storage options are never written out in clear
    assert manifest["config"]["input"]["storage_options"] == {"endpoint_url": "***"}
    assert moto_endpoint not in json.dumps(manifest)
    _assert_committed(s3, f"{BUCKET}/scored/run", table, model_local)


def test_cli_uses_aws_endpoint_url_from_environment(
    s3, s3_input, s3_model, moto_endpoint, monkeypatch
):
    input_url, table = s3_input
    model_url, model_local = s3_model
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # the only place the endpoint is given

    result = _cli(
        [
            "run",
            "--input",
            input_url,
            "--output",
            f"s3://{BUCKET}/scored/env",
            "--model",
            model_url,
            "--output-format",
            "json",
        ]
    )

    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows_in"] == report["rows_out"] == INPUT_ROWS
    assert report["status"] == "committed"
    _assert_committed(s3, f"{BUCKET}/scored/env", table, model_local)


def test_cli_mode_error_refuses_committed_s3_output(
    s3, s3_input, s3_model, moto_endpoint, tmp_path
):
    input_url, _ = s3_input
    model_url, _ = s3_model
    options = {"endpoint_url": moto_endpoint}
    output_url = f"s3://{BUCKET}/scored/daily"
    s3.make_bucket_versioned(BUCKET)  # so that even an identical rewrite would show
    first = run(
        make_config(
            input_url,
            output_url,
            model_url,
            input={"storage_options": options},
            model={"storage_options": options},
            output={"storage_options": options},
        )
    )
    before = _objects(s3, f"{BUCKET}/scored/daily")
    versions_before = _versions(s3, "scored/daily/")
    manifest_before = s3.cat_file(f"{BUCKET}/scored/daily/_manifest.json")
    assert f"{BUCKET}/scored/daily/_SUCCESS" in before

    # the endpoint comes from a YAML config this time; storage options are plain config
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "input:\n"
        f"  path: {input_url}\n"
        f"  storage_options: {{endpoint_url: '{moto_endpoint}'}}\n"
        "model:\n"
        f"  path: {model_url}\n"
        f"  storage_options: {{endpoint_url: '{moto_endpoint}'}}\n"
        "output:\n"
        f"  path: {output_url}\n"
        f"  storage_options: {{endpoint_url: '{moto_endpoint}'}}\n"
    )
    result = _cli(
        ["run", "--config", str(config_file), "--mode", "error", "--output-format", "json"]
    )

    assert result.exit_code == 5, result.output
    error = _error_line(result.stderr)
    assert error.startswith("Error: "), result.stderr
    assert "already holds a committed result" in error
    assert output_url in error
    assert first.run_id in error  # names the run that is in the way
    assert result.stdout.strip() == ""  # no report for a refused run
    assert _objects(s3, f"{BUCKET}/scored/daily") == before
    assert _versions(s3, "scored/daily/") == versions_before
    assert s3.cat_file(f"{BUCKET}/scored/daily/_manifest.json") == manifest_before


def test_cli_missing_s3_input_prefix_exits_3(s3, s3_model, moto_endpoint, monkeypatch):
    model_url, _ = s3_model
    # the endpoint comes from BATCH_INFER_ variables this time (JSON-decoded storage options)
    options = json.dumps({"endpoint_url": moto_endpoint})
    for section in ("INPUT", "MODEL", "OUTPUT"):
        monkeypatch.setenv(f"BATCH_INFER_{section}__STORAGE_OPTIONS", options)

    result = _cli(
        [
            "run",
            "--input",
            f"s3://{BUCKET}/no/such/prefix",
            "--output",
            f"s3://{BUCKET}/scored/x",
            "--model",
            model_url,
            "--output-format",
            "json",
        ]
    )

    assert result.exit_code == 3, result.output
    error = _error_line(result.stderr)
    assert error.startswith("Error: "), result.stderr
    assert "does not exist" in error
    assert f"s3://{BUCKET}/no/such/prefix" in error
    assert not s3.find(f"{BUCKET}/scored")  # nothing written
