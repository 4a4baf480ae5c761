"""The ``batch-infer`` command: flags -> config -> library call -> rendered report.

One module per command group (``run``, ``models``, ``report``; ``serve`` lives with the server);
``common`` turns errors into exit codes. Only this package (and the progress adapter) talks to
the terminal, and nothing in the library imports it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, NoReturn

import typer

from ..serve.command import serve as serve_command
from . import models, report, run

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Score Parquet data with a fitted scikit-learn model and commit the scored data safely.",
)


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


app.command("run")(run.run)
app.command("validate")(run.validate)
app.command("serve")(serve_command)
app.command("report")(report.report)
app.command("inspect")(models.inspect)
app.command("contract")(models.contract_command)
app.command("compile")(models.compile_command)


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
