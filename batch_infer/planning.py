"""Plan a run before anything is scored: load the model, plan the input, check they fit,
name the output's schema, and fingerprint what the output depends on (the run key)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from . import storage
from .config import RunConfig
from .engines import dask as dask_engine
from .errors import (
    BatchInferError,
    ConfigError,
    InputError,
)
from .inputs import InputPlan, plan_input, read_fragment
from .model import LoadedModel, load_model
from .model.contract import signature_problem, type_problem
from .model.registry import moved_alias
from .observe.facts import RunFacts
from .scoring import REJECT_FIELDS, ScoringSpec, output_fields
from .targets import (
    Target,
    open_target,
    own_prefix,
)

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    config: RunConfig
    plan: InputPlan
    model: LoadedModel
    spec: ScoringSpec
    output_schema: pa.Schema
    target: Target
    fingerprint: dict[str, Any]
    engine_stats: Any = None  # engines.dask.DaskStats when the Dask engine scored
    facts: RunFacts | None = None
    resumed_statistics: list[dict[str, Any]] = field(default_factory=list)  # of staged fragments
    prefetched: dict[str, list[pa.RecordBatch]] = field(default_factory=dict)  # see read_ahead

    @property
    def own_prefixes(self) -> set[str]:
        """File-name prefixes of this run's output files (see ``Target.check``)."""
        return {own_prefix(f.name) for f in self.plan.fragments} | {own_prefix("empty")}

    @property
    def float_columns(self) -> set[str]:
        """Added columns of floats (probabilities, scores): nearly all distinct, no dictionary."""
        added = self.output_schema.names[len(self.plan.schema) :]
        return {n for n in added if pa.types.is_floating(self.output_schema.field(n).type)}


def prepare_run(config: RunConfig, read_ahead: bool = False) -> PreparedRun:
    """Load the model, plan the input, check features and output: all before any scoring.

    ``read_ahead``: decode the first fragments while the model loads (see ``read_ahead``).
    """
    output_url = config.output_path
    staged_pin = _registry_pin(config)  # an interrupted run's MLflow version, kept on resume
    if staged_pin is not None:
        config = config.model_copy(update={"model": staged_pin[0]})
    # Unpickling imports scikit-learn (~0.5 s of Python); reading footers waits on storage.
    # Overlap them. A model problem is reported first, as if loaded first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model") as pool:
        model_future = pool.submit(
            load_model, config.model, config.output.columns, config.output.methods
        )
        try:
            plan = plan_input(config.input, catalog=config.catalog)
        except BatchInferError:
            model_future.result()
            raise
        prefetched = read_ahead_while(plan, model_future, config) if read_ahead else {}
        model = model_future.result()
    if staged_pin is not None and not _same_work(staged_pin[1], config, plan):
        config = config.model_copy(update={"model": staged_pin[2]})  # another run: unpinned
        staged_pin = None
        model = load_model(config.model, config.output.columns, config.output.methods)
    if model.registry is not None:
        config = _pinned(config, model, staged_pin is not None)
    check_input_types(plan, model)
    spec = ScoringSpec(
        features=model.features,
        columns=config.output.columns,
        predicted_at=predicted_at_of(config.run_date),
        model_version=model.version,
    )
    added = output_fields(model, spec)
    output_schema = build_output_schema(plan.schema, added, config.output.partition_by)
    fingerprint = fingerprint_of(config, plan, model)
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    target = open_target(
        output_url,
        config.output.storage_options,
        key,
        config.output.rejects,
        commit_concurrency=config.output.commit_concurrency,
        schema=output_schema,
        partition_by=config.output.partition_by,
        catalog=config.catalog,
    )
    if config.engine.kind == "dask":
        reached = {"input": (plan.root, plan.fs), "output": (target.url, target.fs)}
        if not config.model.path.startswith(("models:/", "runs:/")):  # workers get those
            # from the registry; a file or an MLmodel folder must be reachable
            model_fs, _ = storage.resolve(config.model.path, config.model.storage_options)
            reached["model"] = (config.model.path, model_fs)
        dask_engine.check_reachable(config.engine, reached)
    clash = [f.name for f in REJECT_FIELDS if f.name in plan.schema.names]
    if clash:
        raise ConfigError(
            f"input column(s) {clash} clash with the rejects dataset's own columns",
            "rename them upstream",
        )
    output_root = storage.display(target.fs, target.root)
    if is_inside(output_root, plan.root):
        raise ConfigError(
            f"the output {target.url} is inside the input {plan.root}",
            "write the output somewhere else, or a rerun would read its own output",
        )
    if any(is_inside(f.url, output_root) for f in plan.files):
        raise ConfigError(
            f"the input {plan.root} is inside the output {target.url}",
            "keep inputs out of the output folder: overwriting it would touch them",
        )
    return PreparedRun(
        config, plan, model, spec, output_schema, target, fingerprint, prefetched=prefetched
    )


READ_AHEAD_BYTES = 32 << 20  # decoded rows held at most (peak RSS), until the workers take them


def read_ahead_while(
    plan: InputPlan, loading: Future[Any], config: RunConfig
) -> dict[str, list[pa.RecordBatch]]:
    """The first fragments' batches, decoded while the model loads.

    Unpickling a scikit-learn model imports scikit-learn and SciPy: Python on one core for
    about a second. Decoding Parquet releases the GIL, so the other core reads what the workers
    would read first, exactly as they read it (``read_fragment``); they score these batches
    instead of reading them again. Stops when the model is loaded (at once for a compiled
    runtime) or ``READ_AHEAD_BYTES`` are held. A fragment that fails to read is left to its
    worker, which reports the error as always.
    """
    ready: dict[str, list[pa.RecordBatch]] = {}
    if config.engine.kind != "local":
        return ready  # the Dask workers read their own fragments
    held = 0
    for fragment in plan.fragments:
        if loading.done() or held >= READ_AHEAD_BYTES:
            break
        try:
            batches = list(
                read_fragment(
                    plan.fs,
                    fragment,
                    plan.schema,
                    plan.partition_schema,
                    config.input.batch_size,
                    False,
                )
            )
        except Exception:
            break
        ready[fragment.name] = batches
        held += sum(b.nbytes for b in batches)
    log.debug("read %d fragment(s) ahead while the model loaded", len(ready))
    return ready


def fingerprint_of(config: RunConfig, plan: InputPlan, model: LoadedModel) -> dict[str, Any]:
    """What the output depends on: a run with the same fingerprint writes the same bytes."""
    output = config.output
    return {
        "inputs": {f.url: [f.size, f.version] for f in plan.files},
        **({"input_version": plan.version} if plan.version else {}),
        **({"where": plan.where} if plan.where else {}),  # another --where: another run
        "model": model.sha256,
        **({"model_registry": _registry_key(model.registry)} if model.registry else {}),
        "scaler": model.scaler.sha256 if model.scaler else None,
        "contract": model.contract_sha256,
        "runtime": model.runtime,
        "config": {
            "features": model.features,
            "methods": model.outputs.methods,
            "model_version": model.version,
            "columns": output.columns.model_dump(),
            "partition_by": output.partition_by,
            "compression": output.compression,
            "row_group_size": output.row_group_size,
            "max_rows_per_file": output.max_rows_per_file,
            "batch_size": config.input.batch_size,
            "run_date": config.run_date.isoformat() if config.run_date else None,
        },
    }


def build_output_schema(
    input_schema: pa.Schema, added: list[pa.Field], partition_by: list[str]
) -> pa.Schema:
    """Input columns then added ones; names unique, partition keys existing and flat."""
    names = [f.name for f in added]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"output.columns gives two added columns the same name: {duplicates}",
            "give each of prediction, probability, predicted_at and model_version its own name",
        )
    clashes = [n for n in names if n in input_schema.names]
    if clashes:
        raise ConfigError(
            f"output column(s) {clashes} would overwrite input column(s) of the same name",
            "rename them under output.columns in the config",
        )
    schema = pa.schema(list(input_schema) + added)
    missing = [name for name in partition_by if name not in schema.names]
    if missing:
        raise ConfigError(
            f"--partition-by names column(s) {missing} that the output does not have",
            f"choose from: {', '.join(schema.names)}",
        )
    if len(set(partition_by)) != len(partition_by):
        raise ConfigError(
            f"--partition-by repeats a column: {partition_by}", "name each column once"
        )
    nested = [n for n in partition_by if pa.types.is_nested(schema.field(n).type)]
    if nested:
        raise ConfigError(
            f"--partition-by column(s) {nested} are nested (struct, list or map)",
            "partition by columns of plain values such as strings, integers or dates",
        )
    return schema


def check_input_types(plan: InputPlan, model: LoadedModel) -> None:
    """Every feature column must exist in every file, with a type its contract accepts (and,
    for an MLflow model, the type its signature says; an optional column may be missing)."""
    signature = model.registry.signature_inputs if model.registry is not None else None
    optional = {str(c["name"]) for c in signature or [] if c.get("required") is False}
    for file in plan.files:
        schema = file.schema
        if signature:
            _check_signature(plan, file, signature, model.registry.source)
        for spec in model.contract.features:
            name = spec.name
            if name in plan.partition_schema.names and name not in schema.names:
                field = plan.partition_schema.field(name)
            elif name in schema.names:
                field = schema.field(name)
            elif name in optional:
                continue  # passed as missing, as MLflow does
            else:
                raise InputError(
                    f"{file.url} has no column {name!r}, a feature the model needs",
                    "add the column to the input, or check --features and the model's features",
                )
            problem = type_problem(spec, field.type)
            if problem is not None:
                raise InputError(
                    f"column {name!r} in {file.url} is {field.type}, but the model {problem}",
                    "cast it upstream, leave it out of --features, or correct the model's "
                    "contract (batch-infer inspect MODEL shows it)",
                )


def _check_signature(
    plan: InputPlan, file: Any, signature: list[dict[str, Any]], source: str
) -> None:
    """The MLflow signature's columns: each required one present, each with a type it allows."""
    for column in signature:
        name, expected = str(column["name"]), str(column.get("type"))
        if name in file.schema.names:
            found = file.schema.field(name).type
        elif name in plan.partition_schema.names:
            found = plan.partition_schema.field(name).type
        elif column.get("required") is False:
            continue
        else:
            raise InputError(
                f"{file.url} has no column {name!r} ({expected}), required by the MLflow "
                f"signature of {source}",
                "add the column to the input, or log the model with the column optional",
            )
        if signature_problem(expected, found):
            raise InputError(
                f"column {name!r} in {file.url} is {found}, but the MLflow signature of "
                f"{source} says {expected}",
                "cast it upstream, or log the model with a signature that matches the data",
            )


def _registry_key(registry: Any) -> dict[str, Any]:
    """What the run key takes from an MLflow model (the sha256 is the model's own key)."""
    record = registry.record()
    return {k: record[k] for k in ("source", "name", "version", "run_id", "sha256")}


def _registry_pin(config: RunConfig) -> tuple[Any, dict[str, Any], Any] | None:
    """The version an interrupted run of the same MLflow alias scored with, if there is one.

    A resume must use exactly that version even if the alias has moved since (or the registry
    is unreachable and the version is cached). Returns (pinned model config, its run record,
    the unpinned model config).
    """
    from .model.registry import is_mlflow_uri

    model = config.model
    path = model.path
    if not is_mlflow_uri(path) or model.registry_version or config.resume is False:
        return None
    if not path.startswith("models:/") or ("@" not in path and not path.endswith("/latest")):
        return None  # a version number, a run or a folder names one model already
    try:
        probe = open_target(
            config.output_path,
            config.output.storage_options,
            "0" * 16,
            config.output.rejects,
            catalog=config.catalog,
        )
        for key in probe.other_stagings():
            record = probe.read_run_record(key) or {}
            staged = (record.get("fingerprint") or {}).get("model_registry") or {}
            if staged.get("source") == path and staged.get("version"):
                pinned = model.model_copy(
                    update={"registry_version": staged["version"], "sha256": staged.get("sha256")}
                )
                return pinned, record, model
    except BatchInferError:
        return None  # the output is looked at again, and reported, below
    return None


def _same_work(record: dict[str, Any], config: RunConfig, plan: InputPlan) -> bool:
    """Whether the interrupted run read the same inputs: only then is its version kept."""
    before = record.get("fingerprint") or {}
    inputs = {f.url: [f.size, f.version] for f in plan.files}
    return before.get("inputs") == inputs and before.get("input_version") == plan.version


def _pinned(config: RunConfig, model: LoadedModel, resumed: bool) -> RunConfig:
    """The run's config with the MLflow version it resolved: for Dask workers and the record."""
    registry = model.registry
    if resumed:
        moved = moved_alias(registry)
        log.warning(
            "resuming with %s version %s, the version the interrupted run started with%s",
            registry.name,
            registry.version,
            f" (the alias @{registry.alias} now points at version {moved})" if moved else "",
        )
    pinned = config.model.model_copy(
        update={"registry_version": registry.version, "sha256": registry.sha256}
    )
    return config.model_copy(update={"model": pinned})


def predicted_at_of(run_date: dt.date | None) -> dt.datetime:
    if run_date is not None:
        return dt.datetime.combine(run_date, dt.time(0, 0), tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def is_inside(child: str, parent: str) -> bool:
    child, parent = child.rstrip("/") + "/", parent.rstrip("/") + "/"
    return child.startswith(parent)
