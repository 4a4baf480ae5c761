"""The flags commands share, each defined once (Typer ``Annotated`` aliases)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file; env vars and flags override it."),
]
InputOpt = Annotated[
    str | None, typer.Option("--input", "-i", help="Parquet file, directory, glob or URL.")
]
OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Output root (local or URL); may use {run_date}."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="joblib/skops model or Pipeline, or an MLflow model: models:/NAME@ALIAS, "
        "models:/NAME/VERSION, runs:/RUN_ID/PATH, a folder with an MLmodel file.",
    ),
]
ScalerOpt = Annotated[
    str | None, typer.Option("--scaler", help="Separate joblib scaler, applied first.")
]
FeaturesOpt = Annotated[
    str | None,
    typer.Option("--features", help="Comma-separated feature columns (default: the model's)."),
]
PartitionOpt = Annotated[
    str | None, typer.Option("--partition-by", help="Comma-separated columns to hive-partition by.")
]
WhereOpt = Annotated[
    str | None,
    typer.Option(
        "--where",
        help="SQL condition: score only the rows it selects, e.g. \"event_date = '2026-01-05'\"; "
        "partitions it excludes are not read.",
    ),
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Rows per batch read and scored.")
]
ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="error (default): refuse a committed output; overwrite."),
]
RunDateOpt = Annotated[
    str | None,
    typer.Option("--run-date", help="Logical date YYYY-MM-DD: predicted_at and {run_date}."),
]
VersionOpt = Annotated[
    str | None, typer.Option("--model-version", help="model_version value (default: sha256[:12]).")
]
IfExistsOpt = Annotated[
    str | None,
    typer.Option(
        "--if-exists",
        help="With --mode error and a committed output: fail (exit 5) or skip (exit 0).",
    ),
]
ResumeOpt = Annotated[
    bool | None,
    typer.Option(
        "--resume/--no-resume",
        help="Default: resume an interrupted run of the same inputs, model and config. "
        "--resume insists (refused if they changed); --no-resume starts over.",
    ),
]
ModelShaOpt = Annotated[
    str | None,
    typer.Option("--model-sha256", help="Refuse to load a model file with another sha256."),
]
ScalerShaOpt = Annotated[
    str | None,
    typer.Option("--scaler-sha256", help="Refuse to load a scaler file with another sha256."),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict-versions",
        help="Refuse a model saved with another scikit-learn version (an MLflow model: "
        "recorded with other versions of the libraries that load it).",
    ),
]
RejectsOpt = Annotated[
    str | None,
    typer.Option("--rejects", help="Where rejected rows go (default: <output>/_rejects)."),
]
MaxRejectRowsOpt = Annotated[
    int | None,
    typer.Option("--max-reject-rows", help="Rejected rows allowed before failing (default 0)."),
]
MaxRejectRateOpt = Annotated[
    float | None,
    typer.Option(
        "--max-reject-rate", help="Rejected share of input rows allowed (0-1, default 0)."
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Row groups scored side by side (default: cores).")
]
OutputsOpt = Annotated[
    str | None,
    typer.Option(
        "--outputs",
        help="Model methods to call, comma-separated: predict, predict_proba, "
        "decision_function, score_samples (default: predict, + predict_proba for classifiers).",
    ),
]
ContractOpt = Annotated[
    str | None,
    typer.Option(
        "--contract",
        help="Input contract file (JSON) (default: <model stem>.contract.json beside the model).",
    ),
]
RuntimeOpt = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        help="auto (default): the verified compiled runtime if `batch-infer compile` cached "
        "one for this model, else scikit-learn; compiled: insist; sklearn: never compiled.",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress, no summary; errors only.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")]
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="BATCH_INFER_LOG_FORMAT",
        help="Log lines on stderr: text, or json (one object per line, with the run id).",
    ),
]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--output-format", help="text, or json: the last stdout line is one JSON object."),
]
CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        help="pyiceberg catalog of iceberg: inputs and outputs (default: 'default'; none "
        "configured: an embedded SQLite catalog in --warehouse).",
    ),
]
WarehouseOpt = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        help="Warehouse folder of the embedded Iceberg catalog (default ./warehouse).",
    ),
]
