"""The ``batch-infer serve`` command: flags -> ServeConfig -> ``server.serve``.

Imports nothing heavy at module level (no pyarrow, FastAPI, uvicorn or gRPC), so registering it
in the CLI keeps ``batch-infer --help`` fast.
"""

from __future__ import annotations

import logging
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML config file; env vars and flags override it."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="joblib/skops model or Pipeline, or an MLflow model URI (models:/NAME@ALIAS).",
        ),
    ] = None,
    scaler: Annotated[
        str | None, typer.Option("--scaler", help="Separate joblib scaler, applied first.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The model's name in URLs (default: the model file's stem; an MLflow model's "
            "registered name).",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help="REST port (default 8080).")
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            "--grpc-port", help="gRPC port (default 8081; serve.grpc_port: null for none)."
        ),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option("--max-batch-size", help="Rows gathered into one model call (default 64)."),
    ] = None,
    max_batch_time_ms: Annotated[
        float | None,
        typer.Option(
            "--max-batch-time-ms",
            help="Longest a request waits for others to join its batch (default 2).",
        ),
    ] = None,
    cache_size: Annotated[
        int | None,
        typer.Option(
            "--cache-size", help="Rows whose outputs are kept (LRU) and reused (default 0: off)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help="Server processes sharing the ports, one model copy each (default 1)."
        ),
    ] = None,
    outputs: Annotated[
        str | None,
        typer.Option(
            "--outputs",
            help="Model methods to answer with, comma-separated: predict, predict_proba, "
            "decision_function, score_samples (default: predict, + predict_proba for classifiers).",
        ),
    ] = None,
    model_sha256: Annotated[
        str | None,
        typer.Option("--model-sha256", help="Refuse to load a model file with another sha256."),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            help="auto (default): the verified compiled runtime if cached, else scikit-learn; "
            "compiled: insist; sklearn: never compiled.",
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="BATCH_INFER_LOG_FORMAT",
            help="Log lines on stderr: text, or json (one object per line, with access logs).",
        ),
    ] = LogFormat.text,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs, access logs and tracebacks.")
    ] = False,
) -> None:
    """Serve a model online (Open Inference Protocol over REST and gRPC): the outputs of `run`.

    Example: batch-infer serve --model models/churn.joblib --http-port 8080 --grpc-port 8081
    """
    from .. import redaction
    from ..logs import setup

    setup(logging.DEBUG if verbose else logging.INFO, str(log_format))
    redaction.install()  # every log line masked: credentials from the environment, URLs
    for noisy in ("botocore", "s3fs", "fsspec", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    overrides: dict[str, Any] = {
        "model": {"path": model, "scaler": scaler, "sha256": model_sha256, "runtime": runtime},
        "methods": outputs,
        "serve": {
            "name": name,
            "host": host,
            "http_port": http_port,
            "grpc_port": grpc_port,
            "max_batch_size": max_batch_size,
            "max_batch_time_ms": max_batch_time_ms,
            "cache_size": cache_size,
            "workers": workers,
        },
    }
    try:
        from ..config import load_serve_config
        from .server import serve as run_server

        serve_config = load_serve_config(config, overrides)
        redaction.remember_config(serve_config.model_dump(mode="json"))  # storage options, ...
        access_log = log_format == LogFormat.json or verbose
        code = run_server(serve_config, str(log_format), access_log)
    except Exception as exc:
        _fail(exc, verbose)
    if code:
        raise typer.Exit(code)


def _fail(exc: BaseException, verbose: bool) -> NoReturn:
    """One line on stderr, ``Error: what — fix``, and the error's exit code (as `run` does)."""
    from ..errors import explain
    from ..redaction import redact_text

    if verbose:
        sys.stderr.write(redact_text("".join(traceback.format_exception(exc))))
    known = explain(exc)
    sys.stderr.write(redact_text(f"Error: {known}") + "\n")
    sys.stderr.flush()
    raise typer.Exit(known.exit_code)
