"""Why `batch-infer compile` refuses random forests: compiled to native code, is a forest faster?

Fits RandomForestClassifier(n_estimators=TREES, max_depth=DEPTH) on 50,000 seeded churn rows
(the bench's data), compiles it the way batch-infer compiles HistGradientBoosting (treelite ->
TL2cgen -> the C compiler, the same parameters as batch_infer/model/trees.py), then on ROWS rows
times, best of RUNS:
  scikit-learn   predict_proba with n_jobs = cores
  compiled       tl2cgen.Predictor(nthread = cores).predict on the same float64 matrix
and prints the compile time, both predict times, their ratio and the largest |probability
difference|, as a Markdown table.

    python benchmarks/forest_compiled.py [--trees 100] [--depth 12] [--rows 1000000] [--runs 3]

The defaults are the forest `make bench` used to score (compiling it takes minutes on 2 cores);
`--trees 10 --depth 8 --rows 100000` is a quick check.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import FEATURES, churn_batch, churn_training  # noqa: E402

CORES = len(os.sched_getaffinity(0))


def best(function, runs: int) -> float:
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        walls.append(time.perf_counter() - started)
    return min(walls)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import tl2cgen
    import treelite
    from sklearn.ensemble import RandomForestClassifier

    X, y = churn_training(50_000)
    forest = RandomForestClassifier(
        n_estimators=args.trees, max_depth=args.depth, random_state=0, n_jobs=CORES
    ).fit(X.to_numpy(), y)
    rng = np.random.default_rng(12345)
    frame = pa.Table.from_batches([churn_batch(rng, 0, args.rows)]).to_pandas()
    matrix = np.ascontiguousarray(frame[FEATURES].to_numpy(dtype=np.float64))
    # scikit-learn's trees compare float32(x) with their thresholds: give the C code the same
    rounded = matrix.astype(np.float32).astype(np.float64)
    del frame

    compiler = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if compiler is None:
        raise SystemExit("needs a C compiler (gcc or clang) on PATH")
    toolchain = "clang" if os.path.basename(compiler).startswith("clang") else "gcc"
    with tempfile.TemporaryDirectory(prefix="forest-compiled-") as folder:
        library = Path(folder) / "forest.so"
        started = time.perf_counter()
        tl2cgen.export_lib(
            treelite.sklearn.import_model(forest),
            toolchain=toolchain,
            libpath=str(library),
            params={"parallel_comp": 2 * CORES},
            nthread=CORES,
            verbose=False,
        )
        compile_seconds = time.perf_counter() - started
        predictor = tl2cgen.Predictor(str(library), nthread=CORES)
        data = tl2cgen.DMatrix(rounded, dtype="float64")
        compiled = np.asarray(predictor.predict(data), dtype=np.float64)[:, 0, :]
        theirs = forest.predict_proba(matrix)
        compiled_seconds = best(lambda: predictor.predict(data), args.runs)
        sklearn_seconds = best(lambda: forest.predict_proba(matrix), args.runs)
    difference = float(np.max(np.abs(compiled - theirs)))
    print(
        f"RandomForestClassifier({args.trees} trees, max_depth={args.depth}), {args.rows:,} rows, "
        f"{CORES} cores, {platform.processor() or platform.machine()}, best of {args.runs}; "
        f"`python benchmarks/forest_compiled.py {' '.join(sys.argv[1:])}`\n"
    )
    print(
        "| compile | scikit-learn predict_proba | compiled predict | compiled / scikit-learn "
        "| max abs probability difference |"
    )
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {compile_seconds:.1f} s | {sklearn_seconds:.2f} s | {compiled_seconds:.2f} s "
        f"| {compiled_seconds / sklearn_seconds:.2f}× | {difference:.1e} |"
    )


if __name__ == "__main__":
    main()
