"""The output lock across hosts: every change is a compare-and-swap, so two runs never both hold it.

Against moto's S3 server on loopback (conditional PUT and DELETE with If-Match/If-None-Match) and
a local disk (O_EXCL, rename aside), with real processes for the holders whose heartbeat stalls.
A "host" is the name a run writes into the lock (``acquire(..., host=...)``): a lock of another
host is judged by its heartbeat's age, of this host by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batch_infer import lock, storage
from batch_infer.errors import LockedError

from .conftest import REPO
from .test_s3 import BUCKET, moto_endpoint, s3  # noqa: F401  (fixtures)

STALE = 1.5  # STALE_AFTER for these tests, in seconds
AGED = 2.6  # how long a lock is left alone to become stale (the store's clock ticks in seconds)


@dataclass
class Target:
    fs: Any
    root: str
    url: str


def _target(kind: str, tmp_path: Path, endpoint: str | None) -> tuple[Target, dict]:
    if kind == "s3":
        url, options = f"s3://{BUCKET}/out", {"endpoint_url": endpoint}
    else:
        url, options = str(tmp_path / "out"), {}
    fs, root = storage.resolve(url, options)
    return Target(fs, root.rstrip("/"), url), options


def _lock_content(target: Target) -> dict:
    target.fs.invalidate_cache()
    return json.loads(target.fs.cat_file(f"{target.root}/{lock.LOCK}"))


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path, monkeypatch):
    """A fresh output location, local or on moto's S3; STALE_AFTER shortened to STALE."""
    monkeypatch.setattr(lock, "STALE_AFTER", STALE)
    endpoint = None
    if request.param == "s3":
        request.getfixturevalue("s3")
        endpoint = request.getfixturevalue("moto_endpoint")
    return _target(request.param, tmp_path, endpoint)


def _plant(target: Target, holder: dict) -> None:
    """A lock written by some other run, as it would have written it."""
    path = f"{target.root}/{lock.LOCK}"
    target.fs.makedirs(target.root, exist_ok=True)
    target.fs.pipe_file(path, json.dumps(holder).encode())


def test_two_hosts_taking_over_one_stale_lock_exactly_one_wins(where, monkeypatch):
    """Both read the stale lock and judge it stale before either replaces it: the first
    replacement changes the version, so the second one's condition fails and it is refused."""
    target, _ = where
    _plant(target, {"run_id": "ghost", "pid": 1, "host": "gone-host", "since": "2026-01-01"})
    time.sleep(AGED)

    store_class = type(lock._store(target.fs))
    original = store_class.take_over
    both_judged = threading.Barrier(2, timeout=30)
    one_at_a_time = threading.Lock()

    def take_over(self, path, token, data):
        if json.loads(data)["run_id"] in waiting:
            waiting.discard(json.loads(data)["run_id"])
            both_judged.wait()  # both have seen the same stale version
        with one_at_a_time:
            return original(self, path, token, data)

    waiting = {"run-a", "run-b"}
    monkeypatch.setattr(store_class, "take_over", take_over)
    outcomes: dict[str, Any] = {}

    def race(name: str) -> None:
        try:
            outcomes[name] = lock.acquire(target, f"run-{name}", host=f"host-{name}")
        except LockedError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=race, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    held = [o for o in outcomes.values() if isinstance(o, lock.OutputLock)]
    refused = [o for o in outcomes.values() if isinstance(o, LockedError)]
    assert len(held) == 1 and len(refused) == 1, outcomes
    winner = held[0]
    assert _lock_content(target)["run_id"] == winner.record["run_id"]
    assert f"is locked by run {winner.record['run_id']}" in refused[0].what
    assert refused[0].exit_code == 75
    winner.check()  # still ours
    winner.release()
    assert not target.fs.exists(f"{target.root}/{lock.LOCK}")


RACER = textwrap.dedent(
    """
    import json, os, sys, time
    from batch_infer import lock, storage
    from batch_infer.errors import LockedError

    class Target:
        def __init__(self, url, options):
            self.fs, root = storage.resolve(url, options)
            self.root, self.url = root.rstrip("/"), url

    url, options, name, go = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    lock.STALE_AFTER = float(os.environ["STALE"])
    lock.HEARTBEAT = float(os.environ["BEAT"])
    target = Target(url, options)
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        held = lock.acquire(target, "run-" + name, host=os.environ.get("HOST"))
    except LockedError as exc:
        print("refused", exc.what, flush=True)
        sys.exit(75)
    print("held", flush=True)
    deadline = time.monotonic() + float(os.environ["HOLD"])
    while time.monotonic() < deadline and not held.lost():
        time.sleep(0.05)
    try:
        held.check()
        print("still held", flush=True)
    except LockedError as exc:
        print("lost", exc.what, flush=True)
        held.release()
        sys.exit(exc.exit_code)
    held.release()
    """
)


def _racer(target: Target, options: dict, name: str, go: Path, **env: str) -> subprocess.Popen:
    settings = {"STALE": str(STALE), "BEAT": "60", "HOLD": "3", **env}
    return subprocess.Popen(
        [sys.executable, "-c", RACER, target.url, json.dumps(options), name, str(go)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **settings},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_processes_racing_for_a_dead_runs_lock_on_disk_exactly_one_wins(tmp_path):
    """Four processes of this host find the lock of a dead pid at once: one takes it over."""
    target, options = _target("local", tmp_path, None)
    gone = subprocess.Popen(["true"])
    gone.wait()
    _plant(target, {"run_id": "dead", "pid": gone.pid, "host": socket.gethostname()})
    go = tmp_path / "go"
    racers = [_racer(target, options, str(i), go) for i in range(4)]
    time.sleep(1.0)  # all started and waiting
    go.touch()
    results = [r.communicate(timeout=60) for r in racers]

    codes = [r.returncode for r in racers]
    assert sorted(codes) == [0, 75, 75, 75], results
    winner = codes.index(0)
    assert results[winner][0].splitlines() == ["held", "still held"], results[winner]
    for (stdout, _), code in zip(results, codes, strict=True):
        if code == 75:
            assert stdout.startswith(f"refused {target.url} is locked by run run-{winner}")
    assert not (tmp_path / "out" / lock.LOCK).exists()
    assert not list((tmp_path / "out").glob("*.stale"))


def test_a_stalled_holder_does_not_overwrite_the_run_that_took_over(where):
    """Host A holds the lock, then stalls (SIGSTOP) past STALE_AFTER; host B takes the lock
    over. When A wakes, its heartbeat finds the lock no longer its own: it writes nothing,
    stops, and A fails with exit 75 before committing; B's lock is untouched."""
    target, options = where
    go = Path(os.environ.get("TMPDIR", "/tmp")) / f"go-{os.getpid()}-{time.monotonic_ns()}"
    go.touch()
    try:
        a = _racer(target, options, "a", go, HOST="host-a", BEAT="0.2", HOLD="30")
        assert a.stdout.readline().strip() == "held"
        os.kill(a.pid, signal.SIGSTOP)
        try:
            time.sleep(AGED)
            b = lock.acquire(target, "run-b", host="host-b")
        finally:
            os.kill(a.pid, signal.SIGCONT)
        stdout, stderr = a.communicate(timeout=60)
    finally:
        go.unlink()

    assert a.returncode == 75, (stdout, stderr)
    assert stdout.startswith(
        f"lost {target.url}: the output lock of run run-a was taken over by run run-b"
    ), stdout
    assert "host-b" in stdout
    # neither the heartbeat nor the release touched it
    assert _lock_content(target)["run_id"] == "run-b"
    b.check()
    b.rename("run-b2")
    assert _lock_content(target)["run_id"] == "run-b2"
    b.release()
    assert not target.fs.exists(f"{target.root}/{lock.LOCK}")


def test_a_refresh_after_a_takeover_is_refused_and_check_raises(where):
    """The same, in one process: A's heartbeat and rename after B's takeover write nothing."""
    target, _ = where
    a = lock.acquire(target, "run-a", host="host-a")
    a._stop.set()  # A's heartbeat thread stays quiet: A has stalled
    time.sleep(AGED)
    b = lock.acquire(target, "run-b", host="host-b")

    assert a.refresh() is False
    a.rename("run-a2")
    assert a.lost()
    with pytest.raises(LockedError) as raised:
        a.check()
    assert raised.value.exit_code == 75
    assert "taken over by run run-b" in raised.value.what
    a.release()
    assert _lock_content(target)["run_id"] == "run-b"
    b.check()
    b.release()


def test_a_fresh_lock_of_another_host_is_not_taken_over(where):
    target, _ = where
    a = lock.acquire(target, "run-a", host="host-a")
    try:
        with pytest.raises(LockedError) as raised:
            lock.acquire(target, "run-b", host="host-b")
        assert "is locked by run run-a" in raised.value.what
        assert raised.value.exit_code == 75
        a.check()
    finally:
        a.release()
