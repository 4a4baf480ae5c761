"""A folder of hive-partitioned Parquet files as a target: stage, then commit once.

Each fragment is written by ``pyarrow.dataset.write_dataset`` into a staging area inside the
output root, ``_staging/<key>/`` (a hash of inputs, model and config), under names ending in ``.staged``: hive-aware readers skip
``_``-prefixed folders and glob readers (``out/**/*.parquet``) do not match the suffix, so no
reader picks up staged data. The commit moves the files to their final names, then writes
``_manifest.json`` and, last, ``_SUCCESS``. A reader that honours ``_SUCCESS`` never sees a
partial result.

The commit's file operations run side by side, at most ``FolderTarget.commit_concurrency`` at
a time (default 32): on S3 the server-side copies go through s3fs's own concurrent ``copy``
(``batch_size``), deletions through its bulk delete (1,000 keys a request); on a local disk
renames and deletions run in a thread pool. Each step still finishes wholly before the next
starts: every file in place, then the manifest, then ``_SUCCESS``, then the replaced files
deleted, then the staging folder.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import fsspec.utils
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.asyn import AsyncFileSystem

from .. import failpoints, storage
from ..config import OutputConfig
from ..errors import ConfigError, InputError, OutputConflictError, first_line
from ..executor import map_concurrently
from .base import FragmentRecord, OutputFile

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
STAGING = "_staging"
STAGED_SUFFIX = ".staged"
COMMIT_INTENT = "_commit.json"
RUN_RECORD = "_run.json"
REJECTS = "_rejects"
DONE = "_done"
COMMIT_CONCURRENCY = 32  # file operations of a commit in flight at once (copies, renames, ...)
BOTOCORE_POOL = 10  # botocore's default max_pool_connections

T = TypeVar("T")


def open_folder(
    url: str,
    storage_options: dict[str, Any],
    staging_key: str,
    rejects: str | None = None,
    *,
    commit_concurrency: int = COMMIT_CONCURRENCY,
) -> FolderTarget:
    if isinstance(commit_concurrency, bool) or not isinstance(commit_concurrency, int):
        raise ConfigError(
            f"output.commit_concurrency must be a whole number, not {commit_concurrency!r}",
            "set it to 1 or more (default 32)",
        )
    if commit_concurrency < 1:
        raise ConfigError(
            f"output.commit_concurrency must be 1 or more, not {commit_concurrency}",
            "set it to 1 (one file at a time) or more (default 32)",
        )
    storage_options = _with_connection_pool(url, storage_options, commit_concurrency)
    fs, root = storage.resolve(url, storage_options)
    rejects_root = rejects_location(rejects, storage_options, fs, url, "<output>/_rejects")
    return FolderTarget(
        fs=fs,
        root=root.rstrip("/"),
        url=url,
        staging_key=staging_key,
        rejects_root=rejects_root,
        commit_concurrency=commit_concurrency,
    )


def rejects_location(
    rejects: str | None, storage_options: dict[str, Any], fs: Any, url: str, default: str
) -> str | None:
    """Where ``--rejects`` puts rejected rows (None: the target's default ``default``); it must
    be on the output's storage, since the commit moves files there."""
    if not rejects:
        return None
    rejects_fs, rejects_root = storage.resolve(rejects, storage_options)
    if type(rejects_fs) is not type(fs):
        raise ConfigError(
            f"--rejects {rejects} is not on the same storage as the output {url}",
            f"put the rejects next to the output (default: {default})",
        )
    return rejects_root.rstrip("/")


def _with_connection_pool(
    url: str, storage_options: dict[str, Any], concurrency: int
) -> dict[str, Any]:
    """For S3, a connection pool as large as the commit's concurrency.

    botocore keeps at most ``max_pool_connections`` (10) connections per client; further
    requests wait for a free one, so 32 concurrent copies would run 10 at a time. A
    ``max_pool_connections`` the user set in ``config_kwargs`` is kept as it is.
    """
    if "::" in url or fsspec.utils.get_protocol(url) not in storage.S3_PROTOCOLS:
        return storage_options
    config = dict(storage_options.get("config_kwargs") or {})
    if "max_pool_connections" in config or concurrency <= BOTOCORE_POOL:
        return storage_options
    config["max_pool_connections"] = concurrency
    return {**storage_options, "config_kwargs": config}


def own_prefix(fragment_name: str) -> str:
    """The file-name prefix of a fragment's output files."""
    return f"part-{fragment_name}"


def _name_prefix(relative_path: str) -> str:
    return posixpath.basename(relative_path).rsplit("-", 1)[0]


def _listed(manifest: dict[str, Any]) -> list[str]:
    return [f["path"] for f in manifest.get("files", []) + manifest.get("rejects", [])]


def is_reject_file(relative: str) -> bool:
    return relative.startswith(REJECTS + "/")


def check_partition_values(batch: pa.RecordBatch, partition_by: list[str], where: str) -> None:
    """Refuse values a folder name cannot hold faithfully (pyarrow would cut them at a NUL)."""
    for name in partition_by:
        column = batch.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        if pc.any(pc.match_substring(column, "\x00")).as_py():
            raise InputError(
                f"a value of partition column {name!r} in {where} contains a NUL character",
                "clean the column upstream, or partition by another column",
            )


def dictionary_columns(schema: pa.Schema, plain: set[str], partition_by: list[str]) -> list[str]:
    """Parquet column paths to dictionary-encode: all but ``plain`` ones (such as probabilities,
    nearly all distinct, where trying a dictionary first only burns CPU) and partition keys."""
    sink = pa.BufferOutputStream()
    file_schema = pa.schema([f for f in schema if f.name not in partition_by])
    pq.write_table(file_schema.empty_table(), sink)
    metadata = pq.read_metadata(pa.BufferReader(sink.getvalue()))
    paths = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    return [path for path in paths if path.split(".")[0] not in plain]


def _stop_without_raising(
    batches: Iterable[pa.RecordBatch], failed: list[BaseException]
) -> Iterator[pa.RecordBatch]:
    """End the stream quietly on an error, keeping the error for the caller to raise.

    An exception raised into ``write_dataset`` from its source iterator is kept by Arrow's pool
    threads, which drop it (taking the GIL) after the call returned; during interpreter
    shutdown that aborts the process (SIGABRT) instead of exiting with the run's code.
    """
    try:
        yield from batches
    except Exception as exc:
        failed.append(exc)


def earlier_dated_manifest(
    template: str, storage_options: dict[str, Any], run_date: str
) -> dict[str, Any] | None:
    """The committed manifest of the latest date before ``run_date`` of a ``{run_date}`` output."""
    if "{run_date}" not in template:
        return None
    fs, pattern = storage.resolve(template.replace("{run_date}", "*"), storage_options)
    dated = re.compile(re.escape(pattern).replace(r"\*", r"(\d{4}-\d{2}-\d{2})") + "$")
    earlier = []
    for path in fs.glob(pattern):
        match = dated.match(path.rstrip("/"))
        if match and match.group(1) < run_date:
            earlier.append((match.group(1), path.rstrip("/")))
    for _, path in sorted(earlier, reverse=True):
        if fs.exists(storage.join(path, SUCCESS)):
            try:
                return json.loads(fs.cat_file(storage.join(path, MANIFEST)))
            except (OSError, ValueError):
                continue
    return None


@dataclass(frozen=True)
class FolderTarget:
    """A folder of Parquet files: where one run writes, and its private staging folder.

    The first ``Target``: see ``targets.base`` for what a run asks of it.
    """

    fs: fsspec.AbstractFileSystem
    root: str
    url: str
    staging_key: str
    rejects_root: str | None = None  # None: <root>/_rejects
    commit_concurrency: int = COMMIT_CONCURRENCY  # file operations of the commit at once

    @property
    def staging(self) -> str:
        return storage.join(self.root, STAGING, self.staging_key)

    def final_path(self, relative: str) -> str:
        if self.rejects_root and is_reject_file(relative):
            return storage.join(self.rejects_root, relative[len(REJECTS) + 1 :])
        return storage.join(self.root, relative)

    @property
    def rejects_url(self) -> str:
        return storage.display(self.fs, self.rejects_root or storage.join(self.root, REJECTS))

    def check(self, mode: str, own_prefixes: set[str]) -> None:
        """Refuse, before any work, an output that ``mode`` does not allow us to replace.

        ``own_prefixes`` are the file-name prefixes this run writes (``part-<fragment>``). Files a
        batch-infer run left (listed in a manifest or a commit plan, or named like ours) may be
        replaced, in any mode; anything else makes the run stop rather than delete someone's data.
        """
        fs = self.fs
        if fs.isfile(self.root):
            raise ConfigError(
                f"the output {self.url} is a file, not a folder", "choose a folder for --output"
            )
        if not storage.is_local(fs):
            bucket = self.root.split("/", 1)[0]
            if not fs.exists(bucket):
                raise ConfigError(
                    f"the bucket {bucket!r} of {self.url} does not exist or is not visible",
                    "create the bucket, or check --output and the credentials",
                )
        if mode == "error" and fs.exists(storage.join(self.root, SUCCESS)):
            raise OutputConflictError(
                f"{self.url} already holds a committed result ({self._describe_manifest()})",
                "use --mode overwrite to replace it, or choose another --output",
            )
        visible = self.visible_data_files()
        if not visible:
            return
        known = self._files_written_by_batch_infer()
        foreign = [p for p in visible if p not in known and _name_prefix(p) not in own_prefixes]
        if foreign:
            raise OutputConflictError(
                f"{self.url} holds {len(foreign)} file(s) no batch-infer run wrote "
                f"(for example {foreign[0]}); batch-infer replaces only its own files",
                "move those files away, or choose another --output",
            )

    def _files_written_by_batch_infer(self) -> set[str]:
        """Files the committed manifest lists, and those of commits that were interrupted."""
        manifest = self.read_manifest() or {}
        known = set(_listed(manifest)) | set(manifest.get("superseded", []))
        fs = self.fs
        for intent in fs.glob(storage.join(self.root, STAGING, "*", COMMIT_INTENT)):
            try:
                record = json.loads(fs.cat_file(intent))
                known.update(record.get("add", []) + record.get("remove", []))
                known.update(_listed(record.get("manifest", {})))
            except (OSError, ValueError):
                continue
        for run_record in fs.glob(storage.join(self.root, STAGING, "*", RUN_RECORD)):
            try:
                known.update(json.loads(fs.cat_file(run_record)).get("inherited", []))
            except (OSError, ValueError):
                continue
        return known

    def files_of_pending_commit(self, key: str) -> list[str]:
        """Files an interrupted commit in staging ``key`` added, was to remove, or meant to keep."""
        try:
            path = storage.join(self.root, STAGING, key, COMMIT_INTENT)
            record = json.loads(self.fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            return []
        return (
            record.get("add", []) + record.get("remove", []) + _listed(record.get("manifest", {}))
        )

    def pending_manifest(self, key: str) -> dict[str, Any] | None:
        """The committed manifest an interrupted commit in staging ``key`` was replacing: what the
        output held before it (its own new files were never committed)."""
        try:
            path = storage.join(self.root, STAGING, key, COMMIT_INTENT)
            return json.loads(self.fs.cat_file(path)).get("previous") or None
        except (FileNotFoundError, ValueError):
            return None

    def visible_data_files(self) -> list[str]:
        """Files a reader of the output would see: everything but ``_``/``.``-prefixed paths."""
        fs = self.fs
        if not fs.isdir(self.root):
            return []
        visible = []
        for path in fs.find(self.root):
            relative = posixpath.relpath(path, self.root)
            if not any(part.startswith(("_", ".")) for part in relative.split("/")):
                visible.append(relative)
        return sorted(visible)

    def stage_rejects(self, fragment_name: str, batches: list[pa.RecordBatch]) -> OutputFile:
        """Stage one fragment's rejected rows as ``_rejects/part-<fragment>-0.parquet``."""
        relative = f"{REJECTS}/{own_prefix(fragment_name)}-0.parquet"
        path = self.staged_path(relative)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        table = pa.Table.from_batches(batches)
        with self.fs.open(path, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            size = handle.tell()
        return OutputFile(relative, table.num_rows, size)

    def stage_empty(self, schema: pa.Schema, partition_by: list[str]) -> OutputFile:
        """A zero-row file carrying the schema, so readers of an empty result still see columns."""
        relative = f"{own_prefix('empty')}-0.parquet"
        file_schema = pa.schema([f for f in schema if f.name not in partition_by])
        self.fs.makedirs(self.staging, exist_ok=True)
        with self.fs.open(storage.join(self.staging, relative + STAGED_SUFFIX), "wb") as handle:
            pq.write_table(file_schema.empty_table(), handle)
            size = handle.tell()
        return OutputFile(relative, 0, size)

    def commit(
        self,
        files: list[OutputFile],
        manifest: dict[str, Any],
        mode: str,
        own_prefixes: set[str],
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish staged files, then the manifest, then ``_SUCCESS`` (last); returns the manifest.

        ``previous`` stands in for the committed manifest when a crashed commit already removed it
        (the manifest that commit meant to write).

        First the whole plan (files to add and to remove, the manifest) is written to
        ``_staging/<key>/_commit.json``; ``finish_commit`` then carries it out. Every step of it can
        be repeated, so a run killed mid-commit is finished by the next run ("rolled forward").
        """
        self.check(mode, own_prefixes)
        new = {f.path for f in files}
        old_manifest = self.read_manifest() or previous or {}
        old_files = {
            f["path"]: f["rows"]
            for f in old_manifest.get("files", []) + old_manifest.get("rejects", [])
        }
        leftovers = self._files_written_by_batch_infer() | {
            p for p in self.visible_data_files() if _name_prefix(p) in own_prefixes
        }
        kept: dict[str, int] = {}
        if mode == "overwrite-partitions":
            touched = {posixpath.dirname(p) for p in new if not is_reject_file(p)}
            kept = {
                p: n
                for p, n in old_files.items()
                if posixpath.dirname(p) not in touched
                and p not in new
                # rejects of row groups this run scored again are replaced, not kept
                and not (is_reject_file(p) and _name_prefix(p) in own_prefixes)
            }
        remove = sorted(p for p in (leftovers | set(old_files)) - new - set(kept))
        old_bytes = {
            f["path"]: f.get("bytes", 0)
            for f in old_manifest.get("files", []) + old_manifest.get("rejects", [])
        }
        entries = sorted(
            [{"path": p, "rows": n, "bytes": old_bytes.get(p, 0)} for p, n in kept.items()]
            + [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in files],
            key=lambda entry: entry["path"],
        )
        manifest = {
            **manifest,
            "files": [e for e in entries if not is_reject_file(e["path"])],
            "rejects": [e for e in entries if is_reject_file(e["path"])],
            "rejects_location": self.rejects_url,
        }
        manifest["rows_committed"] = sum(entry["rows"] for entry in manifest["files"])
        # the committed manifest this commit replaces: if it dies after removing it, the next run
        # still knows what was committed before (see ``pending_manifest``)
        intent = {
            "add": sorted(new),
            "remove": remove,
            "manifest": manifest,
            "previous": old_manifest,
        }
        storage.write_bytes_atomically(
            self.fs, storage.join(self.staging, COMMIT_INTENT), json.dumps(intent).encode()
        )
        return self.finish_commit()

    def pending_commit(self) -> dict[str, Any] | None:
        """The commit plan of an interrupted commit in this staging folder, if there is one."""
        try:
            return json.loads(self.fs.cat_file(storage.join(self.staging, COMMIT_INTENT)))
        except (FileNotFoundError, ValueError):
            return None

    def finish_commit(self) -> dict[str, Any]:
        """Carry out the commit plan in staging; safe to repeat after a crash at any step.

        Files move ``self.commit_concurrency`` at a time; all of them are in place before the
        manifest is written, and the manifest before ``_SUCCESS``. Which files are still staged
        comes from one listing of the staging folder, not a request per file.
        """
        fs = self.fs
        intent = self.pending_commit()
        if intent is None:
            raise RuntimeError(f"no commit plan in {self.staging}")
        for marker in (SUCCESS, MANIFEST):  # honouring readers now see no result, never a mix
            if fs.exists(storage.join(self.root, marker)):
                fs.rm(storage.join(self.root, marker))
        staged = set(self._staged_files())
        to_move = [p for p in intent["add"] if self.staged_path(p) in staged]
        moved = [
            p for p in intent["add"] if self.staged_path(p) not in staged
        ]  # by a killed commit
        if moved:
            in_place = self._existing([self.final_path(p) for p in moved])
            missing = [p for p in moved if self.final_path(p) not in in_place]
            if missing:
                raise RuntimeError(
                    f"commit plan lists {missing[0]}, found neither staged nor in place"
                )
        if to_move:
            started = time.monotonic()
            first, rest = to_move[0], to_move[1:]
            self._move([(self.staged_path(first), self.final_path(first))])
            failpoints.reached("mid-commit")
            if rest and not storage.is_local(fs):
                # moving ``first`` dropped s3fs's cached listing of its folder; listing staging
                # again (one request per 1,000 files) spares each copy a HEAD of its source
                self._staged_files()
            self._move([(self.staged_path(p), self.final_path(p)) for p in rest])
            log.info(
                "moved %d file(s) into place in %.1f s (up to %d at a time)",
                len(to_move),
                time.monotonic() - started,
                self.commit_concurrency,
            )
        failpoints.reached("before-manifest")
        manifest = {**intent["manifest"], "superseded": intent["remove"]}
        storage.write_bytes_atomically(
            fs, storage.join(self.root, MANIFEST), json.dumps(manifest, indent=2).encode()
        )
        failpoints.reached("before-success")
        storage.write_bytes_atomically(fs, storage.join(self.root, SUCCESS), b"")
        failpoints.reached("after-success")
        self.finish_cleanup(intent)
        return manifest

    def finish_cleanup(self, intent: dict[str, Any]) -> None:
        """After ``_SUCCESS``: delete the files the new result replaced, then the staging folder.

        The old data goes only now that the new is committed; the manifest names what it replaced
        (``superseded``), so files a crash leaves here are still known as batch-infer's.
        """
        superseded = [self.final_path(p) for p in intent["remove"]]
        self._delete(sorted(self._existing(superseded)))
        self.discard_staging()

    def committed_but_not_cleaned(self) -> dict[str, Any] | None:
        """The commit plan of a run killed after its ``_SUCCESS``: committed, cleanup pending."""
        intent = self.pending_commit()
        if intent is None or not self.fs.exists(storage.join(self.root, SUCCESS)):
            return None
        manifest = self.read_manifest() or {}
        if manifest.get("run_id") != intent["manifest"].get("run_id"):
            return None
        return intent

    def staged_path(self, relative: str) -> str:
        return storage.join(self.staging, relative + STAGED_SUFFIX)

    def record_fragment(
        self,
        fragment_name: str,
        files: list[OutputFile],
        statistics: dict[str, Any] | None = None,
    ) -> None:
        """Note that a fragment's output is wholly staged: a resumed run skips it.

        Its statistics (the report's sketches) are kept with it, so a resumed run reports them too.
        """
        record = {
            "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in files],
            "statistics": statistics,
        }
        storage.write_bytes_atomically(
            self.fs,
            storage.join(self.staging, DONE, f"{fragment_name}.json"),
            json.dumps(record).encode(),
        )

    def recorded_fragments(self) -> dict[str, FragmentRecord]:
        """Fragments a previous attempt with the same staging key finished."""
        done: dict[str, FragmentRecord] = {}
        fs = self.fs
        for path in fs.glob(storage.join(self.staging, DONE, "*.json")):
            try:
                record = json.loads(fs.cat_file(path))
            except (OSError, ValueError):
                continue  # half-written record: redo that fragment
            name = posixpath.basename(path).removesuffix(".json")
            files = [OutputFile(f["path"], f["rows"], f.get("bytes", 0)) for f in record["files"]]
            done[name] = FragmentRecord(files, record.get("statistics"))
        return done

    def discard_unrecorded(self, done: set[str]) -> None:
        """Before resuming, drop staged files of fragments whose record was never written."""
        keep = {own_prefix(name) for name in done}
        stale = [
            p
            for p in self._staged_files()
            if _name_prefix(p.removesuffix(STAGED_SUFFIX)) not in keep
        ]
        if stale:
            self.fs.rm(stale)

    def _staged_files(self) -> list[str]:
        fs = self.fs
        if not fs.isdir(self.staging):
            return []
        return [p for p in fs.find(self.staging) if p.endswith(STAGED_SUFFIX)]

    def read_run_record(self, key: str | None = None) -> dict[str, Any] | None:
        """What the run staging under ``key`` (default: this self's) was started with."""
        folder = storage.join(self.root, STAGING, key) if key else self.staging
        try:
            return json.loads(self.fs.cat_file(storage.join(folder, RUN_RECORD)))
        except (FileNotFoundError, ValueError):
            return None

    def write_run_record(self, record: dict[str, Any]) -> None:
        storage.write_bytes_atomically(
            self.fs, storage.join(self.staging, RUN_RECORD), json.dumps(record).encode()
        )

    def other_stagings(self) -> list[str]:
        """Staging keys of other (interrupted) runs into this output."""
        parent = storage.join(self.root, STAGING)
        fs = self.fs
        if not fs.isdir(parent):
            return []
        keys = [posixpath.basename(p.rstrip("/")) for p in fs.ls(parent, detail=False)]
        return sorted(k for k in keys if k != self.staging_key)

    def discard_staging(self, key: str | None = None) -> None:
        """Remove a staging folder (and the ``_staging`` parent when nothing else is there)."""
        fs = self.fs
        folder = storage.join(self.root, STAGING, key) if key else self.staging
        try:
            storage.abort_multipart_uploads(fs, folder)
            if fs.exists(folder):
                fs.rm(folder, recursive=True)
            parent = storage.join(self.root, STAGING)
            if storage.is_local(fs) and fs.isdir(parent) and not fs.ls(parent):
                fs.rmdir(parent)
        except OSError as exc:  # cleanup must never hide the real outcome
            log.warning("could not remove staging folder %s: %s", folder, first_line(exc))

    def abort_unfinished_uploads(self) -> None:
        """Uploads left open by a run that died mid-file (call while holding the lock)."""
        storage.abort_multipart_uploads(self.fs, storage.join(self.root, STAGING))

    def previous_manifest(self) -> dict[str, Any] | None:
        return None  # a folder holds one run's result: is_committed/read_manifest say it

    def is_committed(self) -> bool:
        return self.fs.exists(storage.join(self.root, SUCCESS))

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(storage.join(self.root, MANIFEST)))
        except (OSError, ValueError):
            return None

    def _describe_manifest(self) -> str:
        manifest = self.read_manifest()
        if not manifest:
            return "no readable manifest"
        return f"run {manifest.get('run_id')} committed at {manifest.get('committed_at')}"

    def _move(self, moves: list[tuple[str, str]]) -> None:
        """Move files (source, destination) to their final names, ``commit_concurrency`` at once.

        Local: renames (atomic), in a thread pool. S3 (and other async stores): s3fs's concurrent
        server-side ``copy`` of the whole list, then one bulk delete of the sources per 1,000
        files. Every destination is written whole; a move repeated after a crash copies again.
        """
        if not moves:
            return
        fs, concurrency = self.fs, self.commit_concurrency
        if storage.is_local(fs):
            for folder in sorted({posixpath.dirname(destination) for _, destination in moves}):
                fs.makedirs(folder, exist_ok=True)
            map_concurrently(lambda move: fs.mv(*move), moves, concurrency)
        elif isinstance(fs, AsyncFileSystem):
            sources = [source for source, _ in moves]
            fs.copy(sources, [destination for _, destination in moves], batch_size=concurrency)
            fs.rm(sources)
        else:
            map_concurrently(lambda move: fs.mv(*move), moves, concurrency)

    def _delete(self, paths: list[str]) -> None:
        """Delete files that exist: in a thread pool locally; on S3 (and other async stores) by
        the store's own batching (s3fs: bulk deletes of 1,000 keys, a few requests at a time)."""
        if not paths:
            return
        fs = self.fs
        if storage.is_local(fs) or not isinstance(fs, AsyncFileSystem):
            map_concurrently(fs.rm_file, paths, self.commit_concurrency)
        else:
            fs.rm(paths)

    def _existing(self, paths: list[str]) -> set[str]:
        """Which of ``paths`` exist: a stat each on a local disk; on an object store one listing
        per folder holding them (``commit_concurrency`` at a time), not a request per file."""
        fs = self.fs
        if not paths:
            return set()
        if storage.is_local(fs):
            return {p for p in paths if fs.isfile(p)}

        def listing(folder: str) -> set[str]:
            try:
                return {
                    entry["name"]
                    for entry in fs.ls(folder, detail=True, refresh=True)
                    if entry.get("type") != "directory"
                }
            except FileNotFoundError:
                return set()

        folders = sorted({posixpath.dirname(p) for p in paths})
        found: set[str] = set().union(*map_concurrently(listing, folders, self.commit_concurrency))
        return {p for p in paths if p in found}

    def stage_fragment(
        self,
        fragment_name: str,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        config: OutputConfig,
        dictionary_columns: list[str] | bool = True,
    ) -> list[OutputFile]:
        """Write one fragment's scored batches into the staging area, hive-partitioned.

        File names derive from the fragment, so a rerun writes the same names.
        """
        written: list[OutputFile] = []
        staging = self.staging

        def remember(visited: Any) -> None:
            relative = posixpath.relpath(visited.path, staging).removesuffix(STAGED_SUFFIX)
            written.append(OutputFile(relative, visited.metadata.num_rows, visited.size or 0))

        partitioning = None
        if config.partition_by:
            partitioning = ds.partitioning(
                pa.schema([schema.field(name) for name in config.partition_by]), flavor="hive"
            )
        row_group_size = min(config.row_group_size, config.max_rows_per_file)
        failed: list[BaseException] = []
        try:
            ds.write_dataset(
                _stop_without_raising(batches, failed),
                base_dir=staging,
                basename_template=f"part-{fragment_name}-{{i}}.parquet{STAGED_SUFFIX}",
                format="parquet",
                partitioning=partitioning,
                schema=schema,
                filesystem=self.fs,
                file_options=ds.ParquetFileFormat().make_write_options(
                    compression=config.compression, use_dictionary=dictionary_columns
                ),
                preserve_order=True,
                max_rows_per_file=config.max_rows_per_file,
                min_rows_per_group=row_group_size,
                max_rows_per_group=row_group_size,
                file_visitor=remember,
                existing_data_behavior="overwrite_or_ignore",
            )
        except OSError as exc:  # pyarrow's IO errors are OSErrors
            if failed:
                raise failed[0] from None
            if "too long" in str(exc).lower():
                raise InputError(
                    f"a value of --partition-by {config.partition_by} in {fragment_name} is too long "
                    "for a folder name",
                    "partition by a column with short values (a date, a region code)",
                ) from None
            raise
        if failed:  # the fragment's files are incomplete; the caller discards them
            raise failed[0]
        return sorted(written, key=lambda f: f.path)
