"""``--input iceberg:NAMESPACE.TABLE[@SNAPSHOT_ID]``: the data files of one snapshot of an Iceberg
table, in the run's catalog (``catalog:`` of the config, ``--catalog``/``--warehouse``).

The snapshot is pinned when the run is planned (the current one unless ``@SNAPSHOT_ID`` names
one): the plan lists that snapshot's scan tasks (``table.scan(snapshot_id=S).plan_files()``),
reads the data files' footers like a folder's and records ``{"format": "iceberg", "snapshot": S}``
as ``InputPlan.version``; each file's version is ``"<S>:<path>"``, so a rerun or resume of the
same run key reads the same snapshot. Iceberg keeps partition source columns in the data files,
so nothing is added from the partition tuple.

pyiceberg is used to plan only; rows are read from the Parquet data files by ``read_fragment``,
by column name. A snapshot whose rows the data files alone do not give (delete files, columns
renamed since a file was written, non-Parquet files) is refused.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa

from .. import storage
from ..config import CatalogConfig, InputConfig
from ..errors import ConfigError, InputError, first_line
from .base import InputPlan
from .delta import DataFile, plan_data_files, split_at
from .where import parse_where

FIELD_ID = b"PARQUET:field_id"


def _pyiceberg() -> None:
    try:
        import pyiceberg.catalog  # noqa: F401  the [iceberg] extra: imported only for iceberg: inputs
    except ImportError:
        raise ConfigError(
            "--input iceberg:... needs the pyiceberg package, which is not installed",
            "pip install 'batch-infer[iceberg]'",
        ) from None


def plan_iceberg(config: InputConfig, catalog: CatalogConfig) -> InputPlan:
    """Plan the data files of one snapshot of the table ``config.path`` names."""
    _pyiceberg()
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError  # the extra

    from ..targets.iceberg import load_catalog

    where = parse_where(config.where)  # a syntax error before the catalog is opened
    identifier, snapshot_id = split_at(config.path[len("iceberg:") :], "iceberg", "snapshot")
    namespace, _, table_name = identifier.rpartition(".")
    if not namespace or not table_name:
        raise ConfigError(
            f"--input {config.path} does not name a table as NAMESPACE.TABLE",
            "write --input iceberg:NAMESPACE.TABLE or iceberg:NAMESPACE.TABLE@SNAPSHOT_ID",
        )
    loaded = load_catalog(
        catalog.name, catalog.warehouse, config.storage_options, catalog.properties
    )
    try:
        table = loaded.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError) as exc:
        raise InputError(
            f"input iceberg:{identifier} does not exist in the Iceberg catalog {catalog.name!r}: "
            f"{first_line(exc)}",
            "check --input, --catalog and --warehouse",
        ) from None
    if snapshot_id is None:
        current = table.current_snapshot()
        if current is None:
            raise InputError(
                f"input iceberg:{identifier} has no snapshot (no data)",
                "write rows to the table first, or check --input",
            )
        snapshot_id = current.snapshot_id
    elif table.snapshot_by_id(snapshot_id) is None:
        raise InputError(
            f"input iceberg:{identifier} has no snapshot {snapshot_id}",
            "name a snapshot the table still has (its history), or drop @SNAPSHOT_ID",
        )
    name = f"iceberg:{identifier}@{snapshot_id}"
    location = table.location().rstrip("/")
    fs, root = storage.resolve(location, config.storage_options)
    root = root.rstrip("/")
    snapshot = table.snapshot_by_id(snapshot_id)
    schema = table.schemas().get(snapshot.schema_id) or table.schema()
    # --where goes to the scan: pyiceberg skips manifests and files it proves hold no match
    row_filter = where.to_iceberg(schema.as_arrow()) if where is not None else None
    tasks = _plan_files(table, snapshot_id, row_filter, name)
    pruned = 0
    if row_filter is not None:
        total = (snapshot.summary or {}).get("total-data-files")
        if not tasks:  # nothing can match: one file for the schema, its rows all filtered out
            tasks = _plan_files(table, snapshot_id, None, name)[:1]
        pruned = max(0, int(total) - len(tasks)) if total is not None else 0
    entries = []
    for task in tasks:
        data = task.file
        if task.delete_files:
            raise ConfigError(
                f"{name} has delete files for {data.file_path} (row-level deletes), which "
                "batch-infer cannot apply",
                "compact the table (rewrite data files) first, or export the rows to Parquet",
            )
        if str(data.file_format).upper().rsplit(".", 1)[-1] != "PARQUET":
            raise ConfigError(
                f"{name} has a {data.file_format} data file {data.file_path}; only Parquet is read",
                "rewrite the table's data files as Parquet",
            )
        path = fs._strip_protocol(data.file_path)
        relative = posixpath.relpath(path, root) if path.startswith(root + "/") else path
        entries.append(
            DataFile(
                path=path,
                relative_path=relative,
                size=int(data.file_size_in_bytes),
                version=f"{snapshot_id}:{relative}",
                partition={},
            )
        )
    entries.sort(key=lambda e: e.path)
    plan = plan_data_files(
        config,
        fs,
        storage.display(fs, root),
        entries,
        pa.schema([]),
        {"format": "iceberg", "snapshot": snapshot_id},
        name,
        where,
        pruned,
    )
    _refuse_renamed(plan, schema, name)
    return plan


def _plan_files(table: Any, snapshot_id: int, row_filter: Any, name: str) -> list[Any]:
    """The scan's tasks of one snapshot (with ``row_filter``: those that may hold a match)."""
    try:
        scan = (
            table.scan(snapshot_id=snapshot_id, row_filter=row_filter)
            if row_filter is not None
            else table.scan(snapshot_id=snapshot_id)
        )
        return list(scan.plan_files())
    except Exception as exc:  # pyiceberg and its FileIO raise many kinds
        raise InputError(
            f"cannot plan {name}: {type(exc).__name__}: {first_line(exc)}",
            "check the table's metadata and storage (credentials, endpoint)",
        ) from None


def _refuse_renamed(plan: InputPlan, schema: Any, name: str) -> None:
    """Files are read by column name; Iceberg matches columns by field id. Refuse a file whose
    column carries an id the snapshot's schema names otherwise (a rename since it was written)."""
    names = {field.field_id: field.name for field in schema.fields}
    for file in plan.files:
        for column in file.schema:
            raw = (column.metadata or {}).get(FIELD_ID)
            if raw is None:
                continue
            expected = names.get(int(raw))
            if expected is not None and expected != column.name:
                raise ConfigError(
                    f"column {column.name!r} of {file.url} is {expected!r} in {name} (renamed "
                    "since the file was written), which batch-infer cannot read by name",
                    "rewrite the table's data files, or export the rows to Parquet",
                )
