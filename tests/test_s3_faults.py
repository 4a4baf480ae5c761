"""S3 faults: a throttling, resetting, stalling or refusing object store, end to end.

moto's real S3 server runs on loopback (as in ``test_s3.py``) behind ``FaultProxy``, our own
fault-injecting HTTP proxy; batch-infer reaches it exactly as a user would, with
``endpoint_url`` pointing at the proxy in the storage options. Nothing in batch_infer is
patched. Runs that must give up on a store that keeps failing are separate processes with a
generous timeout (a hang fails the test instead of hanging the suite; and the exit code is the
process's own); the others run in-process through the CLI.
"""

# ruff: noqa: F811 - the fixtures imported from test_s3 are redefined as parameters, by design

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import urllib.request

import botocore.exceptions
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from s3fs.errors import translate_boto_error

from batch_infer import errors, storage
from batch_infer.errors import ConfigError, CredentialsError, InputError, StorageUnavailable

from .conftest import churn_table
from .s3_fault_proxy import FaultProxy
from .test_s3 import (  # noqa: F401 - fixtures, shared with the S3 tests
    BUCKET,
    INPUT_ROWS,
    _assert_committed,
    _cli,
    _error_line,
    _isolate_logging,
    moto_endpoint,
    s3,
    s3_input,
    s3_model,
)

RUN_TIMEOUT = 180  # seconds: far above the retry bound; reaching it means a hang
OUTPUT = f"s3://{BUCKET}/scored/faults"
OUT_PREFIX = f"{BUCKET}/scored/faults"


@pytest.fixture(autouse=True)
def _default_retry_settings(monkeypatch):
    """Our retry defaults apply unless a test sets AWS_MAX_ATTEMPTS / AWS_RETRY_MODE itself."""
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def proxy(moto_endpoint):
    with FaultProxy(moto_endpoint) as fault_proxy:
        yield fault_proxy


def _is(method: str, *fragments: str):
    """A request matcher: this method, and every fragment in the path (query included)."""
    return lambda m, p: m == method and all(f in p for f in fragments)


def _options(endpoint: str, **extra) -> str:
    return json.dumps({"endpoint_url": endpoint, **extra})


def _use_endpoints(monkeypatch, input_endpoint: str, output_endpoint: str, **output_extra):
    """Input and model through one endpoint, the output through another (with options)."""
    monkeypatch.setenv("BATCH_INFER_INPUT__STORAGE_OPTIONS", _options(input_endpoint))
    monkeypatch.setenv("BATCH_INFER_MODEL__STORAGE_OPTIONS", _options(input_endpoint))
    monkeypatch.setenv(
        "BATCH_INFER_OUTPUT__STORAGE_OPTIONS", _options(output_endpoint, **output_extra)
    )


def _run_args(input_url: str, model_url: str, *extra: str) -> list[str]:
    return ["run", "--input", input_url, "--model", model_url, "--output", OUTPUT, *extra]


def _run_process(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``batch-infer`` as a separate process: its real exit code, and a hang cannot hang us."""
    return subprocess.run(
        [sys.executable, "-m", "batch_infer", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def _open_uploads(fs: s3fs.S3FileSystem) -> list[dict]:
    """Unfinished multipart uploads in the bucket, asked of moto directly."""
    return fs.call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads", [])


def _assert_nothing_committed(fs: s3fs.S3FileSystem) -> None:
    fs.invalidate_cache()
    assert not fs.exists(f"{OUT_PREFIX}/_SUCCESS")
    assert not fs.exists(f"{OUT_PREFIX}/_manifest.json")
    assert not [p for p in fs.find(OUT_PREFIX) if p.endswith(".parquet")]


# -- transient faults are retried: the run commits every row exactly once -----------------


@pytest.mark.parametrize("kind", ["slow_down", "reset"])
def test_transient_faults_are_retried_and_the_run_commits_exactly_once(
    kind, s3, s3_input, s3_model, proxy, monkeypatch
):
    """503 SlowDown (a) or connection resets (c) for the first requests, then once on a staged
    part, a commit move and _SUCCESS: retried, the run exits 0 with every row exactly once."""
    input_url, table = s3_input
    model_url, model_local = s3_model
    _use_endpoints(monkeypatch, proxy.url, proxy.url)  # input, model and output: all faulty
    inject = getattr(proxy, kind)
    faults = [
        inject(3),  # the first requests: the model's HEAD, the input's listing
        inject(1, match=_is("PUT", "/_staging/", ".parquet.staged")),  # a staged part
        inject(1, match=lambda m, p: m == "PUT" and p.endswith(".parquet")),  # a move's copy
        inject(1, match=_is("PUT", "/_SUCCESS")),  # the commit's last step
    ]

    result = _cli([*_run_args(input_url, model_url), "--output-format", "json"])

    assert result.exit_code == 0, result.stderr
    assert [f.injected for f in faults] == [3, 1, 1, 1]  # every step was hit
    assert json.loads(result.stdout.strip().splitlines()[-1])["rows_out"] == INPUT_ROWS
    _assert_committed(s3, OUT_PREFIX, table, model_local)  # each customer_id once, no staging
    assert not s3.exists(f"{OUT_PREFIX}/_batch_infer.lock")
    assert _open_uploads(s3) == []


def test_stalls_longer_than_the_read_timeout_are_retried(
    s3, s3_input, s3_model, proxy, monkeypatch
):
    """(d) The store says nothing for 5 s when a data file is first read; with a 1 s read
    timeout in the storage options the attempt is abandoned and retried: exit 0."""
    input_url, table = s3_input
    model_url, model_local = s3_model
    short = {"config_kwargs": {"read_timeout": 1}}
    monkeypatch.setenv("BATCH_INFER_INPUT__STORAGE_OPTIONS", _options(proxy.url, **short))
    monkeypatch.setenv("BATCH_INFER_MODEL__STORAGE_OPTIONS", _options(proxy.url, **short))
    monkeypatch.setenv("BATCH_INFER_OUTPUT__STORAGE_OPTIONS", _options(proxy.url, **short))
    stall = proxy.stall(1, seconds=5, match=_is("GET", ".parquet"))  # a footer, via pyarrow

    result = _cli(_run_args(input_url, model_url))

    assert result.exit_code == 0, result.stderr
    assert stall.injected == 1
    _assert_committed(s3, OUT_PREFIX, table, model_local)


# -- persistent faults end the run in bounded time: exit 75, nothing committed ------------


def test_endless_throttling_exits_75_in_bounded_time_and_a_rerun_resumes(
    s3, s3_input, s3_model, proxy, moto_endpoint, monkeypatch
):
    """(b) Once the run has staged its first part, every request gets 503 SlowDown forever.
    With the default retry settings the process gives up by itself (the subprocess timeout
    only guards against a hang): exit 75, a one-line error naming the throttling, no
    _SUCCESS, no manifest, no multipart upload left open. When the store recovers, the same
    command resumes the run and commits every row exactly once."""
    input_url, table = s3_input
    model_url, model_local = s3_model
    _use_endpoints(monkeypatch, proxy.url, proxy.url)
    forever = proxy.slow_down(after=_is("PUT", "/_staging/", ".parquet.staged"))

    result = _run_process(_run_args(input_url, model_url, "--workers", "1"))

    assert result.returncode == 75, result.stderr
    error = _error_line(result.stderr)
    assert "kept throttling requests" in error  # SlowDown; 503 for a HEAD (no body)
    assert "nothing was committed" in error and "rerun later" in error
    assert forever.injected >= 4  # one request's attempts at least: it was retried
    proxy.clear()
    _assert_nothing_committed(s3)
    assert _open_uploads(s3) == []
    assert s3.find(f"{OUT_PREFIX}/_staging")  # kept for the rerun

    rerun = _cli(_run_args(input_url, model_url))

    assert rerun.exit_code == 0, rerun.stderr
    _assert_committed(s3, OUT_PREFIX, table, model_local)


@pytest.fixture
def large_input(s3, tmp_path):
    """One 3,000-row group with a 2 KiB random payload per row: a 6 MiB part file, written
    in two parts when the output's block size is s3fs's minimum, 5 MiB."""
    rng = np.random.default_rng(3)
    table = churn_table(3_000, seed=3)
    payload = pa.array([rng.bytes(2048) for _ in range(table.num_rows)], pa.binary())
    table = table.append_column("payload", payload)
    local = tmp_path / "large.parquet"
    pq.write_table(table, local, row_group_size=table.num_rows, compression="none")
    s3.put_file(str(local), f"{BUCKET}/large/large.parquet")
    return f"s3://{BUCKET}/large"


def test_a_refused_multipart_upload_is_aborted_and_the_process_exits_75(
    s3, large_input, s3_model, proxy, moto_endpoint
):
    """Every UploadPart of the output is throttled forever (a hot prefix); the rest works.

    The upload is aborted, so none stays open, and the process exits 75. (s3fs leaves a
    failed upload's file open; pyarrow's dataset writer then holds it until the interpreter
    exits and the process dies with "Fatal Python error: PyGILState_Release", exit 134.)
    AWS_MAX_ATTEMPTS=2 in the environment wins over our default of 4: each UploadPart is
    tried exactly twice, s3fs adding no retries of its own."""
    model_url, _ = s3_model
    throttled = proxy.slow_down(match=_is("PUT", "uploadId="))
    options = {
        "BATCH_INFER_INPUT__STORAGE_OPTIONS": _options(moto_endpoint),
        "BATCH_INFER_MODEL__STORAGE_OPTIONS": _options(moto_endpoint),
        "BATCH_INFER_OUTPUT__STORAGE_OPTIONS": _options(proxy.url, default_block_size=5 * 2**20),
    }

    result = _run_process(
        _run_args(large_input, model_url, "--workers", "1"), AWS_MAX_ATTEMPTS="2", **options
    )

    assert result.returncode == 75, result.stderr
    assert "UploadPart" in _error_line(result.stderr)
    assert throttled.injected == 2  # one part, two attempts: the run stopped there
    assert proxy.count("forwarded", _is("POST", "?uploads")) == 1  # the upload was started
    assert proxy.count("forwarded", _is("DELETE", "uploadId=")) == 1  # ... and aborted
    assert _open_uploads(s3) == []
    _assert_nothing_committed(s3)


def test_an_upload_the_store_would_not_let_us_abort_is_aborted_by_the_next_run(
    s3, large_input, s3_model, proxy, moto_endpoint, monkeypatch
):
    """Throttling forever from the moment a multipart upload starts: not even the abort
    gets through, so the failed run (exit 75) leaves the upload open. The next run, the store
    healthy again, must abort it: no upload stays open once a run has succeeded."""
    model_url, _ = s3_model
    proxy.slow_down(after=_is("POST", "?uploads"))
    options = {
        "BATCH_INFER_INPUT__STORAGE_OPTIONS": _options(moto_endpoint),
        "BATCH_INFER_MODEL__STORAGE_OPTIONS": _options(moto_endpoint),
        "BATCH_INFER_OUTPUT__STORAGE_OPTIONS": _options(proxy.url, default_block_size=5 * 2**20),
    }
    args = _run_args(large_input, model_url, "--workers", "1")
    # a process of its own: the lock it cannot remove names a pid that is gone afterwards;
    # one attempt per request, as nothing gets through anyway
    failed = _run_process(args, AWS_MAX_ATTEMPTS="1", **options)
    assert failed.returncode == 75, failed.stderr
    assert len(_open_uploads(s3)) == 1  # the store refused the abort too
    proxy.clear()
    for name, value in options.items():
        monkeypatch.setenv(name, value)

    rerun = _cli(args)

    assert rerun.exit_code == 0, rerun.stderr
    assert _open_uploads(s3) == []


# -- refused credentials fail fast: exit 2, no retries ---------------------------------------


@pytest.fixture
def iam_auth(s3, s3_input, s3_model, moto_endpoint):
    """moto checking credentials and signatures like S3 does (IAM simulation in server mode,
    switched on with POST /moto-api/reset-auth); off again afterwards.

    Returns the access key of a user without any policy: known, but allowed nothing.
    """
    import boto3

    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    iam.create_user(UserName="no-rights")
    key = iam.create_access_key(UserName="no-rights")["AccessKey"]

    def reset_auth(count: str) -> None:
        request = urllib.request.Request(
            f"{moto_endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # Flask drops form-encoded bodies
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    reset_auth("0")  # from the next request on, every request is authenticated
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        reset_auth("inf")
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize(
    "credentials, code",
    [
        ("unknown key", "InvalidAccessKeyId"),
        ("wrong secret", "SignatureDoesNotMatch"),
        ("no permission", "AccessDenied"),
    ],
)
def test_refused_credentials_fail_fast_with_exit_2(
    credentials, code, s3, s3_input, s3_model, proxy, iam_auth, monkeypatch
):
    """(e) moto rejects the credentials itself: exit 2 at the first request, an error saying
    to check the credentials, no request repeated (403 is never retried), nothing written."""
    input_url, _ = s3_input
    model_url, _ = s3_model
    key_id, secret = iam_auth
    key_id, secret = {
        "unknown key": ("AKIAIOSFODNN7NOSUCHK", "s" * 40),
        "wrong secret": (key_id, "s" * 40),
        "no permission": (key_id, secret),
    }[credentials]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    s3fs.S3FileSystem.clear_instance_cache()  # no client made with the good credentials
    _use_endpoints(monkeypatch, proxy.url, proxy.url)

    result = _cli(_run_args(input_url, model_url))

    assert result.exit_code == 2, result.stderr
    error = _error_line(result.stderr)
    assert "refused the credentials" in error and code in error
    assert "check the credentials" in error and "not retried" in error
    refused = collections.Counter((s.method, s.path) for s in proxy.seen if s.status == 403)
    assert refused and set(refused.values()) == {1}, refused  # each refused request once
    assert proxy.count("forwarded") == len(proxy.seen)  # every request reached moto
    assert all(s.status == 403 for s in proxy.seen)
    assert secret not in result.stderr


def test_credentials_expiring_while_reading_keep_the_staged_work(
    s3, s3_input, s3_model, proxy, monkeypatch
):
    """A token that expires mid-run while *reading* the input (403 ExpiredToken on the second
    file's GET) ends the run with exit 2, as refused credentials do, but the row groups already
    staged are kept: with fresh credentials the same command resumes them and commits exactly
    once."""
    input_url, table = s3_input
    model_url, model_local = s3_model
    _use_endpoints(monkeypatch, proxy.url, proxy.url)
    proxy.error(
        status=403,
        code="ExpiredToken",
        message="The provided token has expired.",
        match=_is("GET", "/input/", "b.parquet"),
        after=_is("PUT", "/_staging/", "_done"),
    )

    result = _cli(_run_args(input_url, model_url, "--workers", "1"))

    assert result.exit_code == 2, result.stderr
    assert "refused the credentials" in _error_line(result.stderr)
    _assert_nothing_committed(s3)
    s3.invalidate_cache()
    done = s3.glob(f"{OUT_PREFIX}/_staging/*/_done/*.json")
    assert done, "the row groups staged before the token expired were discarded"
    proxy.clear()

    rerun = _cli(_run_args(input_url, model_url, "--workers", "1"))

    assert rerun.exit_code == 0, rerun.stderr
    assert f"{len(done)} row group(s) already staged" in rerun.stderr
    _assert_committed(s3, OUT_PREFIX, table, model_local)


# -- the output lock's conditional PUT on S3 ------------------------------------------------


def test_moto_honours_if_none_match_so_a_second_exclusive_create_fails(s3, proxy):
    """storage.create_exclusive (the output lock) relies on PutObject with If-None-Match: *.
    moto honours it (412 PreconditionFailed, which s3fs raises as FileExistsError)."""
    fs, path = storage.resolve(
        f"s3://{BUCKET}/locks/_batch_infer.lock", {"endpoint_url": proxy.url}
    )

    assert storage.create_exclusive(fs, path, b"first") is True
    assert storage.create_exclusive(fs, path, b"second") is False
    assert s3.cat_file(f"{BUCKET}/locks/_batch_infer.lock") == b"first"
    assert [s.status for s in proxy.seen if s.method == "PUT"] == [200, 412]


def test_a_lost_response_to_the_lock_put_does_not_lock_the_run_out(
    s3, s3_input, s3_model, proxy, monkeypatch
):
    """The lock's PUT reaches S3 but its response is lost (connection reset): botocore
    retries it, and S3 answers 412 since the lock now exists. The lock is ours."""
    input_url, table = s3_input
    model_url, model_local = s3_model
    _use_endpoints(monkeypatch, proxy.url, proxy.url)
    lost = proxy.drop_response(1, match=_is("PUT", "/_batch_infer.lock"))

    result = _cli(_run_args(input_url, model_url))

    assert lost.injected == 1
    assert result.exit_code == 0, result.stderr
    _assert_committed(s3, OUT_PREFIX, table, model_local)


# -- the pieces: retry settings, error translation, upload clean-up -------------------------


def test_s3_retry_and_timeout_defaults_and_what_wins_over_them(monkeypatch):
    defaults = storage.s3_options({"endpoint_url": "http://127.0.0.1:1"})
    assert defaults["config_kwargs"] == {
        "retries": {"total_max_attempts": storage.S3_MAX_ATTEMPTS, "mode": "standard"},
        "connect_timeout": storage.S3_CONNECT_TIMEOUT,
        "read_timeout": storage.S3_READ_TIMEOUT,
    }
    assert defaults["endpoint_url"] == "http://127.0.0.1:1"

    mine = {"config_kwargs": {"retries": {"max_attempts": 9}, "read_timeout": 120}}
    assert storage.s3_options(mine)["config_kwargs"] == {
        "retries": {"max_attempts": 9, "mode": "standard"},
        "read_timeout": 120,
        "connect_timeout": storage.S3_CONNECT_TIMEOUT,
    }
    assert mine == {"config_kwargs": {"retries": {"max_attempts": 9}, "read_timeout": 120}}

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert "retries" not in storage.s3_options({})["config_kwargs"]  # botocore reads the env

    fs, path = storage.resolve("s3://bucket/key", {"endpoint_url": "http://127.0.0.1:1"})
    assert isinstance(fs, s3fs.S3FileSystem) and path == "bucket/key"
    assert fs.retries == storage.S3FS_RETRIES == 1  # s3fs's own retry loop is off


def _client_error(code: str, status: int, operation: str = "PutObject", attempts: int = 4):
    response = {
        "Error": {"Code": code, "Message": f"message of {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": attempts - 1},
    }
    return botocore.exceptions.ClientError(response, operation)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: translate_boto_error(_client_error("SlowDown", 503)), StorageUnavailable),
        (lambda: translate_boto_error(_client_error("503", 503, "HeadObject")), StorageUnavailable),
        (lambda: translate_boto_error(_client_error("InternalError", 500)), StorageUnavailable),
        (lambda: botocore.exceptions.ReadTimeoutError(endpoint_url="u"), StorageUnavailable),
        (lambda: botocore.exceptions.EndpointConnectionError(endpoint_url="u"), StorageUnavailable),
        (lambda: botocore.exceptions.ConnectionClosedError(endpoint_url="u"), StorageUnavailable),
        (lambda: OSError(16, "Please reduce your request rate."), StorageUnavailable),
        (
            lambda: translate_boto_error(_client_error("InvalidAccessKeyId", 403, attempts=1)),
            CredentialsError,
        ),
        (
            lambda: translate_boto_error(_client_error("SignatureDoesNotMatch", 403)),
            CredentialsError,
        ),
        (lambda: translate_boto_error(_client_error("AccessDenied", 403)), CredentialsError),
        (lambda: translate_boto_error(_client_error("403", 403, "HeadObject")), CredentialsError),
        (lambda: botocore.exceptions.NoCredentialsError(), CredentialsError),
        (lambda: translate_boto_error(_client_error("NoSuchKey", 404)), None),
        (lambda: translate_boto_error(_client_error("PreconditionFailed", 412)), None),
        (lambda: FileNotFoundError("x"), None),
        (lambda: ValueError("not a store error"), None),
        (lambda: InputError("ours already"), None),
    ],
)
def test_translate(make, expected):
    translated = errors.from_store(make())
    if expected is None:
        assert translated is None
    else:
        assert type(translated) is expected
        assert translated.exit_code == {StorageUnavailable: 75, CredentialsError: 2}[expected]
    assert issubclass(CredentialsError, ConfigError)


def test_translate_names_the_code_operation_and_attempts():
    error = errors.from_store(translate_boto_error(_client_error("SlowDown", 503)))
    assert "kept throttling requests" in error.what
    assert "(SlowDown on PutObject, 4 attempts): message of SlowDown" in error.what
    assert "rerun later" in error.fix


def test_abort_multipart_uploads_aborts_those_under_the_prefix_only(s3, moto_endpoint):
    for key in ("scored/x/_staging/k/part-0.parquet.staged", "elsewhere/big.bin"):
        s3.call_s3("create_multipart_upload", Bucket=BUCKET, Key=key)
    fs, root = storage.resolve(f"s3://{BUCKET}/scored/x", {"endpoint_url": moto_endpoint})

    assert storage.abort_multipart_uploads(fs, f"{root}/_staging") == 1

    assert [u["Key"] for u in _open_uploads(s3)] == ["elsewhere/big.bin"]
    assert storage.abort_multipart_uploads(fs, f"{root}/_staging") == 0
