"""The exception tree. Each error knows what went wrong, how to fix it, and its exit code.

Lower-layer errors (pyarrow, fsspec, joblib, scikit-learn) are mapped into this tree where they
happen, so the CLI only has to print ``Error: <what> — <how to fix>`` and exit with ``exit_code``.
"""

from __future__ import annotations


class BatchInferError(Exception):
    """Base class: a failure we understand and can explain in one line."""

    exit_code = 1

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what


class ConfigError(BatchInferError):
    """The run's configuration or command line is wrong or incomplete."""

    exit_code = 2


class InputError(BatchInferError):
    """The input data is missing, unreadable or does not fit the model."""

    exit_code = 3


class ModelError(BatchInferError):
    """The model artifact cannot be loaded or used as configured."""

    exit_code = 4


class OutputConflictError(BatchInferError):
    """The output location already holds a result this run must not replace."""

    exit_code = 5


EXIT_CODES = {
    0: "done: the output is committed (manifest and _SUCCESS written)",
    1: "unexpected error (a bug or an environment problem): rerun with --verbose for a traceback",
    ConfigError.exit_code: "usage or configuration error",
    InputError.exit_code: "bad input: missing, unreadable or incompatible data",
    ModelError.exit_code: "model problem: the artifact cannot be loaded or used",
    OutputConflictError.exit_code: "output conflict: the output already holds a committed result",
}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: enough to name the cause in a one-line error."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__
