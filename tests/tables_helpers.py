"""What the Delta and Iceberg tests share: the real CLI in a subprocess (killable with
BATCH_INFER_FAILPOINT), and the folder output of the same run as the expected rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .conftest import REPO, read_output

RUN_DATE = "2026-02-01"
COMPARED = ("customer_id", "day", "region", "age", "prediction", "probability", "predicted_at")


def env(**extra: str) -> dict[str, str]:
    """This process's environment without BATCH_INFER_ settings, plus ``extra``."""
    values = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_INFER_")}
    values.update(extra)
    return values


def command(
    input_path: Path | str, output: str, model: Path, *extra: str, run_date: str = RUN_DATE
) -> list[str]:
    return [
        sys.executable, "-m", "batch_infer", "run",
        "--input", str(input_path), "--output", output, "--model", str(model),
        "--partition-by", "day", "--run-date", run_date, "--workers", "1", *extra,
    ]  # fmt: skip


def cli(args: list[str], cwd: Path | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=cwd or REPO,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return lines[-1] if lines else result.stderr[-2000:]


def folder_reference(tmp_path: Path, input_path: Path, model: Path, run_date: str = RUN_DATE):
    """The same run into a Parquet folder: the rows every table read must give back."""
    out = tmp_path / f"reference-{run_date}"
    if not out.exists():
        done = cli(command(input_path, str(out), model, run_date=run_date))
        assert done.returncode == 0, done.stderr
    return read_output(out)


def normalised(table: pa.Table) -> pa.Table:
    """The compared columns in one type each, sorted by customer_id (readers differ in types:
    hive folders give dictionary or int32 partition keys, tables int64)."""
    columns = {}
    for name in COMPARED:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if name == "day":
            column = pc.cast(pc.cast(column, pa.string()), pa.int64())
        elif pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
        elif pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("us", "UTC"))
        columns[name] = column
    return pa.table(columns).sort_by("customer_id")


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    got, want = normalised(got), normalised(want)
    assert got.num_rows == want.num_rows
    for name in COMPARED:
        if name == "probability":
            np.testing.assert_array_equal(got.column(name).to_numpy(), want.column(name).to_numpy())
        else:
            assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


def files_under(root: Path, suffix: str = ".parquet") -> set[str]:
    """Parquet files in a table's folder, outside ``_``-prefixed folders (logs, side folder)."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob(f"*{suffix}")
        if not any(part.startswith("_") for part in p.relative_to(root).parts[:-1])
    }


# -- S3: moto's server in a process of its own ---------------------------------------------------
# delta-rs and pyiceberg's readers block while holding the GIL, so a moto server on a thread of
# the test process (tests/test_s3.py) would never answer them; a separate process always does.

BUCKET = "batch-infer-tables"
AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(tmp: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server as a child process on loopback; returns it and its URL once it answers."""
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return server, url
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("moto's server did not answer within 30 s")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """moto in its own process, fake credentials in the environment; yields (endpoint, s3fs)."""
    import s3fs

    tmp = tmp_path_factory.mktemp("moto")
    server, endpoint = start_moto(tmp)
    with pytest.MonkeyPatch.context() as mp:
        for name in AWS_VARS_TO_CLEAR:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(tmp / "no-such-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-such-credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, "127.0.0.1,localhost")
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        try:
            yield endpoint, fs
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.terminate()
            server.wait(timeout=10)


# -- runs side by side --------------------------------------------------------------------------


def start(args: list[str], cwd: Path | None = None, **extra_env: str) -> subprocess.Popen:
    """The real CLI in a subprocess left running (``finish`` waits for it)."""
    return subprocess.Popen(
        args,
        cwd=cwd or REPO,
        env=env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def no_staging_left(side: Path) -> bool:
    """Whether a table's side folder holds no run key's staging (the empty ``_staging`` folder
    itself may stay: another run key may be creating its own in it)."""
    return not any((side / "_staging").glob("*"))


def staging_keys(side: Path) -> list[str]:
    return sorted(p.name for p in (side / "_staging").glob("*"))
