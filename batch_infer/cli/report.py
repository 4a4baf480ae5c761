"""``batch-infer report``: the HTML report of a committed output."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import exit_codes, remember_paths, setup_logging
from .options import (
    VerboseOpt,
)


def report(
    output: Annotated[str, typer.Argument(help="A committed output (folder or URL).")],
    html: Annotated[str, typer.Option("--html", help="Where to write the HTML report.")],
    verbose: VerboseOpt = False,
) -> None:
    """Write the HTML report of a committed output, from its manifest (or its data).

    Example: batch-infer report output/scores/2026-01-31 --html report.html
    """
    setup_logging(False, verbose)
    remember_paths(output, html)
    with exit_codes(verbose):
        from ..observe.publish import report_of_output

        report_of_output(output, html)
    typer.echo(f"wrote {html}")
