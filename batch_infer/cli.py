"""The ``batch-infer`` command: flags -> config -> library call -> rendered report.

Only this module (and the progress adapter) talks to the terminal. Library errors become one
line on stderr, ``Error: <what> — <how to fix>``, and the exit code of their class.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Score Parquet data with a fitted scikit-learn model and commit the scored data safely.",
)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"batch-infer {version('batch-infer')}")
        raise typer.Exit(0)


@app.callback()
def _top(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Score Parquet data with a fitted scikit-learn model and commit the scored data safely."""


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
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="joblib model or Pipeline.")]
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
        "--strict-versions", help="Refuse a model saved with another scikit-learn version."
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


@app.command()
def run(
    config: ConfigOpt = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    model: ModelOpt = None,
    scaler: ScalerOpt = None,
    features: FeaturesOpt = None,
    partition_by: PartitionOpt = None,
    batch_size: BatchOpt = None,
    mode: ModeOpt = None,
    run_date: RunDateOpt = None,
    model_version: VersionOpt = None,
    if_exists: IfExistsOpt = None,
    resume: ResumeOpt = None,
    model_sha256: ModelShaOpt = None,
    scaler_sha256: ScalerShaOpt = None,
    strict_versions: StrictOpt = False,
    rejects: RejectsOpt = None,
    max_reject_rows: MaxRejectRowsOpt = None,
    max_reject_rate: MaxRejectRateOpt = None,
    workers: WorkersOpt = None,
    outputs: OutputsOpt = None,
    contract: ContractOpt = None,
    runtime: RuntimeOpt = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="local (default): threads here; dask: a Dask cluster."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Dask scheduler address (default: DASK_SCHEDULER_ADDRESS, else a LocalCluster).",
        ),
    ] = None,
    metrics_file: Annotated[
        str | None,
        typer.Option(
            "--metrics-file",
            help="Write Prometheus metrics here (node_exporter textfile format), also on failure.",
        ),
    ] = None,
    pushgateway: Annotated[
        str | None,
        typer.Option(
            "--pushgateway",
            help="Push Prometheus metrics to this Pushgateway URL, also on failure (down: a warning).",
        ),
    ] = None,
    report_html: Annotated[
        str | None,
        typer.Option(
            "--report-html",
            help="Write a self-contained HTML report of the run (scores, rejects, drift) here.",
        ),
    ] = None,
    openlineage_url: Annotated[
        str | None,
        typer.Option(
            "--openlineage-url",
            envvar="OPENLINEAGE_URL",
            help="Send OpenLineage START and COMPLETE/FAIL events to this URL.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    output_format: FormatOpt = OutputFormat.text,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Score Parquet input with a model and commit the scored output (manifest, then _SUCCESS).

    Example: batch-infer run -c configs/nightly.yaml --run-date 2026-01-31
    """
    _setup_logging(quiet, verbose, log_format)
    overrides = _overrides(
        input,
        output,
        model,
        scaler,
        features,
        partition_by,
        batch_size,
        mode,
        run_date,
        model_version,
        outputs,
        contract,
    )
    overrides["workers"] = workers
    overrides["resume"] = resume
    overrides["engine"] = {"kind": engine, "scheduler": scheduler}
    overrides["observe"] = {
        "metrics_file": metrics_file,
        "pushgateway": pushgateway,
        "report_html": report_html,
        "openlineage_url": openlineage_url,
    }
    overrides["output"].update(
        if_exists=if_exists,
        rejects=rejects,
        max_reject_rows=max_reject_rows,
        max_reject_rate=max_reject_rate,
    )
    overrides["model"].update(
        sha256=model_sha256,
        scaler_sha256=scaler_sha256,
        strict_versions=strict_versions or None,
        runtime=runtime,
    )
    with _errors(verbose):
        from .progress import LogProgress, NoProgress, RichProgress
        from .runner import run as run_job

        _stop_on_sigterm()
        run_config = _load(config, overrides)
        if quiet:
            progress: Any = NoProgress()
        elif sys.stderr.isatty() and log_format == LogFormat.text:
            progress = RichProgress()
        else:
            progress = LogProgress()
        report = run_job(run_config, progress=progress)
    _emit(report, output_format, quiet)


@app.command()
def validate(
    config: ConfigOpt = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    model: ModelOpt = None,
    scaler: ScalerOpt = None,
    features: FeaturesOpt = None,
    partition_by: PartitionOpt = None,
    mode: ModeOpt = None,
    run_date: RunDateOpt = None,
    outputs: OutputsOpt = None,
    contract: ContractOpt = None,
    runtime: RuntimeOpt = None,
    verbose: VerboseOpt = False,
    output_format: FormatOpt = OutputFormat.text,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Check a run without writing: inputs, footers, model, feature columns, output location.

    Example: batch-infer validate -c configs/nightly.yaml --run-date 2026-01-31
    """
    _setup_logging(False, verbose, log_format)
    overrides = _overrides(
        input,
        output,
        model,
        scaler,
        features,
        partition_by,
        None,
        mode,
        run_date,
        None,
        outputs,
        contract,
    )
    overrides["model"]["runtime"] = runtime
    with _errors(verbose):
        from .runner import validate as validate_job

        report = validate_job(_load(config, overrides))
    _emit(report, output_format, quiet=False)


from .serve.command import serve as serve_command  # noqa: E402 (typer only; the server loads lazily)

app.command("serve")(serve_command)


@app.command()
def report(
    output: Annotated[str, typer.Argument(help="A committed output (folder or URL).")],
    html: Annotated[str, typer.Option("--html", help="Where to write the HTML report.")],
    verbose: VerboseOpt = False,
) -> None:
    """Write the HTML report of a committed output, from its manifest (or its data).

    Example: batch-infer report output/scores/2026-01-31 --html report.html
    """
    _setup_logging(False, verbose)
    with _errors(verbose):
        from .observe.publish import report_of_output

        report_of_output(output, html)
    typer.echo(f"wrote {html}")


@app.command()
def inspect(
    path: Annotated[
        str, typer.Argument(help="A Parquet input (file, directory, glob, URL) or a model file.")
    ],
    scaler: ScalerOpt = None,
    contract: ContractOpt = None,
    verbose: VerboseOpt = False,
    output_format: FormatOpt = OutputFormat.text,
) -> None:
    """Show a Parquet input's schema and row groups, or a model's input contract and methods.

    Example: batch-infer inspect sample_data/models/pipeline.joblib
    """
    _setup_logging(False, verbose)
    with _errors(verbose):
        from .inspection import describe

        info = describe(path, scaler=scaler, contract=contract)
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(info.data, default=str))
    else:
        typer.echo(info.text)


@app.command("contract")
def contract_command(
    model: Annotated[str, typer.Argument(help="The model file (joblib, pickle or skops).")],
    sample: Annotated[
        str | None,
        typer.Option(
            "--sample",
            help="Training data (Parquet) whose pandas dtypes and categories refine the contract.",
        ),
    ] = None,
    scaler: ScalerOpt = None,
    features: FeaturesOpt = None,
    write: Annotated[
        str | None,
        typer.Option(
            "--write",
            "-w",
            help="Where to save it (default: print). Runs pick up <model stem>.contract.json.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Derive a model's input contract (what each feature must be), optionally from a sample.

    Save it beside the model when derivation cannot know (categories of a custom model, training
    dtypes); runs use <model stem>.contract.json automatically, or --contract PATH.

    Example: batch-infer contract models/churn.joblib --sample train.parquet -w models/churn.contract.json
    """
    _setup_logging(False, verbose)
    with _errors(verbose):
        from .model.load import contract_for

        text = contract_for(model, scaler=scaler, features=features, sample=sample, write=write)
    typer.echo(text if write is None else f"wrote {write}")


@app.command("compile")
def compile_command(
    model: Annotated[str, typer.Option("--model", "-m", help="The model file (joblib or skops).")],
    scaler: ScalerOpt = None,
    sample: Annotated[
        str | None,
        typer.Option(
            "--sample",
            help="Parquet data to verify on (up to 100,000 rows), beside rows probing the "
            "model's split thresholds and value ranges.",
        ),
    ] = None,
    features: FeaturesOpt = None,
    contract: ContractOpt = None,
    verbose: VerboseOpt = False,
    output_format: FormatOpt = OutputFormat.text,
) -> None:
    """Build a compiled runtime for a model, verify it against the model, cache it.

    Verified means: on the sample, labels identical and probabilities/values within 1e-12 of
    the model's own methods; otherwise nothing is cached (exit 4). Runs then use it by
    default (--runtime auto). The cache is BATCH_INFER_CACHE_DIR (default ~/.cache/batch-infer).

    Example: batch-infer compile -m models/churn.joblib --sample data/train.parquet
    """
    _setup_logging(False, verbose)
    with _errors(verbose):
        from .config import ModelConfig
        from .model.compiled import compile_model

        config = ModelConfig(path=model, scaler=scaler, features=features, contract=contract)
        result = compile_model(model, scaler, sample, config)
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(result, default=str))
        return
    check = result["verification"]
    diffs = ", ".join(f"{m} {d:.1e}" for m, d in check["max_abs_diff"].items()) or "labels only"
    typer.echo(
        "\n".join(
            [
                f"Compiled {result['model_type']} with {result['engine']} "
                f"in {result['build_seconds']:.1f} s",
                f"  methods   {', '.join(result['methods'])}",
                f"  verified  {check['rows']:,} rows ({check['sample']}): labels identical, "
                f"max |difference| {diffs} (tolerance {check['tolerance']:g})",
                f"  cached    {result['folder']}",
                "  runs of this model now use it (--runtime auto); --runtime sklearn opts out",
            ]
        )
    )


def _overrides(
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


def _load(config_file: Path | None, overrides: dict[str, Any]) -> Any:
    from . import redaction
    from .config import load_config

    config = load_config(config_file, overrides)
    redaction.remember_config(config.model_dump(mode="json"))
    redaction.install()
    return config


def _emit(report: Any, output_format: OutputFormat, quiet: bool) -> None:
    from .redaction import redact_data, redact_text

    if output_format is OutputFormat.json:
        typer.echo(json.dumps(redact_data(report.to_dict())))
    elif not quiet:
        typer.echo(redact_text(report.summary()))


class _errors:
    """Turn exceptions into one stderr line and an exit code; a traceback only with --verbose."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, typer.Exit | SystemExit):
            return False
        from .errors import explain

        if self.verbose:
            from .redaction import redact_text

            text = "".join(traceback.format_exception(exc_type, exc, tb))
            sys.stderr.write(redact_text(text))
        known = explain(exc)
        _fail(known.what, known.fix, known.exit_code)


def main() -> None:
    """The ``batch-infer`` entry point: usage errors are one line too, never a wrapped box."""
    try:
        _main()
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: object) -> NoReturn:
    """End the process with ``code`` without finalizing the interpreter.

    pyarrow's pool threads may still be releasing Python objects a finished ``ds.write_dataset``
    held (its file visitor, an exception raised in the batches it read, an fsspec filesystem).
    One that asks for the GIL once finalization has begun is killed by CPython inside a C++
    destructor, and the process aborts ("terminate called without an active exception",
    SIGABRT) instead of exiting with its code. Nothing of batch-infer's needs finalizing: its
    files are closed and its lock released before ``run`` returns or raises.
    """
    if not isinstance(code, int):
        if code is not None:
            sys.stderr.write(f"{code}\n")
        code = 0 if code is None else 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            pass
    os._exit(code)


def _main() -> None:
    try:
        code = app(prog_name="batch-infer", standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("Error: interrupted; nothing was committed — rerun the same command\n")
        raise SystemExit(130) from None
    except Exception as exc:
        # click's exceptions (typer vendors its own copy): usage errors and the like
        if not (
            hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)
        ):
            raise
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
        else:
            command = ctx.command_path if ctx is not None else "batch-infer"
            sys.stderr.write(f"Error: {exc.format_message()} — see '{command} --help'\n")
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)


def _stop_on_sigterm() -> None:
    """SIGTERM (Airflow, systemd, Kubernetes) stops the run like Ctrl-C does: exit 143."""
    import signal

    from .errors import Interrupted

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("SIGTERM", 128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _fail(what: str, fix: str, code: int) -> NoReturn:
    from .redaction import redact_text

    line = f"Error: {what} — {fix}" if fix else f"Error: {what}"
    sys.stderr.write(redact_text(line) + "\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _setup_logging(quiet: bool, verbose: bool, log_format: str = "text") -> None:
    """Lines on stderr (text or JSON); at a terminal the progress bar replaces the INFO lines."""
    from .logs import setup

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
