"""The recipes in deploy/, run for real as far as a machine without a container engine allows.

- Airflow: the DAG runs under a real Airflow (`airflow dags test`, in a virtual environment of
  its own, built once from deploy/airflow/requirements-airflow.lock and cached) on the sample.
- Container: the Dockerfile's steps run in a fresh virtual environment standing in for the
  image's, then its ENTRYPOINT and a run on the sample.
- cron: the crontab line runs under /bin/sh: flock, the wrapper's retries, its log.
- Kubernetes: the manifests are checked against the Kubernetes schema (kubernetes-validate,
  strict: unknown fields fail), the CronJob's command runs on the sample, serve's ports agree and
  its command answers the probes (on loopback).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import shlex
import shutil
import socket
import sqlite3
import string
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent  # the batch-infer under test
BASE_PYTHON = Path(sys._base_executable)  # the interpreter the virtual environments come from
KUBERNETES_VERSION = "1.31"  # the oldest with podFailurePolicy generally available
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "batch-infer-tests"


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without BATCH_INFER_*/AIRFLOW_* settings, plus `extra`."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BATCH_INFER_", "AIRFLOW_")) or k == "BATCH_INFER_CACHE_DIR"
    }
    return {**keep, **extra}


def sample_overrides(sample: Path, output: Path) -> dict[str, str]:
    """Point configs/ci_smoke.yaml at a copy of the sample, as a deployment's variables would."""
    return {
        "BATCH_INFER_INPUT__PATH": str(sample / "churn"),
        "BATCH_INFER_MODEL__PATH": str(sample / "models" / "model.joblib"),
        "BATCH_INFER_MODEL__SCALER": str(sample / "models" / "scaler.joblib"),
        "BATCH_INFER_OUTPUT__PATH": f"{output}/dt={{run_date}}",
    }


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# --- Airflow -------------------------------------------------------------------------------

DAG_ID = "batch_infer_nightly"


@pytest.fixture(scope="module")
def airflow_bin() -> Path:
    """Airflow's own virtual environment, without batch-infer in it: built once, then reused."""
    lock = DEPLOY / "airflow" / "requirements-airflow.lock"
    venv = CACHE / f"airflow-{hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
    if not (venv / ".installed").exists():
        subprocess.run([BASE_PYTHON, "-m", "venv", "--clear", venv], check=True)
        pip = [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]
        subprocess.run([*pip, "-r", lock], check=True)
        (venv / ".installed").touch()
    return venv / "bin"


@pytest.fixture(scope="module")
def airflow_home(airflow_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh AIRFLOW_HOME with its metadata database, whose DAG folder is deploy/airflow."""
    home = tmp_path_factory.mktemp("airflow-home")
    settings = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DEPLOY / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in deploy/airflow
        # one retry, at once: enough to see whether a failure is retried
        "BATCH_INFER_RETRIES": "1",
        "BATCH_INFER_RETRY_DELAY_SECONDS": "0",
    }
    subprocess.run(
        [airflow_bin / "airflow", "db", "migrate"],
        env=clean_environ(**settings),
        check=True,
        capture_output=True,
    )
    return settings


def dags_test(airflow_bin: Path, settings: dict[str, str], date: str, **extra: str):
    """`airflow dags test` of the DAG for one logical date, batch-infer from this venv."""
    env = clean_environ(
        **settings,
        BATCH_INFER_EXECUTABLE=str(VENV_BIN / "batch-infer"),
        BATCH_INFER_CONFIG_FILE=str(REPO / "configs" / "ci_smoke.yaml"),
        **extra,
    )
    return subprocess.run(
        [airflow_bin / "airflow", "dags", "test", DAG_ID, date],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def task_instance(settings: dict[str, str], date: str) -> tuple[str, int, dict | None]:
    """The score task's state, try number and XCom for the latest run of a logical date."""
    with contextlib.closing(sqlite3.connect(Path(settings["AIRFLOW_HOME"]) / "airflow.db")) as db:
        state, tries, value = db.execute(
            "SELECT ti.state, ti.try_number, x.value FROM dag_run dr"
            " JOIN task_instance ti ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id"
            " LEFT JOIN xcom x ON x.dag_id = ti.dag_id AND x.run_id = ti.run_id"
            "  AND x.task_id = ti.task_id AND x.key = 'return_value'"
            " WHERE dr.dag_id = ? AND dr.logical_date LIKE ? AND ti.task_id = 'score'"
            " ORDER BY dr.id DESC LIMIT 1",
            (DAG_ID, f"{date}%"),
        ).fetchone()
    return state, tries, json.loads(value) if value is not None else None


def test_airflow_dag_commits_the_date_and_a_rerun_skips_it(
    airflow_bin, airflow_home, sample_copy, tmp_path
):
    out = tmp_path / "scores"
    data = sample_overrides(sample_copy, out)

    first = dags_test(airflow_bin, airflow_home, "2026-01-31", **data)

    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (out / "dt=2026-01-31" / "_SUCCESS").exists()
    state, tries, report = task_instance(airflow_home, "2026-01-31")
    assert (state, tries) == ("success", 1)
    assert report["status"] == "committed"
    assert report["run_date"] == "2026-01-31"
    assert report["rows_out"] == 20_000
    assert report["output"] == str(out / "dt=2026-01-31")

    again = dags_test(airflow_bin, airflow_home, "2026-01-31", **data)

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    state, tries, report = task_instance(airflow_home, "2026-01-31")
    assert state == "success"
    assert report["status"] == "skipped"


def test_airflow_fails_bad_input_at_once(airflow_bin, airflow_home, sample_copy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    data = {
        **sample_overrides(sample_copy, tmp_path / "scores"),
        "BATCH_INFER_INPUT__PATH": str(empty),
    }

    result = dags_test(airflow_bin, airflow_home, "2026-02-01", **data)

    assert result.returncode != 0
    assert "matches no Parquet file" in result.stdout + result.stderr
    # one retry was allowed (BATCH_INFER_RETRIES=1), and exit 3 did not use it
    assert task_instance(airflow_home, "2026-02-01")[:2] == ("failed", 1)
    assert "batch-infer exited 3 (bad input error)" in result.stdout + result.stderr


def test_airflow_retries_a_locked_output(airflow_bin, airflow_home, sample_copy, tmp_path):
    """A run holds the output's lock (this live process): batch-infer exits 75, Airflow retries."""
    out = tmp_path / "scores"
    (out / "dt=2026-02-02").mkdir(parents=True)
    holder = {
        "run_id": "holder",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": "2026-02-02T00:00:00+00:00",
    }
    (out / "dt=2026-02-02" / "_batch_infer.lock").write_text(json.dumps(holder))

    result = dags_test(
        airflow_bin, airflow_home, "2026-02-02", **sample_overrides(sample_copy, out)
    )

    assert result.returncode != 0
    assert task_instance(airflow_home, "2026-02-02")[:2] == ("failed", 2)  # tried, then retried
    assert (result.stdout + result.stderr).count("is locked by run holder") == 2
    assert not (out / "dt=2026-02-02" / "_SUCCESS").exists()


# --- the container image -------------------------------------------------------------------


class Image:
    """deploy/Dockerfile's stages, with the image's absolute paths moved under `root`."""

    def __init__(self, dockerfile: Path, root: Path):
        parser = DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes()))
        self.stages: list[tuple[str, list[tuple[str, str]]]] = []
        for item in parser.structure:
            if item["instruction"] == "FROM":
                self.stages.append((item["value"].split()[0], []))
            elif item["instruction"] != "COMMENT":
                self.stages[-1][1].append((item["instruction"], item["value"]))
        self.root = root

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def value(self, raw: str, env: dict[str, str]) -> str:
        """An ENV value: absolute image paths (also in PATH-like lists) moved, $VARS expanded."""
        parts = [str(self.path(p)) if p.startswith("/") else p for p in raw.split(":")]
        return string.Template(":".join(parts)).substitute(env)

    def build(
        self, stage: list[tuple[str, str]], env: dict[str, str], unset: set[str]
    ) -> dict[str, str]:
        """Run a stage's ENV (but `unset`), WORKDIR, COPY and RUN steps here; return its ENV."""
        workdir = self.root
        for instruction, value in stage:
            if instruction == "ENV":
                for assignment in shlex.split(value):
                    name, _, raw = assignment.partition("=")
                    if name not in unset:
                        env[name] = self.value(raw, env)
            elif instruction == "WORKDIR":
                workdir = self.path(value)
                workdir.mkdir(parents=True, exist_ok=True)
            elif instruction == "COPY":
                *sources, target = shlex.split(value)
                assert not sources[0].startswith("--"), (
                    f"unexpected COPY {value} in the build stage"
                )
                for source in sources:
                    destination = workdir / target
                    if target.endswith("/") or len(sources) > 1:
                        destination = destination / Path(source).name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    if (REPO / source).is_dir():
                        shutil.copytree(
                            REPO / source, destination, ignore=shutil.ignore_patterns("__pycache__")
                        )
                    else:
                        shutil.copy(REPO / source, destination)
            elif instruction == "RUN":
                subprocess.run(["sh", "-c", value], cwd=workdir, env=env, check=True)
            else:
                raise AssertionError(f"the test cannot play {instruction} {value} here: teach it")
        return env


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The image's install steps run in a fresh virtual environment; its runtime settings."""
    root = tmp_path_factory.mktemp("image-root")
    image = Image(DEPLOY / "Dockerfile", root)
    (build_base, build_stage), (final_base, final_stage) = image.stages
    # `python` in the steps is the image's Python 3.11: here, the one this venv came from
    python_dir = tmp_path_factory.mktemp("image-python")
    (python_dir / "python").write_text(f'#!/bin/sh\nexec "{BASE_PYTHON}" "$@"\n')
    (python_dir / "python").chmod(0o755)
    env = clean_environ(PATH=f"{python_dir}:{os.environ['PATH']}")
    # PIP_NO_CACHE_DIR keeps the image small; here the pip cache spares the downloads
    env = image.build(build_stage, env, unset={"PIP_NO_CACHE_DIR"})

    runtime = {"PATH": os.environ["PATH"], "HOME": str(image.path("/home/batch"))}
    settings: dict[str, str] = {}
    for instruction, value in final_stage:
        if instruction == "ENV":
            for assignment in shlex.split(value):
                name, _, raw = assignment.partition("=")
                runtime[name] = image.value(raw, runtime)
        else:
            settings[instruction] = value
    return {
        "bases": (build_base, final_base),
        "final": final_stage,
        "venv": Path(env["VIRTUAL_ENV"]),
        "env": runtime,
        "workdir": image.path(settings["WORKDIR"]),
        "entrypoint": json.loads(settings["ENTRYPOINT"]),
        "cmd": json.loads(settings["CMD"]),
        "user": settings["USER"],
        "copies": [v for i, v in final_stage if i == "COPY"],
    }


def run_in_image(image: dict, args: list[str], **extra: str) -> subprocess.CompletedProcess:
    image["workdir"].mkdir(parents=True, exist_ok=True)
    env = {**clean_environ(), **image["env"], **extra}
    return subprocess.run(
        [*image["entrypoint"], *args],
        cwd=image["workdir"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_image_is_slim_non_root_and_has_no_compiler(image):
    assert image["bases"] == ("python:3.11-slim", "python:3.11-slim")
    # the final stage only adds a user and the built virtual environment
    for instruction, value in image["final"]:
        if instruction == "RUN":
            assert not any(
                word in value for word in ("apt-get", "pip", "gcc", "build-essential")
            ), value
    assert image["copies"] == ["--from=build /opt/batch-infer /opt/batch-infer"]
    assert image["user"].split(":")[0] not in ("root", "0")


def test_image_entrypoint_is_the_installed_batch_infer(image):
    executable = shutil.which(image["entrypoint"][0], path=image["env"]["PATH"])
    assert executable == str(image["venv"] / "bin" / "batch-infer")

    default = run_in_image(image, image["cmd"])
    assert default.returncode == 0, default.stderr
    assert "Usage" in default.stdout

    shown = run_in_image(image, ["--version"])
    assert shown.returncode == 0, shown.stderr
    assert version("batch-infer") in shown.stdout


def test_image_has_what_serve_and_compiled_runtimes_need(image):
    python = image["venv"] / "bin" / "python"
    imports = (
        "import fastapi, uvicorn, grpc, grpc_health.v1.health, google.protobuf, orjson, tl2cgen"
    )
    subprocess.run([python, "-c", imports], check=True)
    checked = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_image_scores_the_sample(image, sample_copy, tmp_path):
    out = tmp_path / "out"
    args = [
        "run",
        "--input",
        str(sample_copy / "churn"),
        "--model",
        str(sample_copy / "models" / "model.joblib"),
    ]
    args += [
        "--scaler",
        str(sample_copy / "models" / "scaler.joblib"),
        "--output",
        f"{out}/dt={{run_date}}",
    ]
    args += ["--run-date", "2026-01-31", "--output-format", "json"]

    result = run_in_image(image, args)

    assert result.returncode == 0, result.stderr
    assert last_json_line(result.stdout)["rows_out"] == 20_000
    assert (out / "dt=2026-01-31" / "_SUCCESS").exists()


# --- Kubernetes ----------------------------------------------------------------------------


def manifests(name: str) -> list[dict]:
    """The manifest's documents, each valid against the Kubernetes schema, strictly."""
    documents = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    return documents


def test_schema_check_refuses_a_misspelt_field():
    """The check the manifests pass is not vacuous: one wrong field name fails it."""
    cronjob = manifests("cronjob.yaml")[0]
    cronjob["spec"]["concurencyPolicy"] = cronjob["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cronjob, KUBERNETES_VERSION, strict=True)


def test_cronjob_runs_one_at_a_time_and_fails_fast_on_errors_a_retry_cannot_fix():
    (cronjob,) = manifests("cronjob.yaml")
    assert cronjob["kind"] == "CronJob"
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    (container,) = pod["containers"]
    (fail_fast,) = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_fast["onExitCodes"] == {
        "containerName": container["name"],
        "operator": "In",
        "values": [2, 3, 4, 5],
    }
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    env = {e["name"]: e for e in container["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_cronjob_command_scores_the_sample(sample_copy, tmp_path):
    (cronjob,) = manifests("cronjob.yaml")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    shell, flag, script = [*container["command"], *container["args"]]
    assert (shell, flag) == ("/bin/sh", "-c")
    # the ConfigMap's mount, here a folder holding the smoke config pointed at the sample copy
    (mount,) = container["volumeMounts"]
    assert {"name": mount["name"], "configMap": {"name": "batch-infer-config"}} in pod["volumes"]
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    config = yaml.safe_load((REPO / "configs" / "ci_smoke.yaml").read_text())
    config["input"]["path"] = str(sample_copy / "churn")
    config["model"] = {
        "path": str(sample_copy / "models" / "model.joblib"),
        "scaler": str(sample_copy / "models" / "scaler.joblib"),
    }
    config["output"]["path"] = f"{tmp_path}/scores/dt={{run_date}}"
    config.pop("run_date")
    (config_dir / "nightly.yaml").write_text(yaml.safe_dump(config))
    assert f"--config {mount['mountPath']}/nightly.yaml" in script
    script = script.replace(mount["mountPath"], str(config_dir))
    # the workers variable takes the CPU limit, as the kubelet would fill it in
    env = {e["name"]: e for e in container["env"]}
    assert env["BATCH_INFER_WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    workers = container["resources"]["limits"]["cpu"]

    before = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env=clean_environ(PATH=f"{VENV_BIN}:{os.environ['PATH']}", BATCH_INFER_WORKERS=workers),
        capture_output=True,
        text=True,
        timeout=300,
    )
    after = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)

    assert result.returncode == 0, result.stderr
    report = last_json_line(result.stdout)
    assert report["status"] == "committed"
    assert report["run_date"] in (before.isoformat(), after.isoformat())  # yesterday, in UTC
    assert (tmp_path / "scores" / f"dt={report['run_date']}" / "_SUCCESS").exists()
    assert all(
        json.loads(line)["level"] for line in result.stderr.splitlines()
    )  # --log-format json


def serve_manifest() -> tuple[dict, dict, dict[str, str]]:
    deployment, service = manifests("serve.yaml")
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["batch-infer", "serve"]
    flags = dict(zip(command[2::2], command[3::2], strict=True))
    return deployment, service, flags


def test_serve_ports_and_probes_agree():
    deployment, service, flags = serve_manifest()
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert flags["--host"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (
        ports
        == {"http": int(flags["--http-port"]), "grpc": int(flags["--grpc-port"])}
        == {"http": 8080, "grpc": 8081}
    )

    def port_of(probe: dict) -> int:
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else port

    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert (
        port_of(container["startupProbe"]) == port_of(container["readinessProbe"]) == ports["http"]
    )
    assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]
    assert (
        container["livenessProbe"]["grpc"].get("service", "") == ""
    )  # grpc.health.v1: the whole server

    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert {name: ports[target] for name, target in targets.items()} == ports

    (mount,) = container["volumeMounts"]
    assert flags["--model"].startswith(mount["mountPath"] + "/")
    assert mount["name"] in {v["name"] for v in template["spec"]["volumes"]}


def test_serve_flags_are_those_of_batch_infer_serve():
    shown = subprocess.run(
        [VENV_BIN / "batch-infer", "serve", "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    _, _, flags = serve_manifest()
    for flag in flags:
        assert flag in shown.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answer_probes(bin_dir: Path, env: dict[str, str], models: Path, sample: Path) -> None:
    """Run the manifest's serve command from `bin_dir` on loopback and free ports, with the
    sample's pipeline as its model, and ask it what the kubelet will ask."""
    deployment, _, flags = serve_manifest()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (mount,) = container["volumeMounts"]
    # the volume: a folder holding, under the same name, the sample's pipeline
    model = models / Path(flags["--model"]).relative_to(mount["mountPath"])
    model.parent.mkdir(parents=True)
    shutil.copy(sample / "models" / "pipeline.joblib", model)
    http_port, grpc_port = free_port(), free_port()
    local = {
        **flags,
        "--model": str(model),
        "--host": "127.0.0.1",
        "--http-port": str(http_port),
        "--grpc-port": str(grpc_port),
    }
    executable = shutil.which(container["command"][0], path=str(bin_dir))
    command = [executable, *container["command"][1:2], *[w for pair in local.items() for w in pair]]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(
                service=container["livenessProbe"]["grpc"].get("service", "")
            )
            # Watch waits for the server to come up (bounded), then for SERVING
            for answer in health.Watch(request, wait_for_ready=True, timeout=120):
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
        for probe in ("startupProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            answer = httpx.get(f"http://127.0.0.1:{http_port}{path}", timeout=10)
            assert answer.status_code == 200, (probe, answer.text)
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors


def test_serve_answers_the_probes_of_its_manifest(sample_copy, tmp_path):
    answer_probes(VENV_BIN, clean_environ(), tmp_path / "models", sample_copy)


def test_image_serves_the_probes_of_the_manifest(image, sample_copy, tmp_path):
    image["workdir"].mkdir(parents=True, exist_ok=True)
    env = {**clean_environ(), **image["env"]}
    answer_probes(image["venv"] / "bin", env, tmp_path / "models", sample_copy)


# --- cron ----------------------------------------------------------------------------------

CRON_SCRIPT = DEPLOY / "cron" / "batch-infer-nightly.sh"


def crontab_line() -> str:
    """The crontab line the script's header gives, the one README.md shows too."""
    (line,) = [
        row[1:].strip()
        for row in CRON_SCRIPT.read_text().splitlines()
        if row.startswith("#   30 2 ")
    ]
    assert line in (DEPLOY.parent / "README.md").read_text()
    return line


def run_crontab_line(tmp_path: Path, **extra: str) -> tuple[subprocess.CompletedProcess, str]:
    """The crontab line's command as cron runs it (/bin/sh), paths moved into tmp_path."""
    command = crontab_line().split(maxsplit=5)[5]
    command = command.replace(
        "/srv/batch-infer/deploy/cron/batch-infer-nightly.sh", str(CRON_SCRIPT)
    )
    command = command.replace("/run/lock/", f"{tmp_path}/").replace(
        "/var/log/batch-infer/", f"{tmp_path}/"
    )
    env = clean_environ(
        BATCH_INFER_EXECUTABLE=str(VENV_BIN / "batch-infer"),
        BATCH_INFER_CONFIG_FILE=str(REPO / "configs" / "ci_smoke.yaml"),
        BATCH_INFER_RETRY_DELAY_SECONDS="0",
        **extra,
    )
    result = subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=300
    )
    log = tmp_path / "nightly.log"
    return result, log.read_text() if log.exists() else ""


def yesterday_utc() -> set[str]:
    return {(dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()}


def test_cron_line_scores_yesterday_and_logs(sample_copy, tmp_path):
    dates = yesterday_utc()
    result, log = run_crontab_line(tmp_path, **sample_overrides(sample_copy, tmp_path / "scores"))
    dates |= yesterday_utc()  # the line may run across midnight

    assert result.returncode == 0, log
    report = json.loads([line for line in log.splitlines() if line.startswith("{")][-1])
    assert report["status"] == "committed"
    assert report["run_date"] in dates
    assert (tmp_path / "scores" / f"dt={report['run_date']}" / "_SUCCESS").exists()
    assert f"batch-infer-nightly {report['run_date']}: done (attempt 1)" in log


def test_cron_retries_a_locked_output_then_gives_up_with_75(sample_copy, tmp_path):
    out = tmp_path / "scores"
    holder = {
        "run_id": "holder",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": "2026-02-02T00:00:00+00:00",
    }
    for date in yesterday_utc():
        (out / f"dt={date}").mkdir(parents=True)
        (out / f"dt={date}" / "_batch_infer.lock").write_text(json.dumps(holder))

    result, log = run_crontab_line(
        tmp_path, BATCH_INFER_ATTEMPTS="2", **sample_overrides(sample_copy, out)
    )

    assert result.returncode == 75, log
    assert log.count("is locked by run holder") == 2
    assert "exit 75, retrying in 0s (attempt 1 of 2)" in log
    assert "failed with exit 75 after 2 attempts" in log


def test_cron_does_not_retry_bad_input(sample_copy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    data = {
        **sample_overrides(sample_copy, tmp_path / "scores"),
        "BATCH_INFER_INPUT__PATH": str(empty),
    }

    result, log = run_crontab_line(tmp_path, **data)

    assert result.returncode == 3, log
    assert log.count("matches no Parquet file") == 1
    assert "failed with exit 3, not retried" in log


def test_cron_line_does_not_start_while_the_last_night_runs(sample_copy, tmp_path):
    """flock -n: the lock file is held (as by a running night), so nothing starts at all."""
    with open(tmp_path / "batch-infer-nightly.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result, log = run_crontab_line(
            tmp_path, **sample_overrides(sample_copy, tmp_path / "scores")
        )

    assert result.returncode == 1
    assert log == ""
    assert not (tmp_path / "scores").exists()
