"""The commit at scale: hundreds of staged files moved side by side, at most
``commit_concurrency`` at a time, in order, and finished by the next run after a kill.

S3 is moto's real server on loopback (the fixtures of ``test_s3.py``). What the store sees is
observed by ``RecordingProxy`` below, a small forwarding HTTP proxy that notes when each request
reaches it and when the server's answer comes back: in-flight copies are counted on the wire,
not in our code. Nothing in batch_infer is patched; kills are real (``BATCH_INFER_FAILPOINT``).
"""

# ruff: noqa: F811 - the fixtures imported from test_s3 are redefined as parameters, by design

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import joblib
import numpy as np
import pyarrow.dataset as ds
import pytest

from batch_infer import storage, targets
from batch_infer.targets import folder

from .conftest import FEATURES, REPO, churn_table, write_parquet
from .test_s3 import BUCKET, moto_endpoint, s3  # noqa: F401 - fixtures, shared

STAGING_KEY = "0123456789abcdef"
FILES = 300  # staged files per commit
RUN_TIMEOUT = 180  # seconds, for one batch-infer process: reaching it means a hang


# -- a proxy that watches the requests ----------------------------------------------------------

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",  # the handler answers "100 Continue" itself and forwards the whole body
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query
    copy_source: str | None  # x-amz-copy-source: a server-side copy (CopyObject)
    body: bytes

    @property
    def key(self) -> str:
        return unquote(urlsplit(self.path).path).lstrip("/")


class RecordingProxy:
    """Forwards every request to ``upstream`` (moto) and records, in order, when each one
    started (reached the proxy) and ended (the server had answered; the client learns it only
    after that). Counts the copies in flight at once.

    ``gather_copies = n`` holds each copy until ``n`` copies are in flight (or
    ``gather_seconds`` have passed), until that happens once: if the client lets ``n`` run at
    once, ``n`` are seen in flight at once, however fast the server answers.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.events: list[tuple[str, Request]] = []  # ("start" | "end", request)
        self.copies_in_flight = 0
        self.most_copies_in_flight = 0
        self.gather_copies = 0
        self.gather_seconds = 1.0
        self._gathered = False
        self._condition = threading.Condition()
        self._connections: set = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def started(self, request: Request) -> None:
        with self._condition:
            self.events.append(("start", request))
            if request.copy_source is None:
                return
            self.copies_in_flight += 1
            self.most_copies_in_flight = max(self.most_copies_in_flight, self.copies_in_flight)
            self._condition.notify_all()
            if self.gather_copies and not self._gathered:
                self._condition.wait_for(
                    lambda: self._gathered or self.copies_in_flight >= self.gather_copies,
                    timeout=self.gather_seconds,
                )
                self._gathered = self._gathered or self.copies_in_flight >= self.gather_copies

    def ended(self, request: Request) -> None:
        with self._condition:
            self.events.append(("end", request))
            if request.copy_source is not None:
                self.copies_in_flight -= 1

    def stop(self) -> None:
        self._server.shutdown()
        with self._condition:
            connections = list(self._connections)
        for connection in connections:  # wake handlers waiting on an idle keep-alive socket
            try:
                connection.shutdown(2)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    timeout = 30

    def setup(self) -> None:
        super().setup()
        with self.server.proxy._condition:
            self.server.proxy._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.proxy._condition:
            self.server.proxy._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        proxy: RecordingProxy = self.server.proxy
        body = self._body()
        request = Request(self.command, self.path, self.headers.get("x-amz-copy-source"), body)
        proxy.started(request)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            status, answer, data = response.status, response.getheaders(), response.read()
        finally:
            upstream.close()
            proxy.ended(request)
        self.send_response_only(status)
        length = str(len(data))
        for name, value in answer:
            if name.lower() == "content-length" and self.command == "HEAD":
                length = value  # the object's size, though no body follows
            elif name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()


@pytest.fixture
def proxy(moto_endpoint):
    recording = RecordingProxy(moto_endpoint)
    try:
        yield recording
    finally:
        recording.stop()


# -- helpers ------------------------------------------------------------------------------------


def _stage(target: targets.FolderTarget, prefix: str, count: int) -> list[targets.OutputFile]:
    """``count`` small staged files, in 4 partition folders, each with its own content."""
    files = [
        targets.OutputFile(f"day={i % 4}/part-{prefix}-{i:05d}-0.parquet", i) for i in range(count)
    ]
    staged = {_staged(target, f.path): _content(f.path) for f in files}
    for parent in {os.path.dirname(path) for path in staged}:
        target.fs.makedirs(parent, exist_ok=True)  # a local disk needs the folders
    target.fs.pipe(staged)
    return files


def _content(relative: str) -> bytes:
    return f"the bytes of {relative}".encode()


def _staged(target: targets.FolderTarget, relative: str) -> str:
    return storage.join(target.staging, relative + folder.STAGED_SUFFIX)


def _commit(target, files, mode, prefix):
    return target.commit(files, {"run_id": f"run-{prefix}"}, mode, {f"part-{prefix}-00000"})


def _everything(target: targets.FolderTarget) -> dict[str, bytes]:
    """Every file under the output root, relative path -> bytes, read afresh."""
    fs = target.fs
    fs.invalidate_cache()
    return {
        storage.join(*Path(path).relative_to(target.root).parts): fs.cat_file(path)
        for path in fs.find(target.root)
    }


def _assert_exactly_committed(target, files, replaced) -> None:
    """The new files in place with their bytes, the manifest, _SUCCESS, and nothing else:
    no staging, no replaced file."""
    found = _everything(target)
    manifest = json.loads(found.pop(targets.MANIFEST))
    assert found.pop(targets.SUCCESS) == b""
    assert found == {f.path: _content(f.path) for f in files}
    assert manifest["files"] == [
        {"path": f.path, "rows": f.rows, "bytes": f.bytes}
        for f in sorted(files, key=lambda f: f.path)
    ]
    assert manifest["rows_committed"] == sum(f.rows for f in files)
    assert manifest["superseded"] == sorted(f.path for f in replaced)


# -- (a) hundreds of files, on S3 and on a local disk -------------------------------------------


def test_s3_commit_of_hundreds_of_files_keeps_its_order(s3, proxy):
    """Two commits of 300 files each, the second replacing the first (mode overwrite). As the
    server saw it: every copy answered before the manifest's PUT, the manifest before
    _SUCCESS, _SUCCESS before the first deletion of a replaced file, those deletions before
    the staging folder's; and copies did run side by side."""
    url = f"s3://{BUCKET}/scores"
    target = targets.open_target(
        url, {"endpoint_url": proxy.url}, STAGING_KEY, commit_concurrency=8
    )
    old = _stage(target, "old", FILES)
    _commit(target, old, "error", "old")
    _assert_exactly_committed(target, old, replaced=[])

    new = _stage(target, "new", FILES)
    del proxy.events[:]
    _commit(target, new, "overwrite", "new")

    _assert_exactly_committed(target, new, replaced=old)
    assert 1 < proxy.most_copies_in_flight <= 8
    events = list(proxy.events)

    def first(kind: str, match) -> int:
        return next(i for i, (k, r) in enumerate(events) if k == kind and match(r))

    def last(kind: str, match) -> int:
        return max(i for i, (k, r) in enumerate(events) if k == kind and match(r))

    def put(name: str):
        return lambda r: r.method == "PUT" and r.copy_source is None and r.key.endswith(name)

    def deletes(fragment: str):
        """A bulk delete (POST ?delete) naming ``fragment`` among its keys."""
        return lambda r: r.method == "POST" and "delete" in r.path and fragment.encode() in r.body

    copies = [r for k, r in events if k == "start" and r.copy_source]
    assert len(copies) == FILES  # each file copied once; not one copy of an old file
    assert all("/part-new-" in r.key and "_staging" not in r.key for r in copies)
    manifest, success = (
        first("start", put(f"/{targets.MANIFEST}")),
        first("start", put("/_SUCCESS")),
    )
    assert last("end", lambda r: r.copy_source is not None) < manifest
    assert last("end", deletes(".parquet.staged")) < manifest  # staged sources gone first
    assert last("end", put(f"/{targets.MANIFEST}")) < success
    replaced = first("start", deletes("/part-old-"))
    assert last("end", put("/_SUCCESS")) < replaced
    assert last("end", deletes("/part-old-")) < first("start", deletes(folder.COMMIT_INTENT))
    # no HEAD (exists) per file: the commit learns what is staged from listings
    heads = [r for k, r in events if k == "start" and r.method == "HEAD"]
    assert len(heads) < 10, [r.key for r in heads]


def test_local_commit_of_hundreds_of_files(tmp_path):
    target = targets.open_target(str(tmp_path / "scores"), {}, STAGING_KEY, commit_concurrency=8)
    old = _stage(target, "old", FILES)
    _commit(target, old, "error", "old")
    _assert_exactly_committed(target, old, replaced=[])
    new = _stage(target, "new", FILES)

    _commit(target, new, "overwrite", "new")

    _assert_exactly_committed(target, new, replaced=old)
    assert not (tmp_path / "scores" / targets.STAGING).exists()


# -- (b) the copies in flight are bounded by commit_concurrency, and more than one ---------------


@pytest.mark.parametrize(
    "concurrency, options",
    [
        # a connection pool larger than the bound: only the commit's own limit holds it to 8
        (8, {"config_kwargs": {"max_pool_connections": 64}}),
        # more than botocore's default pool of 10 connections: the pool is made large enough
        (16, {}),
    ],
)
def test_s3_copies_in_flight_reach_but_never_exceed_commit_concurrency(
    concurrency, options, s3, proxy
):
    target = targets.open_target(
        f"s3://{BUCKET}/bounded",
        {"endpoint_url": proxy.url, **options},
        STAGING_KEY,
        commit_concurrency=concurrency,
    )
    files = _stage(target, "new", 6 * concurrency)
    proxy.gather_copies = concurrency  # each copy waits for company: the client's limit shows

    _commit(target, files, "error", "new")

    assert proxy.most_copies_in_flight == concurrency
    _assert_exactly_committed(target, files, replaced=[])


def test_concurrency_one_copies_one_at_a_time(s3, proxy):
    target = targets.open_target(
        f"s3://{BUCKET}/serial", {"endpoint_url": proxy.url}, STAGING_KEY, commit_concurrency=1
    )
    files = _stage(target, "new", 12)
    proxy.gather_copies = 2  # would let two through together, if the client sent two
    proxy.gather_seconds = 0.25

    _commit(target, files, "error", "new")

    assert proxy.most_copies_in_flight == 1
    _assert_exactly_committed(target, files, replaced=[])


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_commit_concurrency_must_be_a_positive_whole_number(value, tmp_path):
    from batch_infer.errors import ConfigError

    with pytest.raises(ConfigError, match="commit_concurrency"):
        targets.open_target(str(tmp_path / "out"), {}, STAGING_KEY, commit_concurrency=value)


# -- (c) killed mid-commit, finished by the next run -------------------------------------------


ROWS, ROW_GROUP = 3_000, 25  # 120 fragments x 4 regions: about 480 output files


@pytest.fixture
def many_fragments(tmp_path) -> Path:
    root = tmp_path / "input"
    write_parquet(churn_table(ROWS, seed=5), root / "a.parquet", row_group_size=ROW_GROUP)
    return root


def _process(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_INFER_")}
    return subprocess.run(
        [sys.executable, "-m", "batch_infer", "run", *args],
        cwd=REPO,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_mid_commit_the_next_run_commits_every_row_once(
    where, request, tmp_path, many_fragments, trained_models
):
    if where == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        request.getfixturevalue("s3")  # a clean bucket
        output, options = f"s3://{BUCKET}/killed", {"endpoint_url": endpoint}
        env = {"BATCH_INFER_OUTPUT__STORAGE_OPTIONS": json.dumps(options)}
    else:
        output, options, env = str(tmp_path / "killed"), {}, {}
    model = trained_models["binary"]
    args = ["--input", str(many_fragments), "--model", str(model), "--output", output,
            "--partition-by", "region", "--run-date", "2026-02-01", "--workers", "2"]  # fmt: skip

    killed = _process(args, BATCH_INFER_FAILPOINT="mid-commit", **env)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    fs, root = storage.resolve(output, options)
    fs.invalidate_cache()
    names = [os.path.relpath(p, root) for p in fs.find(root)]
    in_place = [n for n in names if n.endswith(".parquet") and not n.startswith("_")]
    staged = [n for n in names if n.endswith(folder.STAGED_SUFFIX)]
    assert len(in_place) == 1  # the first file moved, then the kill
    assert len(staged) > 300, len(staged)  # the others still staged
    assert targets.SUCCESS not in names and targets.MANIFEST not in names

    started = time.monotonic()
    rerun = _process(args, **env)
    assert rerun.returncode == 0, rerun.stderr
    assert "finishing the interrupted commit" in rerun.stderr
    assert time.monotonic() - started < RUN_TIMEOUT

    fs.invalidate_cache()
    names = [os.path.relpath(p, root) for p in fs.find(root)]
    manifest = json.loads(fs.cat_file(storage.join(root, targets.MANIFEST)))
    data = sorted(n for n in names if not n.startswith("_"))
    assert data == sorted(f["path"] for f in manifest["files"])
    assert len(data) == len(staged) + 1
    assert sorted(names) == sorted([*data, targets.MANIFEST, targets.SUCCESS])  # no staging left
    output_table = (
        ds.dataset(root, format="parquet", partitioning="hive", filesystem=fs)
        .to_table()
        .sort_by("customer_id")
    )
    assert output_table.column("customer_id").to_pylist() == list(range(ROWS))  # each once
    expected = churn_table(ROWS, seed=5).to_pandas()[FEATURES].astype("float64")
    np.testing.assert_allclose(
        output_table.column("probability").to_numpy(),
        joblib.load(model).predict_proba(expected)[:, 1],
        rtol=1e-12,
    )
