"""One run at a time per output: a lock file in the output root, changed only by compare-and-swap.

A target may name its own lock file (``lock_path``) and what it guards (``lock_scope``): a table
locks each run key, not the table, since the table's own optimistic concurrency orders commits
of different runs while the same run key twice must still wait.

``_batch_infer.lock`` names the run, pid, host and start time for the message a second run
prints. Every change to it is conditional on the version last seen, so two hosts can never both
hold it: on S3 a conditional PUT (If-None-Match: * to create it, If-Match: <ETag> to take over a
stale lock or refresh our own), on a local or shared disk an exclusive link to create it and
an atomic rename to remove exactly the stale version. A lock whose process is gone (same host, pid not
alive) or whose heartbeat stopped (another host, not refreshed for ``STALE_AFTER`` seconds) is
taken over, so a killed run never blocks the next one. A holder whose lock was taken over
(it stalled longer than that) learns it at its next heartbeat or ``check()`` and must not commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import fsspec

from . import storage
from .errors import LockedError

log = logging.getLogger(__name__)

LOCK = "_batch_infer.lock"
HEARTBEAT = 60.0  # seconds between refreshes of a held lock
STALE_AFTER = 5 * HEARTBEAT


class _Target(Protocol):
    fs: fsspec.AbstractFileSystem
    root: str
    url: str


def lock_path(target: _Target) -> str:
    """The lock file guarding ``target``: its own ``lock_path``, else ``<root>/_batch_infer.lock``."""
    return getattr(target, "lock_path", None) or storage.join(target.root, LOCK)


def _scope(target: _Target) -> str:
    """What the lock guards, for messages: the output, or a table's run key."""
    return getattr(target, "lock_scope", None) or target.url


@dataclass(frozen=True)
class Seen:
    """The lock as read once: its holder, the version token to swap against, and its age."""

    holder: dict[str, Any]
    token: Any
    age: float


class _Store:
    """Conditional operations on the lock file; ``token`` identifies one version of it."""

    def create(self, path: str, data: bytes) -> Any | None:
        raise NotImplementedError

    def read(self, path: str) -> Seen | None:
        raise NotImplementedError

    def rewrite(self, path: str, token: Any, data: bytes) -> Any | None:
        """Rewrite our own lock, the version ``token``; the new token, None if it is not ours."""
        raise NotImplementedError

    def take_over(self, path: str, token: Any, data: bytes) -> Any | None:
        """Replace the stale version ``token`` by ours; the new token, None if it changed."""
        raise NotImplementedError

    def delete(self, path: str, token: Any) -> bool:
        raise NotImplementedError


class _S3Store(_Store):
    """ETags and S3's conditional PUT and DELETE: atomic on the store, across hosts."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    def create(self, path: str, data: bytes) -> str | None:
        return storage.put_conditional(self.fs, path, data)

    def read(self, path: str) -> Seen | None:
        found = storage.read_versioned(self.fs, path)
        if found is None:
            return None
        data, etag, age = found
        return Seen(_parse(data), etag, age)

    def rewrite(self, path: str, token: str, data: bytes) -> str | None:
        return storage.put_conditional(self.fs, path, data, if_match=token)

    take_over = rewrite

    def delete(self, path: str, token: str) -> bool:
        try:
            return storage.delete_conditional(self.fs, path, token)
        except OSError as exc:  # a store without conditional DELETE: check, then delete
            seen = self.read(path)
            if seen is None or seen.token != token:
                return False
            log.debug("conditional delete refused (%s); deleting after a check", exc)
            self.fs.rm(path)
            return True


class _LocalStore(_Store):
    """A local or shared (NFS) disk: the token is the file's device, inode and content digest
    (an inode number is reused as soon as a file is deleted; the holder's record is not).

    Created by linking a complete private file to its name; rewritten in place through a descriptor whose version was checked, so
    a write never lands in another holder's file; removed by renaming it aside first (only one
    process can rename a given file) and putting it back if it was not the version judged.
    """

    def create(self, path: str, data: bytes) -> tuple | None:
        """Write a private file, then link it to the lock's name: the link fails if the name
        exists (atomic, NFS included), and a reader never sees a half-written lock."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        private = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(private, "xb") as handle:
            handle.write(data)
            handle.flush()
            version = _version(os.fstat(handle.fileno()), data)
        try:
            os.link(private, path)
        except FileExistsError:
            return None
        finally:
            os.unlink(private)
        return version

    def read(self, path: str) -> Seen | None:
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            return None
        return Seen(_parse(data), _version(stat, data), time.time() - stat.st_mtime)

    def rewrite(self, path: str, token: tuple, data: bytes) -> tuple | None:
        try:
            descriptor = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        with os.fdopen(descriptor, "r+b") as handle:
            stat = os.fstat(handle.fileno())
            if _version(stat, handle.read()) != token:
                return None
            handle.seek(0)
            handle.write(data)  # through the checked descriptor: never into another's file
            handle.truncate()
            handle.flush()
            try:  # still at the lock's path (not renamed aside by a takeover meanwhile)?
                current = os.stat(path)
            except FileNotFoundError:
                return None
            if (current.st_dev, current.st_ino) != (stat.st_dev, stat.st_ino):
                return None
            return _version(stat, data)

    def take_over(self, path: str, token: tuple, data: bytes) -> tuple | None:
        if not self.delete(path, token):
            return None
        return self.create(path, data)  # exclusive: one of the runs that saw it stale wins

    def delete(self, path: str, token: tuple) -> bool:
        aside = f"{path}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as handle:
            judged = _version(os.fstat(handle.fileno()), handle.read()) == token
        if judged:
            os.unlink(aside)
            return True
        try:  # a newer lock: put it back (same inode, its holder never notices)
            os.link(aside, path)
        except FileExistsError:
            pass  # yet another run created one meanwhile; the moved one's holder will see it
        os.unlink(aside)
        return False


class _PlainStore(_Store):
    """Any other fsspec store (memory://): no conditional writes, best effort."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    def create(self, path: str, data: bytes) -> str | None:
        return "plain" if storage.create_exclusive(self.fs, path, data) else None

    def read(self, path: str) -> Seen | None:
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            modified = self.fs.modified(path)
        except (OSError, NotImplementedError):
            return Seen(_parse(data), "plain", 0.0)
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=dt.UTC)
        return Seen(_parse(data), "plain", time.time() - modified.timestamp())

    def rewrite(self, path: str, token: str, data: bytes) -> str | None:
        self.fs.pipe_file(path, data)
        return token

    def take_over(self, path: str, token: str, data: bytes) -> str | None:
        self.fs.rm(path)
        return self.create(path, data)

    def delete(self, path: str, token: str) -> bool:
        self.fs.rm(path)
        return True


def _store(fs: fsspec.AbstractFileSystem) -> _Store:
    if storage.is_local(fs):
        return _LocalStore()
    if storage.supports_conditional_writes(fs):
        return _S3Store(fs)
    return _PlainStore(fs)


@dataclass
class OutputLock:
    """A held output lock. The runner calls ``check()`` right before committing."""

    target: _Target
    record: dict[str, Any]
    token: Any
    store: _Store
    _stop: threading.Event = field(default_factory=threading.Event)
    _lost: threading.Event = field(default_factory=threading.Event)
    _changing: threading.Lock = field(default_factory=threading.Lock)
    _taken_by: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return lock_path(self.target)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT):
                try:
                    if not self.refresh():
                        return
                except OSError as exc:  # keep scoring; the next beat may succeed
                    log.warning("could not refresh the output lock: %s", exc)

        threading.Thread(target=beat, name="lock-heartbeat", daemon=True).start()

    def refresh(self) -> bool:
        """Rewrite the lock if it is still ours (its heartbeat); False once it is not."""
        return self._write(self.record)

    def rename(self, run_id: str) -> None:
        """Name the run that holds the lock once it is known (a resumed run keeps its id)."""
        if run_id != self.record["run_id"]:
            self._write({**self.record, "run_id": run_id})

    def lost(self) -> bool:
        """Whether another run took the lock over (this one stalled past STALE_AFTER)."""
        return self._lost.is_set()

    def check(self) -> None:
        """Raise LockedError (exit 75) unless the lock is still ours, asking the store now."""
        if not self._lost.is_set():
            with self._changing:  # not while a heartbeat's write is between store and token
                seen = self.store.read(self.path)
                if seen is None or seen.token != self.token:
                    self._lose(seen.holder if seen else None)
        if self._lost.is_set():
            holder = self._taken_by or {}
            taker = (
                f"run {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')})"
                if holder
                else "another run"
            )
            raise LockedError(
                f"{_scope(self.target)}: the output lock of run {self.record['run_id']} was taken "
                f"over by {taker} while this run stalled; nothing was committed",
                "retry later: that run now writes this output",
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (never another's)."""
        self._stop.set()
        if self._lost.is_set():
            return
        try:
            with self._changing:
                self.store.delete(self.path, self.token)
        except OSError as exc:
            log.warning("could not remove the output lock %s: %s", self.path, exc)

    def _write(self, record: dict[str, Any]) -> bool:
        if self._lost.is_set():
            return False
        data = _encode(record)
        with self._changing:
            token = self.store.rewrite(self.path, self.token, data)
            if token is None:
                seen = self.store.read(self.path)
                if seen is not None and seen.holder == record:  # our write landed, its answer
                    token = seen.token  # was lost and the retry found the new version
                else:
                    self._lose(seen.holder if seen else None)
                    return False
            self.token, self.record = token, record
        return True

    def _lose(self, holder: dict[str, Any] | None) -> None:
        if not self._lost.is_set():
            self._taken_by = holder
            self._lost.set()
            self._stop.set()
            log.error(
                "the output lock of %s is no longer held by run %s (now: %s); this run will "
                "not commit",
                self.target.url,
                self.record["run_id"],
                (holder or {}).get("run_id", "nobody"),
            )


def acquire(target: _Target, run_id: str, *, host: str | None = None) -> OutputLock:
    """Take the output's lock or raise LockedError (exit 75) naming who holds it.

    ``host`` is the name other runs see (default: this machine's); a lock of this host is
    judged by its pid, one of another host by its heartbeat.
    """
    host = host or socket.gethostname()
    record = {
        "run_id": run_id,
        "pid": os.getpid(),
        "host": host,
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    store = _store(target.fs)
    path = lock_path(target)
    data = _encode(record)
    for _ in range(5):
        token = store.create(path, data)
        if token is not None:
            return _held(target, record, token, store)
        seen = store.read(path)
        if seen is None:
            continue  # released between our attempt and our read
        if not seen.holder and seen.age < 1.0:  # being renamed by its holder: read it again
            time.sleep(0.05)
            continue
        if seen.holder == record:  # our own PUT landed, its response was lost and the retry got 412
            return _held(target, record, seen.token, store)
        if not _is_stale(seen, host):
            raise LockedError(
                f"{_scope(target)} is locked by run {seen.holder.get('run_id')} (pid "
                f"{seen.holder.get('pid')} on {seen.holder.get('host')}) since "
                f"{seen.holder.get('since')}",
                "wait for that run to finish, then retry; a lock whose process died is taken over",
            )
        log.warning(
            "removing the stale lock of run %s (pid %s on %s)",
            seen.holder.get("run_id"),
            seen.holder.get("pid"),
            seen.holder.get("host"),
        )
        token = store.take_over(path, seen.token, data)
        if token is not None:
            return _held(target, record, token, store)
        # another run took it over (or refreshed it) first: look again
    raise LockedError(f"{_scope(target)}: could not take the output lock", "retry the run")


def _held(target: _Target, record: dict[str, Any], token: Any, store: _Store) -> OutputLock:
    lock = OutputLock(target, record, token, store)
    lock.start_heartbeat()
    return lock


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def _parse(data: bytes) -> dict[str, Any]:
    try:
        holder = json.loads(data)
    except ValueError:
        return {}  # half-written by a killed run: judged by age alone
    return holder if isinstance(holder, dict) else {}


def _is_stale(seen: Seen, host: str) -> bool:
    holder = seen.holder
    if holder.get("host") == host and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"])
    return seen.age > STALE_AFTER


def _version(stat: os.stat_result, data: bytes) -> tuple[int, int, str]:
    return stat.st_dev, stat.st_ino, hashlib.sha256(data).hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
