"""What Delta and Iceberg targets share: data files staged in place, recorded in one table commit.

A table reader sees only the files its log (Delta) or snapshot (Iceberg) names, so a run writes
its data files straight into the table's data folder, under names no other run uses
(``part-<run key>-<nonce>-<fragment>-<i>.parquet``), and nothing is moved at commit time: one
table commit adds them all, carrying the run key and the run id in the table's own metadata.

Everything else a run keeps on the way (the lock, the run record, the fragment records, the
commit plan, staged rejects, the committed manifest) lives in a side folder next to the data,
``<table>/_batch_infer/``, handled by the folder target's machinery (``TableTarget`` is a
``FolderTarget`` rooted there). A data file no commit names and no fragment record lists is an
orphan of a killed attempt: removed when the run that wrote it is resumed or discarded, or, for
a run never rerun, by a later successful run once it has been idle a day (``clean_abandoned``),
never while a commit names it.

The lock is per run key (``_locks/<run key>.lock``): runs of other run keys commit side by side,
the table's optimistic concurrency and a bounded retry ordering their commits. Rejected rows are
committed after the main commit to a sibling table, ``<table>_rejects``, under the same run key
(``commit_rejects``), unless ``--rejects`` names a folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import posixpath
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import failpoints, lock, storage
from ..config import OutputConfig
from ..errors import ConfigError, LockedError, OutputConflictError, first_line
from .base import FragmentRecord, OutputFile
from .folder import (
    COMMIT_INTENT,
    DONE,
    REJECTS,
    STAGING,
    FolderTarget,
    check_partition_values,
    is_reject_file,
)

log = logging.getLogger(__name__)

SIDE = "_batch_infer"  # the side folder inside the table: lock, run records, manifests
MANIFESTS = "_manifests"
LOCKS = "_locks"  # in the side folder: one lock file per run key
ATTEMPTS = "_attempts"  # in a run's staging: a marker per fragment attempt (its file nonce)
SCHEMA = "_schema.arrow"  # in a run's staging: the output schema its fragments were written with
EMPTY = "_empty"  # stands for "no rows": a table commit adds no file for it
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
ABANDONED_AFTER = 24 * 3600.0  # seconds a run that never committed is left before cleanup
COMMIT_ATTEMPTS = 4  # table commits tried against a newer version before LockedError
RUN_KEY = "batch-infer.run-key"
RUN_ID = "batch-infer.run-id"
MANIFEST_KEY = "batch-infer.manifest"
MODE_KEY = "batch-infer.mode"


@dataclass(frozen=True)
class Committed:
    """Where a table holds a run key: the commit (version or snapshot) and the run that made it."""

    run_id: str
    version: str  # "version 3" (Delta), "snapshot 7261..." (Iceberg)
    manifest: str | None = None  # path of the run's manifest, relative to the side folder


# -- types --------------------------------------------------------------------------------------


def plain_type(t: pa.DataType) -> pa.DataType:
    """The type a table column of ``t`` holds: dictionaries decoded, large variants plain."""
    if pa.types.is_dictionary(t):
        return plain_type(t.value_type)
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def widens(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether values of ``have`` fit ``want`` without loss (the output into a table column)."""
    have, want = plain_type(have), plain_type(want)
    if have == want:
        return True
    if pa.types.is_integer(have) and pa.types.is_integer(want):
        if pa.types.is_signed_integer(want):
            bits = have.bit_width + (0 if pa.types.is_signed_integer(have) else 1)
            return bits <= want.bit_width
        return pa.types.is_unsigned_integer(have) and have.bit_width <= want.bit_width
    if pa.types.is_floating(have) and pa.types.is_floating(want):
        return have.bit_width <= want.bit_width
    if pa.types.is_timestamp(have) and pa.types.is_timestamp(want):
        return (have.tz is None) == (want.tz is None)  # unit: cast checked when written
    if pa.types.is_date(have) and pa.types.is_date(want):
        return True
    return False


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` in the table's types; a value that would change (a timestamp cut to microseconds,
    an integer out of range) raises rather than land altered."""
    columns = []
    for target in schema:
        column = batch.column(target.name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        columns.append(column if column.type == target.type else pc.cast(column, target.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


# -- writing a fragment's files -----------------------------------------------------------------


def partition_folder(values: dict[str, Any]) -> str:
    parts = []
    for name, value in values.items():
        text = HIVE_NULL if value is None else urllib.parse.quote(partition_text(value), safe="")
        parts.append(f"{name}={text}")
    return "/".join(parts)


def partition_text(value: Any) -> str:
    """A partition value as Delta writes it in ``partitionValues`` (and in folder names)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        return value.isoformat(sep=" ") if hasattr(value, "hour") else value.isoformat()
    return str(value)


def partition_values_of(relative: str) -> dict[str, str | None]:
    """``{column: value}`` from a staged file's ``col=value/...`` folders (None for nulls)."""
    values: dict[str, str | None] = {}
    for part in relative.split("/")[:-1]:
        name, _, text = part.partition("=")
        values[name] = None if text == HIVE_NULL else urllib.parse.unquote(text)
    return values


def write_partitioned(
    fs: Any,
    base: str,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    partition_by: list[str],
    prefix: str,
    config: OutputConfig,
    keep_partition_columns: bool,
    dictionary_columns: list[str] | bool = True,
    where: str = "",
    statistics: Callable[[pa.Schema, pq.FileMetaData], str | None] | None = None,
) -> list[OutputFile]:
    """Write a fragment's rows as Parquet files under ``base/<col>=<value>/prefix-<i>.parquet``.

    Delta keeps partition values only in its log (``keep_partition_columns=False``); Iceberg's
    files hold the partition columns too (``add_files`` reads the values from their statistics).
    A fragment is one row group of the input: it is gathered in memory and split by partition.
    ``statistics`` gives each file's statistics for the commit from the footer just written,
    here on the worker, rather than by reading every footer back at commit time.
    """
    table = pa.Table.from_batches(list(batches), schema=schema)
    if partition_by:
        for batch in table.to_batches():
            check_partition_values(batch, partition_by, where)
    groups: list[tuple[dict[str, Any], pa.Table]] = []
    if partition_by and table.num_rows:
        keys = table.select(partition_by).group_by(partition_by, use_threads=False).aggregate([])
        for row in keys.to_pylist():
            mask = None
            for name in partition_by:
                column = table.column(name)
                test = pc.is_null(column) if row[name] is None else pc.equal(column, row[name])
                test = pc.fill_null(test, False)
                mask = test if mask is None else pc.and_(mask, test)
            groups.append(({n: row[n] for n in partition_by}, table.filter(mask)))
    elif table.num_rows:
        groups.append(({}, table))
    file_columns = [n for n in schema.names if keep_partition_columns or n not in partition_by]
    written = []
    compression = None if config.compression == "none" else config.compression
    row_group_size = min(config.row_group_size, config.max_rows_per_file)
    for values, rows in groups:
        folder = partition_folder(values)
        rows = rows.select(file_columns)
        for i, start in enumerate(range(0, rows.num_rows, config.max_rows_per_file)):
            chunk = rows.slice(start, config.max_rows_per_file)
            relative = (
                posixpath.join(folder, f"{prefix}-{i}.parquet")
                if folder
                else f"{prefix}-{i}.parquet"
            )
            path = storage.join(base, relative)
            if storage.is_local(fs):
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with fs.open(path, "wb") as handle:
                with pq.ParquetWriter(
                    handle,
                    chunk.schema,
                    compression=compression,
                    use_dictionary=dictionary_columns,
                ) as writer:
                    writer.write_table(chunk, row_group_size=row_group_size)
                size = handle.tell()
            footer = writer.writer.metadata  # what the statistics come from: no second pass
            stats = statistics(chunk.schema, footer) if statistics is not None else None
            written.append(OutputFile(relative, chunk.num_rows, size, stats))
    return sorted(written, key=lambda f: f.path)


# -- the target ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableTarget(FolderTarget):
    """A table's output: data files staged in place, one commit; see the module docstring.

    ``root`` is the side folder (``<table>/_batch_infer``), ``data_root`` where data files go.
    Subclasses say how the table is read and committed (``table_*`` methods).
    """

    data_root: str = ""
    table_name: str = ""  # as shown in messages: the path or NAMESPACE.TABLE
    schema: pa.Schema | None = None  # the run's output schema, when open_target is given it
    partition_by: list[str] | None = None
    _checked: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- what a subclass provides -----------------------------------------------------------
    def table_exists(self) -> bool:
        raise NotImplementedError

    def table_layout(self) -> tuple[pa.Schema, list[str]] | None:
        """The existing table's schema (Arrow) and partition columns, or None."""
        raise NotImplementedError

    def table_committed(self, key: str) -> Committed | None:
        """The latest commit of the table that carries run key ``key``."""
        raise NotImplementedError

    def table_files(self) -> set[str]:
        """Data files the table's current version names, relative to ``data_root``."""
        raise NotImplementedError

    def table_runs(self) -> Iterator[tuple[str, Committed]]:
        """(run key, commit) of every batch-infer commit the table still knows, newest first."""
        raise NotImplementedError

    def table_commit(
        self,
        files: list[OutputFile],
        schema: pa.Schema,
        partition_by: list[str],
        mode: str,
        properties: dict[str, str],
    ) -> str:
        """Add ``files`` in one commit (replacing the partitions they hold for an overwrite);
        returns the commit's name ("version 4"). Raises ``CommitConflict`` when another writer
        got there first."""
        raise NotImplementedError

    def file_schema(self, schema: pa.Schema) -> pa.Schema:
        """The Arrow schema the table's files are written with (a format's type limits)."""
        return pa.schema([pa.field(f.name, plain_type(f.type), f.nullable) for f in schema])

    keep_partition_columns = False

    def sibling(self) -> TableTarget:
        """The sibling table ``<table>_rejects`` (same format, same catalog) for rejected rows."""
        raise NotImplementedError

    @property
    def sibling_url(self) -> str:
        raise NotImplementedError

    # -- checks -------------------------------------------------------------------------------
    @property
    def rejects_url(self) -> str:
        """Where this run's rejected rows go: the sibling table ``<table>_rejects``, or with
        ``--rejects PATH`` a folder per run key there."""
        if self.rejects_root is None:
            return self.sibling_url
        return storage.display(self.fs, storage.join(self.rejects_root, self.staging_key))

    def check(
        self,
        mode: str,
        own_prefixes: set[str],
        schema: pa.Schema | None = None,
        partition_by: list[str] | None = None,
    ) -> None:
        """Refuse a run key already committed (``--mode error``) and an output the table's
        schema or partitioning cannot take, before anything is scored."""
        if not storage.is_local(self.fs):
            bucket = self.root.split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise ConfigError(
                    f"the bucket {bucket!r} of {self.url} does not exist or is not visible",
                    "create the bucket, or check --output and the credentials",
                )
        schema = schema if schema is not None else self.schema
        partition_by = partition_by if partition_by is not None else self.partition_by
        if schema is not None:
            self.check_layout(schema, partition_by or [])
        if mode == "error":
            committed = self.table_committed(self.staging_key)
            if committed is not None:
                raise OutputConflictError(
                    f"{self.url} already holds this run (run key {self.staging_key}, run "
                    f"{committed.run_id}, {committed.version})",
                    "use --if-exists skip to accept it, --mode overwrite to replace its "
                    "partitions, or another --run-date",
                )

    def check_layout(self, schema: pa.Schema, partition_by: list[str]) -> pa.Schema:
        """The file schema to write, after checking an existing table can take ``schema``."""
        cache_key = json.dumps([schema.to_string(show_schema_metadata=False), partition_by])
        if cache_key in self._checked:
            return self._checked[cache_key]
        wanted = self.file_schema(schema)
        layout = self.table_layout()
        if layout is None:
            self._checked[cache_key] = wanted
            return wanted
        table_schema, table_partitions = layout
        for out_field in schema:
            if out_field.name not in table_schema.names:
                raise OutputConflictError(
                    f"{self.url} has no column {out_field.name!r} ({out_field.type}) that the "
                    f"output has",
                    "add the column to the table, or write to another table",
                )
            have = table_schema.field(out_field.name).type
            if not widens(wanted.field(out_field.name).type, have):
                raise OutputConflictError(
                    f"column {out_field.name!r} is {out_field.type} in the output but {have} in "
                    f"{self.url}",
                    "cast it upstream, or write to another table",
                )
        missing = [f.name for f in table_schema if f.name not in schema.names and not f.nullable]
        if missing:
            raise OutputConflictError(
                f"{self.url} requires column {missing[0]!r} ({table_schema.field(missing[0]).type}), "
                "which the output does not have",
                "write to another table",
            )
        if list(table_partitions) != list(partition_by):
            raise OutputConflictError(
                f"{self.url} is partitioned by {list(table_partitions) or 'nothing'}, the run by "
                f"{partition_by or 'nothing'}",
                f"pass --partition-by {','.join(table_partitions)}"
                if table_partitions
                else "drop --partition-by",
            )
        result = pa.schema([table_schema.field(n) for n in schema.names])
        self._checked[cache_key] = result
        return result

    # -- staging ------------------------------------------------------------------------------
    def data_prefix(self, key: str | None = None) -> str:
        return f"part-{key or self.staging_key}-"

    def stage_fragment(
        self,
        fragment_name: str,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        config: OutputConfig,
        dictionary_columns: list[str] | bool = True,
    ) -> list[OutputFile]:
        """Write one fragment's rows into the table's data folder, where no reader of the
        table sees them until the commit names them. A fresh nonce per attempt: a rerun never
        rewrites a file a commit may name."""
        file_schema = self.check_layout(schema, config.partition_by)
        self._remember_schema(schema)
        nonce = uuid.uuid4().hex[:8]
        # noted before any file is written: only files of noted attempts are ever cleaned up,
        # never those of a run committed earlier (older table versions may still read them)
        storage.write_bytes_atomically(
            self.fs, storage.join(self.staging, ATTEMPTS, nonce), fragment_name.encode()
        )
        prefix = f"{self.data_prefix()}{nonce}-{fragment_name}"
        return write_partitioned(
            self.fs,
            self.data_root,
            (cast_batch(b, file_schema) for b in batches),
            file_schema,
            config.partition_by,
            prefix,
            config,
            self.keep_partition_columns,
            dictionary_columns=dictionary_columns,
            where=fragment_name,
            statistics=self.file_statistics,
        )

    def file_statistics(self, schema: pa.Schema, metadata: pq.FileMetaData) -> str | None:
        """The statistics a commit records for a data file, from its footer (None: the format
        derives its own, as Iceberg's ``add_files`` does from the footer)."""
        return None

    def record_fragment(
        self,
        fragment_name: str,
        files: list[OutputFile],
        statistics: dict[str, Any] | None = None,
    ) -> None:
        """As a folder's, keeping each data file's statistics for the commit."""
        record = {
            "files": [
                {"path": f.path, "rows": f.rows, "bytes": f.bytes, "stats": f.stats} for f in files
            ],
            "statistics": statistics,
        }
        storage.write_bytes_atomically(
            self.fs,
            storage.join(self.staging, DONE, f"{fragment_name}.json"),
            json.dumps(record).encode(),
        )

    def recorded_fragments(self) -> dict[str, FragmentRecord]:
        """As a folder's, with each data file's statistics (None in records written without)."""
        done: dict[str, FragmentRecord] = {}
        for path in self.fs.glob(storage.join(self.staging, DONE, "*.json")):
            try:
                record = json.loads(self.fs.cat_file(path))
            except (OSError, ValueError):
                continue  # half-written record: redo that fragment
            name = posixpath.basename(path).removesuffix(".json")
            files = [
                OutputFile(f["path"], f["rows"], f.get("bytes", 0), f.get("stats"))
                for f in record["files"]
            ]
            done[name] = FragmentRecord(files, record.get("statistics"))
        return done

    def stage_empty(self, schema: pa.Schema, partition_by: list[str]) -> OutputFile:
        """No rows: the commit adds no file (the table keeps its schema), only the run key."""
        self.check_layout(schema, partition_by)
        self._remember_schema(schema)
        return OutputFile(EMPTY, 0, 0)

    def _remember_schema(self, schema: pa.Schema) -> None:
        """Keep the output schema with the run's records: a resumed run that scores nothing
        more still commits with it."""
        if "schema-written" in self._checked:
            return
        path = storage.join(self.staging, SCHEMA)
        if not self.fs.exists(path):
            storage.write_bytes_atomically(self.fs, path, schema.serialize().to_pybytes())
        self._checked["schema-written"] = True

    def _orphans(self, key: str, keep: set[str]) -> list[str]:
        """Data files the unfinished attempts of run key ``key`` wrote that neither ``keep``
        nor the table's current version names."""
        fs, prefix = self.fs, self.data_prefix(key)
        attempts_folder = storage.join(self.root, STAGING, key, ATTEMPTS)
        if not fs.isdir(self.data_root) or not fs.isdir(attempts_folder):
            return []
        attempts = {posixpath.basename(p.rstrip("/")) for p in fs.ls(attempts_folder, detail=False)}
        found = []
        for path in fs.find(self.data_root):
            relative = posixpath.relpath(path, self.data_root)
            name = posixpath.basename(relative)
            if (
                name.startswith(prefix)
                and name[len(prefix) :].split("-", 1)[0] in attempts
                and not any(part.startswith(("_", ".")) for part in relative.split("/")[:-1])
            ):
                found.append(relative)
        if not found:
            return []
        candidates = [p for p in found if p not in keep]
        if not candidates:
            return []
        named = self.table_files() if self.table_exists() else set()
        return [storage.join(self.data_root, p) for p in candidates if p not in named]

    def discard_unrecorded(self, done: set[str]) -> None:
        """Drop data files of fragments whose record was never written (a killed attempt)."""
        keep = {f.path for r in self.recorded_fragments().values() for f in r.files}
        stale = self._orphans(self.staging_key, keep)
        if stale:
            log.info("removing %d data file(s) of unfinished fragments", len(stale))
            self._delete(stale)
        super().discard_unrecorded(done)

    def discard_staging(self, key: str | None = None) -> None:
        """Drop a run's records and the data files no commit names (this run's by default).

        A run key the table holds keeps its data files: an older version may name one that a
        later overwrite removed (time travel)."""
        key = key or self.staging_key
        try:
            if self.table_committed(key) is None:
                stale = self._orphans(key, set())
                if stale:
                    self._delete(stale)
        except OSError as exc:  # cleanup must never hide the real outcome
            log.warning("could not remove staged data files: %s", first_line(exc))
        self._drop_records(key)

    def _drop_records(self, key: str) -> None:
        """Remove a run key's staging folder, never the ``_staging`` parent: another run key
        may be creating its own folder in it right now."""
        folder = storage.join(self.root, STAGING, key)
        try:
            storage.abort_multipart_uploads(self.fs, folder)
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
        except OSError as exc:  # cleanup must never hide the real outcome
            log.warning("could not remove staging folder %s: %s", folder, first_line(exc))

    def clean_abandoned(self) -> list[str]:
        """After a successful commit: remove what runs of other run keys left that never
        committed and did nothing for ``ABANDONED_AFTER`` (a day): their staging folder and the
        data files of their noted attempts that the table does not name. Each is removed holding
        that run key's lock, so a run that is alive (or resumed meanwhile) is never touched; a
        run key the table holds (killed after its commit) is left to its own rerun. Returns the
        run keys cleaned."""
        fs, parent = self.fs, storage.join(self.root, STAGING)
        try:
            if not fs.isdir(parent):
                return []
            keys = sorted(
                k
                for k in (posixpath.basename(p.rstrip("/")) for p in fs.ls(parent, detail=False))
                if k != self.staging_key and not k.startswith((".", "_"))
            )
            idle = [k for k in keys if self._idle_for(k) > ABANDONED_AFTER]
        except OSError as exc:
            log.warning("could not look for abandoned runs: %s", first_line(exc))
            return []
        cleaned = []
        for key in idle:
            other = dataclasses.replace(self, staging_key=key)
            try:
                if self.table_committed(key) is not None:
                    continue  # killed after its commit: its rerun says so and finishes it
                held = lock.acquire(other, f"cleanup-by-{self.staging_key}")
            except (LockedError, OSError) as exc:
                log.info("leaving run key %s alone: %s", key, first_line(exc))
                continue
            try:
                if other._idle_for(key) <= ABANDONED_AFTER:
                    continue  # resumed between our look and the lock
                other.discard_staging()
                cleaned.append(key)
            finally:
                held.release()
        if cleaned:
            log.info(
                "removed the staged files of %d run(s) that never committed: %s",
                len(cleaned),
                ", ".join(cleaned),
            )
        return cleaned

    def _idle_for(self, key: str) -> float:
        """Seconds since anything in run key ``key``'s staging folder last changed."""
        found = self.fs.find(storage.join(self.root, STAGING, key), detail=True)
        newest = max((_modified(info) for info in found.values()), default=0.0)
        return time.time() - newest

    # -- one lock per run key ------------------------------------------------------------------
    @property
    def lock_path(self) -> str:
        """Each run key has its own lock: runs of other run keys (other dates) stage and commit
        side by side, ordered by the table's optimistic concurrency and our bounded retry; the
        same run key twice still waits (exit 75)."""
        return storage.join(self.root, LOCKS, f"{self.staging_key}.lock")

    @property
    def lock_scope(self) -> str:
        return f"{self.url} (run key {self.staging_key})"

    def other_stagings(self) -> list[str]:
        """None: another run key's staging is another run into the table (another date, input
        or model), maybe running right now, never this run's predecessor to discard. Abandoned
        ones are removed by age after a successful commit (``clean_abandoned``)."""
        return []

    def abort_unfinished_uploads(self) -> None:
        """Uploads left open in this run key's own staging only: other run keys' are theirs."""
        storage.abort_multipart_uploads(self.fs, self.staging)

    # -- committing ---------------------------------------------------------------------------
    def is_committed(self) -> bool:
        """Whether the table holds this run key."""
        return self.table_committed(self.staging_key) is not None

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest of the commit holding this run key, or None."""
        committed = self.table_committed(self.staging_key)
        if committed is None:
            return None
        try:
            if committed.manifest:
                manifest = json.loads(self.fs.cat_file(storage.join(self.root, committed.manifest)))
                return {**manifest, "table_commit": committed.version}
        except (OSError, ValueError):
            pass
        return {"run_id": committed.run_id, "table_commit": committed.version}

    def previous_manifest(self) -> dict[str, Any] | None:
        """The manifest of the latest commit of another run into the table (the drift baseline:
        yesterday's run of a daily table), or None."""
        for key, committed in self.table_runs():
            if key == self.staging_key or not committed.manifest:
                continue
            try:
                return json.loads(self.fs.cat_file(storage.join(self.root, committed.manifest)))
            except (OSError, ValueError):
                return None
        return None

    def commit(
        self,
        files: list[OutputFile],
        manifest: dict[str, Any],
        mode: str,
        own_prefixes: set[str],
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the commit plan to staging, then carry it out (``finish_commit``)."""
        data = [f for f in files if not is_reject_file(f.path) and f.path != EMPTY]
        rejects = [f for f in files if is_reject_file(f.path)]
        manifest = {
            **manifest,
            "output_kind": self.kind,
            "table": self.table_name,
            "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in data],
            "rejects": [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in rejects],
            "rejects_location": self.rejects_url,
            "rows_committed": sum(f.rows for f in data),
        }
        schema = self.check_layout(self._schema_of(manifest), manifest.get("partition_by") or [])
        intent = {
            "mode": mode,
            "manifest": manifest,
            "schema": schema.serialize().to_pybytes().hex(),
            "partition_by": manifest.get("partition_by") or [],
            "stats": {f.path: f.stats for f in data if f.stats},
        }
        storage.write_bytes_atomically(
            self.fs, storage.join(self.staging, COMMIT_INTENT), json.dumps(intent).encode()
        )
        return self.finish_commit()

    kind = "table"

    def _schema_of(self, manifest: dict[str, Any]) -> pa.Schema:
        if self.schema is not None:
            return self.schema
        data = self.fs.cat_file(storage.join(self.staging, SCHEMA))
        return pa.ipc.read_schema(pa.py_buffer(data))

    def finish_commit(self) -> dict[str, Any]:
        """Carry out the commit plan: rejects into place, the manifest, then ONE table commit.

        Safe to repeat: a plan whose run id the table already holds is not committed again.
        """
        intent = self.pending_commit()
        if intent is None:
            raise RuntimeError(f"no commit plan in {self.staging}")
        manifest = intent["manifest"]
        run_id = manifest["run_id"]
        committed = self.table_committed(self.staging_key)
        if committed is not None and committed.run_id == run_id:
            log.info("run %s is already committed to %s (%s)", run_id, self.url, committed.version)
            self.finish_cleanup(intent)
            return {**manifest, "table_commit": committed.version}
        schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(intent["schema"])))
        if self.rejects_root is not None:  # a folder: in place before the commit names them
            self._place_rejects([e["path"] for e in manifest["rejects"]])
        manifest_path = posixpath.join(MANIFESTS, f"{run_id}.json")
        storage.write_bytes_atomically(
            self.fs, storage.join(self.root, manifest_path), json.dumps(manifest, indent=2).encode()
        )
        stats = intent.get("stats") or {}
        files = [
            OutputFile(e["path"], e["rows"], e["bytes"], stats.get(e["path"]))
            for e in manifest["files"]
        ]
        properties = {
            RUN_KEY: self.staging_key,
            RUN_ID: run_id,
            MANIFEST_KEY: manifest_path,
            MODE_KEY: intent["mode"],
        }
        failpoints.reached("before-success")  # staged and planned; the table is unchanged
        version = self._commit_with_retries(
            files, schema, intent["partition_by"], intent["mode"], properties
        )
        log.info("committed run %s to %s as %s", run_id, self.url, version)
        failpoints.reached("after-success")  # committed; the run's records not yet cleaned
        self.finish_cleanup(intent)
        return {**manifest, "table_commit": version}

    def _commit_with_retries(
        self,
        files: list[OutputFile],
        schema: pa.Schema,
        partition_by: list[str],
        mode: str,
        properties: dict[str, str],
    ) -> str:
        error: Exception | None = None
        for attempt in range(COMMIT_ATTEMPTS):
            if attempt:
                committed = self.table_committed(self.staging_key)
                if committed is not None and committed.run_id == properties[RUN_ID]:
                    return committed.version  # our commit landed; its answer was lost
                time.sleep(min(0.2 * 2**attempt, 2.0))
                log.warning(
                    "%s changed while committing (%s); trying again (%d of %d)",
                    self.url,
                    first_line(error) if error else "",
                    attempt + 1,
                    COMMIT_ATTEMPTS,
                )
            try:
                return self.table_commit(files, schema, partition_by, mode, properties)
            except CommitConflict as exc:
                error = exc
        raise LockedError(
            f"{self.url} kept changing under the commit ({COMMIT_ATTEMPTS} attempts): "
            f"{first_line(error) if error else 'conflict'}",
            "retry the run: the staged files are kept and committed by the rerun",
        )

    def _place_rejects(self, paths: list[str], base: str | None = None) -> None:
        """Move staged rejects to ``<rejects>/<run key>/...`` (skipping those already moved)."""
        staged = set(self._staged_files())
        moves = [
            (self.staged_path(p), self.final_path(p, base))
            for p in paths
            if self.staged_path(p) in staged
        ]
        self._move(moves)

    def final_path(self, relative: str, base: str | None = None) -> str:
        if is_reject_file(relative):
            tail = relative[len(REJECTS) + 1 :]
            base = base or self.rejects_root or storage.join(self.root, REJECTS)
            return storage.join(base, self.staging_key, tail)  # = rejects_url
        return storage.join(self.data_root, relative)

    def committed_but_not_cleaned(self) -> dict[str, Any] | None:
        """The plan of this run, killed after its table commit: committed, records pending."""
        intent = self.pending_commit()
        if intent is None:
            return None
        committed = self.table_committed(self.staging_key)
        if committed is None or committed.run_id != intent["manifest"].get("run_id"):
            return None
        log.info(
            "run %s is already committed to %s (%s): not committing again",
            committed.run_id,
            self.url,
            committed.version,
        )
        return intent

    def finish_cleanup(self, intent: dict[str, Any]) -> None:
        """After the table commit: commit the rejected rows to the sibling table, drop the run's
        records (its data files are the table's now), then what abandoned runs of other run keys
        left (``clean_abandoned``). Repeated by a rerun after a kill, as a whole."""
        self.commit_rejects(intent)
        self._drop_records(self.staging_key)
        try:
            self.clean_abandoned()
        except Exception as exc:  # noqa: BLE001  the run is committed: cleanup never undoes that
            log.warning("could not clean up after abandoned runs: %s", first_line(exc))

    def commit_rejects(self, intent: dict[str, Any]) -> str | None:
        """Commit the run's staged rejected rows to ``<table>_rejects`` in one commit carrying
        the same run key, after the main commit, so a rejected row is visible only for a
        committed run, and once: a commit of this run key there is not made again. A sibling
        whose schema does not take the rejects (the input changed) leaves them in the side
        folder, ``_rejects/<run key>/``, saying so: the run's own rows are committed already."""
        entries = intent["manifest"].get("rejects") or []
        if self.rejects_root is not None or not entries:
            return None
        sibling = self.sibling()
        committed = sibling.table_committed(self.staging_key)
        if committed is not None:
            return committed.version
        files: list[OutputFile] = []
        schema = pa.schema([])
        try:
            for entry in entries:
                with self.fs.open(self.staged_path(entry["path"]), "rb") as handle:
                    rows = pq.read_table(handle)
                schema = schema if len(schema) else sibling.check_layout(rows.schema, [])
                name = posixpath.basename(entry["path"]).removesuffix(".parquet")
                files += write_partitioned(
                    self.fs,
                    sibling.data_root,
                    (cast_batch(b, schema) for b in rows.to_batches()),
                    schema,
                    [],
                    f"{sibling.data_prefix()}{name}",  # the same names when repeated
                    OutputConfig.model_construct(),  # the defaults: compression, sizes
                    sibling.keep_partition_columns,
                    statistics=sibling.file_statistics,
                )
        except OutputConflictError as exc:
            folder = storage.join(self.root, REJECTS)
            self._place_rejects([e["path"] for e in entries], folder)
            log.error(
                "the rejected rows of run %s are kept in %s, not committed to %s: %s",
                intent["manifest"]["run_id"],
                storage.display(self.fs, storage.join(folder, self.staging_key)),
                sibling.url,
                exc,
            )
            return None
        properties = {
            RUN_KEY: self.staging_key,
            RUN_ID: intent["manifest"]["run_id"],
            MODE_KEY: "append",
        }
        version = sibling._commit_with_retries(files, schema, [], "append", properties)
        log.info(
            "committed %d rejected row(s) of run %s to %s as %s",
            sum(f.rows for f in files),
            intent["manifest"]["run_id"],
            sibling.url,
            version,
        )
        return version


def _modified(info: dict[str, Any]) -> float:
    """A listing entry's modification time in seconds (local ``mtime``, S3 ``LastModified``)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if value is None:
        return time.time()  # unknown: taken as now, so never old enough to remove
    if hasattr(value, "timestamp"):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return float(value)


class CommitConflict(Exception):
    """Another writer committed to the table first; try again against its new version."""
