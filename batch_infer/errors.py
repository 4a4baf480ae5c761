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

    def __reduce__(self) -> tuple:
        """Pickled whole (what and fix), as a Dask worker's error reaches the client."""
        return (_rebuild, (type(self), self.what, self.fix, self.exit_code))


def _rebuild(cls: type, what: str, fix: str, exit_code: int) -> BatchInferError:
    error = BatchInferError.__new__(cls)
    BatchInferError.__init__(error, what, fix)
    error.exit_code = exit_code
    return error


class ConfigError(BatchInferError):
    """The run's configuration or command line is wrong or incomplete."""

    exit_code = 2


class InputError(BatchInferError):
    """The input data is missing, unreadable or does not fit the model."""

    exit_code = 3


class ModelError(BatchInferError):
    """The model artifact cannot be loaded or used as configured."""

    exit_code = 4


class CredentialsError(ConfigError):
    """The object store refused or could not find the credentials: fix them, do not retry."""


class OutputConflictError(BatchInferError):
    """The output location already holds a result this run must not replace."""

    exit_code = 5


class LockedError(BatchInferError):
    """Another run holds the output, or the store keeps refusing us: try again later."""

    exit_code = 75  # EX_TEMPFAIL: schedulers retry it


class StorageUnavailable(BatchInferError):
    """The object store kept throttling, timing out or dropping connections, also when retried.

    Nothing was committed and what was staged is kept: rerunning later resumes the run.
    """

    exit_code = 75  # EX_TEMPFAIL, as for a held lock: schedulers retry it


class EngineUnavailable(BatchInferError):
    """The cluster kept losing the workers that ran a fragment: nothing committed, try later."""

    exit_code = 75


class Interrupted(BatchInferError):
    """The run was stopped by a signal; nothing was committed and it can be resumed."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(
            f"interrupted by {signal_name}; nothing was committed",
            "rerun the same command to resume where it stopped",
        )
        self.exit_code = exit_code


EXIT_CODES = {
    0: "done: the output is committed (manifest and _SUCCESS written)",
    1: "unexpected error (a bug or an environment problem): rerun with --verbose for a traceback",
    ConfigError.exit_code: "usage or configuration error",
    InputError.exit_code: "bad input: missing, unreadable or incompatible data",
    ModelError.exit_code: "model problem: the artifact cannot be loaded or used",
    OutputConflictError.exit_code: "output conflict: the output already holds a committed result",
    LockedError.exit_code: "temporary: another run holds the output lock, or the store kept failing",
    130: "interrupted by Ctrl-C (SIGINT); nothing committed, rerun to resume",
    143: "stopped by SIGTERM; nothing committed, rerun to resume",
}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: enough to name the cause in a one-line error."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__
