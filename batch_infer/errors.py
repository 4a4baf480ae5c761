"""The exception tree. Each error knows what went wrong, how to fix it, and its exit code.

Lower-layer errors (pyarrow, fsspec, joblib, scikit-learn) are mapped into this tree where they
happen, so the CLI only has to print ``Error: <what> — <how to fix>`` and exit with ``exit_code``.
"""

from __future__ import annotations

import errno
from typing import Any


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


class RegistryUnavailable(BatchInferError):
    """The MLflow server could not be reached and the model is not cached: try later."""

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


def explain(exc: BaseException) -> BatchInferError:
    """Any exception as one of ours: what went wrong, how to fix it, and the exit code.

    The one place that decides the exit code of a failure, for ``run``'s CLI, ``serve`` and the
    published run facts alike.
    """
    if isinstance(exc, BatchInferError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("SIGINT (Ctrl-C)", 130)
    known = from_store(exc)  # object store failures: temporary (75) or credentials (2)
    if known is not None:
        return known
    cause = exc.__cause__ or exc
    if type(cause).__module__.split(".")[0] in _STORE_MODULES:
        return BatchInferError(
            f"object store error {type(cause).__name__}: {first_line(exc)}",
            "check the endpoint (AWS_ENDPOINT_URL or storage_options) and the paths; "
            "nothing was committed",
        )
    return BatchInferError(
        f"unexpected {type(exc).__name__}: {first_line(exc)}",
        "rerun with --verbose for the traceback and report it; nothing was committed",
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: enough to name the cause in a one-line error."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


# -- object store failures -> our errors ------------------------------------------------------

_STORE_MODULES = ("botocore", "aiobotocore", "s3fs", "aiohttp")
# refused credentials: retrying cannot help, the configuration must change
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "403",  # a HEAD request's 403 carries no body, hence no code
    "401",
}
_CREDENTIAL_EXCEPTIONS = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "UnauthorizedSSOTokenError",
    "TokenRetrievalError",
    "SSOTokenLoadError",
    "ProfileNotFound",
)
_THROTTLING = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "429",
    "503",
}
# the store is overloaded or unwell: it may work later
_TEMPORARY_CODES = _THROTTLING | {
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "OperationAborted",
    "500",
    "502",
    "504",
}
_TEMPORARY_STATUS = {429, 500, 502, 503, 504}
_TIMEOUTS = {
    "RequestTimeout",
    "RequestTimeoutException",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "ServerTimeoutError",
    "FSTimeoutError",
}
_TEMPORARY_EXCEPTIONS = (
    "ConnectionError",  # botocore: EndpointConnectionError, ConnectTimeoutError, ...
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ProxyConnectionError",
    "HTTPClientError",  # botocore: ReadTimeoutError, ConnectionClosedError, ...
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ResponseStreamingError",
    "ClientConnectionError",  # aiohttp
    "ClientPayloadError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "FSTimeoutError",  # fsspec's sync() timeout around s3fs
)


def from_store(exc: BaseException) -> BatchInferError | None:
    """Our error for an object store failure, or None when ``exc`` is not one we recognise.

    Looks through the chain of causes, since s3fs re-raises botocore's errors as OSError
    (``PermissionError``, ``OSError(EBUSY)``, ...) with the original as ``__cause__``:

    - throttling, 5xx, timeouts and connection failures (what is left after the retries) ->
      ``StorageUnavailable`` (exit 75: nothing committed, rerun later to resume);
    - refused or missing credentials -> ``CredentialsError`` (exit 2, never retried).

    Errors of our own tree are not translated again (None).
    """
    if isinstance(exc, BatchInferError):
        return None
    chain = _chain(exc)
    from_store = [e for e in chain if type(e).__module__.split(".")[0] in _STORE_MODULES]
    for error in from_store:
        name = type(error).__name__
        response = _response(error)
        if response is not None:
            code = response["code"] or str(response["status"] or "")
            if code in _CREDENTIAL_CODES or response["status"] in (401, 403):
                return _credentials(error, code, response)
            if code in _TEMPORARY_CODES or response["status"] in _TEMPORARY_STATUS:
                return _unavailable(error, code, response)
            return None  # NoSuchKey, NoSuchBucket, PreconditionFailed...: the caller's business
        if name in _CREDENTIAL_EXCEPTIONS:
            return _credentials(error, name, None)
        if any(c.__name__ in _TEMPORARY_EXCEPTIONS for c in type(error).__mro__):
            return _unavailable(error, name, None)
    if from_store:
        return None
    # s3fs's OSError for a 503 whose botocore cause was lost on the way
    for error in chain:
        if isinstance(error, OSError) and error.errno == errno.EBUSY:
            if "reduce your request rate" in str(error).lower():
                return _unavailable(error, "SlowDown", None)
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (or contexts), each once, at most 16."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 16 and not any(current is c for c in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _response(exc: BaseException) -> dict[str, Any] | None:
    """Code, status, operation, message and attempts of a botocore ClientError; else None."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    retries = meta.get("RetryAttempts")
    return {
        "code": str(error.get("Code") or ""),
        "status": int(meta["HTTPStatusCode"]) if meta.get("HTTPStatusCode") else None,
        "operation": getattr(exc, "operation_name", None),
        "message": str(error.get("Message") or ""),
        "attempts": retries + 1 if isinstance(retries, int) else None,
    }


def _detail(exc: BaseException, code: str, response: dict[str, Any] | None) -> str:
    """``(code on Operation, n attempts): message`` from what is known."""
    facts = code
    message = first_line(exc)
    if response is not None:
        if response["operation"]:
            facts += f" on {response['operation']}"
        if response["attempts"]:
            facts += f", {response['attempts']} attempt{'s' * (response['attempts'] > 1)}"
        message = response["message"] or message
    return f"({facts}): {message}"


def _unavailable(
    exc: BaseException, code: str, response: dict[str, Any] | None
) -> StorageUnavailable:
    if code in _THROTTLING:
        kind = "kept throttling requests"
    elif code in _TIMEOUTS:
        kind = "did not answer in time"
    elif code in _TEMPORARY_CODES:
        kind = "kept failing"
    else:
        kind = "could not be reached or dropped the connection"
    return StorageUnavailable(
        f"the object store {kind}, also when retried {_detail(exc, code, response)}",
        "nothing was committed; rerun later and the run resumes where it stopped (retries "
        "and timeouts: AWS_MAX_ATTEMPTS, or config_kwargs in storage_options; see docs/running-jobs.md, Retries and timeouts)",
    )


def _credentials(
    exc: BaseException, code: str, response: dict[str, Any] | None
) -> CredentialsError:
    return CredentialsError(
        f"the object store refused the credentials {_detail(exc, code, response)}",
        "check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or key "
        "and secret in storage_options) and that they may read the input and the model and "
        "write the output; not retried",
    )
