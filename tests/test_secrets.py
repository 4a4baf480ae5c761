"""No secret leaves the process: every command, every field that can hold one, every output.

Secrets are planted in each place a user can put one: a Pushgateway and an OpenLineage URL with
``user:password@``, storage options (``key``/``secret``) in a config file and in a
``BATCH_INFER_*`` variable, ``AWS_SECRET_ACCESS_KEY`` in the environment, a Dask scheduler
address and input URLs with userinfo. Each command then runs as a real process (S3 through moto's
server on loopback, a tiny lineage receiver, a Pushgateway address nothing listens on), with
``--verbose`` where it has it, and everything it leaves is searched for the planted values:
stdout, stderr, every object under the output (manifest, data, rejects, staging), the JSON
report, the HTML report, the metrics file, the lineage events received and serve's answers.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
import yaml

from .conftest import REPO, churn_table, write_parquet
from .test_s3 import BUCKET, moto_endpoint, s3  # noqa: F401  (fixtures)

MARK = b"PLANTED"
PUSHGATEWAY = "http://user:PLANTED1push@127.0.0.1:9/"  # port 9: nothing listens
LINEAGE_PASSWORD = "PLANTED2lineage"
STORAGE_KEY, STORAGE_SECRET = "PLANTED3keyid", "PLANTED3secret"
AWS_SECRET = "PLANTED4awsenv"
SCHEDULER = "tcp://user:PLANTED5dask@127.0.0.1:1"
ENV_OPTION_SECRET = "PLANTED6envopt"
URL_PASSWORD = "PLANTED7url"


class Receiver:
    """An OpenLineage endpoint on loopback that keeps every request body it is sent."""

    def __init__(self) -> None:
        bodies: list[bytes] = []
        self.bodies = bodies
        self.authorizations: list[str] = []
        authorizations = self.authorizations

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                authorizations.append(self.headers.get("Authorization", ""))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://user:{LINEAGE_PASSWORD}@127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture
def world(s3, moto_endpoint, tmp_path, trained_models):  # noqa: F811
    """Input (with one row the model refuses, so rejects are written) and the model on S3,
    a config file holding storage-option secrets, and the environment holding the rest."""
    table = churn_table(3_000, seed=5)
    ages = table.column("age").to_numpy().astype("float64")
    ages[7] = np.nan
    table = table.set_column(table.schema.get_field_index("age"), "age", pa.array(ages))
    for name, part in (("a", table.slice(0, 1_500)), ("b", table.slice(1_500))):
        local = write_parquet(part, tmp_path / "upload" / f"{name}.parquet")
        s3.put_file(str(local), f"{BUCKET}/input/{name}.parquet")
    s3.put_file(str(trained_models["binary"]), f"{BUCKET}/models/model.joblib")
    secret_options = {"endpoint_url": moto_endpoint, "key": STORAGE_KEY, "secret": STORAGE_SECRET}
    config = tmp_path / "config" / "job.yaml"  # holds secrets: not searched
    config.parent.mkdir()
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"path": f"s3://{BUCKET}/input", "storage_options": secret_options},
                "model": {
                    "path": f"s3://{BUCKET}/models/model.joblib",
                    "storage_options": secret_options,
                },
                "output": {"path": f"s3://{BUCKET}/out/dt={{run_date}}"},
                "run_date": "2026-01-05",
            }
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BATCH_INFER_")},
        "BATCH_INFER_CACHE_DIR": os.environ["BATCH_INFER_CACHE_DIR"],
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "BATCH_INFER_OUTPUT__STORAGE_OPTIONS": json.dumps(
            {"endpoint_url": moto_endpoint, "key": "PLANTED6keyid", "secret": ENV_OPTION_SECRET}
        ),
        "PYTHONPATH": str(REPO),
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s",
    }
    work = tmp_path / "work"  # the cwd and every file the commands write: searched
    work.mkdir()
    return {"config": config, "env": env, "s3": s3, "tmp": work}


def _cli(world: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batch_infer", *args],
        cwd=world["tmp"],
        env={**world["env"], **env},
        capture_output=True,
        timeout=300,
        check=False,
    )


def _leaks(where: str, content: bytes | str) -> list[str]:
    data = content.encode() if isinstance(content, str) else content
    found = []
    start = data.find(MARK)
    while start >= 0:
        found.append(f"{where}: ...{data[max(0, start - 60) : start + 40]!r}...")
        start = data.find(MARK, start + 1)
    return found


def _no_leak(**places: bytes | str) -> None:
    leaks = [leak for where, content in places.items() for leak in _leaks(where, content)]
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


def _process(result: subprocess.CompletedProcess) -> dict[str, bytes]:
    return {"stdout": result.stdout, "stderr": result.stderr}


def _bucket(world: dict) -> dict[str, bytes]:
    """Every object in the bucket but the inputs and the model we uploaded."""
    fs = world["s3"]
    fs.invalidate_cache()
    return {
        path: fs.cat_file(path)
        for path in fs.find(BUCKET)
        if not path.startswith((f"{BUCKET}/input/", f"{BUCKET}/models/"))
    }


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _observe_flags(world: dict, receiver: Receiver, name: str) -> list[str]:
    tmp = world["tmp"]
    return [
        "--pushgateway",
        PUSHGATEWAY,
        "--openlineage-url",
        receiver.url,
        "--metrics-file",
        str(tmp / f"{name}.prom"),
        "--report-html",
        str(tmp / f"{name}.html"),
        "--output-format",
        "json",
        "--verbose",
    ]


def test_run_interrupted_then_resumed_leaks_no_secret(world, receiver):
    """A run killed before its manifest (staging and commit plan left on S3), then resumed and
    committed with rejects: nothing it printed, wrote or sent holds a secret."""
    run = ["run", "--config", str(world["config"]), "--max-reject-rows", "10"]
    killed = _cli(
        world,
        *run,
        *_observe_flags(world, receiver, "killed"),
        BATCH_INFER_FAILPOINT="before-manifest",
    )
    assert killed.returncode != 0
    staged = _bucket(world)
    assert any("/_staging/" in path for path in staged), sorted(staged)

    done = _cli(world, *run, *_observe_flags(world, receiver, "done"))

    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["rows_rejected"] == 1
    committed = _bucket(world)
    assert any("_rejects" in path for path in committed), sorted(committed)
    assert any(path.endswith("_manifest.json") for path in committed)
    assert (world["tmp"] / "done.html").is_file() and (world["tmp"] / "done.prom").is_file()
    assert len(receiver.bodies) >= 2  # START and COMPLETE at least
    # the password did reach the one place it belongs: the receiver's Authorization header
    assert (
        base64.b64encode(f"user:{LINEAGE_PASSWORD}".encode()).decode()
        in receiver.authorizations[-1]
    )
    _no_leak(
        **{f"killed {k}": v for k, v in _process(killed).items()},
        **{f"done {k}": v for k, v in _process(done).items()},
        **{f"staged {k}": v for k, v in staged.items()},
        **committed,
        **_files(world["tmp"]),
        **{f"lineage event {i}": body for i, body in enumerate(receiver.bodies)},
    )


def test_a_failed_run_leaks_no_secret(world, receiver):
    """An input URL with a password: whatever fails, the error line, the FAIL event, the report
    and the metrics written on failure hold no secret."""
    done = _cli(
        world,
        "run",
        "--config",
        str(world["config"]),
        "--input",
        f"s3://user:{URL_PASSWORD}@{BUCKET}/input",
        *_observe_flags(world, receiver, "failed"),
    )

    assert done.returncode == 2, done.stderr.decode()[-3000:]
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("Error: ") and "storage_options" in last, last
    assert receiver.bodies, "no lineage event received"
    _no_leak(
        **_process(done),
        **_bucket(world),
        **_files(world["tmp"]),
        **{f"lineage event {i}": body for i, body in enumerate(receiver.bodies)},
    )


def test_a_dask_scheduler_address_with_a_password_is_not_shown(world, tmp_path):
    data = write_parquet(churn_table(100), tmp_path / "local" / "in.parquet")
    done = _cli(
        world,
        "run",
        "--input",
        str(data),
        "--model",
        str(tmp_path / "no-such-model.joblib"),
        "--output",
        str(tmp_path / "out"),
        "--engine",
        "dask",
        "--scheduler",
        SCHEDULER,
        "--verbose",
    )
    assert done.returncode != 0
    # the model is missing: the scheduler is still named in the config the error may show
    _no_leak(**_process(done), **_files(tmp_path / "local"))

    model = world["tmp"] / "model.joblib"
    model.write_bytes(world["s3"].cat_file(f"{BUCKET}/models/model.joblib"))
    connect = _cli(
        world,
        "run",
        "--input",
        str(data),
        "--model",
        str(model),
        "--output",
        str(tmp_path / "out"),
        "--engine",
        "dask",
        "--scheduler",
        SCHEDULER,
        "--output-format",
        "json",
        "--verbose",
    )
    assert connect.returncode != 0, connect.stderr.decode()[-2000:]
    last = connect.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("Error: ") and "127.0.0.1:1" in last, last
    _no_leak(**_process(connect), **_files(tmp_path / "out") if (tmp_path / "out").exists() else {})


def test_validate_inspect_report_and_compile_leak_no_secret(world, receiver):
    done = _cli(world, "run", "--config", str(world["config"]), "--max-reject-rows", "10")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = f"s3://{BUCKET}/out/dt=2026-01-05"
    model = world["tmp"] / "model.joblib"
    model.write_bytes(world["s3"].cat_file(f"{BUCKET}/models/model.joblib"))
    html = world["tmp"] / "from-output.html"

    results = {
        "validate": _cli(
            world,
            "validate",
            "--config",
            str(world["config"]),
            "--output",
            f"s3://{BUCKET}/elsewhere",
            "--output-format",
            "json",
            "--verbose",
        ),
        "inspect input": _cli(
            world, "inspect", f"s3://{BUCKET}/input", "--output-format", "json", "--verbose"
        ),
        "inspect url": _cli(
            world, "inspect", f"s3://user:{URL_PASSWORD}@{BUCKET}/input", "--verbose"
        ),
        "inspect model": _cli(world, "inspect", str(model), "--output-format", "json"),
        "report": _cli(world, "report", out, "--html", str(html), "--verbose"),
        "compile": _cli(world, "compile", "--model", str(model), "--output-format", "json"),
    }

    assert results["validate"].returncode == 0, results["validate"].stderr.decode()[-2000:]
    assert results["inspect input"].returncode == 0, results["inspect input"].stderr.decode()
    assert results["inspect url"].returncode == 2, results["inspect url"].stderr.decode()
    assert results["report"].returncode == 0, results["report"].stderr.decode()[-2000:]
    assert html.is_file()
    _no_leak(
        **{f"{name} {k}": v for name, r in results.items() for k, v in _process(r).items()},
        **_files(world["tmp"]),
        **_bucket(world),
    )


def test_serve_leaks_no_secret(world):
    """serve loads its model from S3 with secret storage options: its logs, errors, metrics
    and metadata hold none of them."""
    from .test_serve_rest import ServeProcess, churn_rows, columns_request

    options = {"endpoint_url": world["env"]["AWS_ENDPOINT_URL"], "key": STORAGE_KEY}
    options["secret"] = STORAGE_SECRET
    answers: dict[str, bytes] = {}
    server = ServeProcess(
        world["config"].parent / "serve",  # its config holds the secrets; its log is searched
        f"s3://{BUCKET}/models/model.joblib",
        serve={"name": "churn"},
        args=["--verbose"],
        env=world["env"],
        model_section={"storage_options": options},
    )
    with server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            good = http.post("/v2/models/churn/infer", json=columns_request(churn_rows(3)))
            assert good.status_code == 200, good.text
            bad = http.post("/v2/models/churn/infer", json={"inputs": [{"name": "x"}]})
            assert bad.status_code == 400
            for name, response in {
                "good": good,
                "bad": bad,
                "metadata": http.get("/v2/models/churn"),
                "metrics": http.get("/metrics"),
                "openapi": http.get("/openapi.json"),
            }.items():
                answers[name] = response.content
    _no_leak(**answers, log=server.log.read_bytes(), **_files(world["tmp"]))
