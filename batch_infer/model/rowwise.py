"""A row's scores depend on that row only, never on the batch it is scored in.

BLAS computes ``X @ coef.T`` with other instructions for other matrix shapes (a single row, the
ragged tail rows beyond the last multiple of the SIMD width, threads splitting the rows), so the
same row can differ in the last bit between a batch of 1 row and one of 50,000: ``serve`` and
``run`` would disagree. Before calling a model, ``plan_for`` sorts its parts once:

- linear models (LogisticRegression, LinearSVC, SGD, Ridge, ...; alone, in a Pipeline or a
  MultiOutput wrapper) get their decision function from ``linear_scores``, one feature at a time
  over all rows: IEEE multiplications and additions, each row's in the same order whatever the
  batch. The model's own predict / predict_proba / decision_function then apply its link
  unchanged. Against the model called on a whole table this can differ in the last bits (BLAS
  fuses multiply-adds); sparse inputs are summed as SciPy sums them, bit for bit.
- parts that already score each row on its own (scalers, imputers, encoders, text vectorizers,
  trees and their ensembles, HistGradientBoosting, XGBoost, LightGBM, CatBoost) are called as
  they are; forests with ``n_jobs`` are made serial, since threads add the trees in any order.
- anything else (MLP, k-means, nearest neighbours, PCA, SVC with a kernel, ...) is called on
  tiles of exactly ``TILE`` rows, the last one padded with copies of its first row: every call
  has the same shape, so BLAS computes a row the same way wherever it lands.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

TILE = 1024  # rows per call of a tiled model: chosen by measurement, see the report

# parts whose output row depends on that input row only, by module prefix and class name
ROWWISE = {
    "sklearn.preprocessing": {
        "StandardScaler",
        "MinMaxScaler",
        "MaxAbsScaler",
        "RobustScaler",
        "OneHotEncoder",
        "OrdinalEncoder",
        "TargetEncoder",
        "Binarizer",
        "KBinsDiscretizer",
        "PolynomialFeatures",
    },
    "sklearn.impute": {"SimpleImputer", "MissingIndicator"},
    "sklearn.feature_extraction.text": {
        "CountVectorizer",
        "TfidfVectorizer",
        "TfidfTransformer",
        "HashingVectorizer",
    },
    "sklearn.feature_selection": {
        "SelectKBest",
        "SelectPercentile",
        "VarianceThreshold",
        "SelectFromModel",
    },
    "sklearn.tree": {
        "DecisionTreeClassifier",
        "DecisionTreeRegressor",
        "ExtraTreeClassifier",
        "ExtraTreeRegressor",
    },
    "sklearn.ensemble": {
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
        "IsolationForest",
        "HistGradientBoostingClassifier",
        "HistGradientBoostingRegressor",
        "GradientBoostingClassifier",
        "GradientBoostingRegressor",
    },
    "xgboost": {"XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor"},
    "lightgbm": {"LGBMClassifier", "LGBMRegressor"},
    "catboost": {"CatBoostClassifier", "CatBoostRegressor"},
}


@dataclass(frozen=True)
class RowwisePlan:
    """What to call: the model and scaler or their row-wise twins, or both on fixed tiles."""

    estimator: Any
    scaler: Any
    tiled: bool


_UNKNOWN = object()  # cached: no row-wise twin
_SELF = object()  # cached: the part itself (a value must not hold its weak key)
_twins: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def plan_for(estimator: Any, scaler: Any | None = None) -> RowwisePlan:
    """How to call this model (and separate scaler) so each row scores on its own."""
    twin, scaler_twin = _cached_twin(estimator), _cached_twin(scaler)
    if twin is _UNKNOWN or scaler_twin is _UNKNOWN:
        return RowwisePlan(estimator, scaler, tiled=True)
    return RowwisePlan(twin, scaler_twin, tiled=False)


def _cached_twin(part: Any) -> Any:
    """``rowwise_twin`` once per loaded object (the twin shares the model's arrays)."""
    if part is None:
        return None
    try:
        cached = _twins.get(part)
    except TypeError:  # not weakly referenceable: decide each time
        cached = None
    if cached is None:
        twin = rowwise_twin(part)
        cached = _UNKNOWN if twin is None else _SELF if twin is part else twin
        try:
            _twins[part] = cached
        except TypeError:
            pass
    return part if cached is _SELF else cached


def rowwise_twin(part: Any) -> Any | None:
    """The part, or a shallow copy that scores each row on its own; None if that is unknown."""
    if part is None or isinstance(part, str):  # "drop", "passthrough"
        return part
    steps = getattr(part, "steps", None)
    if isinstance(steps, list) and hasattr(part, "named_steps"):  # a Pipeline
        twins = [(name, rowwise_twin(step)) for name, step in steps]
        if any(t is None and s is not None for (_, t), (_, s) in zip(twins, steps, strict=True)):
            return None
        twin = copy.copy(part)
        twin.steps = twins
        return twin
    fitted = getattr(part, "transformers_", None)
    if fitted is not None and hasattr(part, "sparse_threshold"):  # a ColumnTransformer
        # its transformers are only checked: sparse or dense output scores the same bits
        return part if all(rowwise_twin(t) is not None for _, t, _ in fitted) else None
    inner = getattr(part, "estimators_", None)
    if type(part).__name__ in ("MultiOutputRegressor", "MultiOutputClassifier") and inner:
        twins = [rowwise_twin(e) for e in inner]
        if any(t is None for t in twins):
            return None
        twin = copy.copy(part)
        twin.estimators_ = twins
        return twin
    if _is_plain_linear(part):
        return _linear_twin(part)
    module = type(part).__module__
    if any(
        module.startswith(prefix) and type(part).__name__ in names
        for prefix, names in ROWWISE.items()
    ):
        if getattr(part, "n_jobs", None) not in (None, 1) and module.startswith("sklearn."):
            twin = copy.copy(part)
            twin.n_jobs = None  # threads would add the trees' results in any order
            return twin
        return part
    return None


def _is_plain_linear(model: Any) -> bool:
    return is_linear(model) and isinstance(getattr(model, "coef_", None), np.ndarray)


def is_linear(model: Any) -> bool:
    """Whether the model's decision is the plain ``X @ coef.T + intercept`` (then its row-wise
    twin, and a compiled ``LinearRuntime``, compute it without BLAS)."""
    # imported here: a run on a compiled runtime imports this module but not scikit-learn
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    if not isinstance(model, LinearClassifierMixin | LinearModel):
        return False
    # models whose predict is not the plain linear function of X (Bayesian, GLMs with a link)
    return type(model).__name__ not in (
        "PoissonRegressor",
        "GammaRegressor",
        "TweedieRegressor",
        "ARDRegression",
        "BayesianRidge",
        "RANSACRegressor",
        "TheilSenRegressor",
        "QuantileRegressor",
    ) and np.ndim(getattr(model, "coef_", None)) in (1, 2)


def _linear_twin(model: Any) -> Any:
    """A shallow copy whose decision function is ``linear_scores``: the model's own methods
    (predict, predict_proba with its link, decision_function) call it instead of BLAS."""
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.utils.validation import check_is_fitted, validate_data

    twin = copy.copy(model)
    classifier = isinstance(model, LinearClassifierMixin)
    ravel = not classifier and type(model).__name__.startswith("SGD")  # as SGDRegressor's

    def decision(X: Any) -> np.ndarray:
        check_is_fitted(twin)
        X = validate_data(
            twin, X, accept_sparse="csr" if classifier else ["csr", "csc", "coo"], reset=False
        )
        scores = linear_scores(X, twin.coef_) + twin.intercept_
        if classifier and scores.ndim > 1 and scores.shape[1] == 1:
            return scores.reshape(-1)
        return scores.ravel() if ravel else scores

    # what LinearClassifierMixin.decision_function / LinearModel._decision_function compute;
    # predict, predict_proba and SGD's probabilities all go through these two
    if classifier:
        twin.decision_function = decision
    else:
        twin._decision_function = decision
    return twin


def linear_scores(X: Any, coef: np.ndarray) -> np.ndarray:
    """``X @ coef.T`` with each row summed feature by feature, in order, from 0.

    Dense rows are computed one feature (column) at a time over all rows, so a row's sum is the
    same sequence of rounded operations whatever else is in the batch. Sparse rows go through
    SciPy, which sums each row's stored values in the same order from 0: a row gives the same
    bits dense or sparse (a ColumnTransformer's output type depends on the batch's density).
    Not ``np.einsum``: its inner loop, hence its order of additions, follows the arrays' shapes
    and layout (a fresh single row sums differently from the same row in a matrix).
    """
    weights = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    if hasattr(X, "tocsr"):  # SciPy sparse
        scores = np.asarray(X.tocsr() @ weights.T)
    else:
        X = np.asfortranarray(X)  # each feature's column contiguous
        by_output = np.zeros((weights.shape[0], X.shape[0]))
        term = np.empty_like(by_output)
        for j in range(X.shape[1]):
            np.multiply(weights[:, j : j + 1], X[:, j], out=term)
            by_output += term
        scores = np.ascontiguousarray(by_output.T)  # row-major, as BLAS gives it
    return scores.reshape(-1) if np.ndim(coef) == 1 else scores


def in_tiles(call: Callable[[Any], dict[str, Any]], features: Any) -> dict[str, Any]:
    """``call`` on tiles of exactly TILE rows, the last one padded.

    BLAS threads are left as they are: limiting them is process-wide state that concurrent
    batches would undo, and with OpenBLAS (NumPy's and SciPy's) the thread count changed no value
    of a fixed-shape tile (measured with 1 to 8 threads).
    """
    rows = features.shape[0]
    parts = []
    for start in range(0, rows, TILE):
        count = min(TILE, rows - start)
        parts.append(_trim(call(_tile(features, start, count)), count))
    return _joined(parts)


def _tile(features: Any, start: int, count: int) -> Any:
    """TILE rows from ``start``: ``count`` real ones, then copies of the first; always a fresh
    column-major matrix (or DataFrame), as the whole batch would be."""
    positions = np.arange(start, start + TILE)
    positions[count:] = start
    if isinstance(features, np.ndarray):
        return np.asfortranarray(features[positions])
    if hasattr(features, "rows"):  # an encoders.Encoded: the ColumnTransformer's matrix
        return features.rows(positions)
    tile = features.iloc[positions]
    return tile.reset_index(drop=True)


def _trim(results: dict[str, Any], count: int) -> dict[str, Any]:
    def head(values: Any) -> Any:
        if isinstance(values, list):  # a multi-output classifier's list of arrays
            return [head(v) for v in values]
        if hasattr(values, "iloc"):
            return values.iloc[:count]
        return np.asarray(values)[:count]

    return {method: head(values) for method, values in results.items()}


def _joined(parts: list[dict[str, Any]]) -> dict[str, Any]:
    def join(values: list[Any]) -> Any:
        if isinstance(values[0], list):
            return [join([v[i] for v in values]) for i in range(len(values[0]))]
        if hasattr(values[0], "iloc"):
            import pandas as pd

            return pd.concat(values, ignore_index=True)
        return np.concatenate(values)

    return {method: join([p[method] for p in parts]) for method in parts[0]}
