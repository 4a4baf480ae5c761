"""``batch-infer run`` and ``validate``: score and commit, or check without writing.

The library is imported inside the commands so that ``--help`` and completion stay instant.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import emit, exit_codes, flag_overrides, load, setup_logging, stop_on_sigterm
from .options import (
    BatchOpt,
    CatalogOpt,
    ConfigOpt,
    ContractOpt,
    FeaturesOpt,
    FormatOpt,
    IfExistsOpt,
    InputOpt,
    LogFormat,
    LogFormatOpt,
    MaxRejectRateOpt,
    MaxRejectRowsOpt,
    ModelOpt,
    ModelShaOpt,
    ModeOpt,
    OutputFormat,
    OutputOpt,
    OutputsOpt,
    PartitionOpt,
    QuietOpt,
    RejectsOpt,
    ResumeOpt,
    RunDateOpt,
    RuntimeOpt,
    ScalerOpt,
    ScalerShaOpt,
    StrictOpt,
    VerboseOpt,
    VersionOpt,
    WarehouseOpt,
    WhereOpt,
    WorkersOpt,
)


def run(
    config: ConfigOpt = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    model: ModelOpt = None,
    scaler: ScalerOpt = None,
    features: FeaturesOpt = None,
    partition_by: PartitionOpt = None,
    batch_size: BatchOpt = None,
    where: WhereOpt = None,
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
    catalog: CatalogOpt = None,
    warehouse: WarehouseOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    output_format: FormatOpt = OutputFormat.text,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Score Parquet input with a model and commit the scored output (manifest, then _SUCCESS).

    Example: batch-infer run -c configs/nightly.yaml --run-date 2026-01-31
    """
    setup_logging(quiet, verbose, log_format)
    overrides = flag_overrides(
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
    overrides["input"]["where"] = where
    overrides["workers"] = workers
    overrides["catalog"] = {"name": catalog, "warehouse": warehouse}
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
    with exit_codes(verbose):
        from ..progress import LogProgress, NoProgress, RichProgress
        from ..runner import run as run_job

        stop_on_sigterm()
        run_config = load(config, overrides)
        if quiet:
            progress: Any = NoProgress()
        elif sys.stderr.isatty() and log_format == LogFormat.text:
            progress = RichProgress()
        else:
            progress = LogProgress()
        report = run_job(run_config, progress=progress)
    emit(report, output_format, quiet)


def validate(
    config: ConfigOpt = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    model: ModelOpt = None,
    scaler: ScalerOpt = None,
    features: FeaturesOpt = None,
    partition_by: PartitionOpt = None,
    where: WhereOpt = None,
    mode: ModeOpt = None,
    run_date: RunDateOpt = None,
    outputs: OutputsOpt = None,
    contract: ContractOpt = None,
    runtime: RuntimeOpt = None,
    catalog: CatalogOpt = None,
    warehouse: WarehouseOpt = None,
    verbose: VerboseOpt = False,
    output_format: FormatOpt = OutputFormat.text,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Check a run without writing: inputs, footers, model, feature columns, output location.

    Example: batch-infer validate -c configs/nightly.yaml --run-date 2026-01-31
    """
    setup_logging(False, verbose, log_format)
    overrides = flag_overrides(
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
    overrides["input"]["where"] = where
    overrides["catalog"] = {"name": catalog, "warehouse": warehouse}
    with exit_codes(verbose):
        from ..runner import validate as validate_job

        report = validate_job(load(config, overrides))
    emit(report, output_format, quiet=False)
