"""batch-infer: score Parquet data with a fitted scikit-learn model and commit the result safely.

The library works without the CLI::

    from batch_infer import load_config, run
    report = run(load_config("configs/adhoc.yaml", {"run_date": "2026-01-31"}))

Names are imported on first use, so ``batch-infer --help`` does not pay for pyarrow and sklearn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "RunConfig": "config",
    "load_config": "config",
    "BatchInferError": "errors",
    "ConfigError": "errors",
    "CredentialsError": "errors",
    "StorageUnavailable": "errors",
    "LockedError": "errors",
    "Interrupted": "errors",
    "InputError": "errors",
    "ModelError": "errors",
    "OutputConflictError": "errors",
    "RunReport": "report",
    "ValidationReport": "report",
    "run": "runner",
    "validate": "runner",
}

__all__ = [
    "BatchInferError",
    "ConfigError",
    "CredentialsError",
    "InputError",
    "Interrupted",
    "LockedError",
    "ModelError",
    "OutputConflictError",
    "RunConfig",
    "RunReport",
    "StorageUnavailable",
    "ValidationReport",
    "load_config",
    "run",
    "validate",
]

if TYPE_CHECKING:
    from .config import RunConfig, load_config
    from .errors import (
        BatchInferError,
        ConfigError,
        CredentialsError,
        InputError,
        Interrupted,
        LockedError,
        ModelError,
        OutputConflictError,
        StorageUnavailable,
    )
    from .report import RunReport, ValidationReport
    from .runner import run, validate


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'batch_infer' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
