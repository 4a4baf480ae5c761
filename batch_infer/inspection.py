"""``batch-infer inspect``: what a Parquet input, a Delta or Iceberg table, or a model artifact
holds, as text and as data."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")


@dataclass(frozen=True)
class Description:
    text: str
    data: dict[str, Any]


COMMITS_SHOWN = 10  # the latest batch-infer commits a table's description lists


def describe(
    path: str,
    scaler: str | None = None,
    contract: str | None = None,
    catalog: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> Description:
    """Describe a model file (by its suffix), a table (``delta:``/``iceberg:``, as ``--input``
    names it) or else a Parquet input."""
    from .model.registry import is_mlflow_uri

    if path.lower().endswith(MODEL_SUFFIXES) or is_mlflow_uri(path):
        return describe_model(path, scaler=scaler, contract=contract)
    if path.startswith("delta:"):
        return describe_delta(path, storage_options or {})
    if path.startswith("iceberg:"):
        return describe_iceberg(path, catalog, storage_options or {})
    return describe_parquet(path)


def describe_delta(url: str, storage_options: dict[str, Any]) -> Description:
    """A Delta table (at ``@VERSION`` if named) from its log: schema, partitioning, version,
    rows and files of that version, and the batch-infer commits in its history."""
    from . import storage
    from .errors import InputError, first_line
    from .inputs.delta import _deltalake, split_at
    from .targets.delta import delta_storage_options
    from .targets.table_staging import RUN_ID, RUN_KEY

    deltalake = _deltalake()
    location, version = split_at(url[len("delta:") :], "delta", "version")
    fs, root = storage.resolve(location, storage_options)
    uri = os.path.abspath(root) if storage.is_local(fs) else fs.unstrip_protocol(root)
    options = delta_storage_options(location, storage_options) or None
    try:
        table = deltalake.DeltaTable(uri, version=version, storage_options=options)
    except Exception as exc:  # delta-rs raises TableNotFoundError, DeltaError, OSError, ...
        at = f" at version {version}" if version is not None else ""
        raise InputError(
            f"cannot read the Delta table {location}{at}: {type(exc).__name__}: {first_line(exc)}",
            "check the path (the folder holding _delta_log) and @VERSION",
        ) from None
    actions = pa.table(table.get_add_actions(flatten=True))
    records = actions.column("num_records").to_pylist() if actions.num_rows else []
    commits = [
        {
            "version": entry.get("version"),
            "run_key": entry[RUN_KEY],
            "run_id": entry.get(RUN_ID),
            "timestamp": _iso(entry.get("timestamp")),
            "operation": entry.get("operation"),
        }
        # newest first; from the latest version: delta-rs numbers the history of a table
        # loaded at an older version wrongly (negative versions)
        for entry in (
            deltalake.DeltaTable(uri, storage_options=options) if version is not None else table
        ).history()
        if entry.get(RUN_KEY) and int(entry.get("version", -1)) <= table.version()
    ]
    protocol = table.protocol()
    data = {
        "kind": "delta",
        "table": uri,
        "version": table.version(),
        "rows": None if None in records else sum(records),
        "files": actions.num_rows,
        "bytes": sum(actions.column("size_bytes").to_pylist()) if actions.num_rows else 0,
        "schema": {f.name: str(f.type) for f in pa.schema(table.schema().to_arrow())},
        "partition_by": list(table.metadata().partition_columns),
        "reader_features": sorted(protocol.reader_features or []),
        "batch_infer_commits": commits,
    }
    return Description(_table_text(data, f"Delta table {uri}", f"version {data['version']}"), data)


def describe_iceberg(url: str, catalog: Any, storage_options: dict[str, Any]) -> Description:
    """An Iceberg table (at ``@SNAPSHOT_ID`` if named) in its catalog: schema, partition spec,
    snapshot, rows and files from the snapshot summary, and the batch-infer snapshots."""
    from .config import CatalogConfig
    from .errors import InputError
    from .inputs.delta import split_at
    from .inputs.iceberg import _pyiceberg
    from .targets.iceberg import load_catalog
    from .targets.table_staging import RUN_ID, RUN_KEY

    _pyiceberg()  # the [iceberg] extra, named if missing
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    catalog = catalog or CatalogConfig()
    identifier, snapshot_id = split_at(url[len("iceberg:") :], "iceberg", "snapshot")
    loaded = load_catalog(catalog.name, catalog.warehouse, storage_options, catalog.properties)
    try:
        table = loaded.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError, ValueError):
        raise InputError(
            f"iceberg:{identifier} does not exist in the Iceberg catalog {catalog.name!r}",
            "check the name (NAMESPACE.TABLE), --catalog and --warehouse",
        ) from None
    snapshot = (
        table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    )
    if snapshot_id is not None and snapshot is None:
        raise InputError(
            f"iceberg:{identifier} has no snapshot {snapshot_id}",
            "name a snapshot the table still has, or drop @SNAPSHOT_ID",
        )
    summary = snapshot.summary if snapshot is not None else None
    schema = table.schema()
    partitions = []
    for part in table.spec().fields:
        source = schema.find_column_name(part.source_id)
        transform = str(part.transform)
        partitions.append(source if transform == "identity" else f"{transform}({source})")
    commits = [
        {
            "snapshot": s.snapshot_id,
            "run_key": s.summary.get(RUN_KEY),
            "run_id": s.summary.get(RUN_ID),
            "timestamp": _iso(s.timestamp_ms),
            "operation": s.summary.operation.value,
        }
        for s in sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
        if s.summary is not None and s.summary.get(RUN_KEY)
    ]
    data = {
        "kind": "iceberg",
        "table": identifier,
        "location": table.location(),
        "format_version": table.format_version,
        "snapshot": snapshot.snapshot_id if snapshot is not None else None,
        "rows": int(summary.get("total-records", 0)) if summary is not None else 0,
        "files": int(summary.get("total-data-files", 0)) if summary is not None else 0,
        "delete_files": int(summary.get("total-delete-files", 0)) if summary is not None else 0,
        "bytes": int(summary.get("total-files-size", 0)) if summary is not None else 0,
        "schema": {f.name: str(f.type) for f in schema.as_arrow()},
        "partition_by": partitions,
        "batch_infer_commits": commits,
    }
    where = f"snapshot {data['snapshot']}" if snapshot is not None else "no snapshot"
    title = f"Iceberg table {identifier} in catalog {catalog.name!r} ({table.location()})"
    return Description(_table_text(data, title, where), data)


def _table_text(data: dict[str, Any], title: str, where: str) -> str:
    rows = "?" if data["rows"] is None else f"{data['rows']:,}"
    lines = [
        f"{title}",
        f"  {where}: {rows} rows, {data['files']} data file(s), {data['bytes']:,} bytes"
        + (f", {data['delete_files']} delete file(s)" if data.get("delete_files") else ""),
        f"  partitioned by: {', '.join(data['partition_by']) or '(nothing)'}",
        "  schema:",
        *(f"    {name}: {kind}" for name, kind in data["schema"].items()),
    ]
    commits = data["batch_infer_commits"]
    if commits:
        lines.append(f"  batch-infer commits (latest {min(len(commits), COMMITS_SHOWN)}):")
        for commit in commits[:COMMITS_SHOWN]:
            at = (
                f"version {commit['version']}"
                if "version" in commit
                else f"snapshot {commit['snapshot']}"
            )
            lines.append(
                f"    {at}  {commit['timestamp']}  run {commit['run_id']}  "
                f"run key {commit['run_key']}"
            )
    else:
        lines.append("  batch-infer commits: none")
    return "\n".join(lines)


def _iso(milliseconds: Any) -> str | None:
    if milliseconds is None:
        return None
    return dt.datetime.fromtimestamp(int(milliseconds) / 1000, dt.UTC).isoformat(timespec="seconds")


def describe_parquet(path: str) -> Description:
    from .config import InputConfig
    from .inputs import plan_input

    plan = plan_input(InputConfig(path=path))
    files = [
        {
            "path": f.url,
            "bytes": f.size,
            "rows": f.num_rows,
            "row_groups": [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)],
            "partition": f.partition,
        }
        for f in plan.files
    ]
    data = {
        "kind": "parquet",
        "root": plan.root,
        "rows": plan.total_rows,
        "bytes": plan.total_bytes,
        "files": files,
        "row_groups": sum(len(f["row_groups"]) for f in files),
        "schema": {field.name: str(field.type) for field in plan.schema},
        "partition_keys": plan.partition_schema.names,
    }
    lines = [
        f"Parquet input {plan.root}",
        f"  {plan.total_rows:,} rows, {len(files)} file(s), {data['row_groups']} row group(s), "
        f"{plan.total_bytes:,} bytes",
        "  schema:",
        *(f"    {name}: {kind}" for name, kind in data["schema"].items()),
        "  files:",
        *(
            f"    {f['path']}: {f['rows']:,} rows in {len(f['row_groups'])} row group(s)"
            for f in files[:50]
        ),
    ]
    if len(files) > 50:
        lines.append(f"    … and {len(files) - 50} more")
    if plan.partition_schema.names:
        lines.insert(2, f"  hive partition keys: {', '.join(plan.partition_schema.names)}")
    return Description("\n".join(lines), data)


def describe_model(
    path: str, scaler: str | None = None, contract: str | None = None
) -> Description:
    """The model's type, classes, input contract (what each feature must be) and output methods."""
    import sklearn

    from .config import ModelConfig
    from .errors import ConfigError
    from .model import load_artifact, load_model
    from .model.outputs import available_methods
    from .model.registry import is_mlflow_uri

    config = ModelConfig(path=path, scaler=scaler, contract=contract)
    try:
        model = load_model(config, runtime="sklearn")
    except ConfigError:  # fitted on an array: no names; show the columns by position
        if is_mlflow_uri(path):
            raise  # the registry's own answer (credentials, a bad URI)
        count = getattr(load_artifact(scaler or path).obj, "n_features_in_", 0)
        names = [f"column {i}" for i in range(count)]
        model = load_model(config.model_copy(update={"features": names}), runtime="sklearn")
    artifact = model.estimator
    obj = artifact.obj
    steps = [f"{name}: {type(step).__name__}" for name, step in getattr(obj, "steps", [])]
    methods = available_methods(obj)
    data = {
        "kind": "model",
        "path": artifact.url,
        "type": f"{type(obj).__module__}.{type(obj).__name__}",
        "model_kind": model.kind,
        "steps": steps,
        "classes": model.classes,
        "features": model.features,
        "contract": model.contract.to_dict(),
        "methods": methods,
        "default_outputs": model.outputs.methods,
        "output_columns": [c.name for c in model.outputs.columns],
        "sha256": artifact.sha256,
        "saved_sklearn_version": artifact.saved_sklearn_version,
        "installed_sklearn_version": sklearn.__version__,
        "compiled_runtime": _compiled(model),
    }
    width = max((len(f.name) for f in model.contract.features), default=0)
    lines = [
        f"Model {artifact.url}",
        f"  type       {data['type']} ({model.kind})",
        *([f"  steps      {', '.join(steps)}"] if steps else []),
        *([f"  scaler     {model.scaler.url}"] if model.scaler else []),
        f"  classes    {model.classes}" if model.classes is not None else "  classes    (none)",
        f"  methods    {', '.join(methods)} (default --outputs: {','.join(model.outputs.methods)})",
        f"  columns    {', '.join(data['output_columns'])}",
        f"  sha256     {artifact.sha256}",
        f"  sklearn    saved with {artifact.saved_sklearn_version}, installed {sklearn.__version__}",
        "  runtime    "
        + (
            f"compiled {data['compiled_runtime']['engine']} cached in "
            f"{data['compiled_runtime']['folder']} (runs use it by default)"
            if data["compiled_runtime"]
            else "scikit-learn (nothing compiled; see batch-infer compile)"
        ),
        f"  input contract ({model.contract.origin}), {len(model.features)} feature(s):",
        *(f"    {f.name:<{width}}  {f.describe()}" for f in model.contract.features),
        *(f"  note       {note}" for note in model.contract.notes),
    ]
    if model.registry is not None:
        lines[1:1] = _registry_lines(model, data)
    return Description("\n".join(lines), data)


def _registry_lines(model: Any, data: dict[str, Any]) -> list[str]:
    """An MLflow model: the version it resolved to, its signature, the recorded versions."""
    registry = model.registry
    signature = registry.signature_inputs or []
    data["mlflow"] = {
        **registry.record(),
        "signature": signature,
        "requirement_mismatches": model.requirement_mismatches,
        "contract_notes": model.contract.notes,
    }
    resolved = (
        f"{registry.name} version {registry.version}"
        + (f" (alias @{registry.alias})" if registry.alias else "")
        if registry.version
        else registry.label
    )
    columns = ", ".join(
        f"{c['name']}: {c.get('type')}" + ("" if c.get("required", True) else " (optional)")
        for c in signature
    )
    return [
        f"  mlflow     {registry.source} -> {resolved}, flavor {registry.flavor}"
        + (f", run {registry.run_id}" if registry.run_id else ""),
        f"  signature  {columns or '(none)'}",
        *(f"  versions   {m}" for m in model.requirement_mismatches),
    ]


def _compiled(model: Any) -> dict[str, Any] | None:
    """The verified compiled runtime cached for this model, if any."""
    from .model.cache import find_compiled

    compiled = find_compiled(model.sha256, model.scaler.sha256 if model.scaler else None)
    if compiled is None:
        return None
    return {
        "engine": compiled.engine,
        "folder": str(compiled.folder),
        "methods": compiled.methods,
        "verification": compiled.meta.get("verification"),
    }
