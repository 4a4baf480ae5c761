"""Datasets as OpenLineage names them (https://openlineage.io/docs/spec/naming): a URL's
namespace is its ``scheme://authority`` (``file`` for a local path), its name the path.

A Delta table is named by where it is (``file`` + its absolute path, ``s3://bucket`` + its key),
as Spark's and delta-rs's integrations name it. An Iceberg table is named in its catalog:
namespace the catalog's URI (credentials removed; a Hive metastore's ``thrift://`` as ``hive://``)
or else its warehouse, name ``NAMESPACE.TABLE``. Kept apart from ``lineage`` (which needs the
openlineage extra) so that a run notes its tables without importing it.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from ..redaction import split_userinfo

SCHEMES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "thrift": "hive"}  # -> OpenLineage's names


def dataset_name(url: str, catalog_namespace: str | None = None) -> tuple[str, str]:
    """(namespace, name) of a path, URL, ``delta:PATH[@V]`` or ``iceberg:NS.TABLE[@S]``."""
    if url.startswith("delta:"):
        return dataset_name(unpinned(url[len("delta:") :]))
    if url.startswith("iceberg:"):
        return catalog_namespace or "iceberg", unpinned(url[len("iceberg:") :])
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        return "file", os.path.abspath(parts.path if parts.scheme else url).rstrip("/") or "/"
    scheme = SCHEMES.get(parts.scheme, parts.scheme)
    authority = urlsplit(split_userinfo(url)[0]).netloc  # a name never carries credentials
    return f"{scheme}://{authority}", parts.path.strip("/")


def unpinned(spec: str) -> str:
    """A table input without its ``@VERSION`` / ``@SNAPSHOT``."""
    head, at, tail = spec.rpartition("@")
    return head if at and tail.isdigit() else spec


def catalog_namespace(catalog: Any, storage_options: dict[str, Any] | None = None) -> str:
    """The Iceberg catalog ``catalog`` (a CatalogConfig) as a namespace: its ``uri`` as the
    catalog is configured (ours, pyiceberg's file or variables, else the embedded SQLite one's),
    else its warehouse. Reads configuration only; nothing is opened."""
    properties = {k: str(v) for k, v in (catalog.properties or {}).items()}
    try:
        from pyiceberg.utils.config import Config  # the [iceberg] extra

        configured = Config().get_catalog_config(catalog.name) or {}
    except ImportError:
        configured = {}
    merged = {**{k: str(v) for k, v in configured.items()}, **properties}
    uri = merged.get("uri")
    if not uri and not configured and "type" not in properties:
        folder = os.path.abspath(catalog.warehouse.removeprefix("file://"))
        uri = f"sqlite:///{folder}/catalog.db"  # the embedded default (targets.iceberg)
    if not uri:
        return merged.get("warehouse") or f"iceberg-catalog:{catalog.name}"
    bare = split_userinfo(uri)[0] if "://" in uri else uri
    scheme, sep, rest = bare.partition("://")
    return f"{SCHEMES.get(scheme, scheme)}{sep}{rest}".rstrip("/")


def note_tables(facts: Any, config: Any, input_version: dict[str, Any] | None) -> None:
    """What lineage, metrics and the report say of tables: the input table and the version or
    snapshot read, and the catalog's namespace when an Iceberg table is read or written."""
    path = config.input.path
    if path.startswith(("delta:", "iceberg:")):
        facts.input_table = path
        facts.input_version = input_version
    if path.startswith("iceberg:") or config.output.path.startswith("iceberg:"):
        facts.catalog_namespace = catalog_namespace(config.catalog)
