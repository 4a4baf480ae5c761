"""Verified compiled runtimes: the model's arithmetic without scikit-learn on the scoring path.

``batch-infer compile`` turns a fitted model into a runtime (NumPy arrays for linear models,
native code for tree ensembles, see ``runtimes``), checks it against the model's own methods on
a sample (labels identical, numbers within ``TOLERANCE``) and stores it in a cache keyed by the
model's and the scaler's sha256. ``run --runtime auto`` uses it when one is cached: a changed
model has another sha256, so it never meets a stale artifact. A cached runtime also carries the
model's contract and output columns, so a run that uses it never unpickles the model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .contract import Contract, FeatureSpec
from .outputs import METHODS, OutputColumn, OutputPlan

log = logging.getLogger(__name__)

TOLERANCE = 1e-12
FORMAT = "batch-infer-compiled/1"
META = "compiled.json"


def cache_dir() -> Path:
    """Where compiled runtimes live: ``BATCH_INFER_CACHE_DIR``, else ``~/.cache/batch-infer``."""
    configured = os.environ.get("BATCH_INFER_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "batch-infer"


def artifact_folder(model_sha256: str, scaler_sha256: str | None) -> Path:
    """One folder per (model, scaler) pair of files, named by their hashes."""
    key = hashlib.sha256(f"{model_sha256}:{scaler_sha256 or ''}".encode()).hexdigest()[:32]
    return cache_dir() / "compiled" / key


@dataclass(frozen=True)
class Verification:
    """How the compiled runtime compared with the model on the verification sample."""

    rows: int
    sample: str
    max_abs_diff: dict[str, float]  # per method; labels count differing rows instead
    label_differences: int

    @property
    def passed(self) -> bool:
        return self.label_differences == 0 and all(
            d <= TOLERANCE for d in self.max_abs_diff.values()
        )


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
        from .outputs import check_requested

        methods = check_requested(
            requested, self.meta["model_methods"], self.meta["model_type"], url
        )
        if methods is None:
            methods = self.meta["default_methods"]
        base = _column_bases(names)
        import pyarrow as pa

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
    from .runtimes import load_runtime

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


def compile_model(
    model_url: str,
    scaler_url: str | None = None,
    sample: str | None = None,
    config: Any = None,
) -> dict[str, Any]:
    """``batch-infer compile``: build, verify and cache a runtime; returns what was done.

    Refuses (ModelError, exit 4) a model no runtime covers, and a runtime whose results differ
    from the model's on the sample, saying by how much.
    """
    from ..config import ModelConfig, OutputColumns
    from .load import load_model
    from .outputs import available_methods, plan_outputs
    from .runtimes import build_runtime

    model_config = config or ModelConfig(path=model_url, scaler=scaler_url)
    model = load_model(model_config, runtime="sklearn")
    if not model.contract.all_numeric:
        kinds = [f"{f.name} ({f.kind})" for f in model.contract.features if f.kind != "numeric"]
        raise ModelError(
            f"{model_url} takes non-numeric features ({', '.join(kinds) or 'typed columns'}); "
            "compiled runtimes take numbers only",
            "score it with the scikit-learn runtime (--runtime sklearn, the default without a "
            "compiled runtime)",
        )
    started = time.perf_counter()
    runtime = build_runtime(model.estimator.obj, model.scaler.obj if model.scaler else None)
    built_seconds = time.perf_counter() - started
    estimator = model.estimator.obj
    model_methods = available_methods(estimator)
    methods = [m for m in METHODS if m in runtime.methods and m in model_methods]
    matrix, described = verification_sample(model, runtime, sample)
    verification = verify(model, runtime, matrix, methods, described)
    if not verification.passed:
        raise ModelError(
            f"the compiled runtime ({runtime.engine}) of {model_url} differs from the model on "
            f"{verification.rows} rows of {described}: {_differences(verification)}; "
            "nothing was cached",
            "score it with the scikit-learn runtime (--runtime sklearn)",
        )
    defaults = plan_outputs(estimator, None, OutputColumns(), model_url).methods
    full = plan_outputs(estimator, methods, OutputColumns(), model_url)
    defaults_covered = all(m in methods for m in defaults)
    base = _column_bases(OutputColumns())
    columns: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for column in full.columns:
        columns[column.method].append(
            {
                "method": column.method,
                "suffix": column.name[len(base[column.method]) :],
                "type": str(column.type),
                "index": column.index,
                "output": column.output,
            }
        )
    import sklearn

    from .load import _final_type_name

    meta = {
        "format": FORMAT,
        "engine": runtime.engine,
        "model_url": model_url,
        "model_sha256": model.sha256,
        "scaler_url": scaler_url,
        "scaler_sha256": model.scaler.sha256 if model.scaler else None,
        "model_type": _final_type_name(estimator),
        "kind": model.kind,
        "classes": model.classes,
        "methods": methods,
        "model_methods": model_methods,
        "default_methods": defaults if defaults_covered else [m for m in defaults if m in methods],
        "columns": columns,
        "contract": model.contract.to_dict(),
        "saved_sklearn_version": model.estimator.saved_sklearn_version,
        "sklearn_version": sklearn.__version__,
        "compiled_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "build_seconds": round(built_seconds, 3),
        "verification": {
            "rows": verification.rows,
            "sample": verification.sample,
            "max_abs_diff": verification.max_abs_diff,
            "label_differences": verification.label_differences,
            "tolerance": TOLERANCE,
        },
        **runtime.describe(),
    }
    folder = artifact_folder(model.sha256, meta["scaler_sha256"])
    _store(folder, runtime, meta)
    return {**meta, "folder": str(folder)}


def _column_bases(names: Any) -> dict[str, str]:
    """Each method's column name (or prefix): the cache stores the rest of every name."""
    return {
        "predict": names.prediction,
        "predict_proba": names.probability,
        "decision_function": names.decision,
        "score_samples": names.score,
    }


def _store(folder: Path, runtime: Any, meta: dict[str, Any]) -> None:
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


def verification_sample(model: Any, runtime: Any, sample: str | None) -> tuple[np.ndarray, str]:
    """Rows to compare on: the user's sample (up to 100,000 rows) and rows made to probe the
    model's edges (every split threshold and its neighbours, missing values where allowed)."""
    import pyarrow as pa

    from .inputs import model_input, unscorable_rows

    parts, described = [], []
    if sample:
        from ..config import InputConfig
        from ..sources import plan_input
        from .load import _sample_frame

        frame = _sample_frame(plan_input(InputConfig(path=sample)), model.features)
        batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
        matrix = model_input(batch, model.contract)
        refused = unscorable_rows(batch, model.contract, matrix)
        if refused:
            keep = np.ones(len(matrix), dtype=bool)
            keep[list(refused)] = False
            matrix = matrix[keep]
        parts.append(np.asarray(matrix))
        described.append(f"{sample} ({len(matrix)} rows)")
    probes = runtime.probe_rows(np.random.default_rng(0), allow_nan=_allows_nan(model))
    parts.append(probes)
    described.append(f"{len(probes)} rows probing split thresholds and value ranges")
    return np.asfortranarray(np.concatenate(parts)), " and ".join(described)


def _allows_nan(model: Any) -> list[bool]:
    return [f.nullable is not False for f in model.contract.features]


def verify(
    model: Any, runtime: Any, matrix: np.ndarray, methods: list[str], sample: str
) -> Verification:
    """Compare the runtime with the model's own methods (through the scikit-learn path)."""
    from dataclasses import replace

    expected = replace(model, outputs=replace(model.outputs, methods=methods)).call(matrix)
    actual = runtime.call(matrix, methods)
    diffs: dict[str, float] = {}
    labels = 0
    for method in methods:
        want, got = np.asarray(expected[method]), np.asarray(actual[method])
        if want.shape != got.shape:
            raise ModelError(
                f"the compiled runtime's {method} has shape {got.shape}, the model's {want.shape}",
                "report this model type; score it with --runtime sklearn",
            )
        if method == "predict" and model.classes is not None:
            labels = int(np.count_nonzero(want != got))
            continue
        want, got = want.astype(np.float64), got.astype(np.float64)
        both_nan = np.isnan(want) & np.isnan(got)
        delta = np.where(both_nan, 0.0, np.abs(want - got))
        diffs[method] = float(np.nanmax(np.where(np.isnan(delta), np.inf, delta), initial=0.0))
    return Verification(len(matrix), sample, diffs, labels)


def _differences(verification: Verification) -> str:
    parts = [
        f"{method} by up to {diff:.3g} (tolerance {TOLERANCE:g})"
        for method, diff in verification.max_abs_diff.items()
        if diff > TOLERANCE
    ]
    if verification.label_differences:
        parts.append(f"{verification.label_differences} labels")
    return ", ".join(parts)
