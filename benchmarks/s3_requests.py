"""The S3 requests of a folder run, counted: what docs/outputs.md says a commit costs.

Starts moto's S3 server on loopback behind a WSGI middleware that counts every request by S3
operation, then runs `batch-infer run` (the bench's LogisticRegression + scaler) from a local
input of FILES small files (one row group each, so FILES staged files) into s3://bench/out,
twice: a first commit, then `--mode overwrite` from FILES other files, whose outputs have other
names, so every file of the first is replaced and deleted. For
each run it prints the requests per operation and checks the docs' formulas:
  - each staged file costs one CopyObject (into place) and one delete of its staged object
    (a key in a DeleteObject or DeleteObjects request);
  - the replaced files (the second run) are deleted in requests of up to 1,000 keys each.
It exits 1 if a formula does not hold.

    python benchmarks/s3_requests.py [--files 200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = HERE / "data" / "models-v2"  # fitted by benchmarks/bench.py (or make-models here)
WORKLOADS = [sys.executable, str(HERE / "workloads.py")]


def operation(environ: dict) -> str:
    """The S3 operation of a path-style request (bucket and key in the path)."""
    method = environ["REQUEST_METHOD"]
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    has_key = environ.get("PATH_INFO", "/").strip("/").count("/") >= 1
    if method == "PUT":
        if "HTTP_X_AMZ_COPY_SOURCE" in environ:
            return "UploadPartCopy" if "uploadId" in query else "CopyObject"
        if "uploadId" in query:
            return "UploadPart"
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST":
        if "delete" in query:
            return "DeleteObjects"
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        return "POST"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "GET":
        if has_key:
            return "GetObject"
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects/GetBucket"
    return method


class Counting:
    """WSGI middleware: counts requests by operation and records the keys each delete names."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.counts: Counter[str] = Counter()
        self.deletes: list[list[str]] = []  # the keys of each DeleteObject(s) request

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self.app(environ, start_response)
        name = operation(environ)
        keys = None
        if name == "DeleteObjects":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
            keys = [k.decode() for k in re.findall(rb"<Key>([^<]*)</Key>", body)]
        elif name == "DeleteObject":
            keys = [environ["PATH_INFO"].strip("/").split("/", 1)[1]]
        with self.lock:
            self.counts[name] += 1
            if keys is not None:
                self.deletes.append(keys)
        return self.app(environ, start_response)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()

    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    counting = Counting(DomainDispatcherApplication(create_backend_app))
    port = free_port()
    server = make_server("127.0.0.1", port, counting, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="s3-requests-") as scratch:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BATCH_INFER_", "AWS_")) and k not in ("HTTP_PROXY", "HTTPS_PROXY")
        }
        env.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
            AWS_CONFIG_FILE=f"{scratch}/none",
            AWS_SHARED_CREDENTIALS_FILE=f"{scratch}/none",
            AWS_EC2_METADATA_DISABLED="true",
            NO_PROXY="127.0.0.1,localhost",
            BATCH_INFER_CACHE_DIR=f"{scratch}/cache",
        )
        inputs = [f"{scratch}/input", f"{scratch}/input-b"]
        for folder in inputs:
            rows = str(args.files * 500)
            subprocess.run([*WORKLOADS, "make-data", rows, str(args.files), folder], check=True)
        for name in os.listdir(inputs[1]):  # other file names: other fragments, other outputs
            os.rename(f"{inputs[1]}/{name}", f"{inputs[1]}/b-{name}")
        if not (MODELS / "logreg.joblib").exists():
            subprocess.run([*WORKLOADS, "make-models", str(MODELS), "churn"], check=True)
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import boto3; boto3.client('s3').create_bucket(Bucket='bench')",
            ],
            env=env,
            check=True,
        )
        command = [sys.executable, "-m", "batch_infer", "run", "--quiet"]
        command += [
            "--model",
            str(MODELS / "logreg.joblib"),
            "--scaler",
            str(MODELS / "scaler.joblib"),
        ]
        command += ["--output", "s3://bench/out", "--output-format", "json"]
        failures = []
        print(
            f"`python benchmarks/s3_requests.py {' '.join(sys.argv[1:])}`: batch-infer run from "
            f"{args.files} local files (one row group each) into s3://bench/out on moto's server\n"
        )
        print("| run | staged files | replaced files | requests by operation | formulas |")
        print("|---|---:|---:|---|---|")
        previous = 0
        runs = (
            ("first commit", ["--input", inputs[0]]),
            (
                "`--mode overwrite`, other input files",
                ["--input", inputs[1], "--mode", "overwrite"],
            ),
        )
        for label, extra in runs:
            counting.reset()
            done = subprocess.run(
                [*command, *extra], env=env, cwd=ROOT, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise SystemExit(f"batch-infer run failed ({done.returncode}):\n{done.stderr}")
            files = json.loads(done.stdout.strip().splitlines()[-1])["files_out"]
            counts, deletes = dict(counting.counts), list(counting.deletes)
            staged = [k for keys in deletes for k in keys if k.endswith(".staged")]
            replaced = [
                keys
                for keys in deletes
                if any(k.endswith(".parquet") and "/_" not in k for k in keys)
            ]
            replaced_keys = sum(
                1 for keys in replaced for k in keys if k.endswith(".parquet") and "/_" not in k
            )
            checks = [
                (
                    f"CopyObject = staged files ({counts.get('CopyObject', 0)} = {files})",
                    counts.get("CopyObject", 0) == files,
                ),
                (
                    f"staged objects deleted = staged files ({len(staged)} = {files})",
                    len(staged) == files,
                ),
            ]
            if previous:
                largest = max((len(keys) for keys in replaced), default=0)
                checks.append(
                    (
                        f"replaced files deleted in requests of ≤ 1,000 keys ({replaced_keys} "
                        f"of {previous} in {len(replaced)} request(s), the largest {largest} keys)",
                        replaced_keys == previous and largest <= 1000,
                    )
                )
            failures += [text for text, ok in checks if not ok]
            ops = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
            formulas = "; ".join(("✓ " if ok else "✗ ") + text for text, ok in checks)
            print(f"| {label} | {files} | {previous} | {ops} | {formulas} |")
            previous = files
    server.shutdown()
    if failures:
        sys.stderr.write("\nFAILED: " + "; ".join(failures) + "\n")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
