"""``--input delta:PATH_OR_URL[@VERSION]``: the active data files of one version of a Delta table.

The version is pinned when the run is planned (the latest one unless ``@VERSION`` names one): the
plan lists that version's add actions, reads their footers like a folder's (``plan_folder``) and
records ``{"format": "delta", "version": V}`` as ``InputPlan.version``; each file's version is
``"<V>:<path>"``. Both go into the run key, so a rerun or resume of the same key reads the same
version, and a new commit to the table makes a new run key. Partition values come from the log's
typed values (not from the path) and are added as columns, as a folder's hive keys are.

delta-rs is used to read the log only; rows are read from the Parquet data files by
``read_fragment``. A table whose rows the data files alone do not give (deletion vectors in
use, column mapping) is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import fsspec
import pyarrow as pa

from .. import storage
from ..config import InputConfig
from ..errors import ConfigError, InputError, first_line, from_store
from .base import InputFile, InputPlan
from .folder import lossy_columns, lossy_error, read_footer, unify_schema
from .where import Statistics, Where, apply_where, parse_where, prune, prune_by_statistics

# Reader features whose tables the data files read as plain Parquet still give exactly:
# deletionVectors is checked per table (refused when any file has one).
_SAFE_READER_FEATURES = {
    "timestampNtz",
    "v2Checkpoint",
    "vacuumProtocolCheck",
    "deletionVectors",
    "typeWidening",
    "typeWidening-preview",
    "variantType",  # delta-rs sets it on new tables; a variant column itself is refused
    "variantType-preview",
}


@dataclasses.dataclass(frozen=True)
class DataFile:
    """One data file a table's snapshot names: where it is, what it is, its partition values."""

    path: str  # as the input's filesystem names it
    relative_path: str
    size: int
    version: str
    partition: dict[str, str | None]


def _deltalake() -> Any:
    try:
        import deltalake  # the [delta] extra: imported only for delta: inputs
    except ImportError:
        raise ConfigError(
            "--input delta:... needs the deltalake package, which is not installed",
            "pip install 'batch-infer[delta]'",
        ) from None
    return deltalake


def split_at(spec: str, kind: str, what: str) -> tuple[str, int | None]:
    """``NAME@123`` -> (NAME, 123); ``NAME`` -> (NAME, None). Only a trailing ``@digits`` counts,
    so ``s3://user@host/...`` stays a location."""
    match = re.fullmatch(r"(.*)@(-?\d+)", spec)
    if not match:
        return spec, None
    name, number = match.group(1), int(match.group(2))
    if number < 0:
        raise ConfigError(
            f"--input {kind}:{spec} names {what} {number}", f"write {kind}:NAME@{what.upper()}"
        )
    return name, number


def plan_delta(config: InputConfig) -> InputPlan:
    """Plan the data files of the Delta table ``config.path`` names (see the module docstring)."""
    deltalake = _deltalake()
    from deltalake.exceptions import TableNotFoundError  # the [delta] extra

    from ..targets.delta import delta_storage_options

    where = parse_where(config.where)  # a syntax error before the table is opened
    location, version = split_at(config.path[len("delta:") :], "delta", "version")
    if not location:
        raise ConfigError(
            f"--input {config.path} names no table",
            "write --input delta:PATH, delta:s3://bucket/path or delta:PATH@VERSION",
        )
    fs, root = storage.resolve(location, config.storage_options)
    root = root.rstrip("/")
    table_uri = os.path.abspath(root) if storage.is_local(fs) else fs.unstrip_protocol(root)
    if storage.is_local(fs):
        root = table_uri
    try:
        table = deltalake.DeltaTable(
            table_uri,
            version=version,
            storage_options=delta_storage_options(location, config.storage_options) or None,
        )
    except TableNotFoundError as exc:
        raise InputError(
            f"input delta:{location} is not a Delta table: {first_line(exc)}",
            "check --input (delta:PATH names the table's folder, the one holding _delta_log)",
        ) from None
    except Exception as exc:  # delta-rs raises DeltaError, OSError, ValueError and its own kinds
        if isinstance(exc, OSError) and (store_error := from_store(exc)) is not None:
            raise store_error from None
        at = f" at version {version}" if version is not None else ""
        raise InputError(
            f"cannot read the Delta table {location}{at}: {type(exc).__name__}: {first_line(exc)}",
            "check --input (and @VERSION: one the table's log still has)",
        ) from None
    table_version = table.version()
    name = f"delta:{location}@{table_version}"
    _refuse_unreadable(table, name)

    actions = pa.table(table.get_add_actions(flatten=True))
    uris = table.file_uris()
    partition_columns = list(table.metadata().partition_columns)
    delta_schema = pa.schema(table.schema().to_arrow())
    partition_schema = pa.schema([_plain(delta_schema.field(c)) for c in partition_columns])
    if where is not None:
        where.bind(delta_schema)  # an unknown column or mistyped literal: before any footer
    rows = actions.to_pylist()
    if len(uris) != len(rows):
        raise InputError(f"{name}: the log lists {len(rows)} files but {len(uris)} URIs")
    files = []
    for uri, action in zip(uris, rows, strict=True):
        relative = unquote(action["path"])
        path = fs._strip_protocol(uri)
        if not path.endswith(relative.lstrip("/")) and "://" not in relative:
            raise InputError(f"{name}: file {uri} does not match its add action {relative}")
        files.append(
            DataFile(
                path=path,
                relative_path=relative,
                size=int(action["size_bytes"]),
                version=f"{table_version}:{relative}",
                partition={c: _text(action.get(f"partition.{c}")) for c in partition_columns},
            )
        )
    listed = len(files)
    if where is not None:  # by the log's partition values and statistics: never opened
        files = prune(where, files, [f.partition for f in files], partition_schema)
        files = _prune_by_log_statistics(where, files, rows, delta_schema, partition_columns)
    return plan_data_files(
        config,
        fs,
        storage.display(fs, root),
        files,
        partition_schema,
        {"format": "delta", "version": table_version},
        name,
        where,
        listed - len(files),
    )


def _prune_by_log_statistics(
    where: Where,
    files: list[DataFile],
    actions: list[dict[str, Any]],
    schema: pa.Schema,
    partition_columns: list[str],
) -> list[DataFile]:
    """Files whose add action's statistics prove no row matches are dropped. Strings and
    timestamps are left out: writers truncate them (a prefix, milliseconds), so their max is
    not an upper bound."""
    by_path = {unquote(a["path"]): a for a in actions}
    usable = [
        f.name
        for f in schema
        if "." not in f.name
        and not (
            pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)
            or pa.types.is_string_view(f.type)
            or pa.types.is_timestamp(f.type)
            or pa.types.is_binary(f.type)
            or pa.types.is_nested(f.type)
        )
    ]
    statistics, rows = [], []
    for file in files:
        action = by_path.get(file.relative_path, {})
        statistics.append(
            {
                name: Statistics(
                    action.get(f"min.{name}"),
                    action.get(f"max.{name}"),
                    action.get(f"null_count.{name}"),
                )
                for name in usable
                if f"null_count.{name}" in action or f"min.{name}" in action
            }
        )
        rows.append(action.get("num_records"))
    return prune_by_statistics(where, files, statistics, rows, schema, set(partition_columns))


def _refuse_unreadable(table: Any, name: str) -> None:
    """Refuse what plain Parquet reads of the data files would get wrong."""
    protocol = table.protocol()
    features = set(protocol.reader_features or [])
    mode = (table.metadata().configuration or {}).get("delta.columnMapping.mode", "none")
    if "columnMapping" in features or (mode or "none") != "none":
        raise ConfigError(
            f"{name} uses column mapping (mode {mode}), which batch-infer cannot read",
            "score a copy of the table without column mapping, or export it to Parquet",
        )
    if re.search(r'"type":\s*"variant"', table.schema().to_json()):
        raise ConfigError(
            f"{name} has a variant column, which batch-infer cannot read",
            "score a copy of the table with the variant column cast or dropped",
        )
    unknown = sorted(features - _SAFE_READER_FEATURES)
    if protocol.min_reader_version > 3 or unknown:
        raise ConfigError(
            f"{name} needs reader version {protocol.min_reader_version} with feature(s) "
            f"{unknown}, which batch-infer cannot honour",
            "score a copy of the table without those features, or export it to Parquet",
        )
    if "deletionVectors" in features:
        vectors = table.deletion_vectors().read_all()
        if vectors.num_rows:
            raise ConfigError(
                f"{name} has deletion vectors on {vectors.num_rows} file(s), which batch-infer "
                "cannot apply",
                "purge them first (OPTIMIZE / REORG TABLE ... APPLY (PURGE)), or export the "
                "table to Parquet",
            )


def _plain(field: pa.Field) -> pa.Field:
    views = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    return pa.field(field.name, views.get(field.type, field.type))


def _text(value: Any) -> str | None:
    """A typed partition value as the text ``_conform`` casts back to the column's type."""
    if value is None:
        return None
    return str(pa.scalar(value).cast(pa.string()).as_py())


def plan_data_files(
    config: InputConfig,
    fs: fsspec.AbstractFileSystem,
    root: str,
    entries: list[DataFile],
    partition_schema: pa.Schema,
    version: dict[str, Any],
    name: str,
    where: Where | None = None,
    pruned: int = 0,
) -> InputPlan:
    """A table's data files as a plan: footers read in a pool, schemas unified (as a folder's)."""
    if not entries:
        raise InputError(
            f"input {name} has no data files", "check --input (and the version or snapshot named)"
        )
    with ThreadPoolExecutor(max_workers=min(16, len(entries))) as pool:
        metadatas = list(pool.map(lambda e: _footer(fs, e.path, name), entries))
    files = [
        InputFile(
            path=e.path,
            url=storage.display(fs, e.path),
            relative_path=e.relative_path,
            size=e.size,
            version=e.version,
            metadata=meta,
            partition=e.partition,
        )
        for e, meta in zip(entries, metadatas, strict=True)
    ]
    # a partition column some writers also keep in the data files: the log's value wins
    schema = unify_schema(files, partition_schema)
    for key in partition_schema:
        schema = schema.set(schema.get_field_index(key.name), key)
    lossy = lossy_columns(files, schema)
    if lossy and not config.allow_lossy_types:
        raise lossy_error(files, schema, lossy)
    files = [
        dataclasses.replace(f, lossy_columns=frozenset(lossy[f])) if f in lossy else f
        for f in files
    ]
    files, where_facts = apply_where(where, files, schema, partition_schema, pruned)
    return InputPlan(
        fs=fs,
        root=root,
        files=files,
        schema=schema,
        partition_schema=partition_schema,
        version=version,
        **where_facts,
    )


def _footer(fs: fsspec.AbstractFileSystem, path: str, name: str) -> Any:
    try:
        return read_footer(fs, path)
    except InputError:
        if fs.exists(path):
            raise
        raise InputError(
            f"{storage.display(fs, path)}, a data file of {name}, does not exist",
            "the table's files were removed (VACUUM?): read a newer version",
        ) from None
