"""Pydantic models of a run, and how YAML, environment variables and flags are layered into one.

Precedence, lowest to highest: model defaults < YAML file (``--config``) < ``BATCH_INFER_*``
environment variables < command-line flags. Environment variables name a field by its path with
``__`` between levels: ``BATCH_INFER_OUTPUT__MODE=overwrite``, ``BATCH_INFER_RUN_DATE=2026-01-31``.
Relative paths in a config file are relative to the file's folder (see ``PATH_FIELDS``); in flags
and environment variables, to the working directory.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .redaction import redact_data

ENV_PREFIX = "BATCH_INFER_"


def _split_csv(value: Any) -> Any:
    """Accept ``"a,b,c"`` wherever a list of names is expected (flags and env vars)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputConfig(_Section):
    """Where the Parquet input is and how to read it."""

    path: str = Field(
        description="File, directory, glob or hive-partitioned dataset; any fsspec URL."
    )
    storage_options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int | None = Field(
        None,
        gt=0,
        le=2**31 - 1,
        description="Rows per batch read and scored; default: ~64 MiB of each row group.",
    )
    allow_lossy_types: bool = Field(
        False,
        description="Let a column whose type differs between files be read as a type that "
        "changes some files' values (int64 with float64 as float64, uint64 with int64 as "
        "int64); default: refuse such input (exit 3), naming the files and the column.",
    )
    where: str | None = Field(
        None,
        description='SQL condition selecting the rows to score, e.g. "event_date = '
        "'2026-01-05' AND score > 0.5\"; files of partitions it excludes are not read.",
    )


class ModelConfig(_Section):
    """The fitted model artifact (and an optional separate scaler)."""

    path: str
    scaler: str | None = None
    sha256: str | None = Field(
        None, description="Pin: the model file's sha256, checked before loading."
    )
    registry_version: str | None = Field(
        None,
        description="MLflow models:/NAME@ALIAS only: the registered version to load instead of "
        "the alias's current one (a run pins it itself, for its workers and its resume).",
    )
    scaler_sha256: str | None = Field(None, description="Pin for the scaler file.")
    trusted_types: list[str] = Field(
        default_factory=list, description=".skops only: types to trust beyond the defaults."
    )
    strict_versions: bool = Field(
        False, description="Refuse a model saved with another scikit-learn version (default: warn)."
    )
    features: list[str] | None = None
    version: str | None = Field(None, description="Defaults to the model file's sha256[:12].")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    runtime: Literal["auto", "sklearn", "compiled"] = Field(
        "auto",
        description="auto: the verified compiled runtime when `batch-infer compile` cached one "
        "for this model, else scikit-learn; compiled: insist on it; sklearn: never.",
    )
    contract: str | None = Field(
        None,
        description="Input contract file (JSON); default: <model stem>.contract.json if present.",
    )

    _split_features = field_validator("features", mode="before")(_split_csv)


class OutputColumns(_Section):
    """Names of the columns the run adds."""

    prediction: str = "prediction"
    probability: str = "probability"
    decision: str = "decision"
    score: str = "score"
    predicted_at: str = "predicted_at"
    model_version: str = "model_version"


class OutputConfig(_Section):
    """Where and how the scored data is written and committed."""

    path: str = Field(description="Output root; may contain {run_date}.")
    partition_by: list[str] = Field(default_factory=list)
    mode: Literal["error", "overwrite", "overwrite-partitions"] = Field(
        "error",
        description="error: refuse a committed output; overwrite: replace it; "
        "overwrite-partitions: replace only the partitions this run writes",
    )
    if_exists: Literal["fail", "skip"] = Field(
        "fail",
        description="With mode error and a committed output: fail (exit 5) or skip (exit 0).",
    )
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = "zstd"
    row_group_size: int = Field(131_072, gt=0, le=2**31 - 1)
    max_rows_per_file: int = Field(1_048_576, gt=0, le=2**31 - 1)
    methods: list[str] | None = Field(
        None,
        description="Model methods to call: predict, predict_proba, decision_function, "
        "score_samples (default: predict, plus predict_proba for classifiers).",
    )
    columns: OutputColumns = Field(default_factory=OutputColumns)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    rejects: str | None = Field(
        None,
        description="Where rejected rows go (same storage as the output); default <output>/_rejects.",
    )
    commit_concurrency: int = Field(
        32,
        gt=0,
        le=1024,
        description="Files copied, moved or deleted at once by the commit (on S3 the "
        "connection pool is raised to match unless max_pool_connections is set).",
    )
    max_reject_rows: int | None = Field(
        None, ge=0, description="Rejected rows allowed (default 0)."
    )
    max_reject_rate: float | None = Field(
        None, ge=0, le=1, description="Rejected share of input rows allowed (default 0)."
    )

    _split_partition_by = field_validator("partition_by", "methods", mode="before")(_split_csv)


class EngineConfig(_Section):
    """Where fragments are scored: this process's threads, or a Dask cluster's workers."""

    kind: Literal["local", "dask"] = Field(
        "local", description="local: a thread pool here; dask: tasks on a Dask cluster."
    )
    scheduler: str | None = Field(
        None,
        description="Dask scheduler address (tcp://host:8786); default: Dask's own configuration "
        "(DASK_SCHEDULER_ADDRESS), else a LocalCluster of worker processes sized to the cores.",
    )
    shared_filesystem: bool = Field(
        False,
        description="Local paths are visible to every worker (NFS, one machine): allow them "
        "with a remote scheduler.",
    )
    workers: int | None = Field(
        None, gt=0, le=1024, description="Worker processes of the LocalCluster (default: cores)."
    )


class CatalogConfig(_Section):
    """The Iceberg catalog of ``iceberg:NAMESPACE.TABLE`` inputs and outputs (pyiceberg)."""

    name: str = Field(
        "default",
        description="The pyiceberg catalog (.pyiceberg.yaml, PYICEBERG_CATALOG__<NAME>__*); with "
        "none configured, an embedded SQLite catalog in the warehouse folder.",
    )
    warehouse: str = Field(
        "warehouse",
        description="Folder or URL of the embedded catalog's warehouse (when no catalog is "
        "configured).",
    )
    properties: dict[str, Any] = Field(
        default_factory=dict,
        description="pyiceberg catalog properties (uri, type, warehouse, s3.*, ...), overriding "
        "pyiceberg's own configuration of that catalog.",
    )


class ObserveConfig(_Section):
    """What a run publishes besides its output: metrics, an HTML report, lineage events."""

    metrics_file: str | None = Field(
        None,
        description="Write Prometheus metrics here (node_exporter textfile format, atomically).",
    )
    pushgateway: str | None = Field(
        None, description="Push Prometheus metrics to this Pushgateway, also when the run fails."
    )
    report_html: str | None = Field(
        None, description="Write a self-contained HTML report of the run here (also on failure)."
    )
    openlineage_url: str | None = Field(
        None,
        description="Send OpenLineage START and COMPLETE/FAIL events here (default: OPENLINEAGE_URL).",
    )
    statistics: bool = Field(
        True,
        description="Sketch features and outputs while scoring (the report's histograms and "
        "drift, kept in the manifest); false saves their cost (under 5%, see make bench).",
    )


class ServeSection(_Section):
    """How `batch-infer serve` listens and batches (the `serve:` section of a config file)."""

    name: str | None = Field(None, description="The model's name in URLs (default: file stem).")
    host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    grpc_port: int | None = Field(8081, ge=0, le=65535, description="None: no gRPC server.")
    max_batch_size: int = Field(64, gt=0, le=65536)
    max_batch_time_ms: float = Field(2.0, ge=0, le=10_000)
    cache_size: int = Field(0, ge=0, description="Rows whose outputs are kept (LRU); 0: off.")
    workers: int = Field(1, gt=0, le=256, description="Server processes sharing the ports.")
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM, in-flight requests get this long to finish."
    )


class ServeConfig(_Section):
    """Everything `batch-infer serve` needs: the model as for `run`, its outputs, the server."""

    model: ModelConfig
    methods: list[str] | None = Field(
        None, description="Model methods to answer with, as output.methods of a run."
    )
    columns: OutputColumns = Field(default_factory=OutputColumns)
    serve: ServeSection = Field(default_factory=ServeSection)

    _split_methods = field_validator("methods", mode="before")(_split_csv)


class RunConfig(_Section):
    """Everything one run needs; ``batch_infer.run(RunConfig(...))`` needs nothing else."""

    input: InputConfig
    model: ModelConfig
    output: OutputConfig
    run_date: dt.date | None = Field(
        None, description="Logical date: sets predicted_at to its midnight UTC and {run_date}."
    )
    resume: bool | None = Field(
        None,
        description="None: resume an interrupted run with the same inputs, model and config; "
        "True: insist on resuming; False: start over.",
    )
    workers: int | None = Field(
        None, gt=0, le=256, description="Fragments scored side by side (default: the cores)."
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    observe: ObserveConfig = Field(default_factory=ObserveConfig)
    serve: ServeSection | None = Field(
        None, description="Read by `batch-infer serve` only; a run ignores it."
    )

    @property
    def output_path(self) -> str:
        """The output root with ``{run_date}`` filled in."""
        if "{run_date}" not in self.output.path:
            return self.output.path
        if self.run_date is None:
            raise ConfigError(
                f"the output path {self.output.path!r} uses {{run_date}} but no run date is set",
                "pass --run-date YYYY-MM-DD (or set run_date in the config)",
            )
        return self.output.path.replace("{run_date}", self.run_date.isoformat())

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with every secret masked (for manifests, reports, logs)."""
        return redact_data(self.model_dump(mode="json"))


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge nested dicts; values in ``override`` win, ``None`` in ``override`` is ignored."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            current = merged.get(key)
            merged[key] = deep_merge(current if isinstance(current, Mapping) else {}, value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file; a missing or malformed file is a ConfigError naming it."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {str(path)!r}: {exc.strerror or exc}",
            "check the --config path",
        ) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not valid YAML: {exc}", "fix the YAML syntax"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping at the top level",
            "see configs/ for examples",
        )
    return data


# Settings that name a file or folder. In a config file a relative one means "beside the file",
# so a job runs the same from cron's $HOME as from the repo; flags and environment variables
# keep meaning the working directory, as for any command.
PATH_FIELDS = (
    ("input", "path"),
    ("model", "path"),
    ("model", "scaler"),
    ("model", "contract"),
    ("output", "path"),
    ("output", "rejects"),
    ("observe", "metrics_file"),
    ("observe", "report_html"),
    ("catalog", "warehouse"),
)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's settings, its relative paths anchored to the file's folder."""
    data = read_yaml(path)
    folder = os.path.dirname(os.path.abspath(path))
    for section, key in PATH_FIELDS:
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            node[key] = anchored(node[key], folder)
    return data


def anchored(path: str, folder: str) -> str:
    """``path`` relative to ``folder``; URLs, absolute and ``~`` paths are returned unchanged."""
    if path.startswith(("iceberg:", "models:/", "runs:/")):  # names in a catalog or registry
        return path
    if path.startswith("delta:"):
        return "delta:" + anchored(path.removeprefix("delta:"), folder)
    if not path or _URL.match(path) or "::" in path or path.startswith("~"):
        return path
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(folder, path))


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``BATCH_INFER_A__B=value`` variables into ``{"a": {"b": value}}``.

    Values that look like JSON lists or objects are decoded, so storage options can be set too.
    """
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        if keys[0] not in RunConfig.model_fields:
            continue  # BATCH_INFER_HOME and the like belong to someone else
        value: Any = raw
        if raw.strip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                pass
        node = result
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return result


def load_config(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunConfig:
    """Build a RunConfig from a YAML file, then env vars, then explicit overrides (flags)."""
    data = read_config_file(config_file) if config_file else {}
    data = deep_merge(data, env_overrides(os.environ if environ is None else environ))
    data = deep_merge(data, overrides or {})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc), _fix_hint(exc, config_file)) from None


def load_serve_config(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """The same layering as ``load_config``, for `serve`: the file's model, outputs and serve section.

    A config file written for `run` serves as is: ``model``, ``output.methods`` and
    ``output.columns`` are taken from it, input and output paths are ignored.
    """
    data = read_config_file(config_file) if config_file else {}
    data = deep_merge(data, env_overrides(os.environ if environ is None else environ))
    data = deep_merge(data, overrides or {})
    output = data.get("output") or {}
    picked = {
        "model": data.get("model"),
        "methods": data.get("methods", output.get("methods")),
        "columns": data.get("columns", output.get("columns")),
        "serve": data.get("serve"),
    }
    try:
        return ServeConfig.model_validate({k: v for k, v in picked.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc), _fix_hint(exc, config_file)) from None


# The flag that sets a config field, to name it in error messages.
FLAGS = {
    "input.path": "--input",
    "input.batch_size": "--batch-size",
    "input.where": "--where",
    "model.path": "--model",
    "model.scaler": "--scaler",
    "model.features": "--features",
    "model.version": "--model-version",
    "model.sha256": "--model-sha256",
    "model.contract": "--contract",
    "model.runtime": "--runtime",
    "output.methods": "--outputs",
    "model.scaler_sha256": "--scaler-sha256",
    "output.path": "--output",
    "output.partition_by": "--partition-by",
    "output.mode": "--mode",
    "output.rejects": "--rejects",
    "output.max_reject_rows": "--max-reject-rows",
    "output.max_reject_rate": "--max-reject-rate",
    "output.if_exists": "--if-exists",
    "resume": "--resume/--no-resume",
    "run_date": "--run-date",
    "workers": "--workers",
    "engine.kind": "--engine",
    "engine.scheduler": "--scheduler",
    "catalog.name": "--catalog",
    "catalog.warehouse": "--warehouse",
    "observe.metrics_file": "--metrics-file",
    "observe.pushgateway": "--pushgateway",
    "observe.report_html": "--report-html",
    "observe.openlineage_url": "--openlineage-url",
    "methods": "--outputs",
    "serve.name": "--name",
    "serve.host": "--host",
    "serve.http_port": "--http-port",
    "serve.grpc_port": "--grpc-port",
    "serve.max_batch_size": "--max-batch-size",
    "serve.max_batch_time_ms": "--max-batch-time-ms",
    "serve.cache_size": "--cache-size",
    "serve.workers": "--workers",
}


def describe_validation_error(exc: ValidationError) -> str:
    """One clause per problem: ``output.mode (--mode) got 'x': Input should be ...``."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "config"
        flag = f" ({FLAGS[where]})" if where in FLAGS else ""
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field")
            continue
        got = "" if err["type"] == "missing" else f" got {err.get('input')!r}"
        problems.append(f"{where}{flag}{got}: {err['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def _fix_hint(exc: ValidationError, config_file: str | Path | None) -> str:
    if any(err["type"] == "extra_forbidden" for err in exc.errors()):
        return "fix the field's spelling or remove it; configs/*.yaml shows every field"
    if all(err["type"] != "missing" for err in exc.errors()):
        return "correct the value (see the command's --help and configs/ for examples)"
    source = f"in {str(config_file)!r}, " if config_file else ""
    return f"set the field {source}with its flag, or a BATCH_INFER_<SECTION>__<FIELD> variable"
