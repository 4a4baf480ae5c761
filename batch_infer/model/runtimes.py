"""The compiled runtimes themselves: build one from a fitted model, save, load, call.

Each runtime takes the float64 feature matrix the scikit-learn path would hand the model (before
any scaler) and returns, per method, what the model's method returns. ``compiled`` verifies
them against the model before any is cached.

- ``Preprocessing``: row-wise numeric steps before the model (StandardScaler, MinMaxScaler,
  MaxAbsScaler, RobustScaler, SimpleImputer), from a separate scaler file or a Pipeline's steps
  alike, as the same in-place NumPy operations scikit-learn does (so the same bits).
- ``numpy-linear``: a linear model as NumPy arrays, without importing scikit-learn (or SciPy,
  or pandas) at run time.
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
STEPS_FILE = "preprocessing.npz"
SCALERS = {"StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler"}
STEP_NAMES = "StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler, SimpleImputer"


def build_runtime(estimator: Any, scaler: Any | None) -> Any:
    """The runtime for this model, or a ModelError saying why none covers it.

    A separate scaler file and a Pipeline's steps are one list here: the row-wise numeric steps
    before the final model become ``Preprocessing`` (NumPy), the final model a runtime of its own.
    """
    steps = _flatten(estimator, scaler)
    final = steps[-1]
    ops = [op for step in steps[:-1] for op in preprocessing_ops(step, steps)]
    preprocessing = Preprocessing(ops, [type(s).__name__ for s in steps[:-1]])
    if is_linear(final):
        return preprocessing.wrap(LinearRuntime.from_model(final))
    if is_tree_ensemble(final):
        return preprocessing.wrap(TreeRuntime.from_model(final))
    raise ModelError(
        f"no compiled runtime covers {type(final).__name__}; compiled: linear models "
        "(LogisticRegression, LinearRegression, Ridge, Lasso, ElasticNet, SGD, LinearSVC, ...) "
        "and boosted trees (HistGradientBoosting with numeric features, GradientBoosting, "
        f"LightGBM), alone or after {STEP_NAMES}",
        "score it with the scikit-learn runtime (--runtime sklearn)",
    )


def load_runtime(folder: Path, meta: dict[str, Any]) -> Any:
    if meta["engine"] == LinearRuntime.engine:
        final: Any = LinearRuntime.load(folder, meta)
    elif meta["engine"] == TreeRuntime.engine:
        final = TreeRuntime.load(folder, meta)
    else:
        raise ModelError(f"unknown compiled engine {meta['engine']!r}", "compile the model again")
    return Preprocessing.load(folder, meta).wrap(final)


def _flatten(estimator: Any, scaler: Any | None) -> list[Any]:
    steps = [scaler] if scaler is not None else []
    inner = getattr(estimator, "steps", None)
    if inner:
        steps.extend(step for _, step in inner if step not in (None, "passthrough"))
    else:
        steps.append(estimator)
    return steps


def preprocessing_ops(step: Any, steps: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """A fitted step as the in-place NumPy operations its ``transform`` does on a dense float64
    matrix, in scikit-learn's order (sklearn/preprocessing/_data.py, sklearn/impute/_base.py),
    so the result is the same bits; a ModelError for a step (or option) not covered."""
    name = type(step).__name__
    module = type(step).__module__

    def arr(value: Any) -> np.ndarray:
        return np.asarray(value, dtype=np.float64)

    def refuse(why: str) -> ModelError:
        return ModelError(
            f"compiled runtimes take {STEP_NAMES} (on numbers) before the model; this one has "
            f"{' -> '.join(type(s).__name__ for s in steps)}: {why}",
            "score it with the scikit-learn runtime (--runtime sklearn)",
        )

    if not module.startswith("sklearn.") or name not in (*SCALERS, "SimpleImputer"):
        raise refuse(f"{name} is not compiled")
    if name == "StandardScaler":
        ops = [("subtract", {"value": arr(step.mean_)})] if step.with_mean else []
        if step.with_std and getattr(step, "scale_", None) is not None:
            ops.append(("divide", {"value": arr(step.scale_)}))
        return ops
    if name == "RobustScaler":
        ops = [("subtract", {"value": arr(step.center_)})] if step.with_centering else []
        return ops + ([("divide", {"value": arr(step.scale_)})] if step.with_scaling else [])
    if name == "MinMaxScaler":
        ops = [("multiply", {"value": arr(step.scale_)}), ("add", {"value": arr(step.min_)})]
        if step.clip:
            ops.append(
                ("clip", {"low": arr(step.feature_range[0]), "high": arr(step.feature_range[1])})
            )
        return ops
    if name == "MaxAbsScaler":
        ops = [("divide", {"value": arr(step.scale_)})]
        return ops + ([("clip", {"low": arr(-1.0), "high": arr(1.0)})] if step.clip else [])
    # SimpleImputer
    if step.add_indicator:
        raise refuse("SimpleImputer(add_indicator=True) is not compiled")
    missing = step.missing_values
    if not (isinstance(missing, float) and np.isnan(missing)):
        raise refuse(f"SimpleImputer(missing_values={missing!r}) is not compiled, only NaN")
    statistics = np.asarray(step.statistics_)  # object dtype for strategy="constant"
    if not all(isinstance(v, int | float | np.number) for v in statistics.tolist()):
        raise refuse("SimpleImputer fills values that are not numbers")
    statistics = statistics.astype(np.float64)
    ops = []
    if not step.keep_empty_features and np.isnan(statistics).any():
        keep = np.flatnonzero(~np.isnan(statistics))  # columns never seen: transform drops them
        ops.append(("select", {"columns": keep, "width": np.asarray(len(statistics))}))
        statistics = statistics[keep]
    return [*ops, ("fill", {"value": statistics})]


@dataclass
class Preprocessing:
    """Row-wise numeric steps (scalers, imputers) as NumPy operations on the feature matrix."""

    ops: list[tuple[str, dict[str, Any]]]
    names: list[str]  # the steps they came from, for ``compile``'s report

    def wrap(self, final: Any) -> Any:
        return PipelineRuntime(self, final) if self.ops else final

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        """The steps' result, the matrix itself left unchanged (scikit-learn's ``copy=True``):
        elementwise IEEE operations, so neither the layout nor the batch changes a row's bits."""
        features = matrix
        for op, params in self.ops:
            fresh = features is not matrix
            if op == "select":
                features = features[:, params["columns"]]
            elif op == "fill":
                mask = np.isnan(features)
                if mask.any():
                    features = features.copy() if not fresh else features
                    np.copyto(
                        features, np.broadcast_to(params["value"], features.shape), where=mask
                    )
            elif op == "clip":
                features = np.clip(
                    features, params["low"], params["high"], out=features if fresh else None
                )
            else:
                ufunc = _UFUNCS[op]
                features = ufunc(features, params["value"], out=features if fresh else None)
        return features

    def inverse(self, matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Raw rows that these steps map near the given ones (for probing a model's splits)."""
        raw = np.array(matrix, dtype=np.float64)
        with np.errstate(all="ignore"):
            for op, params in reversed(self.ops):
                if op == "select":
                    full = rng.normal(0, 1, (len(raw), int(params["width"])))
                    full[:, params["columns"]] = raw
                    raw = full
                elif op in _INVERSE:
                    raw = _INVERSE[op](raw, params["value"])
        return raw

    def describe(self) -> list[str]:
        return self.names

    def save(self, folder: Path) -> None:
        arrays = {
            f"{i}-{op}-{key}": value
            for i, (op, params) in enumerate(self.ops)
            for key, value in params.items()
        }
        np.savez(folder / STEPS_FILE, **arrays)

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> Preprocessing:
        saved = meta.get("preprocessing") or {}
        if not saved.get("ops"):
            return cls([], [])
        with np.load(folder / STEPS_FILE, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        ops: list[tuple[str, dict[str, Any]]] = [(op, {}) for op in saved["ops"]]
        for name, value in arrays.items():
            index, op, key = name.split("-")
            if ops[int(index)][0] != op:
                raise ModelError(
                    f"{folder / STEPS_FILE} does not match its metadata", "compile the model again"
                )
            ops[int(index)][1][key] = value
        return cls(ops, list(saved.get("steps", [])))


_UFUNCS = {"subtract": np.subtract, "divide": np.divide, "multiply": np.multiply, "add": np.add}
_INVERSE = {
    "subtract": np.add,
    "divide": np.multiply,
    "multiply": np.divide,
    "add": np.subtract,
}


@dataclass
class PipelineRuntime:
    """Preprocessing in NumPy, then the final model's runtime (linear or trees)."""

    preprocessing: Preprocessing
    final: Any

    @property
    def engine(self) -> str:
        return self.final.engine

    @property
    def methods(self) -> tuple[str, ...]:
        return self.final.methods

    def call(self, matrix: np.ndarray, methods: list[str]) -> dict[str, Any]:
        return self.final.call(self.preprocessing.transform(matrix), methods)

    def describe(self) -> dict[str, Any]:
        ops = [op for op, _ in self.preprocessing.ops]
        return {
            **self.final.describe(),
            "preprocessing": {"steps": self.preprocessing.names, "ops": ops},
        }

    def save(self, folder: Path) -> None:
        self.final.save(folder)
        self.preprocessing.save(folder)

    def probe_rows(self, rng: np.random.Generator, allow_nan: list[bool]) -> np.ndarray:
        """The final model's probes mapped back through the steps, each value moved by up to two
        ulps (so the steps' rounding lands on both sides of every split), plus the same probes
        taken as raw values; NaN where the model takes it."""
        inner = self.final.probe_rows(rng, [False] * self.final_width())
        raw = self.preprocessing.inverse(inner, rng)
        steps = rng.integers(-2, 3, raw.shape)
        with np.errstate(all="ignore"):
            jittered = raw + steps * np.spacing(raw)
        rows = [np.where(np.isfinite(jittered), jittered, raw)]
        if inner.shape[1] == raw.shape[1]:
            rows.append(inner)
        probes = np.concatenate(rows)
        probes = np.where(np.isfinite(probes), probes, 0.0)
        for column, nan_allowed in enumerate(allow_nan):
            if nan_allowed:
                probes[rng.random(len(probes)) < 0.05, column] = np.nan
        return probes

    def final_width(self) -> int:
        return self.final.width


@dataclass
class LinearRuntime:
    """``X @ coef.T + intercept``, and the classifier's labels/probabilities (a scaler before it
    is a ``Preprocessing`` step)."""

    engine = "numpy-linear"
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray | None = None
    probability: str | None = None  # "logistic": LogisticRegression's predict_proba

    @property
    def methods(self) -> tuple[str, ...]:
        if self.classes is None:
            return ("predict",)
        if self.probability:
            return ("predict", "predict_proba", "decision_function")
        return ("predict", "decision_function")

    @property
    def width(self) -> int:
        return int(self.coef.shape[-1])

    @classmethod
    def from_model(
        cls, model: Any, mean: np.ndarray | None = None, scale: np.ndarray | None = None
    ) -> Any:
        """The model's runtime; with a StandardScaler's ``mean``/``scale``, that step first."""
        ops = [] if mean is None else [("subtract", {"value": np.asarray(mean, np.float64)})]
        if scale is not None:
            ops.append(("divide", {"value": np.asarray(scale, np.float64)}))
        classes = getattr(model, "classes_", None)
        probability = None
        if classes is not None and type(model).__name__ == "LogisticRegression":
            probability = "logistic"
        linear = cls(
            coef=np.asarray(model.coef_, dtype=np.float64),
            intercept=np.asarray(model.intercept_, dtype=np.float64),
            classes=np.asarray(classes) if classes is not None else None,
            probability=probability,
        )
        return Preprocessing(ops, ["StandardScaler"] if ops else []).wrap(linear)

    def describe(self) -> dict[str, Any]:
        return {"runtime_needs": "numpy"}

    def save(self, folder: Path) -> None:
        arrays = {"coef": self.coef, "intercept": self.intercept}
        np.savez(folder / LINEAR_FILE, probability=np.array(self.probability or ""), **arrays)

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> LinearRuntime:
        with np.load(folder / LINEAR_FILE, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        probability = str(arrays.pop("probability")) or None
        return cls(probability=probability, classes=saved_classes(meta), **arrays)

    def decision(self, matrix: np.ndarray) -> np.ndarray:
        """What scikit-learn computes: ``X @ coef.T + b`` summed as ``rowwise.linear_scores``
        sums it, so a row scores the same in any batch."""
        scores = linear_scores(matrix, self.coef) + self.intercept  # row by row, not BLAS
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
        """Rows across the model's input range (a scaler's, once mapped back) and several orders
        of magnitude."""
        rows = [rng.normal(0, 1, (2_000, self.width))]
        for exponent in (-3, 0, 3, 6):
            rows.append(rng.normal(0, 10.0**exponent, (500, self.width)))
        return np.concatenate(rows)


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
