"""`make bench`: batch-infer against the bounds of the work it does, measured in the same run.

For each case it measures, as whole processes on the same seeded data:
  IO bound     pyarrow streaming read -> write of the same columns plus three, zstd, no model
               (the faster of serial and one thread per core);
  model bound  CPU seconds of scaler + predict + predict_proba on the whole feature matrix in
               memory, divided by the cores: the best wall time any scheduler could reach
               (the mixed-type Pipeline: predict + predict_proba on the DataFrame
               pd.read_parquet gives, ColumnTransformer included);
  batch-infer  `batch-infer run`, startup included;
  naive        iter_batches -> to_pandas -> predict -> append -> concat -> to_parquet.
and reports medians of wall time, rows/s, peak RSS, and the ratios
batch-infer / max(IO bound, model bound) and batch-infer / naive.
Nothing here asserts a time: the figures are printed and written to benchmarks/results/latest.md.

    python benchmarks/bench.py [--runs 3] [--quick] [--only mixed,hgb]

--only runs the named cases (keys: see --help) and skips the startup figures; its table goes to
benchmarks/data/partial.md, so benchmarks/results/latest.md always holds a whole run.
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


def table(results: list[dict], startup: dict | None, runs: int, command: str) -> str:
    lines = [
        f"Machine: {CORES} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"medians of {runs} runs; whole-process wall times (startup included).",
        f"Command: {command}.",
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
    if startup is not None:
        lines += [
            "",
            f"`batch-infer --help`: {startup['help']:.2f} s. Sample (20,000 rows, "
            f"`configs/ci_smoke.yaml`) end to end: {startup['sample']:.2f} s, "
            f"{startup['sample_rss_mib']:.0f} MiB.",
        ]
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
        json.dumps({"results": results, "startup": startup}, indent=2)
    )
    shutil.rmtree(SCRATCH, ignore_errors=True)
    print(text)


if __name__ == "__main__":
    main()
