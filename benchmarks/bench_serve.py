"""`make bench-serve`: `batch-infer serve` under load, against the servers it replaces, in one run.

Each server runs in its own process on loopback and gets the same model: a StandardScaler +
LogisticRegression pipeline fitted here (deterministic) on the sample churn features and saved
with joblib. Load comes from wrk (Debian package `wrk`), a separate C process that costs the
servers little; on a machine with two or more cores wrk is pinned to one core and every server
(with its child processes) to another, with one BLAS thread, so each server gets one whole core.

Servers and what they answer, like for like:
  batch-infer   POST /v2/models/churn/infer (Open Inference Protocol REST) and POST /predict,
                twice: `--runtime sklearn` (scikit-learn's own methods) and `--runtime compiled`
                (after `batch-infer compile` into a cache private to the run)
  FastAPI       the seed-style app (benchmarks/serve_baseline_app.py): POST /predict, one
                uvicorn worker, predict + predict_proba on a one-row DataFrame per request
  MLServer      its scikit-learn runtime, POST /v2/models/churn/infer with the same 2-D FP64
                tensor (asking for predict and predict_proba, the two outputs ours returns by
                default), in its own virtual environment (created here if missing; if it does
                not install, the table says why and the run goes on)

Scenarios: single-row requests at concurrency 1, 8 and 64, and 1,000-row requests at
concurrency 1 and 8 (the OIP endpoints; the seed app has no batch endpoint). Requests rotate over
distinct rows of the sample data. Before any load, one request per scenario kind is checked
against the model's own predict/predict_proba. Then all servers run side by side (idle unless
loaded) and the bench makes rounds over every point, the servers of one scenario back to back:
other work on the machine then weighs on both sides of a ratio alike, and the medians over the
rounds are reported with the spread of requests/s.

Output: benchmarks/results/serve-latest.md (also printed): requests/s, rows/s, p50 and p99
latency, the server's CPU time per request and errors per server and scenario, and the issue's
targets as ratios with their verdicts. No assertion on speed; exit 1 if any response failed (non-2xx, socket error, timeout)
or a check request got a wrong answer.

    python benchmarks/bench_serve.py [--duration 5] [--rounds 3] [--only ours,fastapi,mlserver]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "serve-latest.md"
SAMPLE = ROOT / "sample_data" / "churn"
FEATURES = ["age", "tenure", "monthly_charges", "total_charges"]
MODEL_NAME = "churn"  # the model file's stem: ours and MLServer serve it under this name

SINGLE_CONCURRENCY = (1, 8, 64)
BIG_ROWS = 1_000
BIG_CONCURRENCY = (1, 8)
DISTINCT_SINGLE_ROWS = 256  # the single-row bodies wrk rotates over
TOLERANCE = 1e-9  # check requests against the model's own probabilities

MLSERVER_VERSION = "1.7.1"
MLSERVER_NAME = f"MLServer {MLSERVER_VERSION}"
FASTAPI_NAME = "FastAPI (seed-style)"
# ours with scikit-learn's own methods, and with the runtime `batch-infer compile` verified
RUNTIMES = ("sklearn", "compiled")
MLSERVER_VENV = Path(
    os.environ.get(
        "BATCH_INFER_BENCH_MLSERVER_VENV", Path.home() / ".cache/batch-infer-bench/mlserver-venv"
    )
)

# the targets
FASTAPI_RATIO_TARGET = 3.0  # ours / FastAPI, requests/s at concurrency 64, single rows
MLSERVER_RATIO_TARGET = 1.0  # ours / MLServer, the same
P50_TARGET_MS = 2.0  # ours at concurrency 1, single rows, OIP REST

CORES = sorted(os.sched_getaffinity(0))
PINNED = len(CORES) >= 2
LOADGEN_CPU, SERVER_CPU = (CORES[0], CORES[1]) if PINNED else (None, None)
# one BLAS/OpenMP thread everywhere: a server has one core, more threads would only contend
SERVER_ENV = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_INFER_")}
SERVER_ENV |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class BenchError(Exception):
    """A server or the load generator could not run; the message says which and why."""


# ---------------------------------------------------------------- model and request bodies


def fit_model(folder: Path) -> tuple[Path, pd.DataFrame]:
    """Fit the pipeline on the sample churn rows with seeded labels; return its path and the rows."""
    frame = ds.dataset(SAMPLE, format="parquet", partitioning="hive").to_table().to_pandas()
    frame = frame.sort_values("customer_id", ignore_index=True)
    X = frame[FEATURES].astype("float64")
    rng = np.random.default_rng(0)
    logit = -0.5 - 0.03 * (X["age"] - 50) - 0.06 * (X["tenure"] - 36)
    logit += 0.025 * (X["monthly_charges"] - 70)
    y = (rng.uniform(size=len(X)) < 1 / (1 + np.exp(-logit))).astype("int64")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    path = folder / f"{MODEL_NAME}.joblib"
    joblib.dump(model, path)
    return path, X


def tensor_body(rows: pd.DataFrame, extra: dict | None = None) -> str:
    """An OIP request with one 2-D FP64 tensor in the model's feature order."""
    tensor = {
        "name": "input-0",
        "datatype": "FP64",
        "shape": list(rows.shape),
        "data": rows.to_numpy().ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor], **(extra or {})})


def predict_body(row: pd.Series) -> str:
    return json.dumps({"features": {name: float(row[name]) for name in FEATURES}})


MLSERVER_OUTPUTS = {"outputs": [{"name": "predict"}, {"name": "predict_proba"}]}


@dataclass(frozen=True)
class Scenario:
    endpoint: str  # what the table shows
    path: str
    rows: int  # per request
    concurrency: int
    bodies: tuple[str, ...]  # the first one holds the first `rows` sample rows


def scenarios_for(kind: str, X: pd.DataFrame) -> list[Scenario]:
    """The points a server is measured at: single rows at each concurrency, then 1,000-row requests."""
    singles = [X.iloc[[i]] for i in range(DISTINCT_SINGLE_ROWS)]
    bigs = [X.iloc[start : start + BIG_ROWS] for start in range(0, 4 * BIG_ROWS, BIG_ROWS)]
    infer = f"/v2/models/{MODEL_NAME}/infer"
    extra = MLSERVER_OUTPUTS if kind == "mlserver" else None
    points = []
    if kind in ("ours-oip", "mlserver"):
        single = tuple(tensor_body(rows, extra) for rows in singles)
        big = tuple(tensor_body(rows, extra) for rows in bigs)
        points += [Scenario("V2 infer", infer, 1, c, single) for c in SINGLE_CONCURRENCY]
        points += [Scenario("V2 infer", infer, BIG_ROWS, c, big) for c in BIG_CONCURRENCY]
    else:  # ours-predict, fastapi
        single = tuple(predict_body(rows.iloc[0]) for rows in singles)
        points += [Scenario("/predict", "/predict", 1, c, single) for c in SINGLE_CONCURRENCY]
    return points


# ---------------------------------------------------------------- checking answers


def post(port: int, path: str, body: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise BenchError(f"POST {path} answered {error.code}: {error.read()[:300]!r}") from None


def check_answer(kind: str, answer: dict, model, rows: pd.DataFrame) -> None:
    """Raise BenchError unless the server's labels and class-1 probabilities are the model's."""
    labels = model.predict(rows)
    positive = model.predict_proba(rows)[:, 1]
    if kind in ("ours-predict", "fastapi"):
        got_labels, got_positive = [answer["prediction"]], [answer["probability"][1]]  # the row
    else:
        outputs = {output["name"]: output for output in answer["outputs"]}
        if kind == "mlserver":
            got_labels = outputs["predict"]["data"]
            got_positive = np.asarray(outputs["predict_proba"]["data"]).reshape(-1, 2)[:, 1]
        else:
            got_labels = outputs["prediction"]["data"]
            name = "probability" if "probability" in outputs else "probability_1"
            got_positive = outputs[name]["data"]
    if list(got_labels) != labels.tolist():
        raise BenchError(f"{kind}: wrong labels for {len(rows)} row(s)")
    if not np.allclose(got_positive, positive, rtol=0, atol=TOLERANCE):
        raise BenchError(f"{kind}: probabilities differ from the model's by more than {TOLERANCE}")


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    name: str  # what the table shows
    kinds: list[str]  # which scenario sets it answers
    command: list[str]
    ready_path: str
    port: int
    env: dict = field(default_factory=lambda: dict(SERVER_ENV))
    cwd: Path = ROOT
    startup_timeout: float = 120.0
    process: subprocess.Popen | None = None
    log: Path | None = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pinned(command: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if cpu is not None else command


def start(server: Server, scratch: Path) -> None:
    """Start the server in its own session (so its workers stop with it) and wait until ready."""
    server.log = scratch / f"{server.name.split()[0].lower()}.log"
    with server.log.open("wb") as log:
        server.process = subprocess.Popen(
            pinned(server.command, SERVER_CPU),
            cwd=server.cwd,
            env=server.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + server.startup_timeout
    url = f"http://127.0.0.1:{server.port}{server.ready_path}"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited ({server.process.returncode}): {tail(server)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    stop(server)
    raise BenchError(
        f"{server.name} not ready after {server.startup_timeout:.0f} s: {tail(server)}"
    )


def stop(server: Server) -> None:
    """SIGTERM the server's process group (the server and the workers it started), then SIGKILL."""
    if server.process is None or server.process.poll() is not None:
        return
    group = os.getpgid(server.process.pid)
    os.killpg(group, signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        server.process.wait()
    try:  # workers that outlived their parent
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(server: Server, lines: int = 8) -> str:
    if server.log is None or not server.log.exists():
        return "(no log)"
    return " | ".join(server.log.read_text(errors="replace").strip().splitlines()[-lines:])


def ours_name(runtime: str) -> str:
    return f"batch-infer serve ({runtime})"


def ours(model: Path, runtime: str, cache: Path) -> Server:
    """Our server with one scoring runtime; `compiled` needs `compile_model` first."""
    port = free_port()
    command = [sys.executable, "-m", "batch_infer.serve", "--model", str(model)]
    command += ["--runtime", runtime, "--host", "127.0.0.1", "--http-port", str(port)]
    command += ["--grpc-port", str(free_port())]
    kinds = ["ours-oip", "ours-predict"]
    server = Server(ours_name(runtime), kinds, command, "/v2/health/ready", port)
    server.env["BATCH_INFER_CACHE_DIR"] = str(cache)
    return server


def compile_model(model: Path, cache: Path) -> str:
    """`batch-infer compile` the model into the bench's own cache; '' or why it failed."""
    command = [sys.executable, "-m", "batch_infer", "compile", "--model", str(model)]
    env = {**SERVER_ENV, "BATCH_INFER_CACHE_DIR": str(cache)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode == 0:
        return ""
    lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
    return f"exit {done.returncode}: {lines[-1]}"


def fastapi(model: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "serve_baseline_app:app", "--workers", "1"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    server = Server(FASTAPI_NAME, ["fastapi"], command, "/health", port, cwd=HERE)
    server.env["BASELINE_MODEL"] = str(model)
    return server


def ensure_mlserver() -> tuple[Path | None, str]:
    """MLServer's executable in its own venv, installed from the package index if missing."""
    mlserver = MLSERVER_VENV / "bin" / "mlserver"
    if mlserver.exists():
        return mlserver, ""
    import sklearn

    print(f"installing MLServer {MLSERVER_VERSION} into {MLSERVER_VENV} ...", flush=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    # the same scikit-learn as ours, so the joblib model loads as it was saved
    packages = [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}"]
    packages.append(f"scikit-learn=={sklearn.__version__}")
    # MLServer 1.7.1's inference workers die at start with uvloop >= 0.22 (SeldonIO/MLServer#2286)
    packages.append("uvloop<0.22")
    steps = [
        [base_python, "-m", "venv", str(MLSERVER_VENV)],
        [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *packages],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
            return None, f"`{' '.join(step[2:])}` failed: {lines[-1]}"
    return mlserver, ""


def mlserver(model: Path, scratch: Path, executable: Path) -> Server:
    """MLServer as it ships (one parallel inference worker), access logs off like the others."""
    repository = scratch / "mlserver"
    folder = repository / MODEL_NAME
    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(model.read_bytes())
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    port = free_port()
    settings = {
        "debug": False,  # no access log line per request
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
    }
    (repository / "settings.json").write_text(json.dumps(settings))
    command = [str(executable), "start", str(repository)]
    ready = f"/v2/models/{MODEL_NAME}/ready"
    # cwd: MLServer writes its multiprocess metrics folder (.metrics) where it starts
    return Server(MLSERVER_NAME, ["mlserver"], command, ready, port, cwd=repository)


# ---------------------------------------------------------------- load


WRK_SCRIPT = """
local bodies = {
%(bodies)s
}
local requests = {}
local next_index = 0

function init(args)
  for index, body in ipairs(bodies) do
    requests[index] = wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, body)
  end
end

function request()
  next_index = next_index %% #requests + 1
  return requests[next_index]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, '
    .. '"status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Run:
    """One timed wrk run against one server."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]  # wrk's counts by kind: connect, read, write, status (non-2xx), timeout
    cpu_ms_per_request: float  # the server's CPU time per request: what one core's throughput is


@dataclass
class Point:
    """A server at one scenario: medians over the rounds, errors summed."""

    server: str
    scenario: Scenario
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)

    @property
    def requests_per_s(self) -> float:
        return self.median("requests_per_s")

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.scenario.rows

    @property
    def p50_ms(self) -> float:
        return self.median("p50_ms")

    @property
    def p99_ms(self) -> float:
        return self.median("p99_ms")

    @property
    def cpu_ms_per_request(self) -> float:
        return self.median("cpu_ms_per_request")

    @property
    def errors(self) -> int:
        return sum(sum(run.errors.values()) for run in self.runs)

    @property
    def error_detail(self) -> str:
        kinds = {kind for run in self.runs for kind, count in run.errors.items() if count}
        return ", ".join(f"{sum(r.errors[k] for r in self.runs)} {k}" for k in sorted(kinds))

    @property
    def spread(self) -> str:
        rates = [run.requests_per_s for run in self.runs]
        return f"{min(rates):,.0f}–{max(rates):,.0f}"


def write_script(scenario: Scenario, scratch: Path) -> Path:
    bodies = ",\n".join(f"[==[{body}]==]" for body in scenario.bodies)
    path = scratch / f"wrk-{abs(hash((scenario.path, scenario.rows, scenario.bodies)))}.lua"
    if not path.exists():
        path.write_text(WRK_SCRIPT % {"bodies": bodies, "path": scenario.path})
    return path


def wrk(port: int, scenario: Scenario, script: Path, seconds: int) -> dict:
    """One wrk run (whole seconds: wrk takes no fractions); its summary from the done() hook."""
    command = ["wrk", "-t1", f"-c{scenario.concurrency}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), f"http://127.0.0.1:{port}{scenario.path}"]
    done = subprocess.run(pinned(command, LOADGEN_CPU), capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line.removeprefix("WRK_JSON "))
    output = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
    raise BenchError(f"wrk gave no summary (exit {done.returncode}): {output[0]}")


def server_cpu_seconds(server: Server) -> float:
    """CPU time (user + system) of every live process in the server's session: it and its workers."""
    total_ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == server.process.pid:  # session id: start() made the server a leader
            total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / os.sysconf("SC_CLK_TCK")


def measure(server: Server, scenario: Scenario, script: Path, warmup: int, seconds: int) -> Run:
    wrk(server.port, scenario, script, warmup)
    cpu_before = server_cpu_seconds(server)
    result = wrk(server.port, scenario, script, seconds)
    cpu = server_cpu_seconds(server) - cpu_before
    if server.process.poll() is not None:
        raise BenchError(f"{server.name} died during the load: {tail(server)}")
    return Run(
        requests_per_s=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1e3,
        p99_ms=result["p99_us"] / 1e3,
        errors={kind: result[kind] for kind in ("connect", "read", "write", "status", "timeout")},
        cpu_ms_per_request=1e3 * cpu / max(result["requests"], 1),
    )


def plan(servers: list[Server], X: pd.DataFrame) -> list[Point]:
    """Every (server, scenario) point, the servers of a scenario next to each other in time."""
    points = [
        Point(server.name, scenario)
        for server in servers
        for kind in server.kinds
        for scenario in scenarios_for(kind, X)
    ]
    order = {server.name: index for index, server in enumerate(servers)}

    def key(point: Point) -> tuple:
        scenario = point.scenario
        return (scenario.rows, scenario.concurrency, scenario.endpoint, order[point.server])

    return sorted(points, key=key)


def check_servers(servers: list[Server], model, X: pd.DataFrame) -> None:
    """One request per scenario kind, answered as the model answers, before any load."""
    for server in servers:
        for kind in server.kinds:
            for scenario in {s.rows: s for s in scenarios_for(kind, X)}.values():
                answer = post(server.port, scenario.path, scenario.bodies[0])
                check_answer(kind, answer, model, X.iloc[: scenario.rows])


def load(servers: list[Server], points: list[Point], scratch: Path, args) -> None:
    """Rounds over every point, so each ratio's two sides meet the same neighbours' load."""
    by_name = {server.name: server for server in servers}
    for round_number in range(args.rounds):
        warmup = args.warmup if round_number == 0 else min(args.warmup, 1)
        print(f"round {round_number + 1}/{args.rounds}", flush=True)
        for point in points:
            server, scenario = by_name[point.server], point.scenario
            script = write_script(scenario, scratch)
            run = measure(server, scenario, script, warmup, args.duration)
            point.runs.append(run)
            print(
                f"  {server.name:28} {scenario.endpoint:9} rows={scenario.rows:<5} "
                f"c={scenario.concurrency:<3} {run.requests_per_s:7.0f} req/s  "
                f"p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
                f"cpu {run.cpu_ms_per_request:5.2f} ms/req  errors {sum(run.errors.values())}",
                flush=True,
            )


# ---------------------------------------------------------------- report


def find(points: list[Point], server: str, endpoint: str, rows: int, concurrency: int):
    for point in points:
        scenario = point.scenario
        if (point.server, scenario.endpoint, scenario.rows, scenario.concurrency) == (
            server,
            endpoint,
            rows,
            concurrency,
        ):
            return point
    return None


def targets(points: list[Point]) -> list[tuple[str, str, str, str]]:
    """(target, measured, bound, verdict) rows for each runtime of ours that ran."""
    top = max(SINGLE_CONCURRENCY)
    base = find(points, FASTAPI_NAME, "/predict", 1, top)
    ml = find(points, MLSERVER_NAME, "V2 infer", 1, top)

    def verdict(ok: bool) -> str:
        return "✓" if ok else "✗"

    rows = []
    for runtime in RUNTIMES:
        name = ours_name(runtime)
        predict = find(points, name, "/predict", 1, top)
        oip = find(points, name, "V2 infer", 1, top)
        oip_c1 = find(points, name, "V2 infer", 1, 1)
        if not (predict or oip):
            continue
        if predict and base:
            ratio = predict.requests_per_s / base.requests_per_s
            rows.append(
                (
                    f"{runtime}: /predict c={top}, ours / FastAPI requests/s",
                    f"{ratio:.2f}×",
                    f"≥ {FASTAPI_RATIO_TARGET:g}×",
                    verdict(ratio >= FASTAPI_RATIO_TARGET),
                )
            )
            rows.append(
                (
                    f"{runtime}: /predict c={top}, p99 ours vs FastAPI",
                    f"{predict.p99_ms:.1f} vs {base.p99_ms:.1f} ms",
                    "lower",
                    verdict(predict.p99_ms < base.p99_ms),
                )
            )
        if oip and ml:
            ratio = oip.requests_per_s / ml.requests_per_s
            rows.append(
                (
                    f"{runtime}: V2 infer c={top}, ours / MLServer requests/s",
                    f"{ratio:.2f}×",
                    f"≥ {MLSERVER_RATIO_TARGET:g}×",
                    verdict(ratio >= MLSERVER_RATIO_TARGET),
                )
            )
            rows.append(
                (
                    f"{runtime}: V2 infer c={top}, p99 ours vs MLServer",
                    f"{oip.p99_ms:.1f} vs {ml.p99_ms:.1f} ms",
                    "(no target)",
                    "",
                )
            )
        if oip_c1:
            rows.append(
                (
                    f"{runtime}: V2 infer c=1, one row, our p50",
                    f"{oip_c1.p50_ms:.2f} ms",
                    f"< {P50_TARGET_MS:g} ms",
                    verdict(oip_c1.p50_ms < P50_TARGET_MS),
                )
            )
    if not base:
        rows.append(("ours / FastAPI", "— (FastAPI did not run)", "", ""))
    if not ml:
        rows.append(("ours / MLServer", "— (MLServer did not run)", "", ""))
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def render(points: list[Point], target_rows, notes: list[str], context: dict) -> str:
    lines = [
        "# `make bench-serve` — latest run",
        "",
        f"{context['date']} · {cpu_model()}, {len(CORES)} cores · Python {platform.python_version()}"
        f" · wrk {context['wrk']} · {context['rounds']} rounds of {context['duration']:g} s per "
        f"point (first warm-up {context['warmup']:g} s, then 1 s); medians over the rounds",
        "",
        context["pinning"],
        f"Load average (1/5/15 min) before: {context['load_before']}, after: {context['load_after']}.",
        "",
        "| server | endpoint | rows/request | concurrency | requests/s | (min–max) | rows/s "
        "| p50 ms | p99 ms | server CPU ms/request | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    servers = list(dict.fromkeys(point.server for point in points))
    for point in sorted(points, key=lambda point: servers.index(point.server)):
        scenario = point.scenario
        errors = f"{point.errors} ({point.error_detail})" if point.errors else "0"
        lines.append(
            f"| {point.server} | {scenario.endpoint} | {scenario.rows:,} | {scenario.concurrency} "
            f"| {point.requests_per_s:,.0f} | {point.spread} | {point.rows_per_s:,.0f} "
            f"| {point.p50_ms:.2f} | {point.p99_ms:.2f} | {point.cpu_ms_per_request:.2f} "
            f"| {errors} |"
        )
    lines += ["", "| target | measured | bound | |", "|---|---|---|---|"]
    lines += [
        f"| {target} | {measured} | {bound} | {ok} |" for target, measured, bound, ok in target_rows
    ]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (done.stdout or done.stderr).split("[")[0].replace("wrk", "").strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per point and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every point (median)")
    parser.add_argument("--warmup", type=int, default=3, help="first round's warm-up seconds")
    parser.add_argument(
        "--only", default="ours,fastapi,mlserver", help="servers to run, comma-separated"
    )
    args = parser.parse_args()
    if min(args.duration, args.rounds, args.warmup) < 1:
        print(
            "Error: --duration, --rounds and --warmup must be at least 1 - wrk runs whole seconds"
        )
        return 2
    chosen = set(args.only.split(","))
    if unknown := chosen - {"ours", "fastapi", "mlserver"}:
        print(f"Error: unknown server {', '.join(sorted(unknown))} - use ours, fastapi, mlserver")
        return 2
    if shutil.which("wrk") is None:
        print("Error: wrk not found - install it: apt-get install -y wrk")
        return 2

    context = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wrk": wrk_version(),
        "duration": args.duration,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "load_before": load_average(),
        "pinning": (
            f"wrk pinned to CPU {LOADGEN_CPU}, every server (and its workers) to CPU {SERVER_CPU} "
            "with `taskset`; one BLAS thread. All servers run for the whole bench; only the one "
            "under load works."
            if PINNED
            else "One core: wrk and the servers share it (no pinning); one BLAS thread."
        ),
    }
    notes: list[str] = []
    failed = False
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        scratch = Path(tmp)
        model_path, X = fit_model(scratch)
        model = joblib.load(model_path)
        wanted = []
        if "ours" in chosen:
            cache = scratch / "cache"
            wanted.append(ours(model_path, "sklearn", cache))
            if why := compile_model(model_path, cache):
                notes.append(f"`batch-infer compile` refused the model ({why}): no compiled rows")
            else:
                wanted.append(ours(model_path, "compiled", cache))
        if "fastapi" in chosen:
            wanted.append(fastapi(model_path))
        if "mlserver" in chosen:
            executable, why = ensure_mlserver()
            if executable is None:
                notes.append(f"MLServer did not install from the package index: {why}")
            else:
                wanted.append(mlserver(model_path, scratch, executable))
        servers = []
        try:
            for server in wanted:
                try:
                    start(server, scratch)
                    check_servers([server], model, X)
                except BenchError as error:
                    notes.append(f"{server.name} left out: {error}")
                    failed = True
                    stop(server)
                    continue
                print(f"{server.name}: ready on port {server.port}", flush=True)
                servers.append(server)
            points = plan(servers, X)
            load(servers, points, scratch, args)
        except BenchError as error:
            notes.append(f"The load stopped: {error}")
            failed = True
        finally:
            for server in wanted:
                stop(server)
    points = [point for point in points if point.runs]
    context["load_after"] = load_average()
    if any(point.errors for point in points):
        failed = True
        notes.append("Some responses failed (see the errors column): the run exits 1.")
    notes.append(
        "MLServer is asked for `predict` and `predict_proba` (its default is `predict` only), "
        "the work batch-infer serve and the FastAPI app do by default. MLServer runs as it "
        "ships (one parallel inference worker process, no adaptive batching), access log off."
    )
    notes.append(
        "server CPU ms/request: user + system CPU of the server's processes during the timed run, "
        "per request; with other work on the machine it, more than requests/s, tells what one "
        "core would serve (1000 / it)."
    )
    report = render(points, targets(points), notes, context)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print()
    print(report)
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
