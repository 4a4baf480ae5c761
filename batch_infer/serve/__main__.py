"""``python -m batch_infer.serve``: the serve command on its own (``batch-infer serve`` in the CLI)."""

import typer

from .command import serve

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(serve)

if __name__ == "__main__":
    app(prog_name="batch-infer serve")
