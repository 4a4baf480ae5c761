"""What every command does around the library call: flags to config, logs, errors to exit codes.

Library errors become one line on stderr, ``Error: <what> — <how to fix>``, and the exit code
``errors.explain`` gives them. Secrets are masked on the way out (``redaction``).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import typer

from .. import redaction
from ..errors import Interrupted, explain
from ..logs import setup
from ..redaction import redact_data, redact_text
from .options import OutputFormat


def flag_overrides(
    input: str | None,
    output: str | None,
    model: str | None,
    scaler: str | None,
    features: str | None,
    partition_by: str | None,
    batch_size: int | None,
    mode: str | None,
    run_date: str | None,
    model_version: str | None,
    outputs: str | None = None,
    contract: str | None = None,
) -> dict[str, Any]:
    """Flags as a partial config; unset flags are None and leave lower layers alone."""
    return {
        "input": {"path": input, "batch_size": batch_size},
        "model": {
            "path": model,
            "scaler": scaler,
            "features": features,
            "version": model_version,
            "contract": contract,
        },
        "output": {"path": output, "partition_by": partition_by, "mode": mode, "methods": outputs},
        "run_date": run_date,
    }


def remember_paths(*paths: str | None) -> None:
    """Paths given on the command line may carry credentials: mask them in whatever we print."""
    redaction.remember_config({"paths": [p for p in paths if p]})
    redaction.install()


def load(config_file: Path | None, overrides: dict[str, Any]) -> Any:
    from ..config import load_config  # pydantic: only once a command runs, --help stays instant

    config = load_config(config_file, overrides)
    redaction.remember_config(config.model_dump(mode="json"))
    redaction.install()
    return config


def emit(report: Any, output_format: OutputFormat, quiet: bool) -> None:
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(redact_data(report.to_dict())))
    elif not quiet:
        typer.echo(redact_text(report.summary()))


class exit_codes:
    """Turn exceptions into one stderr line and an exit code; a traceback only with --verbose."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, typer.Exit | SystemExit):
            return False
        if self.verbose:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            sys.stderr.write(redact_text(text))
        known = explain(exc)
        fail(known.what, known.fix, known.exit_code)


def stop_on_sigterm() -> None:
    """SIGTERM (Airflow, systemd, Kubernetes) stops the run like Ctrl-C does: exit 143."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("SIGTERM", 128 + signum)

    signal.signal(signal.SIGTERM, handler)


def fail(what: str, fix: str, code: int) -> NoReturn:
    line = f"Error: {what} — {fix}" if fix else f"Error: {what}"
    sys.stderr.write(redact_text(line) + "\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def setup_logging(quiet: bool, verbose: bool, log_format: str = "text") -> None:
    """Lines on stderr (text or JSON); at a terminal the progress bar replaces the INFO lines."""
    if verbose:
        level = logging.DEBUG
    elif quiet or (sys.stderr.isatty() and log_format == "text"):
        level = logging.WARNING
    else:
        level = logging.INFO
    setup(level, str(log_format))
    # Their DEBUG output includes request headers (the access key id among them): never wanted.
    for noisy in ("botocore", "s3fs", "fsspec", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
