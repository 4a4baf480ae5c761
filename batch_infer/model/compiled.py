"""``batch-infer compile``: build a runtime from a fitted model, verify it, cache it.

A runtime (NumPy arrays for linear models, native code for tree ensembles, see ``runtimes``) is
checked against the model's own methods on a sample (labels identical, numbers within
``TOLERANCE``) before it is stored in the cache (``cache``), keyed by the model's and the
scaler's sha256. ``run --runtime auto`` then uses it, and never unpickles the model.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import sklearn

from ..config import InputConfig, ModelConfig, OutputColumns
from ..errors import ModelError
from ..inputs import plan_input
from .cache import FORMAT, artifact_folder, column_bases, find_compiled, store
from .inputs import model_input, unscorable_rows
from .load import load_model, sample_frame
from .outputs import METHODS, available_methods, final_step, plan_outputs
from .runtimes import build_runtime

__all__ = ["TOLERANCE", "Verification", "compile_model", "find_compiled", "verify"]

TOLERANCE = 1e-12


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
    base = column_bases(OutputColumns())
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
    meta = {
        "format": FORMAT,
        "engine": runtime.engine,
        "model_url": model_url,
        "model_sha256": model.sha256,
        "scaler_url": scaler_url,
        "scaler_sha256": model.scaler.sha256 if model.scaler else None,
        "model_type": type(final_step(estimator)).__name__,
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
    store(folder, runtime, meta)
    return {**meta, "folder": str(folder)}


def verification_sample(model: Any, runtime: Any, sample: str | None) -> tuple[np.ndarray, str]:
    """Rows to compare on: the user's sample (up to 100,000 rows) and rows made to probe the
    model's edges (every split threshold and its neighbours, missing values where allowed)."""
    parts, described = [], []
    if sample:
        frame = sample_frame(plan_input(InputConfig(path=sample)), model.features)
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
