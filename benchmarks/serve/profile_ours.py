"""Where `batch-infer serve` spends its time under one load point: py-spy on the server, wrk as load.

Starts our server the way `bench_serve.py` does (same model, same pinning), runs wrk for the
given scenario and records the server with `py-spy record` meanwhile; prints the functions with
the most samples (own and total) and leaves the collapsed stacks in --out (feed them to
`flamegraph.pl` or speedscope).

    python benchmarks/serve/profile_ours.py --endpoint oip --concurrency 64 [--runtime compiled]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_serve as bench  # noqa: E402


def summarize(collapsed: Path, top: int) -> str:
    """Own and total sample counts per function from py-spy's collapsed ("raw") stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    lines = [f"{samples} samples", "", "own %  function"]
    lines += [f"{100 * n / samples:5.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:5.1f}  {name}" for name, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", choices=["oip", "predict"], default="oip")
    parser.add_argument("--rows", type=int, choices=[1, bench.BIG_ROWS], default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runtime", choices=bench.RUNTIMES, default="sklearn")
    parser.add_argument("--idle", action="store_true", help="count idle threads' samples too")
    parser.add_argument("--gil", action="store_true", help="only the thread holding the GIL")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=bench.HERE / "data" / "serve-profile")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kind = "ours-oip" if args.endpoint == "oip" else "ours-predict"
    with tempfile.TemporaryDirectory(prefix="profile-serve-") as tmp:
        scratch = Path(tmp)
        model_path, X = bench.fit_model(scratch)
        scenario = next(
            s
            for s in bench.scenarios_for(kind, X)
            if (s.rows, s.concurrency) == (args.rows, args.concurrency)
        )
        cache = scratch / "cache"
        if args.runtime == "compiled" and (why := bench.compile_model(model_path, cache)):
            raise SystemExit(f"Error: batch-infer compile failed ({why})")
        server = bench.ours(model_path, args.runtime, cache)
        bench.start(server, scratch)
        try:
            script = bench.write_script(scenario, scratch)
            bench.wrk(server.port, scenario, script, 2)  # warm-up
            stem = f"{args.runtime}-{args.endpoint}-r{args.rows}-c{args.concurrency}"
            collapsed = args.out / f"{stem}.txt"
            py_spy = Path(sys.executable).parent / "py-spy"  # pip install py-spy
            record = [str(py_spy), "record", "--pid", str(server.process.pid), "--rate", "250"]
            record += ["--duration", str(args.seconds), "--nonblocking", "--format", "raw"]
            record += ["--threads"] + (["--idle"] if args.idle else [])
            record += ["--gil"] if args.gil else []
            spy = subprocess.Popen(
                bench.pinned([*record, "-o", str(collapsed)], bench.LOADGEN_CPU),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            result = bench.wrk(server.port, scenario, script, args.seconds)
            if spy.wait() != 0:
                raise SystemExit(f"Error: py-spy failed: {spy.stderr.read().strip()}")
        finally:
            bench.stop(server)
    rps = result["requests"] / (result["duration_us"] / 1e6)
    print(
        f"{stem}: {rps:.0f} req/s, p50 {result['p50_us'] / 1e3:.2f} ms, "
        f"p99 {result['p99_us'] / 1e3:.2f} ms"
    )
    print(summarize(collapsed, args.top))
    print(f"\nstacks: {collapsed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
