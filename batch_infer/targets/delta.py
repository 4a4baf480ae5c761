"""``--output delta:PATH_OR_URL``: a Delta Lake table, committed once per run with delta-rs.

Data files are written into the table's folder (Delta readers see only files its log names),
then one commit adds them all, carrying the run key twice: as an app transaction
(``txn``: ``batch-infer:<run key>``, which the table's snapshot keeps, so "is this run key
committed?" is one lookup) and in the commit info (``batch-infer.run-key``, ``batch-infer.run-id``,
``batch-infer.manifest``), where the history says which version holds it. An overwrite replaces
the partitions the run writes in the same commit (delta-rs derives the removes from the
partition filter). Each add action carries the file's statistics as delta-rs writes them
(``delta_stats``). On S3, delta-rs 1.x commits with conditional PUTs (``If-None-Match``), safe for
concurrent writers without a locking provider, so nothing unsafe is switched on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec.utils
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..errors import ConfigError, OutputConflictError, first_line
from .base import OutputFile
from .folder import rejects_location
from .table_staging import (
    MANIFEST_KEY,
    RUN_ID,
    RUN_KEY,
    SIDE,
    CommitConflict,
    Committed,
    TableTarget,
    partition_text,
    partition_values_of,
    plain_type,
)

log = logging.getLogger(__name__)

APP_PREFIX = "batch-infer:"
DELTA_COMMIT_RETRIES = 15  # delta-rs's own default


def _deltalake() -> Any:
    try:
        import deltalake  # the [delta] extra: imported only for delta: outputs
    except ImportError:
        raise ConfigError(
            "--output delta:... needs the deltalake package, which is not installed",
            "pip install 'batch-infer[delta]'",
        ) from None
    return deltalake


def delta_storage_options(url: str, storage_options: dict[str, Any]) -> dict[str, str]:
    """fsspec/s3fs storage options (and the AWS environment) as delta-rs's object_store keys.

    Keys already in object_store's words (``AWS_...``, ``aws_...``, ``allow_http``) pass through;
    ``endpoint_url``, ``key``, ``secret``, ``token``, ``client_kwargs`` and ``anon`` are
    translated; an ``http://`` endpoint (a local S3 such as moto or MinIO) needs
    ``AWS_ALLOW_HTTP``. Credentials and region not given here come from the environment, which
    delta-rs reads itself.
    """
    if fsspec.utils.get_protocol(url) not in storage.S3_PROTOCOLS:
        return {k: str(v) for k, v in storage_options.items() if isinstance(v, (str, int, bool))}
    options: dict[str, str] = {}
    client = dict(storage_options.get("client_kwargs") or {})
    names = {
        "key": "AWS_ACCESS_KEY_ID",
        "secret": "AWS_SECRET_ACCESS_KEY",
        "token": "AWS_SESSION_TOKEN",
        "endpoint_url": "AWS_ENDPOINT_URL",
        "region_name": "AWS_REGION",
    }
    for source in (client, storage_options):
        for key, value in source.items():
            if key in names and value:
                options[names[key]] = str(value)
            elif key.upper().startswith("AWS_") or key in ("allow_http", "timeout"):
                options[key] = str(value)
    if storage_options.get("anon"):
        options["AWS_SKIP_SIGNATURE"] = "true"
    endpoint = (
        options.get("AWS_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or (os.environ.get("AWS_ENDPOINT_URL"))
    )
    if endpoint:
        options.setdefault("AWS_ENDPOINT_URL", endpoint)
        if endpoint.startswith("http://"):
            options.setdefault("AWS_ALLOW_HTTP", "true")
    return options


# -- file statistics, as delta-rs writes them ----------------------------------------------------

STATS_TRUNCATE = 64  # bytes: parquet-rs truncates string statistics to this (delta-rs's writer)
INDEXED_COLUMNS = 32  # delta.dataSkippingNumIndexedCols's default: the first 32 data columns


def delta_stats(
    metadata: pq.FileMetaData, schema: pa.Schema, indexed: int | list[str] = INDEXED_COLUMNS
) -> dict[str, Any]:
    """A data file's ``stats`` (numRecords, minValues, maxValues, nullCount), value for value as
    delta-rs's own writer records them, so Spark, Trino and delta-rs skip files by them.

    Read from the footer the Parquet writer just made (its row groups' statistics, which it
    computes anyway: no pass over the rows). ``schema`` is the file's (partition columns are in
    the log, not here); ``indexed`` how many leading columns get statistics (-1: all) or their
    names. As delta-rs: NaN is ignored (all NaN: no min/max), a zero minimum is -0.0 and a zero
    maximum +0.0, strings longer than 64 bytes are cut (the maximum then rounded up), timestamps
    are given to the millisecond (cut, not rounded), decimals as numbers; binary, list and map
    columns get none.
    """
    leaves: dict[str, list[Any]] = {}
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            leaves.setdefault(chunk.path_in_schema, []).append(chunk)
    fields = list(schema)
    if isinstance(indexed, int):
        fields = fields if indexed < 0 else fields[:indexed]
    else:
        fields = [f for f in fields if f.name in indexed]
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    nulls: dict[str, Any] = {}
    for f in fields:
        _field_stats(f, f.name, leaves, minimum, maximum, nulls)
    return {
        "numRecords": metadata.num_rows,
        "minValues": minimum,
        "maxValues": maximum,
        "nullCount": nulls,
    }


def _field_stats(
    field: pa.Field,
    path: str,
    leaves: dict[str, list[Any]],
    minimum: dict[str, Any],
    maximum: dict[str, Any],
    nulls: dict[str, Any],
) -> None:
    t = field.type
    if pa.types.is_struct(t):
        inner: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
        for child in t:
            _field_stats(child, f"{path}.{child.name}", leaves, *inner)
        for into, values in zip((minimum, maximum, nulls), inner, strict=True):
            if values:
                into[field.name] = values
        return
    chunks = leaves.get(path)
    if not chunks or not (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_date(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_decimal(t)
    ):
        return
    statistics = [c.statistics for c in chunks]
    if any(s is None or not s.has_null_count for s in statistics):
        return
    nulls[field.name] = sum(s.null_count for s in statistics)
    low = high = None
    for chunk, stats in zip(chunks, statistics, strict=True):
        if not stats.has_min_max:
            if stats.null_count < chunk.num_values and not pa.types.is_floating(t):
                return  # values without bounds: none can be given (floats: all NaN)
            continue
        a, b = _comparable(stats, t)
        low = a if low is None or a < low else low
        high = b if high is None or b > high else high
    if low is None or high is None:
        return
    try:
        values = _stat_value(low, t, "min"), _stat_value(high, t, "max")
    except (OverflowError, ValueError):  # a date or time Python cannot hold: no bounds at all
        return
    if values[0] is not None and values[1] is not None:
        minimum[field.name], maximum[field.name] = values


def _comparable(stats: Any, t: pa.DataType) -> tuple[Any, Any]:
    """A row group's bounds as values that order as the column does."""
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return stats.min_raw, stats.max_raw  # integers: no datetime range limits
    return stats.min, stats.max


def _stat_value(value: Any, t: pa.DataType, which: str) -> Any:
    if pa.types.is_timestamp(t):
        micros = value * {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[t.unit]
        seconds, fraction = divmod(int(micros), 1_000_000)
        moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S" if t.tz else "%Y-%m-%d %H:%M:%S")
        if moment.year < 1000:
            text = f"{moment.year:04d}{text[len(str(moment.year)) :]}"
        if fraction:
            text += f".{fraction // 1000:03d}"
        return text + ("Z" if t.tz else "")
    if pa.types.is_date(t):
        days = value if pa.types.is_date32(t) else value // 86_400_000
        return (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()
    if pa.types.is_floating(t):
        if value != value:  # NaN
            return None
        if value == 0:
            value = -0.0 if which == "min" else 0.0
        return float(value)
    if pa.types.is_decimal(t):
        return float(value)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        return _truncated(value, which)
    return value


def _truncated(text: str, which: str) -> str:
    """parquet-rs's statistics truncation: a minimum cut to 64 bytes (at a character boundary),
    a maximum cut to 61-64 bytes and its last character that can be incremented incremented
    (else the whole value)."""
    data = text.encode()
    if len(data) <= STATS_TRUNCATE:
        return text
    if which == "min":
        return data[:STATS_TRUNCATE].decode(errors="ignore")
    cut = data[:STATS_TRUNCATE].decode(errors="ignore")
    for index in range(len(cut) - 1, -1, -1):
        code = ord(cut[index]) + 1
        if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
            continue
        if len(chr(code).encode()) == len(cut[index].encode()):
            return cut[:index] + chr(code)
    return text


def open_delta(
    url: str,
    storage_options: dict[str, Any],
    staging_key: str,
    rejects: str | None = None,
    *,
    schema: pa.Schema | None = None,
    partition_by: list[str] | None = None,
) -> DeltaTarget:
    """The Delta table ``delta:PATH_OR_URL`` names (created by the first commit if missing)."""
    _deltalake()
    location = url[len("delta:") :]
    if not location:
        raise ConfigError(
            f"--output {url} names no table", "write --output delta:PATH or delta:s3://bucket/path"
        )
    fs, root = storage.resolve(location, storage_options)
    root = root.rstrip("/")
    if storage.is_local(fs):
        table_uri = os.path.abspath(root)
        root = table_uri
    else:
        table_uri = fs.unstrip_protocol(root)
    rejects_root = rejects_location(
        rejects, storage_options, fs, url, "<table>/_batch_infer/_rejects"
    )
    return DeltaTarget(
        fs=fs,
        root=storage.join(root, SIDE),
        url=url,
        staging_key=staging_key,
        rejects_root=rejects_root,
        data_root=root,
        table_name=table_uri,
        schema=schema,
        partition_by=partition_by,
        table_uri=table_uri,
        delta_options=delta_storage_options(location, storage_options),
    )


@dataclass(frozen=True)
class DeltaTarget(TableTarget):
    """A Delta table: see the module docstring."""

    table_uri: str = ""
    delta_options: dict[str, str] | None = None

    kind = "delta"

    def _table(self) -> Any | None:
        deltalake = _deltalake()
        options = self.delta_options or None
        try:
            if not deltalake.DeltaTable.is_deltatable(self.table_uri, storage_options=options):
                return None
            return deltalake.DeltaTable(self.table_uri, storage_options=options)
        except deltalake.exceptions.TableNotFoundError:
            return None

    def table_exists(self) -> bool:
        return self._table() is not None

    @property
    def sibling_url(self) -> str:
        return f"{self.url.rstrip('/')}_rejects"

    def sibling(self) -> DeltaTarget:
        """``<table>_rejects``: the Delta table next to this one, with the same options."""
        root = f"{self.data_root}_rejects"
        table_uri = f"{self.table_uri.rstrip('/')}_rejects"
        return dataclasses.replace(
            self,
            root=storage.join(root, SIDE),
            url=self.sibling_url,
            data_root=root,
            table_name=table_uri,
            table_uri=table_uri,
            schema=None,
            partition_by=[],
            _checked={},
        )

    def file_schema(self, schema: pa.Schema) -> pa.Schema:
        """Delta has no unsigned integers and keeps timestamps in microseconds."""
        fields = []
        for f in schema:
            t = plain_type(f.type)
            if pa.types.is_unsigned_integer(t):
                if t.bit_width == 64:
                    raise OutputConflictError(
                        f"column {f.name!r} is uint64, which a Delta table cannot hold",
                        "cast it to int64 (or decimal) upstream",
                    )
                t = (
                    pa.int64()
                    if t.bit_width == 32
                    else pa.int32()
                    if t.bit_width == 16
                    else pa.int16()
                )
            elif pa.types.is_timestamp(t) and t.unit != "us":
                t = pa.timestamp("us", t.tz and "UTC")
            elif pa.types.is_timestamp(t) and t.tz not in (None, "UTC"):
                t = pa.timestamp("us", "UTC")
            fields.append(pa.field(f.name, t, True))
        return pa.schema(fields)

    def table_layout(self) -> tuple[pa.Schema, list[str]] | None:
        table = self._table()
        if table is None:
            return None
        arrow = pa.schema(table.schema().to_arrow())
        return arrow, list(table.metadata().partition_columns)

    def file_statistics(self, schema: pa.Schema, metadata: pq.FileMetaData) -> str | None:
        """Delta's per-file ``stats`` (see ``delta_stats``), for the columns the table's
        ``delta.dataSkippingStatsColumns`` / ``delta.dataSkippingNumIndexedCols`` name."""
        return json.dumps(delta_stats(metadata, schema, self._indexed_columns()))

    def _indexed_columns(self) -> int | list[str]:
        """Which columns get statistics: the table's setting, read once per process."""
        if "indexed" not in self._checked:
            table = self._table()
            configuration = dict(table.metadata().configuration) if table is not None else {}
            named = configuration.get("delta.dataSkippingStatsColumns")
            count = configuration.get("delta.dataSkippingNumIndexedCols")
            indexed: int | list[str] = INDEXED_COLUMNS
            if named:
                indexed = [n.strip().strip("`") for n in named.split(",") if n.strip()]
            elif count is not None:
                try:
                    indexed = int(count)
                except ValueError:
                    pass
            self._checked["indexed"] = indexed
        return self._checked["indexed"]

    def table_committed(self, key: str) -> Committed | None:
        table = self._table()
        if table is None or table.transaction_version(APP_PREFIX + key) is None:
            return None  # the snapshot's app transactions: one lookup, no history read
        for run_key, committed in self.table_runs(table):
            if run_key == key:
                return committed
        return Committed(run_id="", version="an expired version")

    def table_runs(self, table: Any | None = None) -> Iterator[tuple[str, Committed]]:
        table = table or self._table()
        if table is None:
            return
        for entry in table.history():  # newest first
            if entry.get(RUN_KEY):
                yield (
                    str(entry[RUN_KEY]),
                    Committed(
                        run_id=str(entry.get(RUN_ID)),
                        version=f"version {entry.get('version')}",
                        manifest=entry.get(MANIFEST_KEY),
                    ),
                )

    def table_files(self) -> set[str]:
        table = self._table()
        if table is None:
            return set()
        actions = pa.table(table.get_add_actions(flatten=False))  # an arro3 table: to pyarrow
        return {str(p) for p in actions.column("path").to_pylist()}

    def table_commit(
        self,
        files: list[OutputFile],
        schema: pa.Schema,
        partition_by: list[str],
        mode: str,
        properties: dict[str, str],
    ) -> str:
        deltalake = _deltalake()
        from deltalake.transaction import (  # the [delta] extra, as above
            AddAction,
            CommitProperties,
            Transaction,
            create_table_with_add_actions,
        )

        now = int(time.time() * 1000)
        actions = [
            AddAction(
                path=f.path,
                size=f.bytes,
                partition_values=partition_values_of(f.path),
                modification_time=now,
                data_change=True,
                stats=f.stats or json.dumps({"numRecords": f.rows}),
            )
            for f in files
        ]
        commit = CommitProperties(
            custom_metadata=dict(properties),
            app_transactions=[Transaction(app_id=APP_PREFIX + properties[RUN_KEY], version=now)],
            # delta-rs rebases the commit on newer versions (checking the conflicts, our app
            # transaction included); what it still refuses, we retry from a fresh snapshot
            max_commit_retries=DELTA_COMMIT_RETRIES,
        )
        delta_schema = deltalake.Schema.from_arrow(schema)
        table = self._table()
        overwrite = mode in ("overwrite", "overwrite-partitions")
        try:
            if table is None:
                create_table_with_add_actions(
                    self.table_uri,
                    delta_schema,
                    actions,
                    mode="error",
                    partition_by=partition_by,
                    storage_options=self.delta_options or None,
                    commit_properties=commit,
                )
            else:
                if overwrite:
                    actions += _removes(table, files, partition_by, now)
                table.create_write_transaction(
                    actions,
                    "append",  # an overwrite is the adds plus removes of what they replace
                    delta_schema,
                    partition_by=partition_by or None,
                    commit_properties=commit,
                )
        except deltalake.exceptions.CommitFailedError as exc:
            raise CommitConflict(first_line(exc)) from exc
        except deltalake.exceptions.DeltaError as exc:
            if "already exists" in str(exc).lower() or "conflict" in str(exc).lower():
                raise CommitConflict(first_line(exc)) from exc
            raise
        table = self._table()
        return f"version {table.version() if table is not None else '?'}"


def _removes(table: Any, files: list[OutputFile], partition_by: list[str], now: int) -> list[Any]:
    """Remove actions for the table's files in the partitions the run writes (all of them
    without partition columns): an overwrite replaces those partitions and no others."""
    from deltalake.transaction import RemoveAction  # the [delta] extra

    written = {tuple(partition_values_of(f.path).get(n) for n in partition_by) for f in files}
    existing = pa.table(table.get_add_actions(flatten=False)).to_pylist()
    removes = []
    for entry in existing:
        values = {
            k: None if v is None else partition_text(v)
            for k, v in (entry.get("partition") or {}).items()
        }
        if partition_by and tuple(values.get(n) for n in partition_by) not in written:
            continue
        removes.append(
            RemoveAction(
                path=entry["path"],
                data_change=True,
                deletion_timestamp=now,
                size=entry.get("size_bytes"),
                partition_values=values,
            )
        )
    return removes
