"""Paths are URLs plus storage options, resolved by fsspec. Nothing here logs option values.

S3 credentials, profiles, regions and ``AWS_ENDPOINT_URL`` come from the standard AWS
environment through s3fs/botocore, so a job configured for the AWS CLI works unchanged;
``storage_options`` (for example ``{"endpoint_url": ...}``) are passed to the filesystem as is.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import fsspec
import pyarrow.fs as pafs
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from .errors import ConfigError, first_line


def resolve(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """URL -> (filesystem, path as that filesystem names it)."""
    try:
        return url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot open {url!r}: {type(exc).__name__}: {first_line(exc)}",
            "check the URL's scheme and its storage_options",
        ) from None


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
    """
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)
