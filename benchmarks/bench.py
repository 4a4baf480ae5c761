"""`make bench`: batch-infer against the bounds of the work it does, measured in the same run.

For each case it measures, as whole processes on the same seeded data:
  IO bound     pyarrow streaming read -> write of the same columns plus three, zstd, no model
               (the faster of serial and one thread per core);
  model bound  CPU seconds of scaler + predict + predict_proba on the whole feature matrix in
               memory, divided by the cores: the best wall time any scheduler could reach;
  batch-infer  `batch-infer run`, startup included;
  naive        iter_batches -> to_pandas -> predict -> append -> concat -> to_parquet.
and reports medians of wall time, rows/s, peak RSS, and the ratios
batch-infer / max(IO bound, model bound) and batch-infer / naive.
Nothing here asserts a time: the figures are printed and written to benchmarks/results/latest.md.

    python benchmarks/bench.py [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
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
WORKLOADS = [sys.executable, str(HERE / "workloads.py")]
BATCH_INFER = [sys.executable, "-m", "batch_infer"]
CORES = len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Case:
    name: str
    dataset: str  # folder under benchmarks/data
    rows: int
    files: int
    model: str  # logreg (with a separate scaler), hgb, forest
    naive: bool = True


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


def peak_of(command: list[str]) -> tuple[float, int, str]:
    """Run in a fresh interpreter so each command's peak RSS is its own."""
    probe = (
        "import resource, subprocess, sys, time, json;"
        "t = time.perf_counter();"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "w = time.perf_counter() - t;"
        "sys.stderr.write(p.stderr);"
        "print(json.dumps({'wall': w, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'rc': p.returncode, 'out': p.stdout}))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe, *command], cwd=HERE.parent, capture_output=True, text=True
    )
    result = json.loads(completed.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result['rc']}):\n{completed.stderr}")
    return result["wall"], result["rss"], result["out"]


def repeat(command: list[str], runs: int, before=None) -> Measure:
    measure = Measure()
    for _ in range(runs):
        if before:
            before()
        wall, rss, _ = peak_of(command)
        measure.walls.append(wall)
        measure.rss.append(rss)
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
                [*WORKLOADS, "make-data", str(case.rows), str(case.files), str(folder)], check=True
            )
    if not (DATA / "models" / "forest.joblib").exists():
        print("fitting models", flush=True)
        subprocess.run([*WORKLOADS, "make-models", str(DATA / "models")], check=True)


def model_args(model: str) -> list[str]:
    models = DATA / "models"
    if model == "logreg":
        return ["--model", str(models / "logreg.joblib"), "--scaler", str(models / "scaler.joblib")]
    return ["--model", str(models / f"{model}.joblib")]


def clean(path: Path):
    return lambda: shutil.rmtree(path, ignore_errors=True)


def measure_case(case: Case, runs: int) -> dict:
    data = str(DATA / case.dataset)
    io_serial = repeat(
        [*WORKLOADS, "io-bound", data, str(SCRATCH / "io"), "1"], runs, clean(SCRATCH / "io")
    )
    io_parallel = repeat(
        [*WORKLOADS, "io-bound", data, str(SCRATCH / "io"), str(CORES)], runs, clean(SCRATCH / "io")
    )
    cpu = []
    for _ in range(runs):
        _, _, out = peak_of([*WORKLOADS, "model-bound", data, str(DATA / "models"), case.model])
        cpu.append(json.loads(out.strip().splitlines()[-1])["cpu"])
    model_bound = statistics.median(cpu) / CORES
    out = SCRATCH / "batch-infer"
    ours = repeat(
        [
            *BATCH_INFER,
            "run",
            "--quiet",
            "--input",
            data,
            *model_args(case.model),
            "--output",
            str(out),
        ],
        runs,
        clean(out),
    )
    naive = (
        repeat(
            [
                *WORKLOADS,
                "naive",
                data,
                str(DATA / "models"),
                case.model,
                str(SCRATCH / "naive.parquet"),
            ],
            runs,
        )
        if case.naive
        else None
    )
    io_bound = min(io_serial.wall, io_parallel.wall)
    bound = max(io_bound, model_bound)
    return {
        "case": case.name,
        "rows": case.rows,
        "io_serial": io_serial.wall,
        "io_parallel": io_parallel.wall,
        "io_bound": io_bound,
        "model_bound": model_bound,
        "model_cpu": statistics.median(cpu),
        "ours": ours.wall,
        "ours_walls": ours.walls,
        "ours_rss_mib": ours.peak_mib,
        "naive": naive.wall if naive else None,
        "naive_rss_mib": naive.peak_mib if naive else None,
        "vs_bound": ours.wall / bound,
        "bound_kind": "IO" if io_bound >= model_bound else "model",
        "vs_naive": naive.wall / ours.wall if naive else None,
    }


def startup_figures(runs: int) -> dict:
    help_walls = [peak_of([*BATCH_INFER, "--help"])[0] for _ in range(runs)]
    out = SCRATCH / "sample"
    sample = repeat(
        [*BATCH_INFER, "run", "--quiet", "-c", "configs/ci_smoke.yaml", "--output", str(out)],
        runs,
        clean(out),
    )
    return {
        "help": statistics.median(help_walls),
        "sample": sample.wall,
        "sample_rss_mib": sample.peak_mib,
    }


def table(results: list[dict], startup: dict, runs: int) -> str:
    lines = [
        f"Machine: {CORES} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"medians of {runs} runs; whole-process wall times (startup included).",
        "Command: `make bench` (python benchmarks/bench.py).",
        "",
        "| case | rows | IO bound serial / parallel | model bound (CPU s / cores) | batch-infer | rows/s | peak RSS | naive pandas (RSS) | batch-infer / bound | naive / batch-infer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        naive = f"{r['naive']:.2f} s ({r['naive_rss_mib']:.0f} MiB)" if r["naive"] else "—"
        speedup = f"{r['vs_naive']:.2f}×" if r["vs_naive"] else "—"
        lines.append(
            f"| {r['case']} | {r['rows']:,} | {r['io_serial']:.2f} s / {r['io_parallel']:.2f} s "
            f"| {r['model_bound']:.2f} s ({r['model_cpu']:.1f} CPU s) | {r['ours']:.2f} s "
            f"| {r['rows'] / r['ours']:,.0f} | {r['ours_rss_mib']:.0f} MiB | {naive} "
            f"| **{r['vs_bound']:.2f}×** ({r['bound_kind']}) | {speedup} |"
        )
    lines += [
        "",
        f"`batch-infer --help`: {startup['help']:.2f} s. Sample (20,000 rows, `configs/ci_smoke.yaml`) "
        f"end to end: {startup['sample']:.2f} s, {startup['sample_rss_mib']:.0f} MiB.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1M rows only, one run: a smoke test")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    cases = [
        Case("LogisticRegression + scaler, 1 file", "1m-1", 1_000_000, 1, "logreg"),
        Case("HistGradientBoosting (200 iters), 1 file", "1m-1", 1_000_000, 1, "hgb"),
        Case("RandomForest (100 trees, depth 12), 1 file", "1m-1", 1_000_000, 1, "forest"),
    ]
    if not args.quick:
        cases = [
            Case("LogisticRegression + scaler, 1 file", "10m-1", 10_000_000, 1, "logreg"),
            Case("LogisticRegression + scaler, 40 files", "10m-40", 10_000_000, 40, "logreg"),
            *cases,
        ]
    ensure_data(cases)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    results = []
    for case in cases:
        print(f"measuring {case.name}, {case.rows:,} rows", flush=True)
        results.append(measure_case(case, runs))
    startup = startup_figures(runs)
    text = table(results, startup, runs)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "latest.md").write_text(text + "\n")
    (HERE / "results" / "latest.json").write_text(
        json.dumps({"results": results, "startup": startup}, indent=2)
    )
    shutil.rmtree(SCRATCH, ignore_errors=True)
    print(text)


if __name__ == "__main__":
    main()
