"""``batch-infer inspect``, ``contract`` and ``compile``: what a model or an input is, and its
compiled runtime. The library is imported inside the commands: ``--help`` stays instant.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .common import exit_codes, remember_paths, setup_logging
from .options import (
    CatalogOpt,
    ContractOpt,
    FeaturesOpt,
    FormatOpt,
    OutputFormat,
    ScalerOpt,
    VerboseOpt,
    WarehouseOpt,
)


def inspect(
    path: Annotated[
        str,
        typer.Argument(
            help="A Parquet input (file, directory, glob, URL), a table as --input names it "
            "(delta:PATH[@VERSION], iceberg:NAMESPACE.TABLE[@SNAPSHOT_ID]), a model file, or an "
            "MLflow model (models:/NAME@ALIAS, runs:/RUN_ID/PATH, a folder with an MLmodel file)."
        ),
    ],
    scaler: ScalerOpt = None,
    contract: ContractOpt = None,
    catalog: CatalogOpt = None,
    warehouse: WarehouseOpt = None,
    verbose: VerboseOpt = False,
    output_format: FormatOpt = OutputFormat.text,
) -> None:
    """Show a Parquet input's schema and row groups; a Delta or Iceberg table's schema,
    partitioning, version or snapshot, rows, files and batch-infer commits; or a model's input
    contract and methods.

    Example: batch-infer inspect delta:/lake/scores/churn
    """
    setup_logging(False, verbose)
    remember_paths(path, scaler, contract)
    with exit_codes(verbose):
        from ..config import CatalogConfig
        from ..inspection import describe

        defaults = CatalogConfig()
        tables = CatalogConfig(
            name=catalog or defaults.name, warehouse=warehouse or defaults.warehouse
        )
        info = describe(path, scaler=scaler, contract=contract, catalog=tables)
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(info.data, default=str))
    else:
        typer.echo(info.text)


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
    setup_logging(False, verbose)
    with exit_codes(verbose):
        from ..model.load import contract_for

        text = contract_for(model, scaler=scaler, features=features, sample=sample, write=write)
    typer.echo(text if write is None else f"wrote {write}")


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
    setup_logging(False, verbose)
    with exit_codes(verbose):
        from ..config import ModelConfig
        from ..model.compiled import compile_model

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
