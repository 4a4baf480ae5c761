"""Where scored rows come from. ``plan_input`` picks the input from its URL: ``delta:PATH[@V]``
(a Delta table's version), ``iceberg:NS.TABLE[@SNAPSHOT]`` (an Iceberg table's snapshot, in the
run's catalog), else a Parquet folder, file or glob."""

from __future__ import annotations

from ..config import CatalogConfig, InputConfig
from .base import Fragment, InputFile, InputPlan
from .folder import has_magic, lossless, plan_folder, read_fragment

__all__ = [
    "Fragment",
    "InputFile",
    "InputPlan",
    "has_magic",
    "lossless",
    "plan_input",
    "read_fragment",
]


def plan_input(config: InputConfig, *, catalog: CatalogConfig | None = None) -> InputPlan:
    """Plan every fragment of the input and read the footers, before anything is scored."""
    if config.path.startswith("delta:"):
        from .delta import plan_delta  # imports deltalake itself, only for delta: inputs

        return plan_delta(config)
    if config.path.startswith("iceberg:"):
        from .iceberg import plan_iceberg  # imports pyiceberg itself, only for iceberg: inputs

        return plan_iceberg(config, catalog or CatalogConfig())
    return plan_folder(config)
