"""`make bench`: batch-infer against the bounds of the work it does, measured in the same run.

For each case it measures, as whole processes on the same seeded data:
  IO bound       pyarrow streaming read -> write of the same columns plus batch-infer's four
                 (prediction int64, probability float64, predicted_at timestamp[us, UTC],
                 model_version a 12-character string), batch-infer's codec (zstd) and dictionary
                 choice, no model (the faster of serial and one thread per core); the
                 LogisticRegression cases also with snappy, against a run with
                 BATCH_INFER_OUTPUT__COMPRESSION=snappy;
  model bound    CPU seconds of scaler + predict + predict_proba on the whole feature matrix in
                 memory, divided by the cores: the best wall time any scheduler could reach
                 (the mixed-type Pipeline: predict + predict_proba on the DataFrame
                 pd.read_parquet gives, ColumnTransformer included);
  compiled model the same for the runtime `batch-infer compile` cached: runtime.call(matrix,
                 [predict, predict_proba]) on the whole float64 matrix, CPU seconds / cores;
  compile        `batch-infer compile` of the case's model (one run) into a cache private to the
                 bench (BATCH_INFER_CACHE_DIR=benchmarks/data/scratch/cache); a model it refuses
                 (exit 4) shows "—" and the reason in a footnote;
  batch-infer    `batch-infer run --runtime sklearn` and `--runtime compiled`, startup included;
  naive          iter_batches -> to_pandas -> predict -> append -> concat -> to_parquet.
It reports medians of wall time, rows/s and peak RSS, the ratios to the bounds and to the
naive loop, and the targets with their measured values. After the timed runs every case's output
(each runtime) is read back and compared with the naive loop's, sorted by customer_id: the same
ids, identical labels, probabilities within 1e-12. A difference fails the bench (exit 1) after
the table is written.

    python benchmarks/bench.py [--runs 3] [--quick] [--only mixed,hgb]

--only runs the named cases (keys: see --help) and skips the startup figures; its table goes to
benchmarks/data/partial.md, so benchmarks/results/latest.md always holds a whole run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SCRATCH = DATA / "scratch"
CACHE = SCRATCH / "cache"  # the bench's own compiled runtimes, removed with SCRATCH
WORKLOADS = [sys.executable, str(HERE / "workloads.py")]
BATCH_INFER = [sys.executable, "-m", "batch_infer"]
CORES = len(os.sched_getaffinity(0))
TOLERANCE = 1e-12  # probabilities against the naive loop's
# every child gets the same environment: no BATCH_INFER_* setting of the caller leaks in
ENV = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_INFER_")}
ENV["BATCH_INFER_CACHE_DIR"] = str(CACHE)
SNAPPY_ENV = {**ENV, "BATCH_INFER_OUTPUT__COMPRESSION": "snappy"}
NO_STATISTICS_ENV = {**ENV, "BATCH_INFER_OBSERVE__STATISTICS": "false"}

# the targets
IO_TARGET = 1.25  # 10M-row LogisticRegression, sklearn runtime / IO bound
COMPILED_IO_TARGET = 1.15  # 10M-row LogisticRegression, compiled runtime / IO bound
STATISTICS_TARGET = 1.05  # a run with the report's statistics / the same run without
HGB_TARGET = 0.33  # HistGradientBoosting 1M rows, compiled run / scikit-learn model bound
RSS_TARGET_MIB = 600  # peak RSS at 10M rows
RSS_GROWTH = 1.15  # 10M-row peak RSS / 1M-row peak RSS
HELP_TARGET = 0.3
SAMPLE_TARGET = 1.5


@dataclass(frozen=True)
class Case:
    key: str  # what --only selects
    name: str
    dataset: str  # folder under benchmarks/data
    rows: int
    files: int
    model: str  # logreg (with a separate scaler), hgb, forest, mixed (a Pipeline)
    naive: bool = True

    @property
    def data_kind(self) -> str:  # workloads.make_data: churn rows, or churn rows + strings
        return "mixed" if self.model == "mixed" else "churn"

    @property
    def snappy(self) -> bool:  # the IO-bound cases also get a snappy IO bound and run
        return self.model == "logreg"


QUICK_CASES = [
    Case("logreg", "LogisticRegression + scaler, 1 file", "1m-1", 1_000_000, 1, "logreg"),
    Case("hgb", "HistGradientBoosting (200 iters), 1 file", "1m-1", 1_000_000, 1, "hgb"),
    Case("forest", "RandomForest (100 trees, depth 12), 1 file", "1m-1", 1_000_000, 1, "forest"),
    Case(
        "mixed",
        "Pipeline(scaler + one-hot of 3 string columns, LogisticRegression), 1 file",
        "1m-1-mixed",
        1_000_000,
        1,
        "mixed",
    ),
]
FULL_CASES = [
    Case("logreg-10m", "LogisticRegression + scaler, 1 file", "10m-1", 10_000_000, 1, "logreg"),
    Case(
        "logreg-10m-40",
        "LogisticRegression + scaler, 40 files",
        "10m-40",
        10_000_000,
        40,
        "logreg",
    ),
    *QUICK_CASES,
]


@dataclass
class Measure:
    walls: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

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
        raise SystemExit(
            f"{' '.join(command)} failed ({result['rc']}):\n{result['err']}{completed.stderr}"
        )
    return Outcome(result["wall"], result["rss"], result["rc"], result["out"], result["err"])


def repeat(command: list[str], runs: int, before=None, env: dict | None = None) -> Measure:
    measure = Measure()
    for _ in range(runs):
        if before:
            before()
        outcome = peak_of(command, env)
        measure.walls.append(outcome.wall)
        measure.rss.append(outcome.rss)
    return measure


def ensure_data(cases: list[Case]) -> None:
    for case in cases:
        folder = DATA / case.dataset
        if not folder.exists():
            print(
                f"generating {case.dataset} ({case.rows:,} rows in {case.files} file(s))",
                flush=True,
            )
            subprocess.run(
                [
                    *WORKLOADS,
                    "make-data",
                    str(case.rows),
                    str(case.files),
                    str(folder),
                    case.data_kind,
                ],
                check=True,
            )
    kinds = {case.data_kind for case in cases}
    if "churn" in kinds and not (DATA / "models" / "forest.joblib").exists():
        print("fitting models", flush=True)
        subprocess.run([*WORKLOADS, "make-models", str(DATA / "models"), "churn"], check=True)
    if "mixed" in kinds and not (DATA / "models" / "mixed.joblib").exists():
        print("fitting the mixed-type Pipeline", flush=True)
        subprocess.run([*WORKLOADS, "make-models", str(DATA / "models"), "mixed"], check=True)


def model_args(model: str) -> list[str]:
    models = DATA / "models"
    if model == "logreg":
        return ["--model", str(models / "logreg.joblib"), "--scaler", str(models / "scaler.joblib")]
    return ["--model", str(models / f"{model}.joblib")]


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


def read_scores(path: Path):
    """customer_id, prediction and probability of an output (a folder: the committed files,
    pyarrow.dataset leaves out _-prefixed ones such as _staging and _rejects), sorted by id."""
    import numpy as np
    import pyarrow.dataset as ds

    table = ds.dataset(str(path), format="parquet").to_table(
        columns=["customer_id", "prediction", "probability"]
    )
    ids = table.column("customer_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    return (
        ids[order],
        table.column("prediction").to_numpy()[order],
        table.column("probability").to_numpy()[order],
    )


def compare(ours: Path, naive) -> dict:
    """batch-infer's output against the naive loop's: ids, labels, probabilities."""
    import numpy as np

    ids, labels, proba = read_scores(ours)
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


DASK_CASES = {"logreg-10m", "hgb"}
DASK_TARGET = 1.25


def measure_dask(case: Case, data: str, args: list[str], runs: int) -> dict:
    """`--engine dask` on a LocalCluster of one worker process per core, same runtime."""
    out = SCRATCH / "bi-dask"
    command = [*BATCH_INFER, "run", "--quiet", "--input", data, *args, "--output", str(out)]
    command += ["--runtime", "sklearn", "--engine", "dask", "--output-format", "json"]
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
    data = str(DATA / case.dataset)
    models = str(DATA / "models")
    args = model_args(case.model)
    compiled = compile_model(args, data)

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
    snappy_serial, snappy_parallel = io("snappy") if case.snappy else (None, None)
    shutil.rmtree(SCRATCH / "io", ignore_errors=True)
    model_cpu = cpu_seconds([*WORKLOADS, "model-bound", data, models, case.model], runs)
    compiled_cpu = (
        cpu_seconds([*WORKLOADS, "model-bound-compiled", data, models, case.model], runs)
        if compiled["compiled"]
        else None
    )

    def run(runtime: str, out: Path, env: dict | None = None) -> Measure:
        command = [*BATCH_INFER, "run", "--quiet", "--input", data, *args, "--output", str(out)]
        return repeat([*command, "--runtime", runtime], runs, clean(out), env)

    outputs = {"sklearn": SCRATCH / "bi-sklearn"}
    ours = run("sklearn", outputs["sklearn"])
    ours_compiled = None
    if compiled["compiled"]:
        outputs["compiled"] = SCRATCH / "bi-compiled"
        ours_compiled = run("compiled", outputs["compiled"])
    ours_snappy = run("sklearn", SCRATCH / "bi-snappy", SNAPPY_ENV) if case.snappy else None
    # the report's statistics (sketches computed while scoring) cost: the same run without them
    ours_nostats = (
        run("sklearn", SCRATCH / "bi-nostats", NO_STATISTICS_ENV) if case.snappy else None
    )
    shutil.rmtree(SCRATCH / "bi-nostats", ignore_errors=True)
    dask = measure_dask(case, data, args, runs) if case.key in DASK_CASES else None
    codecs = {runtime: output_codec(out) for runtime, out in outputs.items()}
    if ours_snappy:
        codecs["snappy"] = output_codec(SCRATCH / "bi-snappy")
        shutil.rmtree(SCRATCH / "bi-snappy", ignore_errors=True)
    expected = {"sklearn": "zstd", "compiled": "zstd", "snappy": "snappy"}
    if any(codec != expected[name] for name, codec in codecs.items()):
        raise SystemExit(f"{case.key}: the outputs' codecs are {codecs}, the IO bounds' {expected}")
    naive_out = SCRATCH / "naive.parquet"
    naive = (
        repeat([*WORKLOADS, "naive", data, models, case.model, str(naive_out)], runs)
        if case.naive
        else None
    )

    # the last timed run of each command left its output: check it against the naive loop's
    checks = {}
    runtimes = {}
    reference = read_scores(naive_out) if naive else None
    for runtime, out in outputs.items():
        runtimes[runtime] = manifest_runtime(out)
        if reference is not None:
            checks[runtime] = compare(out, reference)
        shutil.rmtree(out, ignore_errors=True)
    del reference
    naive_out.unlink(missing_ok=True)
    if runtimes["sklearn"] != "sklearn" or runtimes.get("compiled") == "sklearn":
        checks["manifest"] = {"ok": False, "detail": f"the manifests say runtime {runtimes}"}
    for name, check in checks.items():
        if not check["ok"]:
            print(f"  ✗ {case.key} {name}: output differs from the naive loop's: {check['detail']}")

    io_bound = min(io_serial.wall, io_parallel.wall)
    model_bound = model_cpu / CORES
    bound = max(io_bound, model_bound)
    snappy_bound = min(snappy_serial.wall, snappy_parallel.wall) if case.snappy else None
    return {
        "key": case.key,
        "case": case.name,
        "rows": case.rows,
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
        "naive": naive.wall if naive else None,
        "naive_rss_mib": naive.peak_mib if naive else None,
        "bound": bound,
        "bound_kind": "IO" if io_bound >= model_bound else "model",
        "vs_bound": ours.wall / bound,
        "compiled_vs_bound": ours_compiled.wall / bound if ours_compiled else None,
        "compiled_vs_io": ours_compiled.wall / io_bound if ours_compiled else None,
        "compiled_vs_model": ours_compiled.wall / model_bound if ours_compiled else None,
        "vs_io": ours.wall / io_bound,
        "snappy_vs_io": ours_snappy.wall / snappy_bound if ours_snappy else None,
        "vs_naive": naive.wall / ours.wall if naive else None,
        "compiled_vs_naive": naive.wall / ours_compiled.wall if naive and ours_compiled else None,
        "dask": dask,
        "runtimes": runtimes,
        "codecs": codecs,
        "checks": checks,
        "checks_ok": all(check["ok"] for check in checks.values()),
    }


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
        raise SystemExit(f"batch-infer compile refused the sample model: {compiled['reason']}")
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


def targets(results: list[dict], startup: dict | None) -> list[tuple[str, str, bool]]:
    goals = _targets(results, startup)
    for r in results:
        if r.get("dask"):
            ratio = r["dask"]["wall"] / r["ours"]
            goals.append(
                (
                    f"{r['case']}, {r['rows']:,} rows: `--engine dask` (LocalCluster) ≤ "
                    f"{DASK_TARGET}× the local engine",
                    f"{r['dask']['wall']:.2f} s / {r['ours']:.2f} s = {ratio:.3f}×",
                    ratio <= DASK_TARGET,
                )
            )
    return goals


def _targets(results: list[dict], startup: dict | None) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every target whose cases were measured."""
    by_key = {r["key"]: r for r in results}
    rows = []
    for key, label in (("logreg-10m", "1 file"), ("logreg-10m-40", "40 files")):
        r = by_key.get(key)
        if r is None:
            continue
        rows.append(
            (
                f"10M rows, LogisticRegression + scaler, {label}: `--runtime sklearn` ≤ "
                f"{IO_TARGET}× the IO bound (zstd)",
                f"{r['ours']:.2f} s / {r['io_bound']:.2f} s = {r['vs_io']:.3f}×",
                r["vs_io"] <= IO_TARGET,
            )
        )
        rows.append(
            (
                f"… the same with `output.compression: snappy` ≤ {IO_TARGET}× the snappy IO bound",
                f"{r['ours_snappy']:.2f} s / {r['snappy_bound']:.2f} s = {r['snappy_vs_io']:.3f}×",
                r["snappy_vs_io"] <= IO_TARGET,
            )
        )
        if r.get("statistics_cost") is not None:
            rows.append(
                (
                    f"… the report's statistics (sketched while scoring) cost < "
                    f"{STATISTICS_TARGET - 1:.0%} of the run",
                    f"{r['ours']:.2f} s / {r['ours_nostats']:.2f} s without = "
                    f"{r['statistics_cost']:.3f}×",
                    r["statistics_cost"] < STATISTICS_TARGET,
                )
            )
        if r["compiled"] is not None:
            rows.append(
                (
                    f"… `--runtime compiled` ≤ {COMPILED_IO_TARGET}× the IO bound (zstd)",
                    f"{r['compiled']:.2f} s / {r['io_bound']:.2f} s = {r['compiled_vs_io']:.3f}×",
                    r["compiled_vs_io"] <= COMPILED_IO_TARGET,
                )
            )
    r = by_key.get("hgb")
    if r is not None:
        measured = (
            f"{r['compiled']:.2f} s / {r['model_bound']:.2f} s = {r['compiled_vs_model']:.3f}×"
            if r["compiled"] is not None
            else "not compiled"
        )
        rows.append(
            (
                f"HistGradientBoosting (200 iters), 1M rows: `batch-infer run --runtime compiled` "
                f"(whole run) ≤ {HGB_TARGET}× the scikit-learn model bound",
                measured,
                r["compiled"] is not None and r["compiled_vs_model"] <= HGB_TARGET,
            )
        )
    big, small = by_key.get("logreg-10m"), by_key.get("logreg")
    for runtime, field_name in (("sklearn", "ours_rss_mib"), ("compiled", "compiled_rss_mib")):
        if big is not None and big[field_name] is not None:
            rows.append(
                (
                    f"peak RSS, 10M rows (LogisticRegression, 1 file, `--runtime {runtime}`) "
                    f"≤ {RSS_TARGET_MIB} MiB",
                    f"{big[field_name]:.0f} MiB",
                    big[field_name] <= RSS_TARGET_MIB,
                )
            )
        if big is not None and small is not None and big[field_name] and small[field_name]:
            growth = big[field_name] / small[field_name]
            rows.append(
                (
                    f"… within {RSS_GROWTH - 1:.0%} of the 1M-row figure (`--runtime {runtime}`)",
                    f"{big[field_name]:.0f} MiB / {small[field_name]:.0f} MiB = {growth:.3f}×",
                    growth <= RSS_GROWTH,
                )
            )
    if startup is not None:
        rows.append(
            (
                f"`batch-infer --help` < {HELP_TARGET} s",
                f"{startup['help']:.2f} s",
                startup["help"] < HELP_TARGET,
            )
        )
        for runtime in ("sklearn", "compiled"):
            wall = startup[f"sample_{runtime}"]
            rows.append(
                (
                    f"sample run (20,000 rows, `configs/ci_smoke.yaml`, `--runtime {runtime}`) "
                    f"< {SAMPLE_TARGET} s",
                    f"{wall:.2f} s ({startup[f'sample_{runtime}_rss_mib']:.0f} MiB)",
                    wall < SAMPLE_TARGET,
                )
            )
    checked = [r for r in results if r["checks"]]
    if checked:
        failed = [f"{r['key']} {n}" for r in checked for n, c in r["checks"].items() if not c["ok"]]
        rows.append(
            (
                "every row's output equals the naive loop's (ids, labels, probabilities within "
                f"{TOLERANCE:.0e})",
                f"{len(checked)} case(s) checked"
                + (f"; differ: {', '.join(failed)}" if failed else ""),
                not failed,
            )
        )
    return rows


def table(results: list[dict], startup: dict | None, runs: int, command: str) -> str:
    lines = [
        f"Machine: {CORES} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"medians of {runs} runs; whole-process wall times (startup included).",
        f"Command: {command}.",
        "",
        "Wall times. *batch-infer* is `batch-infer run --runtime sklearn`; *compiled* is "
        "`batch-infer run --runtime compiled` (the whole run) after `batch-infer compile` "
        "(its time: *compile*, one run); model bounds are CPU seconds / cores; "
        "*= naive*: the output read back equals the naive loop's (✓ per runtime, sklearn/compiled).",
        "",
        "| case | rows | IO bound serial / parallel | model bound (CPU s) | compiled model bound (CPU s) | compile | batch-infer | compiled | rows/s batch-infer / compiled | peak RSS batch-infer / compiled | naive pandas (RSS) | = naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    notes = []
    for r in results:
        compile_info = r["compile"]
        if compile_info["compiled"]:
            compile_cell = f"{compile_info['wall']:.2f} s"
        else:
            notes.append(compile_info["reason"])
            compile_cell = f"—[{len(notes)}]"
        compiled_bound = (
            f"{r['compiled_model_bound']:.2f} s ({r['compiled_model_cpu']:.2f})"
            if r["compiled_model_bound"] is not None
            else "—"
        )
        naive = f"{r['naive']:.2f} s ({r['naive_rss_mib']:.0f} MiB)" if r["naive"] else "—"
        rates = f"{r['rows'] / r['ours']:,.0f} / " + (
            f"{r['rows'] / r['compiled']:,.0f}" if r["compiled"] else "—"
        )
        rss = f"{r['ours_rss_mib']:.0f} / " + (
            f"{r['compiled_rss_mib']:.0f} MiB" if r["compiled_rss_mib"] else "— MiB"
        )
        check = "/".join(_mark(c["ok"]) for n, c in r["checks"].items() if n != "manifest")
        if "manifest" in r["checks"]:
            check += " ✗ manifest"
        lines.append(
            f"| {r['case']} | {r['rows']:,} | {r['io_serial']:.2f} s / {r['io_parallel']:.2f} s "
            f"| {r['model_bound']:.2f} s ({r['model_cpu']:.2f}) | {compiled_bound} "
            f"| {compile_cell} | {r['ours']:.2f} s | {_s(r['compiled'])} | {rates} | {rss} "
            f"| {naive} | {check or '—'} |"
        )
    differences = [
        f"{r['key']} {name} " + ("0 (identical)" if c["max_diff"] == 0 else f"{c['max_diff']:.1e}")
        for r in results
        for name, c in r["checks"].items()
        if "max_diff" in c
    ]
    if differences:
        lines += [
            "",
            f"Largest |probability difference| from the naive loop: {'; '.join(differences)}.",
        ]
    lines += [
        "",
        "Ratios. bound = max(IO bound, model bound); the snappy columns: the IO bound and "
        "`--runtime sklearn` with `output.compression: snappy`.",
        "",
        "| case | bound | batch-infer / bound | compiled / bound | compiled / model bound | naive / batch-infer | naive / compiled | snappy: IO bound, batch-infer, ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        snappy = (
            f"{r['snappy_bound']:.2f} s, {r['ours_snappy']:.2f} s, {r['snappy_vs_io']:.2f}×"
            if r["snappy_bound"] is not None
            else "—"
        )
        lines.append(
            f"| {r['case']}, {r['rows']:,} rows | {r['bound']:.2f} s ({r['bound_kind']}) "
            f"| **{r['vs_bound']:.2f}×** | **{_x(r['compiled_vs_bound'])}** "
            f"| {_x(r['compiled_vs_model'])} | {_x(r['vs_naive'])} | {_x(r['compiled_vs_naive'])} "
            f"| {snappy} |"
        )
    dask_rows = [r for r in results if r.get("dask")]
    if dask_rows:
        lines += [
            "",
            f"Dask engine (`--engine dask`: a LocalCluster of {CORES} worker processes "
            "started by the run, startup included), `--runtime sklearn`:",
            "",
        ]
        lines += [
            f"- {r['case']}, {r['rows']:,} rows: {r['dask']['wall']:.2f} s against the local "
            f"engine's {r['ours']:.2f} s = **{r['dask']['wall'] / r['ours']:.2f}×**; peak RSS "
            f"of a worker process {r['dask']['worker_rss_mib']:.0f} MiB"
            for r in dask_rows
        ]
    if notes:
        lines.append("")
        lines += [f"[{i}] `batch-infer compile`: {note}" for i, note in enumerate(notes, 1)]
    if startup is not None:
        lines += [
            "",
            f"`batch-infer --help`: {startup['help']:.2f} s. Sample (20,000 rows, "
            f"`configs/ci_smoke.yaml`) end to end: {startup['sample_sklearn']:.2f} s, "
            f"{startup['sample_sklearn_rss_mib']:.0f} MiB (`--runtime sklearn`); "
            f"{startup['sample_compiled']:.2f} s, {startup['sample_compiled_rss_mib']:.0f} MiB "
            f"(`--runtime compiled`; compiling the sample model took "
            f"{startup['sample_compile']:.2f} s).",
        ]
    goals = targets(results, startup)
    if goals:
        lines += ["", "Targets:", "", "| target | measured | |", "|---|---:|:---:|"]
        lines += [f"| {goal} | {measured} | {_mark(ok)} |" for goal, measured, ok in goals]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1M rows only, one run: a smoke test")
    keys = [case.key for case in FULL_CASES]
    parser.add_argument(
        "--only",
        action="append",
        metavar="KEYS",
        help=f"only these cases, comma-separated or repeated: {', '.join(keys)}",
    )
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    cases = QUICK_CASES if args.quick else FULL_CASES
    only = {k.strip() for value in args.only or [] for k in value.split(",") if k.strip()}
    if args.only:
        unknown = sorted(only - {case.key for case in cases})
        if unknown:
            parser.error(
                f"--only: no case {', '.join(unknown)}"
                f"{' with --quick' if args.quick else ''}; choose from "
                f"{', '.join(case.key for case in cases)}"
            )
        cases = [case for case in cases if case.key in only]
    ensure_data(cases)
    shutil.rmtree(SCRATCH, ignore_errors=True)  # no runtime compiled by an earlier bench
    SCRATCH.mkdir(parents=True, exist_ok=True)
    results = []
    for case in cases:
        print(f"measuring {case.name}, {case.rows:,} rows", flush=True)
        results.append(measure_case(case, runs))
    startup = None if args.only else startup_figures(runs)
    flags = " ".join(sys.argv[1:])
    command = (
        f"`python benchmarks/bench.py {flags}`"
        if flags
        else "`make bench` (python benchmarks/bench.py)"
    )
    text = table(results, startup, runs, command)
    target, stem = (DATA, "partial") if args.only else (HERE / "results", "latest")
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{stem}.md").write_text(text + "\n")
    (target / f"{stem}.json").write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "command": command.strip("`"),
                "results": results,
                "startup": startup,
            },
            indent=2,
        )
    )
    shutil.rmtree(SCRATCH, ignore_errors=True)
    print(text)
    failed = [
        f"{r['key']} ({name}): {check['detail']}"
        for r in results
        for name, check in r["checks"].items()
        if not check["ok"]
    ]
    if failed:
        sys.stderr.write(
            "\nFAILED: batch-infer's output differs from the naive loop's:\n  "
            + "\n  ".join(failed)
            + "\n"
        )
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
