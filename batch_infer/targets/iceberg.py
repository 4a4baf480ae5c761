"""``--output iceberg:NAMESPACE.TABLE``: an Iceberg table through a pyiceberg catalog.

The catalog is configured the pyiceberg way (``.pyiceberg.yaml``, ``PYICEBERG_CATALOG__<NAME>__*``),
named ``default`` unless told otherwise; with none configured, an embedded SQLite catalog
``sqlite:///<warehouse>/catalog.db`` keeps its tables in ``<warehouse>`` (``./warehouse``).

Data files are written into ``<table location>/data/`` (a reader of the table sees only the
files its current snapshot names), then ONE catalog commit adds them as one snapshot whose
summary carries ``batch-infer.run-key`` and ``batch-infer.run-id``: a fast append, or for an
overwrite one OVERWRITE snapshot that also drops the files of the partitions the run writes. A
table that does not exist is created in that same commit (``create_table_transaction``), with
the output's schema and identity partitions on the run's partition columns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

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
    partition_values_of,
    plain_type,
)

log = logging.getLogger(__name__)

DEFAULT_CATALOG = "default"
DEFAULT_WAREHOUSE = "warehouse"
NAME_MAPPING = "schema.name-mapping.default"
_CATALOGS: dict[str, Any] = {}  # loaded catalogs of this process, by their settings


def _pyiceberg() -> Any:
    try:
        import pyiceberg.catalog  # the [iceberg] extra: imported only for iceberg: outputs
    except ImportError:
        raise ConfigError(
            "--output iceberg:... needs the pyiceberg package, which is not installed",
            "pip install 'batch-infer[iceberg]'",
        ) from None
    return pyiceberg


def _file_io_properties(storage_options: dict[str, Any]) -> dict[str, str]:
    """fsspec/s3fs storage options (and AWS_ENDPOINT_URL) as pyiceberg's FileIO properties."""
    client = dict(storage_options.get("client_kwargs") or {})
    merged = {**client, **storage_options}
    names = {
        "endpoint_url": "s3.endpoint",
        "key": "s3.access-key-id",
        "secret": "s3.secret-access-key",
        "token": "s3.session-token",
        "region_name": "s3.region",
    }
    properties = {names[k]: str(v) for k, v in merged.items() if k in names and v}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        properties.setdefault("s3.endpoint", endpoint)
    return properties


def load_catalog(
    name: str,
    warehouse: str,
    storage_options: dict[str, Any],
    properties: dict[str, Any] | None = None,
) -> Any:
    """The pyiceberg catalog ``name`` as configured (``properties`` win over pyiceberg's own
    configuration of it), else the embedded SQLite one."""
    _pyiceberg()
    from pyiceberg.catalog import load_catalog as load  # the [iceberg] extra
    from pyiceberg.utils.config import Config

    io = {
        **_file_io_properties(storage_options),
        **{k: str(v) for k, v in (properties or {}).items()},
    }
    try:
        configured = Config().get_catalog_config(name) is not None
        if configured or "uri" in io or "type" in io:
            return load(name, **io)
        if "://" in warehouse and not warehouse.startswith("file://"):
            raise ConfigError(
                f"no pyiceberg catalog {name!r} is configured, and the embedded SQLite catalog "
                f"needs a local warehouse, not {warehouse}",
                f"configure the catalog (PYICEBERG_CATALOG__{name.upper()}__URI or "
                ".pyiceberg.yaml), or use a local --warehouse",
            )
        folder = os.path.abspath(warehouse.removeprefix("file://"))
        os.makedirs(folder, exist_ok=True)
        return load(
            name,
            type="sql",
            uri=f"sqlite:///{folder}/catalog.db",
            warehouse=f"file://{folder}",
            **io,
        )
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"cannot open the Iceberg catalog {name!r}: {type(exc).__name__}: {first_line(exc)}",
            "check the catalog's configuration (.pyiceberg.yaml, PYICEBERG_CATALOG__*)",
        ) from None


def open_iceberg(
    url: str,
    storage_options: dict[str, Any],
    staging_key: str,
    rejects: str | None = None,
    *,
    catalog: str = DEFAULT_CATALOG,
    warehouse: str = DEFAULT_WAREHOUSE,
    properties: dict[str, Any] | None = None,
    schema: pa.Schema | None = None,
    partition_by: list[str] | None = None,
) -> IcebergTarget:
    """The table ``iceberg:NAMESPACE.TABLE`` of catalog ``catalog`` (created by the first
    commit if missing, at the catalog's default location)."""
    identifier = url[len("iceberg:") :]
    namespace, _, name = identifier.rpartition(".")
    if not namespace or not name:
        raise ConfigError(
            f"--output {url} does not name NAMESPACE.TABLE", "write --output iceberg:db.scores"
        )
    loaded = load_catalog(catalog, warehouse, storage_options, properties)
    location = _location(loaded, namespace, name)
    fs, root = storage.resolve(location, storage_options)
    root = root.rstrip("/")
    rejects_root = rejects_location(
        rejects, storage_options, fs, url, "<location>/_batch_infer/_rejects"
    )
    return IcebergTarget(
        fs=fs,
        root=storage.join(root, SIDE),
        url=url,
        staging_key=staging_key,
        rejects_root=rejects_root,
        data_root=storage.join(root, "data"),
        table_name=identifier,
        schema=schema,
        partition_by=partition_by,
        identifier=identifier,
        location=location.rstrip("/"),
        catalog_name=catalog,
        warehouse=warehouse,
        storage_options=storage_options,
        catalog_properties=properties,
    )


def _location(catalog: Any, namespace: str, name: str) -> str:
    """The table's location: its own if it exists, else where the catalog would put it."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError  # the extra

    try:
        return catalog.load_table(f"{namespace}.{name}").location()
    except (NoSuchTableError, NoSuchNamespaceError):
        pass
    try:
        return catalog._resolve_table_location(None, namespace, name)
    except (NoSuchNamespaceError, ValueError):
        warehouse = str(catalog.properties.get("warehouse", "")).rstrip("/")
        if not warehouse:
            raise ConfigError(
                f"the Iceberg catalog has no warehouse to put {namespace}.{name} in",
                "set the catalog's warehouse property, or create the table first",
            ) from None
        return f"{warehouse}/{namespace}/{name}"  # pyiceberg's default: <warehouse>/<ns>/<table>


@dataclass(frozen=True)
class IcebergTarget(TableTarget):
    """An Iceberg table: see the module docstring."""

    identifier: str = ""
    location: str = ""
    catalog_name: str = DEFAULT_CATALOG
    warehouse: str = DEFAULT_WAREHOUSE
    storage_options: dict[str, Any] | None = None
    catalog_properties: dict[str, Any] | None = None

    kind = "iceberg"
    keep_partition_columns = True  # add_files reads partition values from the files

    def _catalog(self) -> Any:
        """The catalog, loaded once per process (a SQL catalog opens an engine each time);
        kept out of the target itself, which is pickled to Dask workers."""
        key = json.dumps(
            [self.catalog_name, self.warehouse, self.storage_options, self.catalog_properties],
            sort_keys=True,
            default=str,
        )
        if key not in _CATALOGS:
            _CATALOGS[key] = self._load_catalog()
        return _CATALOGS[key]

    def _load_catalog(self) -> Any:
        return load_catalog(
            self.catalog_name, self.warehouse, self.storage_options or {}, self.catalog_properties
        )

    def _table(self) -> Any | None:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError  # the extra

        try:
            return self._catalog().load_table(self.identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None

    def table_exists(self) -> bool:
        return self._table() is not None

    @property
    def sibling_url(self) -> str:
        return f"iceberg:{self.identifier}_rejects"

    def sibling(self) -> IcebergTarget:
        """``NAMESPACE.TABLE_rejects`` in the same catalog, at its own location."""
        identifier = f"{self.identifier}_rejects"
        namespace, _, name = identifier.rpartition(".")
        location = _location(self._catalog(), namespace, name).rstrip("/")
        _, root = storage.resolve(location, self.storage_options or {})
        root = root.rstrip("/")
        return dataclasses.replace(
            self,
            root=storage.join(root, SIDE),
            url=self.sibling_url,
            data_root=storage.join(root, "data"),
            table_name=identifier,
            identifier=identifier,
            location=location,
            schema=None,
            partition_by=[],
            _checked={},
        )

    def file_schema(self, schema: pa.Schema) -> pa.Schema:
        """Iceberg's types: int and long (no unsigned), microsecond timestamps in UTC."""
        fields = []
        for f in schema:
            t = plain_type(f.type)
            if pa.types.is_unsigned_integer(t):
                if t.bit_width == 64:
                    raise OutputConflictError(
                        f"column {f.name!r} is uint64, which an Iceberg table cannot hold",
                        "cast it to int64 (or decimal) upstream",
                    )
                t = pa.int64() if t.bit_width == 32 else pa.int32()
            elif pa.types.is_integer(t) and t.bit_width < 32:
                t = pa.int32()
            elif pa.types.is_float16(t):
                t = pa.float32()
            elif pa.types.is_timestamp(t):
                t = pa.timestamp("us", "UTC" if t.tz else None)
            elif pa.types.is_date64(t):
                t = pa.date32()
            fields.append(pa.field(f.name, t, True))
        return pa.schema(fields)

    def table_layout(self) -> tuple[pa.Schema, list[str]] | None:
        table = self._table()
        if table is None:
            return None
        schema = table.schema()
        arrow = schema.as_arrow()
        arrow = pa.schema([pa.field(f.name, plain_type(f.type), f.nullable) for f in arrow])
        partitions = []
        for part in table.spec().fields:
            source = schema.find_column_name(part.source_id)
            transform = str(part.transform)
            partitions.append(source if transform == "identity" else f"{transform}({source})")
        return arrow, partitions

    def table_committed(self, key: str) -> Committed | None:
        for run_key, committed in self.table_runs():
            if run_key == key:
                return committed
        return None

    def table_runs(self) -> Iterator[tuple[str, Committed]]:
        table = self._table()
        if table is None:
            return
        for snapshot in sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True):
            summary = snapshot.summary
            if summary is not None and summary.get(RUN_KEY):
                yield (
                    str(summary.get(RUN_KEY)),
                    Committed(
                        run_id=str(summary.get(RUN_ID)),
                        version=f"snapshot {snapshot.snapshot_id}",
                        manifest=summary.get(MANIFEST_KEY),
                    ),
                )

    def _relative(self, path: str) -> str:
        bare = path.removeprefix("file://")
        for prefix in (self.data_root, storage.display(self.fs, self.data_root)):
            if bare.startswith(prefix.rstrip("/") + "/"):
                return bare[len(prefix.rstrip("/")) + 1 :]
        return bare

    def _absolute(self, relative: str) -> str:
        return storage.display(self.fs, storage.join(self.data_root, relative))

    def table_files(self) -> set[str]:
        table = self._table()
        if table is None or table.current_snapshot() is None:
            return set()
        return {self._relative(task.file.file_path) for task in table.scan().plan_files()}

    def table_commit(
        self,
        files: list[OutputFile],
        schema: pa.Schema,
        partition_by: list[str],
        mode: str,
        properties: dict[str, str],
    ) -> str:
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError
        from pyiceberg.partitioning import PartitionField, PartitionSpec
        from pyiceberg.schema import assign_fresh_schema_ids
        from pyiceberg.table import _parquet_files_to_data_files
        from pyiceberg.transforms import IdentityTransform

        catalog = self._catalog()
        table = self._table()
        paths = [self._absolute(f.path) for f in files]
        overwrite = mode in ("overwrite", "overwrite-partitions")
        try:
            if table is None:
                namespace = self.identifier.rpartition(".")[0]
                catalog.create_namespace_if_not_exists(namespace)
                iceberg_schema = assign_fresh_schema_ids(catalog._convert_schema_if_needed(schema))
                spec = PartitionSpec(
                    *[
                        PartitionField(
                            source_id=iceberg_schema.find_field(name).field_id,
                            field_id=1000 + i,
                            transform=IdentityTransform(),
                            name=name,
                        )
                        for i, name in enumerate(partition_by)
                    ]
                )
                tx = catalog.create_table_transaction(
                    self.identifier,
                    schema=iceberg_schema,
                    location=self.location,
                    partition_spec=spec,
                    properties={NAME_MAPPING: iceberg_schema.name_mapping.model_dump_json()},
                )
                overwrite = False
            else:
                tx = table.transaction()
                if table.metadata.name_mapping() is None:
                    tx.set_properties(
                        **{NAME_MAPPING: table.schema().name_mapping.model_dump_json()}
                    )
            replaced = self._replaced(table, files, partition_by) if overwrite else []
            update = tx.update_snapshot(snapshot_properties=dict(properties))
            producer = update.overwrite() if replaced else update.fast_append()
            with producer as snapshot:
                for data_file in replaced:
                    snapshot.delete_data_file(data_file)
                for data_file in _parquet_files_to_data_files(
                    tx.table_metadata, paths, tx._table.io
                ):
                    snapshot.append_data_file(data_file)
            tx.commit_transaction()
        except (CommitFailedException, TableAlreadyExistsError) as exc:
            raise CommitConflict(first_line(exc)) from exc
        committed = self._table()
        snapshot = committed.current_snapshot() if committed is not None else None
        return f"snapshot {snapshot.snapshot_id if snapshot else '?'}"

    def _replaced(self, table: Any, files: list[OutputFile], partition_by: list[str]) -> list[Any]:
        """The table's data files in the partitions the run writes (all, unpartitioned)."""
        if table.current_snapshot() is None:
            return []
        from pyiceberg.expressions import AlwaysTrue, And, EqualTo, IsNull, Or  # the extra

        if not partition_by:
            row_filter: Any = AlwaysTrue()
        else:
            types = {f.name: f.type for f in table.schema().as_arrow()}
            combos = {
                tuple(partition_values_of(f.path).get(n) for n in partition_by) for f in files
            }
            row_filter = None
            for combo in combos:
                term = None
                for name, text in zip(partition_by, combo, strict=True):
                    test = (
                        IsNull(name) if text is None else EqualTo(name, _typed(text, types[name]))
                    )
                    term = test if term is None else And(term, test)
                row_filter = term if row_filter is None else Or(row_filter, term)
            if row_filter is None:
                return []
        return [task.file for task in table.scan(row_filter=row_filter).plan_files()]


def _typed(text: str, arrow_type: pa.DataType) -> Any:
    """A partition value from its folder name back to a Python value of the column's type."""
    return pa.array([text]).cast(arrow_type)[0].as_py()
