"""Where scored rows go. ``open_target`` picks the implementation from the output's URL."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..config import CatalogConfig
from .base import FragmentRecord, OutputFile, Target
from .folder import (
    COMMIT_CONCURRENCY,
    MANIFEST,
    STAGING,
    SUCCESS,
    FolderTarget,
    check_partition_values,
    dictionary_columns,
    earlier_dated_manifest,
    is_reject_file,
    open_folder,
    own_prefix,
)

TABLE_SCHEMES = ("delta:", "iceberg:")


def open_target(
    url: str,
    storage_options: dict[str, Any],
    staging_key: str,
    rejects: str | None = None,
    *,
    commit_concurrency: int = COMMIT_CONCURRENCY,
    schema: pa.Schema | None = None,
    partition_by: list[str] | None = None,
    catalog: CatalogConfig | None = None,
) -> Target:
    """The target an output URL names: ``delta:PATH``, ``iceberg:NAMESPACE.TABLE``, or a folder.

    Tables need the output's ``schema`` and ``partition_by`` (to create or check the table);
    Iceberg its ``catalog``."""
    if url.startswith("delta:"):
        from . import delta  # the [delta] extra: imported only for a delta: output

        return delta.open_delta(
            url, storage_options, staging_key, rejects, schema=schema, partition_by=partition_by
        )
    if url.startswith("iceberg:"):
        from . import iceberg  # the [iceberg] extra: imported only for an iceberg: output

        catalog = catalog or CatalogConfig()
        return iceberg.open_iceberg(
            url,
            storage_options,
            staging_key,
            rejects,
            catalog=catalog.name,
            warehouse=catalog.warehouse,
            properties=catalog.properties,
            schema=schema,
            partition_by=partition_by,
        )
    return open_folder(
        url, storage_options, staging_key, rejects, commit_concurrency=commit_concurrency
    )


__all__ = [
    "MANIFEST",
    "STAGING",
    "SUCCESS",
    "FolderTarget",
    "FragmentRecord",
    "OutputFile",
    "Target",
    "check_partition_values",
    "dictionary_columns",
    "earlier_dated_manifest",
    "is_reject_file",
    "open_target",
    "TABLE_SCHEMES",
    "own_prefix",
]
