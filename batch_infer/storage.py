"""Paths are URLs plus storage options, resolved by fsspec. Nothing here logs option values.

S3 credentials, profiles, regions and ``AWS_ENDPOINT_URL`` come from the standard AWS
environment through s3fs/botocore, so a job configured for the AWS CLI works unchanged;
``storage_options`` (for example ``{"endpoint_url": ...}``) are passed to the filesystem as is,
plus, for ``s3://`` URLs, explicit retry and timeout settings (see ``s3_options``) so that a
throttling, stalled or unreachable store ends the run in bounded time. ``translate`` turns the
object store's failures into errors of our tree: temporary ones (exit 75) and refused
credentials (exit 2).
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import time
import uuid
from typing import Any

import fsspec
import pyarrow.fs as pafs
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from .errors import (
    ConfigError,
    StorageUnavailable,
    first_line,
    from_store,
)
from .redaction import redact_url

log = logging.getLogger(__name__)

# -- S3 retries and timeouts ------------------------------------------------------------------
#
# Each S3 request is retried by botocore in its "standard" mode: throttling (503 SlowDown,
# Throttling, ...), 500/502/503/504, connection failures and timeouts, with full-jitter
# exponential backoff (rand(0, 1) x 1, 2, 4 s before the 2nd, 3rd, 4th attempt) and a
# client-wide retry quota. Refused credentials (403) are never retried. With these defaults a
# request that keeps being throttled gives up within 7 s of backoff, one that keeps stalling
# after S3_MAX_ATTEMPTS x S3_READ_TIMEOUT + 7 s = 47 s at most; the run then fails with exit 75
# (nothing committed, resumable). s3fs's own retry loop (``S3FileSystem.retries``, 5 by
# default) wraps botocore's, and nests in itself on reads (5 x 5 x botocore's attempts for one
# range read): we turn it off, leaving one explicit, bounded retry policy.
S3_PROTOCOLS = ("s3", "s3a")
S3_RETRY_MODE = "standard"  # botocore's default is "legacy": fewer kinds of errors retried
S3_MAX_ATTEMPTS = 4  # per request, the first included (AWS's standard default is 3)
S3_CONNECT_TIMEOUT = 5.0  # seconds to open a connection
S3_READ_TIMEOUT = 10.0  # seconds without a byte from the store while waiting for a response
S3FS_RETRIES = 1  # attempts of s3fs's own loop around botocore's: no second layer of retries


def resolve(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """URL -> (filesystem, path as that filesystem names it)."""
    options = dict(storage_options or {})
    if _protocol(url) in S3_PROTOCOLS and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise ConfigError(
            f"{redact_url(url)}: an s3:// URL cannot carry credentials (user:password@)",
            "remove them from the URL; give them as storage_options key and secret, or in the "
            "AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)",
        )
    try:
        if _protocol(url) in S3_PROTOCOLS and "::" not in url:
            cls = _s3_filesystem_class()
            options = {**cls._get_kwargs_from_urls(url), **s3_options(options)}
            return cls(**options), cls._strip_protocol(url)
        return url_to_fs(url, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot open {url!r}: {type(exc).__name__}: {first_line(exc)}",
            "check the URL's scheme and its storage_options",
        ) from None


def s3_options(storage_options: dict[str, Any]) -> dict[str, Any]:
    """``storage_options`` for s3fs with our retry and timeout defaults filled in.

    What the user set wins: ``config_kwargs`` in the storage options (botocore's ``Config``:
    ``retries``, ``connect_timeout``, ``read_timeout``), then the AWS settings of the
    environment (``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``, or ``max_attempts``/``retry_mode``
    in the profile of ``~/.aws/config``), which botocore reads itself when we leave them out.
    """
    options = dict(storage_options)
    config = dict(options.get("config_kwargs") or {})
    retries = dict(config.get("retries") or {})
    aws = _aws_retry_settings(options.get("profile"))
    if not {"max_attempts", "total_max_attempts"} & retries.keys() and "max_attempts" not in aws:
        retries["total_max_attempts"] = S3_MAX_ATTEMPTS
    if "mode" not in retries and "retry_mode" not in aws:
        retries["mode"] = S3_RETRY_MODE
    if retries:
        config["retries"] = retries
    config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT)
    config.setdefault("read_timeout", S3_READ_TIMEOUT)
    options["config_kwargs"] = config
    return options


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def _aws_retry_settings(profile: str | None) -> set[str]:
    """Which of ``max_attempts`` and ``retry_mode`` the AWS environment sets explicitly."""
    found = {
        name
        for name, variable in (
            ("max_attempts", "AWS_MAX_ATTEMPTS"),
            ("retry_mode", "AWS_RETRY_MODE"),
        )
        if os.environ.get(variable, "").strip()
    }
    if len(found) == 2:
        return found
    try:
        import botocore.session

        scoped = botocore.session.Session(profile=profile).get_scoped_config()
    except Exception:  # no botocore, no such profile, unreadable file: s3fs will say so
        return found
    return found | {name for name in ("max_attempts", "retry_mode") if scoped.get(name)}


@functools.cache
def _s3_filesystem_class() -> type:
    """s3fs's filesystem with our retry policy, and files that fail cleanly when written.

    When a multipart upload fails (the store kept throttling, or went away), s3fs leaves the
    file open and the upload unfinished; pyarrow's dataset writer then holds that file until
    the interpreter exits, and closing it there aborts the process (``Fatal Python error:
    PyGILState_Release``, exit 134 instead of ours). Our files abort their upload (if the store
    lets us) and mark themselves closed as soon as a write fails, then raise as before.
    """
    import s3fs
    from fsspec.asyn import sync_wrapper

    class S3WriteFile(s3fs.S3File):
        def flush(self, force: bool = False) -> None:
            try:
                super().flush(force)
            except BaseException as exc:
                self._give_up(exc)
                raise

        def close(self) -> None:
            try:
                super().close()
            except BaseException as exc:
                self._give_up(exc)
                raise

        def _give_up(self, exc: BaseException) -> None:
            upload, self.mpu = self.mpu, None
            self.closed = True  # nothing left for a finalizer to flush
            self.buffer = None
            if upload and isinstance(exc, Exception):
                try:
                    self.fs.abort_mpu(self.bucket, self.key, upload["UploadId"])
                except Exception as abort_error:
                    log.warning(
                        "could not abort the multipart upload of %s (%s); the next run into "
                        "this output removes it",
                        self.path,
                        first_line(abort_error),
                    )

    class S3FileSystem(s3fs.S3FileSystem):
        retries = S3FS_RETRIES

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            file = super()._open(path, mode, **kwargs)
            if "r" not in mode and type(file) is s3fs.S3File:
                file.__class__ = S3WriteFile  # same object, same state: only the methods above
            return file

        async def _exists(self, path: str) -> bool:
            """As s3fs's, except that a bucket the store would not tell us about (throttled,
            unreachable) is an error, not "no such bucket": s3fs swallows every error of
            its bucket probes, and its mkdir, which pyarrow calls before each write, would
            then try to create the bucket, three retry sequences for one directory."""
            bucket, key, _ = self.split_path(self._strip_protocol(path))
            if bucket and not key and not self.dircache.get(bucket):
                try:
                    await self._call_s3("head_bucket", Bucket=bucket)
                    return True
                except FileNotFoundError:
                    return False
                except Exception as exc:
                    if isinstance(from_store(exc), StorageUnavailable):
                        raise
            return await super()._exists(path)

        exists = sync_wrapper(_exists)

        def __reduce__(self) -> tuple:
            """Pickled by arguments (a class made here cannot be pickled by reference): how a
            Dask task takes the run's filesystems to a worker."""
            return (_rebuilt_s3_filesystem, (self.storage_args, self.storage_options))

    # One instance cache with s3fs's own, so s3fs.S3FileSystem.clear_instance_cache() (which
    # users and tests call to drop stale listings and clients) clears ours too.
    S3FileSystem._cache = s3fs.S3FileSystem._cache
    return S3FileSystem


def _rebuilt_s3_filesystem(args: tuple, options: dict[str, Any]) -> fsspec.AbstractFileSystem:
    return _s3_filesystem_class()(*args, **options)


def abort_multipart_uploads(fs: fsspec.AbstractFileSystem, prefix: str) -> int:
    """Abort every unfinished multipart upload under ``prefix`` (``bucket/key prefix``) on S3.

    A run killed (or refused by the store) in the middle of a large file leaves its upload
    open: invisible to readers, but billed until aborted. Call it holding the output's lock,
    on the staging prefix, where every upload belongs to a run that is gone. Returns how many
    were aborted; 0 for stores without multipart uploads.
    """
    if is_local(fs) or not hasattr(fs, "call_s3"):
        return 0
    bucket, _, key_prefix = prefix.strip("/").partition("/")
    aborted, markers = 0, {}
    for _ in range(10_000):  # 1,000 uploads a page
        page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix, **markers)
        for upload in page.get("Uploads", []):
            fs.call_s3(
                "abort_multipart_upload",
                Bucket=bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )
            aborted += 1
        if not page.get("IsTruncated"):
            break
        markers = {
            "KeyMarker": page.get("NextKeyMarker", ""),
            "UploadIdMarker": page.get("NextUploadIdMarker", ""),
        }
    return aborted


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """The pyarrow view of a filesystem: native for local disks (reads release the GIL),
    wrapped for everything else (s3fs, gcsfs, memory, ...)."""
    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def file_version(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str]:
    """Size and a token that changes when the file does (mtime locally, ETag on S3)."""
    info = fs.info(path)
    token = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("etag")
    return int(info.get("size") or 0), str(token or "")


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` only if it does not exist; False when it already did. Atomic on a local
    disk (O_EXCL) and on S3 (a conditional PUT, If-None-Match: *)."""
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except (FileExistsError, OSError) as exc:
        if (
            isinstance(exc, FileExistsError)
            or "PreconditionFailed" in str(exc)
            or "412" in str(exc)
        ):
            return False
        raise
    return True


def join(*parts: str) -> str:
    """Join path segments the way fsspec names paths (always ``/``)."""
    return posixpath.join(*parts)


def display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The path as a user would write it: with its scheme for remote stores, plain when local."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def write_bytes_atomically(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a small file so that a reader sees all of it or none of it.

    An object store PUT is atomic already; on a local disk we write a temporary file and rename.
    The temporary name is unique: two threads writing the same file (the same bytes, such as a
    run's schema staged by two fragments at once) must not move each other's temporary away.
    """
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:16]}.tmp"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


# -- conditional writes (S3) ------------------------------------------------------------------
#
# The output lock needs compare-and-swap: replace an object only if it is still the version we
# read. S3 does it with If-Match on PutObject and DeleteObject (If-None-Match: * to create).


def supports_conditional_writes(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is an S3 filesystem whose writes can be made conditional on an ETag."""
    return hasattr(fs, "call_s3") and hasattr(fs, "split_path")


def put_conditional(
    fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, if_match: str | None = None
) -> str | None:
    """Write ``path`` only if it does not exist (``if_match`` None) or is still the version
    whose ETag is ``if_match``; the new ETag, or None when the store refused the condition."""
    bucket, key, _ = fs.split_path(path)
    condition = {"IfMatch": if_match} if if_match is not None else {"IfNoneMatch": "*"}
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except (FileExistsError, FileNotFoundError):
        return None  # created meanwhile (If-None-Match), or deleted meanwhile (If-Match)
    except OSError as exc:
        if _precondition_failed(exc):
            return None
        raise
    finally:
        fs.invalidate_cache(path)
    return response["ETag"]


def read_versioned(fs: fsspec.AbstractFileSystem, path: str) -> tuple[bytes, str, float] | None:
    """(content, ETag, age in seconds by the store's own clock) of ``path``; None if absent.

    One GET gives all three for the same version; the age compares the object's Last-Modified
    with the response's Date, so a host whose clock is off cannot misjudge it.
    """
    import email.utils

    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)

    async def get() -> tuple[bytes, dict[str, Any]]:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            return await body.read(), response
        finally:
            body.close()

    try:
        data, response = sync(fs.loop, get)
    except FileNotFoundError:
        return None
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    now = email.utils.parsedate_to_datetime(date).timestamp() if date else None
    modified = response["LastModified"].timestamp()
    age = (now if now is not None else time.time()) - modified
    return data, response["ETag"], age


def delete_conditional(fs: fsspec.AbstractFileSystem, path: str, etag: str) -> bool:
    """Delete ``path`` only if it is still the version ``etag``; False if it was not."""
    bucket, key, _ = fs.split_path(path)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if _precondition_failed(exc):
            return False
        raise
    finally:
        fs.invalidate_cache(path)
    return True


def _precondition_failed(exc: BaseException) -> bool:
    """412 (the condition did not hold) or 409 (a concurrent conditional write won)."""
    cause = exc.__cause__ or exc
    response = getattr(cause, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in {409, 412}
