"""`make bench`: batch-infer against the bounds of the work it does, measured in the same run.

Cases (keys for --only): mixed, logreg-10m, scaler-hgb, imputer-hgb, tables, commit-1000,
startup. For each model case it measures, as whole processes on the same seeded data:
  IO bound       pyarrow streaming read -> write of the same columns plus batch-infer's four
                 (prediction int64, probability float64, predicted_at timestamp[us, UTC],
                 model_version a 12-character string), batch-infer's codec (zstd) and dictionary
                 choice, no model (the faster of serial and one thread per core); logreg-10m
                 also with snappy, against a run with BATCH_INFER_OUTPUT__COMPRESSION=snappy;
  model bound    CPU seconds of predict + predict_proba on the whole input in memory (the
                 scaler's transform included), divided by the cores: the best wall time any
                 scheduler could reach (the Pipelines get the DataFrame pd.read_parquet gives,
                 their preprocessing included);
  compiled model the same for the runtime `batch-infer compile` cached: runtime.call(matrix,
                 [predict, predict_proba]) on the whole float64 matrix, CPU seconds / cores;
  compile        `batch-infer compile` of the case's model (one run) into a cache private to the
                 bench (BATCH_INFER_CACHE_DIR=benchmarks/data/scratch/cache); a model it refuses
                 (exit 4) shows "—" and the reason in a footnote;
  batch-infer    `batch-infer run --runtime sklearn` and `--runtime compiled`, startup included
                 (logreg-10m also without the report's statistics, and `--engine dask`);
  naive          iter_batches -> to_pandas -> predict -> append -> concat -> to_parquet (median
                 of the runs for mixed, whose target it is; one run elsewhere: the reference).
tables: the 10M-row LogisticRegression run written to a Parquet folder, a Delta table and an
Iceberg table (embedded SQLite catalog, local warehouse), the three interleaved in each round.
commit-1000: the same three targets from an input of 1,000 small files (1,000 staged files);
the commit time is the run's own `batch_infer_stage_seconds{stage="commit"}` (--metrics-file).
startup: `batch-infer --help` and the 20,000-row sample (configs/ci_smoke.yaml), both runtimes.
Commands compared with each other run interleaved (one of each per round), so a busy moment
of the machine does not favour one of them.

Every output (each runtime, each table) is read back (pyarrow, deltalake, pyiceberg) and
compared with the naive loop's, sorted by customer_id: the same ids, identical labels,
probabilities within 1e-12. A difference fails the bench (exit 1) after the table is written.

    python benchmarks/bench.py [--runs 3] [--quick] [--only mixed,tables]

--quick divides every case's rows by 10 and runs each command once; --only runs the named
cases. Either writes benchmarks/data/partial.md and .json, so benchmarks/results/latest.md and
.json always hold a whole run (what the docs' Performance page is generated from).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MODELS = DATA / "models-v2"  # the issue-19 models (v1: the pre-issue-19 mixed Pipeline)
SCRATCH = DATA / "scratch"
CACHE = SCRATCH / "cache"  # the bench's own compiled runtimes, removed with SCRATCH
WORKLOADS = [sys.executable, str(HERE / "workloads.py")]
BATCH_INFER = [sys.executable, "-m", "batch_infer"]
CORES = len(os.sched_getaffinity(0))
TOLERANCE = 1e-12  # probabilities against the naive loop's
QUICK_DIVISOR = 10  # --quick: every case's rows / 10
ICEBERG_TABLE = "bench.scores"
# every child gets the same environment: no BATCH_INFER_* or pyiceberg setting of the caller
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_INFER_", "PYICEBERG_"))}
ENV["BATCH_INFER_CACHE_DIR"] = str(CACHE)
ENV["PYICEBERG_HOME"] = str(SCRATCH / "pyiceberg-home")  # no ~/.pyiceberg.yaml: the embedded one
SNAPPY_ENV = {**ENV, "BATCH_INFER_OUTPUT__COMPRESSION": "snappy"}
NO_STATISTICS_ENV = {**ENV, "BATCH_INFER_OBSERVE__STATISTICS": "false"}

# issue 19's targets (and issue 18's for tables)
MIXED_TARGET = 1.30  # mixed-type Pipeline: batch-infer / max(IO bound, model bound)
MIXED_NAIVE_TARGET = 3.0  # mixed-type Pipeline: naive loop / batch-infer, at least
SNAPPY_TARGET = 1.30  # 10M-row LogisticRegression, sklearn runtime, snappy / snappy IO bound
COMPILED_IO_TARGET = 1.10  # 10M-row LogisticRegression, compiled runtime / IO bound (zstd)
HGB_TARGET = 0.30  # scaler/imputer + HGB 1M rows, compiled whole run / scikit-learn model bound
RSS_TARGET_MIB = 500  # peak RSS of every batch-infer run of every case
STATISTICS_TARGET = 1.03  # a run with the report's statistics / the same run without
SAMPLE_TARGET = 1.0  # the 20k-row sample, --runtime sklearn, whole process, seconds
TABLE_TARGET = 1.10  # 10M rows into a Delta / Iceberg table / into a Parquet folder


@dataclass(frozen=True)
class Case:
    key: str  # what --only selects
    name: str
    rows: int
    files: int
    model: str  # logreg (with a separate scaler), scaler-hgb, imputer-hgb, mixed (Pipelines)
    kind: str = "churn"  # the data workloads.make_data generates: churn, or mixed
    measure: str = "model"  # model (bounds, runtimes, naive), tables, commit

    @property
    def dataset(self) -> str:  # folder under benchmarks/data
        return f"{self.kind}-{self.rows}-{self.files}"


CASES = [
    Case(
        "mixed",
        "mixed-type Pipeline (imputer + scaler on 4 numbers, imputer + one-hot on 4 strings, "
        "LogisticRegression)",
        1_000_000,
        1,
        "mixed",
        kind="mixed",
    ),
    Case("logreg-10m", "LogisticRegression + scaler", 10_000_000, 1, "logreg"),
    Case(
        "scaler-hgb",
        "Pipeline(StandardScaler, HistGradientBoosting 200 iters)",
        1_000_000,
        1,
        "scaler-hgb",
    ),
    Case(
        "imputer-hgb",
        "Pipeline(SimpleImputer, HistGradientBoosting 200 iters)",
        1_000_000,
        1,
        "imputer-hgb",
    ),
    Case(
        "tables",
        "LogisticRegression + scaler into a folder, a Delta table, an Iceberg table",
        10_000_000,
        1,
        "logreg",
        measure="tables",
    ),
    Case(
        "commit-1000",
        "LogisticRegression + scaler, 1,000 input files: the commit of 1,000 staged files",
        1_000_000,
        1_000,
        "logreg",
        measure="commit",
    ),
]
KEYS = [case.key for case in CASES] + ["startup"]


class Failed(Exception):
    """A command of the bench failed: its case is reported as failed, the others still run."""


def first_error(text: str) -> str:
    """The line that says what went wrong (batch-infer's "Error: ...", else the last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line.removeprefix("Error:").strip().replace(f"{HERE.parent}/", "")
    return lines[-1].replace(f"{HERE.parent}/", "") if lines else "(no message)"


@dataclass
class Measure:
    walls: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)  # KiB
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def peak_mib(self) -> float:
        return max(self.rss) / 1024


@dataclass
class Outcome:
    wall: float
    rss: int  # KiB
    rc: int
    out: str
    err: str


def peak_of(
    command: list[str], env: dict | None = None, allowed: tuple[int, ...] = (0,)
) -> Outcome:
    """Run in a fresh interpreter so each command's peak RSS is its own."""
    probe = (
        "import resource, subprocess, sys, time, json;"
        "t = time.perf_counter();"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "w = time.perf_counter() - t;"
        "print(json.dumps({'wall': w, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'rc': p.returncode, 'out': p.stdout, 'err': p.stderr}))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe, *command],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        env=env or ENV,
    )
    result = json.loads(completed.stdout)
    if result["rc"] not in allowed:
        sys.stderr.write(
            f"{' '.join(command)} failed ({result['rc']}):\n{result['err']}{completed.stderr}\n"
        )
        words = [c for c in command[1:4] if not c.startswith("/")]
        name = " ".join(words).replace("-m batch_infer", "batch-infer")
        raise Failed(f"`{name}` exit {result['rc']}: {first_error(result['err'])}")
    return Outcome(result["wall"], result["rss"], result["rc"], result["out"], result["err"])


def repeat(command: list[str], runs: int, before=None, env: dict | None = None) -> Measure:
    return interleaved({"one": (command, before, env)}, runs)["one"]


def interleaved(commands: dict[str, tuple], runs: int, after=None) -> dict[str, Measure]:
    """Each round runs every command once, in order: ``{name: (command, before, env)}``;
    ``after(name, outcome)`` is called after each run (the output is still there)."""
    measures = {name: Measure() for name in commands}
    for _ in range(runs):
        for name, (command, before, env) in commands.items():
            if before:
                before()
            outcome = peak_of(command, env)
            measures[name].walls.append(outcome.wall)
            measures[name].rss.append(outcome.rss)
            measures[name].outcomes.append(outcome)
            if after:
                after(name, outcome)
    return measures


def ensure_data(cases: list[Case]) -> None:
    for case in cases:
        folder = DATA / case.dataset
        if not (folder / "_COMPLETE").exists():
            print(f"generating {case.dataset} ({case.rows:,} rows in {case.files} file(s))")
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run(
                [*WORKLOADS, "make-data", str(case.rows), str(case.files), str(folder), case.kind],
                check=True,
            )
            (folder / "_COMPLETE").touch()  # _-prefixed: readers of the folder skip it
    kinds = {case.kind for case in cases}
    if "churn" in kinds and not (MODELS / "imputer-hgb.joblib").exists():
        print("fitting the churn models", flush=True)
        subprocess.run([*WORKLOADS, "make-models", str(MODELS), "churn"], check=True)
    if "mixed" in kinds and not (MODELS / "mixed.joblib").exists():
        print("fitting the mixed-type Pipeline", flush=True)
        subprocess.run([*WORKLOADS, "make-models", str(MODELS), "mixed"], check=True)


def model_args(model: str) -> list[str]:
    if model == "logreg":
        return ["--model", str(MODELS / "logreg.joblib"), "--scaler", str(MODELS / "scaler.joblib")]
    return ["--model", str(MODELS / f"{model}.joblib")]


def clean(path: Path):
    return lambda: shutil.rmtree(path, ignore_errors=True)


def error_line(stderr: str) -> str:
    """The first line of batch-infer's error message (tools may log before it)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):  # "Error: <what> — <fix>": the what, paths relative
            what = line.removeprefix("Error:").split(" — ")[0].strip()
            return what.replace(f"{HERE.parent}/", "")
    return lines[0] if lines else "(no message)"


def compile_model(args: list[str], sample: str) -> dict:
    """`batch-infer compile` once into the bench's cache: its wall time, or why it refused."""
    outcome = peak_of(
        [*BATCH_INFER, "compile", *args, "--sample", sample, "--output-format", "json"],
        allowed=(0, 4),
    )
    if outcome.rc == 4:
        return {"compiled": False, "wall": outcome.wall, "reason": error_line(outcome.err)}
    meta = json.loads(outcome.out.strip().splitlines()[-1])
    return {
        "compiled": True,
        "wall": outcome.wall,
        "engine": meta["engine"],
        "build_seconds": meta.get("build_seconds"),
    }


def cpu_seconds(command: list[str], runs: int) -> float:
    cpu = []
    for _ in range(runs):
        out = peak_of(command).out
        cpu.append(json.loads(out.strip().splitlines()[-1])["cpu"])
    return statistics.median(cpu)


SCORES = ["customer_id", "prediction", "probability"]


def read_output(kind: str, path: Path):
    """customer_id, prediction and probability of an output, read by the format's own library:
    a folder or file with pyarrow.dataset (it leaves out _-prefixed files such as _staging),
    a Delta table with deltalake, an Iceberg table with pyiceberg (the embedded SQLite catalog
    in ``path``)."""
    if kind == "delta":
        from deltalake import DeltaTable

        return DeltaTable(str(path)).to_pyarrow_table(columns=SCORES)
    if kind == "iceberg":
        from pyiceberg.catalog.sql import SqlCatalog

        catalog = SqlCatalog(
            "default", uri=f"sqlite:///{path}/catalog.db", warehouse=f"file://{path}"
        )
        return catalog.load_table(ICEBERG_TABLE).scan(selected_fields=tuple(SCORES)).to_arrow()
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").to_table(columns=SCORES)


def read_scores(kind: str, path: Path):
    """(ids, labels, probabilities), sorted by id."""
    import numpy as np

    table = read_output(kind, path)
    ids = table.column("customer_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    return (
        ids[order],
        table.column("prediction").to_numpy()[order],
        table.column("probability").to_numpy()[order],
    )


def compare(kind: str, ours: Path, naive) -> dict:
    """batch-infer's output against the naive loop's: ids, labels, probabilities."""
    import numpy as np

    ids, labels, proba = read_scores(kind, ours)
    naive_ids, naive_labels, naive_proba = naive
    if len(ids) != len(naive_ids) or not np.array_equal(ids, naive_ids):
        return {"ok": False, "detail": f"ids differ ({len(ids):,} rows vs {len(naive_ids):,})"}
    label_diffs = int(np.count_nonzero(labels != naive_labels))
    max_diff = float(np.max(np.abs(proba - naive_proba))) if len(proba) else 0.0
    ok = label_diffs == 0 and max_diff <= TOLERANCE
    detail = (
        f"{label_diffs:,} labels differ, max |probability difference| {max_diff:.1e}"
        if not ok
        else ("identical" if max_diff == 0 else f"max |probability difference| {max_diff:.1e}")
    )
    return {"ok": ok, "label_differences": label_diffs, "max_diff": max_diff, "detail": detail}


def manifest_runtime(path: Path) -> str:
    return json.loads((path / "_manifest.json").read_text())["runtime"]


def output_codec(path: Path) -> str:
    """The compression of an output's first committed file (what its bound must write too)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    first = ds.dataset(str(path), format="parquet").files[0]
    return pq.ParquetFile(first).metadata.row_group(0).column(0).compression.lower()


_naive: dict[tuple[str, str], tuple[Path, Measure]] = {}


def naive_reference(case: Case, runs: int) -> tuple[Path, Measure]:
    """The naive loop's output on the case's data (kept for the bench's lifetime: the tables
    case reuses logreg-10m's) and its timing, run ``runs`` times."""
    known = _naive.get((case.dataset, case.model))
    if known is not None and len(known[1].walls) >= runs:
        return known
    out = SCRATCH / f"naive-{case.dataset}-{case.model}.parquet"
    command = [*WORKLOADS, "naive", str(DATA / case.dataset), str(MODELS), case.model, str(out)]
    _naive[(case.dataset, case.model)] = (out, repeat(command, runs))
    return _naive[(case.dataset, case.model)]


def check_outputs(case: Case, outputs: dict[str, tuple[str, Path]], reference: Path) -> dict:
    """Each output ({name: (kind, path)}) against the naive loop's; a difference is printed."""
    expected = read_scores("file", reference)
    checks = {name: compare(kind, path, expected) for name, (kind, path) in outputs.items()}
    for name, check in checks.items():
        if not check["ok"]:
            print(f"  ✗ {case.key} {name}: output differs from the naive loop's: {check['detail']}")
    return checks


def run_command(case: Case, out: str, *extra: str) -> list[str]:
    data = str(DATA / case.dataset)
    return [*BATCH_INFER, "run", "--quiet", "--input", data, *model_args(case.model)] + [
        "--output",
        out,
        *extra,
    ]


def measure_dask(case: Case, runs: int) -> dict:
    """`--engine dask` on a LocalCluster of one worker process per core, same runtime."""
    out = SCRATCH / "bi-dask"
    command = run_command(case, str(out), "--runtime", "sklearn", "--engine", "dask")
    command += ["--output-format", "json"]
    walls, worker_rss = [], []
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        outcome = peak_of(command)
        report = json.loads(outcome.out.strip().splitlines()[-1])
        walls.append(outcome.wall)
        worker_rss.append(report.get("worker_peak_rss_mib") or 0.0)
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": statistics.median(walls), "walls": walls, "worker_rss_mib": max(worker_rss)}


def measure_case(case: Case, runs: int) -> dict:
    """A model case: bounds, both runtimes, the naive loop, outputs checked."""
    data = str(DATA / case.dataset)
    models = str(MODELS)
    compiled = compile_model(model_args(case.model), data)
    logreg = case.key == "logreg-10m"

    def io(codec: str) -> tuple[Measure, Measure]:
        return tuple(
            repeat(
                [*WORKLOADS, "io-bound", data, str(SCRATCH / "io"), str(threads), codec],
                runs,
                clean(SCRATCH / "io"),
            )
            for threads in (1, CORES)
        )

    io_serial, io_parallel = io("zstd")
    snappy_serial, snappy_parallel = io("snappy") if logreg else (None, None)
    shutil.rmtree(SCRATCH / "io", ignore_errors=True)
    model_cpu = cpu_seconds([*WORKLOADS, "model-bound", data, models, case.model], runs)
    compiled_cpu = None
    if compiled["compiled"]:
        try:
            compiled_cpu = cpu_seconds(
                [*WORKLOADS, "model-bound-compiled", data, models, case.model], runs
            )
        except Failed as exc:  # compiled, but its runtime does not load: "—" and why
            compiled = {**compiled, "compiled": False, "reason": f"compiled, but {exc}"}

    outputs = {"sklearn": SCRATCH / "bi-sklearn"}
    commands = {"sklearn": (run_command(case, str(outputs["sklearn"]), "--runtime", "sklearn"),)}
    if compiled["compiled"]:
        outputs["compiled"] = SCRATCH / "bi-compiled"
        commands["compiled"] = (
            run_command(case, str(outputs["compiled"]), "--runtime", "compiled"),
        )
    if logreg:  # snappy, and the report's statistics (sketched while scoring) off
        for name, env in (("snappy", SNAPPY_ENV), ("nostats", NO_STATISTICS_ENV)):
            outputs[name] = SCRATCH / f"bi-{name}"
            commands[name] = (run_command(case, str(outputs[name]), "--runtime", "sklearn"), env)
    measures = interleaved(
        {
            name: (command[0], clean(outputs[name]), command[1] if len(command) > 1 else None)
            for name, command in commands.items()
        },
        runs,
    )
    dask = measure_dask(case, runs) if logreg else None
    codecs = {name: output_codec(out) for name, out in outputs.items()}
    expected = {"sklearn": "zstd", "compiled": "zstd", "snappy": "snappy", "nostats": "zstd"}
    if any(codec != expected[name] for name, codec in codecs.items()):
        raise Failed(f"the outputs' codecs are {codecs}, the IO bounds' {expected}")
    naive_out, naive = naive_reference(case, runs if case.key == "mixed" else 1)

    # the last timed run of each command left its output: check it against the naive loop's
    runtimes = {name: manifest_runtime(out) for name, out in outputs.items()}
    checks = check_outputs(case, {n: ("folder", p) for n, p in outputs.items()}, naive_out)
    for out in outputs.values():
        shutil.rmtree(out, ignore_errors=True)
    if runtimes["sklearn"] != "sklearn" or runtimes.get("compiled") == "sklearn":
        checks["manifest"] = {"ok": False, "detail": f"the manifests say runtime {runtimes}"}

    ours, ours_compiled = measures["sklearn"], measures.get("compiled")
    ours_snappy, ours_nostats = measures.get("snappy"), measures.get("nostats")
    io_bound = min(io_serial.wall, io_parallel.wall)
    model_bound = model_cpu / CORES
    bound = max(io_bound, model_bound)
    snappy_bound = min(snappy_serial.wall, snappy_parallel.wall) if logreg else None
    return {
        "key": case.key,
        "case": case.name,
        "rows": case.rows,
        "files": case.files,
        "model": case.model,
        "io_serial": io_serial.wall,
        "io_parallel": io_parallel.wall,
        "io_bound": io_bound,
        "snappy_serial": snappy_serial.wall if snappy_serial else None,
        "snappy_parallel": snappy_parallel.wall if snappy_parallel else None,
        "snappy_bound": snappy_bound,
        "model_bound": model_bound,
        "model_cpu": model_cpu,
        "compiled_model_bound": compiled_cpu / CORES if compiled_cpu is not None else None,
        "compiled_model_cpu": compiled_cpu,
        "compile": compiled,
        "ours": ours.wall,
        "ours_walls": ours.walls,
        "ours_rss_mib": ours.peak_mib,
        "compiled": ours_compiled.wall if ours_compiled else None,
        "compiled_walls": ours_compiled.walls if ours_compiled else None,
        "compiled_rss_mib": ours_compiled.peak_mib if ours_compiled else None,
        "ours_snappy": ours_snappy.wall if ours_snappy else None,
        "ours_nostats": ours_nostats.wall if ours_nostats else None,
        "statistics_cost": ours.wall / ours_nostats.wall if ours_nostats else None,
        "peak_rss_mib": max(m.peak_mib for m in measures.values()),
        "naive": naive.wall,
        "naive_runs": len(naive.walls),
        "naive_rss_mib": naive.peak_mib,
        "bound": bound,
        "bound_kind": "IO" if io_bound >= model_bound else "model",
        "vs_bound": ours.wall / bound,
        "compiled_vs_bound": ours_compiled.wall / bound if ours_compiled else None,
        "compiled_vs_io": ours_compiled.wall / io_bound if ours_compiled else None,
        "compiled_vs_model": ours_compiled.wall / model_bound if ours_compiled else None,
        "vs_io": ours.wall / io_bound,
        "snappy_vs_io": ours_snappy.wall / snappy_bound if ours_snappy else None,
        "vs_naive": naive.wall / ours.wall,
        "compiled_vs_naive": naive.wall / ours_compiled.wall if ours_compiled else None,
        "dask": dask,
        "runtimes": runtimes,
        "codecs": codecs,
        "checks": checks,
        "checks_ok": all(check["ok"] for check in checks.values()),
    }


TARGET_KINDS = ("folder", "delta", "iceberg")


def target_command(case: Case, kind: str, path: Path, *extra: str) -> list[str]:
    """`batch-infer run --runtime sklearn` of the case into a folder, Delta or Iceberg table."""
    if kind == "iceberg":
        out = ["iceberg:" + ICEBERG_TABLE, "--warehouse", str(path)]
    else:
        out = [f"delta:{path}" if kind == "delta" else str(path)]
    return run_command(case, out[0], *out[1:], "--runtime", "sklearn", *extra)


def measure_targets(case: Case, runs: int, metrics: bool = False) -> dict:
    """The same run into a folder, a Delta table and an Iceberg table, interleaved; with
    ``metrics`` each run's commit seconds from its own metrics file (--metrics-file)."""
    paths = {kind: SCRATCH / f"target-{kind}" for kind in TARGET_KINDS}
    (SCRATCH / "pyiceberg-home").mkdir(parents=True, exist_ok=True)
    commit_seconds: dict[str, list[float]] = {kind: [] for kind in TARGET_KINDS}
    files_out: dict[str, int] = {}

    def extra(kind: str) -> list[str]:
        if not metrics:
            return []
        return ["--metrics-file", str(SCRATCH / f"{kind}.prom"), "--output-format", "json"]

    def after(kind: str, outcome: Outcome) -> None:
        if not metrics:
            return
        text = (SCRATCH / f"{kind}.prom").read_text()
        found = re.search(
            r'^batch_infer_stage_seconds\{[^}]*stage="commit"[^}]*\} (\S+)$', text, re.M
        )
        if found is None:
            raise Failed(f"no commit stage in the {kind} run's metrics file")
        commit_seconds[kind].append(float(found.group(1)))
        files_out[kind] = json.loads(outcome.out.strip().splitlines()[-1])["files_out"]

    measures = interleaved(
        {
            kind: (target_command(case, kind, path, *extra(kind)), clean(path), None)
            for kind, path in paths.items()
        },
        runs,
        after,
    )
    naive_out, _ = naive_reference(case, 1)
    checks = check_outputs(case, {kind: (kind, path) for kind, path in paths.items()}, naive_out)
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    folder = measures["folder"].wall
    result = {
        "key": case.key,
        "case": case.name,
        "rows": case.rows,
        "files": case.files,
        "walls": {kind: m.walls for kind, m in measures.items()},
        "wall": {kind: m.wall for kind, m in measures.items()},
        "rss_mib": {kind: m.peak_mib for kind, m in measures.items()},
        "peak_rss_mib": max(m.peak_mib for m in measures.values()),
        "vs_folder": {kind: measures[kind].wall / folder for kind in ("delta", "iceberg")},
        "checks": checks,
        "checks_ok": all(check["ok"] for check in checks.values()),
    }
    if metrics:
        result["commit_seconds"] = {k: statistics.median(v) for k, v in commit_seconds.items()}
        result["files_out"] = files_out
    return result


def startup_figures(runs: int) -> dict:
    help_walls = [peak_of([*BATCH_INFER, "--help"]).wall for _ in range(runs)]
    compiled = compile_model(
        [
            "--model",
            "sample_data/models/model.joblib",
            "--scaler",
            "sample_data/models/scaler.joblib",
        ],
        "sample_data/churn",
    )
    if not compiled["compiled"]:
        raise Failed(f"batch-infer compile refused the sample model: {compiled['reason']}")
    out = SCRATCH / "sample"
    figures = {"help": statistics.median(help_walls), "sample_compile": compiled["wall"]}
    for runtime in ("sklearn", "compiled"):
        sample = repeat(
            [
                *BATCH_INFER,
                "run",
                "--quiet",
                "-c",
                "configs/ci_smoke.yaml",
                "--output",
                str(out),
                "--runtime",
                runtime,
            ],
            runs,
            clean(out),
        )
        figures[f"sample_{runtime}"] = sample.wall
        figures[f"sample_{runtime}_rss_mib"] = sample.peak_mib
    shutil.rmtree(out, ignore_errors=True)
    return figures


def _s(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f} s"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _peak(r: dict) -> float:
    """The largest peak RSS of the case's batch-infer runs (older results: sklearn/compiled)."""
    if r.get("peak_rss_mib"):
        return r["peak_rss_mib"]
    return max(r.get(k) or 0.0 for k in ("ours_rss_mib", "compiled_rss_mib"))


def _not_compiled(r: dict) -> str:
    reason = (r.get("compile") or {}).get("reason")
    return f"not compiled: {reason}" if reason else "not compiled"


def targets(data: dict, startup: dict | None = None) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every target whose case was measured in ``data`` (a results
    file; an older one's list of results and startup figures are taken too)."""
    if isinstance(data, list):  # targets(results, startup), as older callers passed them
        data = {"results": data, "startup": startup}
    results = data.get("results") or []
    by_key = {r["key"]: r for r in results}
    rows = []
    r = by_key.get("mixed")
    if r is not None:
        rows.append(
            (
                f"{r['case']}, {r['rows']:,} rows: batch-infer ≤ {MIXED_TARGET}× "
                "max(IO bound, model CPU ÷ cores)",
                f"{r['ours']:.2f} s / {r['bound']:.2f} s ({r['bound_kind']}) = {r['vs_bound']:.3f}×",
                r["vs_bound"] <= MIXED_TARGET,
            )
        )
        if r.get("vs_naive") is not None:
            rows.append(
                (
                    f"… the naive pandas loop ≥ {MIXED_NAIVE_TARGET}× batch-infer's time",
                    f"{r['naive']:.2f} s / {r['ours']:.2f} s = {r['vs_naive']:.2f}×",
                    r["vs_naive"] >= MIXED_NAIVE_TARGET,
                )
            )
    r = by_key.get("logreg-10m")
    if r is not None:
        if r.get("snappy_vs_io") is not None:
            rows.append(
                (
                    f"{r['case']}, {r['rows']:,} rows, `--runtime sklearn`, snappy output ≤ "
                    f"{SNAPPY_TARGET}× the snappy IO bound",
                    f"{r['ours_snappy']:.2f} s / {r['snappy_bound']:.2f} s = "
                    f"{r['snappy_vs_io']:.3f}×",
                    r["snappy_vs_io"] <= SNAPPY_TARGET,
                )
            )
        rows.append(
            (
                f"… `--runtime compiled` ≤ {COMPILED_IO_TARGET}× the IO bound (zstd)",
                f"{r['compiled']:.2f} s / {r['io_bound']:.2f} s = {r['compiled_vs_io']:.3f}×"
                if r.get("compiled") is not None
                else _not_compiled(r),
                r.get("compiled") is not None and r["compiled_vs_io"] <= COMPILED_IO_TARGET,
            )
        )
        if r.get("statistics_cost") is not None:
            rows.append(
                (
                    f"… the report's statistics: run with / without ≤ {STATISTICS_TARGET}×",
                    f"{r['ours']:.2f} s / {r['ours_nostats']:.2f} s = {r['statistics_cost']:.3f}×",
                    r["statistics_cost"] <= STATISTICS_TARGET,
                )
            )
    for key in ("scaler-hgb", "imputer-hgb"):
        r = by_key.get(key)
        if r is None:
            continue
        rows.append(
            (
                f"{r['case']}, {r['rows']:,} rows: `--runtime compiled` (whole run) ≤ "
                f"{HGB_TARGET}× the scikit-learn model bound",
                f"{r['compiled']:.2f} s / {r['model_bound']:.2f} s = {r['compiled_vs_model']:.3f}×"
                if r.get("compiled") is not None
                else _not_compiled(r),
                r.get("compiled") is not None and r["compiled_vs_model"] <= HGB_TARGET,
            )
        )
    cases = [*results, *(c for c in (data.get("tables"), data.get("commit")) if c)]
    for r in cases:
        peak = _peak(r)
        rows.append(
            (
                f"peak RSS ≤ {RSS_TARGET_MIB} MiB: {r['case']}, {r['rows']:,} rows "
                "(the largest of its batch-infer runs)",
                f"{peak:.0f} MiB",
                peak <= RSS_TARGET_MIB,
            )
        )
    tables = data.get("tables")
    if tables:
        for kind, label in (("delta", "a Delta table"), ("iceberg", "an Iceberg table")):
            rows.append(
                (
                    f"{tables['rows']:,} rows, LogisticRegression + scaler into {label} ≤ "
                    f"{TABLE_TARGET}× into a Parquet folder (same run)",
                    f"{tables['wall'][kind]:.2f} s / {tables['wall']['folder']:.2f} s = "
                    f"{tables['vs_folder'][kind]:.3f}×",
                    tables["vs_folder"][kind] <= TABLE_TARGET,
                )
            )
    startup = data.get("startup")
    if startup is not None:
        rows.append(
            (
                f"start-up: the 20,000-row sample (`configs/ci_smoke.yaml`), `--runtime sklearn`, "
                f"whole process ≤ {SAMPLE_TARGET} s",
                f"{startup['sample_sklearn']:.2f} s",
                startup["sample_sklearn"] <= SAMPLE_TARGET,
            )
        )
    for failure in data.get("failed") or []:
        rows.append((f"{failure['case']}: measured", f"failed: {failure['error']}", False))
    checked = [r for r in cases if r.get("checks")]
    if checked:
        failed = [f"{r['key']} {n}" for r in checked for n, c in r["checks"].items() if not c["ok"]]
        rows.append(
            (
                "every output equals the naive loop's (ids, labels, probabilities within "
                f"{TOLERANCE:.0e})",
                f"{sum(len(r['checks']) for r in checked)} output(s) of {len(checked)} case(s)"
                + (f"; differ: {', '.join(failed)}" if failed else ""),
                not failed,
            )
        )
    return rows


def case_tables(data: dict) -> str:
    """The results as Markdown tables (latest.md and the docs' Performance page)."""
    results = data.get("results") or []
    lines = (
        []
        if not results
        else [
            "Wall times, whole processes (start-up included), medians. *batch-infer* is "
            "`batch-infer run --runtime sklearn`; *compiled* is `--runtime compiled` after "
            "`batch-infer compile` (its time: *compile*, one run); model bounds are CPU seconds ÷ "
            "cores (CPU seconds in brackets); *naive*: the naive pandas loop (runs in brackets); "
            "*= naive*: each output read back equals the naive loop's (sklearn, compiled; for "
            "logreg-10m also snappy and without statistics).",
            "",
            "| case | rows | IO bound serial / parallel | model bound | compiled model bound "
            "| compile | batch-infer | compiled | naive | peak RSS batch-infer / compiled | = naive |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
    )
    notes = []
    for r in results:
        compile_info = r.get("compile") or {}
        if compile_info.get("compiled"):
            compile_cell = f"{compile_info['wall']:.2f} s"
        else:
            notes.append(compile_info.get("reason", "not compiled"))
            compile_cell = f"—[{len(notes)}]"
        compiled_bound = (
            f"{r['compiled_model_bound']:.2f} s ({r['compiled_model_cpu']:.2f})"
            if r.get("compiled_model_bound") is not None
            else "—"
        )
        naive = (
            f"{r['naive']:.2f} s ({r.get('naive_runs', '?')})"
            if r.get("naive") is not None
            else "—"
        )
        rss = f"{r['ours_rss_mib']:.0f} / " + (
            f"{r['compiled_rss_mib']:.0f} MiB" if r.get("compiled_rss_mib") else "— MiB"
        )
        check = "/".join(_mark(c["ok"]) for n, c in r.get("checks", {}).items() if n != "manifest")
        if "manifest" in r.get("checks", {}):
            check += " ✗ manifest"
        lines.append(
            f"| {r['case']} | {r['rows']:,} | {r['io_serial']:.2f} s / {r['io_parallel']:.2f} s "
            f"| {r['model_bound']:.2f} s ({r['model_cpu']:.2f}) | {compiled_bound} "
            f"| {compile_cell} | {r['ours']:.2f} s | {_s(r.get('compiled'))} | {naive} | {rss} "
            f"| {check or '—'} |"
        )
    lines += (
        []
        if not results
        else [
            "",
            "Ratios: bound = max(IO bound, model bound).",
            "",
            "| case | bound | batch-infer / bound | compiled / bound | compiled / model bound "
            "| naive / batch-infer | naive / compiled |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    )
    for r in results:
        lines.append(
            f"| {r['case']} | {r['bound']:.2f} s ({r['bound_kind']}) | **{r['vs_bound']:.2f}×** "
            f"| {_x(r.get('compiled_vs_bound'))} | {_x(r.get('compiled_vs_model'))} "
            f"| {_x(r.get('vs_naive'))} | {_x(r.get('compiled_vs_naive'))} |"
        )
    for r in results:
        if r.get("snappy_bound") is not None:
            lines += [
                "",
                f"{r['case']}, {r['rows']:,} rows, with `output.compression: snappy`: IO bound "
                f"{r['snappy_bound']:.2f} s, batch-infer {r['ours_snappy']:.2f} s = "
                f"{r['snappy_vs_io']:.2f}×"
                + (
                    f"; without the report's statistics (`observe.statistics: false`) "
                    f"{r['ours_nostats']:.2f} s against {r['ours']:.2f} s with them."
                    if r.get("ours_nostats") is not None
                    else "."
                ),
            ]
        if r.get("dask"):
            lines += [
                "",
                f"{r['case']}, {r['rows']:,} rows, `--engine dask` (a LocalCluster of {CORES} "
                f"worker processes started by the run): {r['dask']['wall']:.2f} s against the "
                f"local engine's {r['ours']:.2f} s; peak RSS of a worker "
                f"{r['dask']['worker_rss_mib']:.0f} MiB.",
            ]
    differences = [
        f"{r['key']} {name} " + ("0" if c["max_diff"] == 0 else f"{c['max_diff']:.1e}")
        for r in [*results, *(c for c in (data.get("tables"), data.get("commit")) if c)]
        for name, c in r.get("checks", {}).items()
        if "max_diff" in c
    ]
    tables, commit = data.get("tables"), data.get("commit")
    if tables:
        lines += [
            "",
            f"Tables: {tables['case']}, {tables['rows']:,} rows, `--runtime sklearn`, the three "
            "runs interleaved in each round (Iceberg: the embedded SQLite catalog, a local "
            "warehouse).",
            "",
            "| output | wall | / folder | peak RSS | = naive |",
            "|---|---:|---:|---:|:---:|",
        ]
        for kind in TARGET_KINDS:
            ratio = "1" if kind == "folder" else f"{tables['vs_folder'][kind]:.3f}×"
            lines.append(
                f"| {kind} | {tables['wall'][kind]:.2f} s | {ratio} "
                f"| {tables['rss_mib'][kind]:.0f} MiB | {_mark(tables['checks'][kind]['ok'])} |"
            )
    if commit:
        lines += [
            "",
            f"Commit at scale: {commit['case']} ({commit['rows']:,} rows). *commit* is the run's "
            'own `batch_infer_stage_seconds{stage="commit"}` (`--metrics-file`), median.',
            "",
            "| output | staged files | commit | whole run | peak RSS | = naive |",
            "|---|---:|---:|---:|---:|:---:|",
        ]
        for kind in TARGET_KINDS:
            lines.append(
                f"| {kind} | {commit['files_out'][kind]:,} | {commit['commit_seconds'][kind]:.2f} s "
                f"| {commit['wall'][kind]:.2f} s | {commit['rss_mib'][kind]:.0f} MiB "
                f"| {_mark(commit['checks'][kind]['ok'])} |"
            )
    if differences:
        lines += [
            "",
            f"Largest |probability difference| from the naive loop: {'; '.join(differences)}.",
        ]
    if notes:
        lines.append("")
        lines += [f"[{i}] `batch-infer compile`: {note}" for i, note in enumerate(notes, 1)]
    for failure in data.get("failed") or []:
        lines += ["", f"**{failure['case']}**: not measured, a command failed: {failure['error']}"]
    startup = data.get("startup")
    if startup is not None:
        lines += [
            "",
            f"Start-up: `batch-infer --help` {startup['help']:.2f} s; the 20,000-row sample "
            f"(`configs/ci_smoke.yaml`) end to end {startup['sample_sklearn']:.2f} s, "
            f"{startup['sample_sklearn_rss_mib']:.0f} MiB (`--runtime sklearn`); "
            f"{startup['sample_compiled']:.2f} s, {startup['sample_compiled_rss_mib']:.0f} MiB "
            f"(`--runtime compiled`; compiling the sample model took "
            f"{startup['sample_compile']:.2f} s).",
        ]
    return "\n".join(lines)


def markdown(data: dict) -> str:
    lines = [
        f"Date: {data['date']}. Machine: {data['machine']}.",
        f"Command: `{data['command']}`; medians of {data['runs']} run(s).",
        "",
        case_tables(data),
    ]
    goals = targets(data)
    if goals:
        lines += ["", "Targets:", "", "| target | measured | |", "|---|---:|:---:|"]
        lines += [f"| {goal} | {measured} | {_mark(ok)} |" for goal, measured, ok in goals]
    if data.get("elapsed"):
        spent = ", ".join(f"{k} {v:.0f} s" for k, v in data["elapsed"].items())
        lines += ["", f"Time the bench spent per case: {spent}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help=f"rows / {QUICK_DIVISOR}, one run: a smoke test"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="KEYS",
        help=f"only these cases, comma-separated or repeated: {', '.join(KEYS)}",
    )
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    only = {k.strip() for value in args.only or [] for k in value.split(",") if k.strip()}
    unknown = sorted(only - set(KEYS))
    if unknown:
        parser.error(f"--only: no case {', '.join(unknown)}; choose from {', '.join(KEYS)}")
    cases = [case for case in CASES if not only or case.key in only]
    if args.quick:
        cases = [replace(case, rows=case.rows // QUICK_DIVISOR) for case in cases]
    started = time.perf_counter()
    # byte-compile first: under PYTHONDONTWRITEBYTECODE an editable checkout would compile
    # batch_infer from source in every timed process (start-up figures would include it)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "batch_infer")])
    ensure_data(cases)
    shutil.rmtree(SCRATCH, ignore_errors=True)  # no runtime compiled by an earlier bench
    SCRATCH.mkdir(parents=True, exist_ok=True)
    data: dict = {"results": [], "tables": None, "commit": None, "startup": None, "elapsed": {}}
    data["failed"] = []  # cases a command failed in: {key, case, error}
    data["elapsed"]["data"] = time.perf_counter() - started
    for case in cases:
        print(f"measuring {case.key}: {case.name}, {case.rows:,} rows", flush=True)
        began = time.perf_counter()
        try:
            if case.measure == "tables":
                data["tables"] = measure_targets(case, runs)
            elif case.measure == "commit":
                data["commit"] = measure_targets(case, runs, metrics=True)
            else:
                data["results"].append(measure_case(case, runs))
        except Failed as exc:
            print(f"  ✗ {case.key} failed: {exc}", flush=True)
            data["failed"].append({"key": case.key, "case": case.name, "error": str(exc)})
        data["elapsed"][case.key] = time.perf_counter() - began
    if not only or "startup" in only:
        began = time.perf_counter()
        try:
            data["startup"] = startup_figures(runs)
        except Failed as exc:
            data["failed"].append({"key": "startup", "case": "start-up", "error": str(exc)})
        data["elapsed"]["startup"] = time.perf_counter() - began
    shutil.rmtree(SCRATCH, ignore_errors=True)
    flags = " ".join(sys.argv[1:])
    partial = bool(only) or args.quick
    data.update(
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine(),
        command=f"python benchmarks/bench.py {flags}" if flags else "make bench",
        runs=runs,
        partial=partial,
    )
    text = markdown(data)
    target, stem = (DATA, "partial") if partial else (HERE / "results", "latest")
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{stem}.md").write_text(text)
    (target / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)
    print(f"written to {(target / stem).relative_to(HERE.parent)}.md and .json")
    failed = [
        f"{r['key']} ({name}): {check['detail']}"
        for r in [*data["results"], *(c for c in (data["tables"], data["commit"]) if c)]
        for name, check in r["checks"].items()
        if not check["ok"]
    ]
    if failed:
        sys.stderr.write(
            "\nFAILED: batch-infer's output differs from the naive loop's:\n  "
            + "\n  ".join(failed)
            + "\n"
        )
    if data["failed"]:
        sys.stderr.write(
            "\nFAILED: a command failed in "
            + "; ".join(f"{f['key']}: {f['error']}" for f in data["failed"])
            + "\n"
        )
    if failed or data["failed"]:
        raise SystemExit(1)


def machine() -> str:
    """What the figures were measured on: cores, memory, CPU model, OS, Python."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0))
    return (
        f"{cores} cores{f' ({cpu})' if cpu else ''}, {memory:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
