"""One run at a time per output: a lock file in the output root, created atomically.

``_batch_infer.lock`` is created with O_EXCL on a local disk and a conditional PUT on S3, so two
runs cannot both get it. It names the run, pid, host and start time for the message a second
run prints. A lock whose process is gone (same host, pid not alive) or whose heartbeat stopped
(another host, not refreshed for ``STALE_AFTER`` seconds) is taken over, so a killed run never
blocks the next one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import storage
from .errors import LockedError
from .targets import FolderTarget as OutputTarget

log = logging.getLogger(__name__)

LOCK = "_batch_infer.lock"
HEARTBEAT = 60.0  # seconds between refreshes of a held lock
STALE_AFTER = 5 * HEARTBEAT


@dataclass
class OutputLock:
    target: OutputTarget
    record: dict[str, Any]
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def path(self) -> str:
        return storage.join(self.target.root, LOCK)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT):
                try:
                    self.target.fs.pipe_file(self.path, json.dumps(self.record).encode())
                except OSError as exc:  # keep scoring; the next beat may succeed
                    log.warning("could not refresh the output lock: %s", exc)

        threading.Thread(target=beat, name="lock-heartbeat", daemon=True).start()

    def rename(self, run_id: str) -> None:
        """Name the run that holds the lock once it is known (a resumed run keeps its id)."""
        if run_id != self.record["run_id"]:
            self.record = {**self.record, "run_id": run_id}
            self.target.fs.pipe_file(self.path, json.dumps(self.record).encode())

    def release(self) -> None:
        self._stop.set()
        try:
            holder = _read(self.target)
            if holder is not None and holder.get("run_id") == self.record["run_id"]:
                self.target.fs.rm(self.path)
        except OSError as exc:
            log.warning("could not remove the output lock %s: %s", self.path, exc)


def acquire(target: OutputTarget, run_id: str) -> OutputLock:
    """Take the output's lock or raise LockedError (exit 75) naming who holds it."""
    record = {
        "run_id": run_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    lock = OutputLock(target, record)
    for _ in range(3):
        if storage.create_exclusive(target.fs, lock.path, json.dumps(record).encode()):
            lock.start_heartbeat()
            return lock
        holder = _read(target)
        if holder is None:
            continue  # released between our attempt and our read
        if holder == record:  # our own PUT landed, its response was lost and the retry got 412
            lock.start_heartbeat()
            return lock
        if _is_stale(target, lock.path, holder):
            log.warning(
                "removing the stale lock of run %s (pid %s on %s)",
                holder.get("run_id"),
                holder.get("pid"),
                holder.get("host"),
            )
            target.fs.rm(lock.path)
            continue
        raise LockedError(
            f"{target.url} is locked by run {holder.get('run_id')} (pid {holder.get('pid')} on "
            f"{holder.get('host')}) since {holder.get('since')}",
            "wait for that run to finish, then retry; a lock whose process died is taken over",
        )
    raise LockedError(f"{target.url}: could not take the output lock", "retry the run")


def _read(target: OutputTarget) -> dict[str, Any] | None:
    try:
        return json.loads(target.fs.cat_file(storage.join(target.root, LOCK)))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # half-written by a killed run: judged by age alone


def _is_stale(target: OutputTarget, path: str, holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"])
    try:
        modified = target.fs.modified(path)
    except (OSError, NotImplementedError):
        return False
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.UTC)
    return time.time() - modified.timestamp() > STALE_AFTER


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
