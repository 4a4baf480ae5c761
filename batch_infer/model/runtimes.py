"""The compiled runtimes themselves: build one from a fitted model, save, load, call.

Each runtime takes the float64 feature matrix the scikit-learn path would hand the model (before
any scaler) and returns, per method, what the model's method returns. ``compiled`` verifies
them against the model before any is cached.

- ``numpy-linear``: a StandardScaler (optional) then a linear model, as NumPy arrays: the same
  operations scikit-learn does, without importing it (or SciPy, or pandas) at run time.
- ``treelite``: boosted tree ensembles compiled to native code, see ``trees.TreeRuntime``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .rowwise import is_linear, linear_scores
from .runtime_meta import saved_classes
from .trees import TreeRuntime, is_tree_ensemble

LINEAR_FILE = "linear.npz"


def build_runtime(estimator: Any, scaler: Any | None) -> Any:
    """The runtime for this model, or a ModelError saying why none covers it."""
    steps = _flatten(estimator, scaler)
    final = steps[-1]
    scalers = steps[:-1]
    unsupported = [type(s).__name__ for s in scalers if type(s).__name__ != "StandardScaler"]
    if unsupported or len(scalers) > 1:
        raise ModelError(
            f"compiled runtimes take an optional StandardScaler then one model; this one has "
            f"{', '.join(type(s).__name__ for s in steps)}",
            "score it with the scikit-learn runtime (--runtime sklearn)",
        )
    standard = _standardisation(scalers[0]) if scalers else (None, None)
    if is_linear(final):
        return LinearRuntime.from_model(final, *standard)
    if is_tree_ensemble(final):
        if scalers:
            raise ModelError(
                "a scaler in front of a tree ensemble is not compiled (trees do not need one)",
                "score it with the scikit-learn runtime (--runtime sklearn)",
            )
        return TreeRuntime.from_model(final)
    raise ModelError(
        f"no compiled runtime covers {type(final).__name__}; compiled: linear models "
        "(LogisticRegression, LinearRegression, Ridge, Lasso, ElasticNet, SGD, LinearSVC, ...) "
        "and boosted trees (HistGradientBoosting with numeric features, GradientBoosting, "
        "LightGBM)",
        "score it with the scikit-learn runtime (--runtime sklearn)",
    )


def load_runtime(folder: Path, meta: dict[str, Any]) -> Any:
    if meta["engine"] == LinearRuntime.engine:
        return LinearRuntime.load(folder, meta)
    if meta["engine"] == TreeRuntime.engine:
        return TreeRuntime.load(folder, meta)
    raise ModelError(f"unknown compiled engine {meta['engine']!r}", "compile the model again")


def _flatten(estimator: Any, scaler: Any | None) -> list[Any]:
    steps = [scaler] if scaler is not None else []
    inner = getattr(estimator, "steps", None)
    if inner:
        steps.extend(step for _, step in inner if step not in (None, "passthrough"))
    else:
        steps.append(estimator)
    return steps


def _standardisation(scaler: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
    scale = getattr(scaler, "scale_", None) if scaler.with_std else None
    return mean, (np.asarray(scale, dtype=np.float64) if scale is not None else None)


@dataclass
class LinearRuntime:
    """``(X - mean) / scale @ coef.T + intercept``, and the classifier's labels/probabilities."""

    engine = "numpy-linear"
    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    classes: np.ndarray | None = None
    probability: str | None = None  # "logistic": LogisticRegression's predict_proba

    @property
    def methods(self) -> tuple[str, ...]:
        if self.classes is None:
            return ("predict",)
        if self.probability:
            return ("predict", "predict_proba", "decision_function")
        return ("predict", "decision_function")

    @classmethod
    def from_model(
        cls, model: Any, mean: np.ndarray | None, scale: np.ndarray | None
    ) -> LinearRuntime:
        classes = getattr(model, "classes_", None)
        probability = None
        if classes is not None and type(model).__name__ == "LogisticRegression":
            probability = "logistic"
        return cls(
            coef=np.asarray(model.coef_, dtype=np.float64),
            intercept=np.asarray(model.intercept_, dtype=np.float64),
            mean=mean,
            scale=scale,
            classes=np.asarray(classes) if classes is not None else None,
            probability=probability,
        )

    def describe(self) -> dict[str, Any]:
        return {"runtime_needs": "numpy"}

    def save(self, folder: Path) -> None:
        arrays = {"coef": self.coef, "intercept": self.intercept}
        for name in ("mean", "scale"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        np.savez(folder / LINEAR_FILE, probability=np.array(self.probability or ""), **arrays)

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> LinearRuntime:
        with np.load(folder / LINEAR_FILE, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        probability = str(arrays.pop("probability")) or None
        return cls(probability=probability, classes=saved_classes(meta), **arrays)

    def decision(self, matrix: np.ndarray) -> np.ndarray:
        """What scikit-learn computes: the scaler's in-place steps, then ``X @ coef.T + b``
        summed as ``rowwise.linear_scores`` sums it, so a row scores the same in any batch."""
        features = matrix
        if self.mean is not None:
            features = features - self.mean
        if self.scale is not None:
            features = (
                features / self.scale if features is matrix else _divide(features, self.scale)
            )
        scores = linear_scores(features, self.coef) + self.intercept  # row by row, not BLAS
        if scores.ndim > 1 and scores.shape[1] == 1 and self.classes is not None:
            return scores.reshape(-1)
        return scores

    def call(self, matrix: np.ndarray, methods: list[str]) -> dict[str, Any]:
        scores = self.decision(matrix)
        results: dict[str, Any] = {}
        if self.classes is None:
            results["predict"] = scores
            return results
        if "decision_function" in methods:
            results["decision_function"] = scores
        if "predict" in methods:
            if scores.ndim == 1:
                results["predict"] = self.classes.take((scores > 0).astype(np.intp))
            else:
                results["predict"] = self.classes.take(scores.argmax(axis=1))
        if "predict_proba" in methods:
            results["predict_proba"] = _logistic_proba(scores)
        return results

    def probe_rows(self, rng: np.random.Generator, allow_nan: list[bool]) -> np.ndarray:
        """Rows across the scaled range of every feature and several orders of magnitude."""
        width = self.coef.shape[-1]
        centre = self.mean if self.mean is not None else np.zeros(width)
        spread = self.scale if self.scale is not None else np.ones(width)
        rows = [centre + spread * rng.normal(0, 1, (2_000, width))]
        for exponent in (-3, 0, 3, 6):
            rows.append(rng.normal(0, 10.0**exponent, (500, width)))
        return np.concatenate(rows)


def _divide(features: np.ndarray, scale: np.ndarray) -> np.ndarray:
    features /= scale  # a fresh array already: divide in place, as StandardScaler does
    return features


def _logistic_proba(scores: np.ndarray) -> np.ndarray:
    """LogisticRegression.predict_proba: the logistic of the score (binary), else softmax."""
    if scores.ndim == 1:
        with np.errstate(over="ignore"):  # exp(-score) = inf gives 0, as scipy's expit does
            positive = 1.0 / (1.0 + np.exp(-scores))
        return np.stack([1 - positive, positive], axis=1)
    shifted = scores - scores.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted
