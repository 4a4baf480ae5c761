"""The Dask engine with real clusters: a LocalCluster of worker processes, and `dask scheduler` +
`dask worker` processes started here on loopback. Kills are real SIGKILLs (failpoints)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import pytest

from batch_infer import run
from batch_infer.errors import ConfigError

from .conftest import FEATURES, churn_table, make_config, read_output, write_parquet
from .test_s3 import BUCKET, moto_endpoint, s3  # noqa: F401  (fixtures)

ROWS = 12_000


@pytest.fixture
def churn_input(tmp_path: Path) -> Path:
    table = churn_table(ROWS, seed=3)
    folder = tmp_path / "input"
    write_parquet(table.slice(0, 6_000), folder / "a.parquet", row_group_size=1_000)
    write_parquet(table.slice(6_000), folder / "b.parquet", row_group_size=1_000)
    return folder


def _files(root: Path) -> dict[str, str]:
    """Every data file under an output, by relative name, with its bytes' sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
        if not str(p.relative_to(root)).startswith("_")
    }


def _run_on(
    address: str, source: str, model: str, out: str, *extra: str, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`batch-infer run` on the test's external cluster; its local paths are shared."""
    return _cli(
        *("run", "-i", source, "-m", model, "-o", out, *extra),
        *("--engine", "dask", "--scheduler", address),
        env={"BATCH_INFER_ENGINE__SHARED_FILESYSTEM": "true"},
        cwd=cwd,
    )


def _cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batch_infer", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        **kwargs,
    )


def test_local_cluster_output_is_byte_identical_to_the_local_engine(
    tmp_path: Path, churn_input: Path, trained_models
) -> None:
    model = trained_models["binary"]
    local = run(make_config(churn_input, tmp_path / "local", model, run_date="2026-01-05"))
    dask = run(
        make_config(
            churn_input,
            tmp_path / "dask",
            model,
            run_date="2026-01-05",
            engine={"kind": "dask", "workers": 2},
        )
    )
    assert dask.engine == "dask" and dask.workers_used == 2
    assert dask.scheduler.startswith("LocalCluster tcp://127.0.0.1:")
    assert local.rows_out == dask.rows_out == ROWS
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")
    manifest = json.loads((tmp_path / "dask" / "_manifest.json").read_text())
    assert manifest["engine"]["engine"] == "dask"


@pytest.fixture
def cluster(tmp_path: Path):
    """A real `dask scheduler` and one `dask worker` process tree (2 processes, nannies), on
    loopback; yields (address, start_worker) where start_worker(env) adds a worker."""
    scheduler_file = tmp_path / "scheduler.json"
    processes = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        process = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli." + args[0], *args[1:]],
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        processes.append(process)
        return process

    start(
        "dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-dashboard",
        "--scheduler-file",
        str(scheduler_file),
    )
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.loads(scheduler_file.read_text())["address"]

    def start_worker(env: dict[str, str] | None = None, cwd: Path | None = None, workers: int = 2):
        start(
            "dask_worker",
            address,
            "--nworkers",
            str(workers),
            "--nthreads",
            "1",
            "--no-dashboard",
            "--host",
            "127.0.0.1",
            env=env,
            cwd=cwd,
        )
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)

    yield address, start_worker
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def test_external_scheduler_and_workers_give_the_local_engines_bytes(
    tmp_path: Path, churn_input: Path, trained_models, cluster
) -> None:
    address, start_worker = cluster
    start_worker()
    model = trained_models["binary"]
    run(make_config(churn_input, tmp_path / "local", model, run_date="2026-01-05"))
    remote = _run_on(
        address,
        str(churn_input),
        str(model),
        str(tmp_path / "dask"),
        "--run-date",
        "2026-01-05",
        "--output-format",
        "json",
    )
    assert remote.returncode == 0, remote.stderr
    report = json.loads(remote.stdout.strip().splitlines()[-1])
    assert report["engine"] == "dask" and report["scheduler"] == address
    assert report["workers_used"] == 2
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")


def test_local_paths_with_a_remote_scheduler_are_refused_before_anything_runs(
    tmp_path: Path, churn_input: Path, trained_models
) -> None:
    config = make_config(
        churn_input,
        tmp_path / "out",
        trained_models["binary"],
        engine={"kind": "dask", "scheduler": "tcp://10.255.255.1:8786"},
    )
    with pytest.raises(ConfigError) as refused:
        run(config)
    assert "is a local path, but the Dask scheduler tcp://10.255.255.1:8786" in refused.value.what
    assert "shared_filesystem" in refused.value.fix
    assert not (tmp_path / "out").exists()


def test_a_worker_killed_mid_fragment_is_replaced_and_every_row_commits_once(
    tmp_path: Path, churn_input: Path, trained_models, cluster
) -> None:
    address, start_worker = cluster
    marker = tmp_path / "killed-once"
    start_worker(
        env={"BATCH_INFER_FAILPOINT": "mid-fragment", "BATCH_INFER_FAILPOINT_ONCE": str(marker)}
    )
    done = _run_on(
        address,
        str(churn_input),
        str(trained_models["binary"]),
        str(tmp_path / "out"),
        "--output-format",
        "json",
    )
    assert marker.exists()  # a worker process really died mid-fragment
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["task_retries"] >= 1
    ids = read_output(tmp_path / "out").column("customer_id").to_pylist()
    assert sorted(ids) == list(range(ROWS))


def test_workers_that_keep_dying_end_the_run_with_75_and_nothing_committed(
    tmp_path: Path, churn_input: Path, trained_models, cluster
) -> None:
    address, start_worker = cluster
    start_worker(env={"BATCH_INFER_FAILPOINT": "mid-fragment"})  # every worker, every time
    failed = _run_on(
        address, str(churn_input), str(trained_models["binary"]), str(tmp_path / "out")
    )
    assert failed.returncode == 75, failed.stderr
    assert "Dask workers kept dying while scoring" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert (tmp_path / "out" / "_staging").exists()  # kept for a resume


def test_a_killed_client_resumes_on_the_local_engine_exactly_once(
    tmp_path: Path, churn_input: Path, trained_models
) -> None:
    out = tmp_path / "out"
    args = ["run", "-i", str(churn_input), "-m", str(trained_models["binary"]), "-o", str(out)]
    client = subprocess.Popen(
        [sys.executable, "-m", "batch_infer", *args, "--engine", "dask", "--batch-size", "100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and client.poll() is None:
        if len(list(out.glob("_staging/*/_done/*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert client.poll() is None, "the run ended before it could be killed"
    os.killpg(client.pid, signal.SIGKILL)  # the client and its LocalCluster, as a lost machine
    client.wait()
    staged = len(list(out.glob("_staging/*/_done/*.json")))
    assert 2 <= staged < 12
    assert not (out / "_SUCCESS").exists()

    resumed = _cli(*args, "--batch-size", "100", "--output-format", "json")
    assert resumed.returncode == 0, resumed.stderr
    assert "row group(s) already staged" in resumed.stderr
    ids = read_output(out).column("customer_id").to_pylist()
    assert sorted(ids) == list(range(ROWS))


def test_a_model_file_only_the_client_can_read(
    tmp_path: Path, churn_input: Path, trained_models, cluster
) -> None:
    """The client runs where models/binary.joblib exists; the workers run elsewhere."""
    address, start_worker = cluster
    elsewhere = tmp_path / "worker-home"
    elsewhere.mkdir()
    start_worker(cwd=elsewhere)
    home = tmp_path / "client-home"
    (home / "models").mkdir(parents=True)
    joblib.dump(joblib.load(trained_models["binary"]), home / "models" / "binary.joblib")
    failed = _run_on(
        address, str(churn_input), "models/binary.joblib", str(tmp_path / "out"), cwd=home
    )
    assert failed.returncode == 4, failed.stderr
    assert "on Dask worker tcp://127.0.0.1:" in failed.stderr
    assert "models/binary.joblib does not exist" in failed.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_worker_without_the_models_package(tmp_path: Path, churn_input: Path, cluster) -> None:
    """The model is a LightGBM classifier; the workers' Python has no importable lightgbm."""
    from lightgbm import LGBMClassifier

    table = churn_table(2_000, seed=5).to_pandas()
    model = LGBMClassifier(n_estimators=5, verbose=-1).fit(table[FEATURES], table["tenure"] > 30)
    path = tmp_path / "lgbm.joblib"
    joblib.dump(model, path)
    broken = tmp_path / "no-lightgbm" / "lightgbm"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('lightgbm is not installed here')\n")
    address, start_worker = cluster
    start_worker(env={"PYTHONPATH": str(broken.parent)})
    failed = _run_on(address, str(churn_input), str(path), str(tmp_path / "out"))
    assert failed.returncode == 4, failed.stderr
    assert "Dask worker tcp://127.0.0.1:" in failed.stderr
    assert "lightgbm is not installed here" in failed.stderr


def test_input_and_output_on_s3_through_the_cluster(
    s3,  # noqa: F811
    moto_endpoint,  # noqa: F811
    tmp_path: Path,
    trained_models,
) -> None:
    table = churn_table(6_000, seed=2)
    local = write_parquet(table, tmp_path / "a.parquet", row_group_size=1_000)
    s3.put_file(str(local), f"{BUCKET}/input/a.parquet")
    s3.put_file(str(trained_models["binary"]), f"{BUCKET}/models/binary.joblib")
    options = {"endpoint_url": moto_endpoint}
    report = run(
        make_config(
            f"s3://{BUCKET}/input",
            f"s3://{BUCKET}/scored",
            f"s3://{BUCKET}/models/binary.joblib",
            input={"storage_options": options},
            model={"storage_options": options},
            output={"storage_options": options},
            engine={"kind": "dask", "workers": 2},
        )
    )
    assert report.engine == "dask" and report.rows_out == 6_000
    assert s3.exists(f"{BUCKET}/scored/_SUCCESS")
    scored = [p for p in s3.find(f"{BUCKET}/scored") if p.endswith(".parquet")]
    assert len(scored) == 6


def test_sigterm_on_the_client_cancels_the_tasks_and_the_rerun_resumes(
    tmp_path: Path, churn_input: Path, trained_models
) -> None:
    out = tmp_path / "out"
    args = ["run", "-i", str(churn_input), "-m", str(trained_models["binary"]), "-o", str(out)]
    client = subprocess.Popen(
        [sys.executable, "-m", "batch_infer", *args, "--engine", "dask", "--batch-size", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("_staging/*/_done/*.json")):
        assert client.poll() is None, client.communicate()
        assert time.monotonic() < deadline, "no row group finished"
        time.sleep(0.05)
    client.send_signal(signal.SIGTERM)
    _, stderr = client.communicate(timeout=60)
    assert client.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("Error: interrupted by SIGTERM")
    assert not (out / "_SUCCESS").exists()
    assert not (out / "_batch_infer.lock").exists()

    resumed = _cli(*args, "--batch-size", "100", "--engine", "dask")
    assert resumed.returncode == 0, resumed.stderr
    assert "already staged" in resumed.stderr
    assert sorted(read_output(out).column("customer_id").to_pylist()) == list(range(ROWS))
