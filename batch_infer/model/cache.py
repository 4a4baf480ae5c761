"""The cache of compiled runtimes: where each lives, and loading one back for a run.

A runtime is stored under the sha256 of the model's and the scaler's files, so a changed model
never meets a stale artifact. Loading needs neither scikit-learn nor the model file: a cached
runtime carries the model's contract and output columns. ``compiled`` builds and verifies what
is stored here; ``load`` looks here first (``--runtime auto``), so this module imports neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ModelError
from .contract import Contract, FeatureSpec
from .outputs import OutputColumn, OutputPlan, check_requested
from .runtimes import load_runtime

log = logging.getLogger(__name__)

FORMAT = "batch-infer-compiled/2"  # 2: scalers and imputers are preprocessing steps
META = "compiled.json"


def cache_dir() -> Path:
    """Where compiled runtimes live: ``BATCH_INFER_CACHE_DIR``, else ``~/.cache/batch-infer``."""
    configured = os.environ.get("BATCH_INFER_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "batch-infer"


def artifact_folder(model_sha256: str, scaler_sha256: str | None) -> Path:
    """One folder per (model, scaler) pair of files, named by their hashes."""
    key = hashlib.sha256(f"{model_sha256}:{scaler_sha256 or ''}".encode()).hexdigest()[:32]
    return cache_dir() / "compiled" / key


@dataclass
class CompiledModel:
    """A cached, verified runtime with what a run needs to know about the model it replaces."""

    folder: Path
    meta: dict[str, Any]
    runtime: Any = field(default=None, repr=False)

    @property
    def engine(self) -> str:
        return self.meta["engine"]

    @property
    def methods(self) -> list[str]:
        return self.meta["methods"]

    def call(self, features: np.ndarray, methods: list[str]) -> dict[str, Any]:
        return self.runtime.call(features, methods)

    def contract(self) -> Contract:
        saved = self.meta["contract"]
        return Contract(
            [FeatureSpec(**entry) for entry in saved["features"]],
            origin=saved.get("origin", "derived from the model"),
        )

    def output_plan(self, requested: list[str] | None, names: Any, url: str) -> OutputPlan:
        """The run's columns, as ``plan_outputs`` would name them for the model itself."""
        methods = check_requested(
            requested, self.meta["model_methods"], self.meta["model_type"], url
        )
        if methods is None:
            methods = self.meta["default_methods"]
        base = column_bases(names)
        columns = [
            OutputColumn(
                base[c["method"]] + c["suffix"],
                pa.type_for_alias(c["type"]),
                c["method"],
                c.get("index"),
                c.get("output"),
            )
            for method in methods
            for c in self.meta["columns"][method]
        ]
        return OutputPlan(methods, columns)


def find_compiled(model_sha256: str, scaler_sha256: str | None) -> CompiledModel | None:
    """The cached runtime for these files, loaded, or None (with the reason logged)."""
    folder = artifact_folder(model_sha256, scaler_sha256)
    try:
        meta = json.loads((folder / META).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable compiled runtime in %s: %s", folder, exc)
        return None
    if meta.get("format") != FORMAT or meta.get("model_sha256") != model_sha256:
        log.warning("ignoring the compiled runtime in %s: written by another version", folder)
        return None
    try:
        runtime = load_runtime(folder, meta)
    except ModelError as exc:
        log.warning("cannot use the compiled runtime in %s: %s (%s)", folder, exc.what, exc.fix)
        return None
    except Exception as exc:  # a damaged cache entry: scikit-learn still scores
        log.warning(
            "ignoring the damaged compiled runtime in %s: %s: %s (compile the model again)",
            folder,
            type(exc).__name__,
            exc,
        )
        return None
    return CompiledModel(folder, meta, runtime)


def column_bases(names: Any) -> dict[str, str]:
    """Each method's column name (or prefix): the cache stores the rest of every name."""
    return {
        "predict": names.prediction,
        "predict_proba": names.probability,
        "decision_function": names.decision,
        "score_samples": names.score,
    }


def store(folder: Path, runtime: Any, meta: dict[str, Any]) -> None:
    """Write into a temporary folder beside the final one, then rename: never half a runtime."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        runtime.save(staging)
        (staging / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
