"""Which of the model's methods a run calls, and the named, typed columns their results become.

| method              | columns                                                           |
|---------------------|-------------------------------------------------------------------|
| predict             | ``prediction`` (the label's own type); 2-D: ``prediction_<i>``    |
| predict_proba       | binary: ``probability`` (classes_[1]); else ``probability_<class>`` |
| decision_function   | 1-D: ``decision``; else ``decision_<class>``                      |
| score_samples       | ``score``                                                         |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import OutputColumns
from ..errors import ConfigError, ModelError

METHODS = ("predict", "predict_proba", "decision_function", "score_samples")


@dataclass(frozen=True)
class OutputColumn:
    """One added column: its name and type, and where it comes from in a method's result."""

    name: str
    type: pa.DataType
    method: str
    index: int | None = None  # column of a 2-D result; None for a 1-D one
    output: int | None = None  # which output of a multi-output classifier's list of arrays


@dataclass(frozen=True)
class OutputPlan:
    """The methods to call, in order, and the columns they fill."""

    methods: list[str]
    columns: list[OutputColumn]
    labels_from_probability: bool = False

    def fields(self) -> list[pa.Field]:
        return [pa.field(c.name, c.type) for c in self.columns]


def available_methods(estimator: Any) -> list[str]:
    """The output methods this model has (a Pipeline has those of its last step)."""
    return [m for m in METHODS if _has(estimator, m)]


def _has(estimator: Any, method: str) -> bool:
    try:
        return callable(getattr(estimator, method, None))
    except Exception:  # available_if raises AttributeError, some wrappers other errors
        return False


def plan_outputs(
    estimator: Any, requested: list[str] | None, names: OutputColumns, url: str
) -> OutputPlan:
    """Check the requested methods against the model and name their columns."""
    available = available_methods(estimator)
    methods = check_requested(requested, available, type(final_step(estimator)).__name__, url)
    if methods is None:
        methods = ["predict"] if "predict" in available else []
        if "predict_proba" in available and _is_classifier(estimator):
            methods.append("predict_proba")
    if not methods:
        raise ModelError(
            f"{url} holds a {type(estimator).__name__}, which has no predict()",
            "point --model at a fitted estimator or Pipeline (a separate scaler goes in --scaler)",
        )
    columns: list[OutputColumn] = []
    for method in methods:
        columns.extend(_columns(estimator, method, names))
    from_proba = "predict" in methods and "predict_proba" in methods and _argmax_of_proba(estimator)
    return OutputPlan(methods, columns, labels_from_probability=from_proba)


def check_requested(
    requested: list[str] | None, available: list[str], model_type: str, url: str
) -> list[str] | None:
    """The requested methods in call order, None when none were requested; unknown or missing
    methods are refused."""
    if not requested:
        return None
    unknown = [m for m in requested if m not in METHODS]
    if unknown:
        raise ConfigError(
            f"--outputs names {unknown}, which batch-infer does not call",
            f"choose from: {', '.join(METHODS)}",
        )
    missing = [m for m in requested if m not in available]
    if missing:
        raise ModelError(
            f"{url} ({model_type}) has no {', '.join(missing)}",
            f"its methods are: {', '.join(available) or 'none'}; choose --outputs among them",
        )
    return [m for m in METHODS if m in requested]


def _columns(estimator: Any, method: str, names: OutputColumns) -> list[OutputColumn]:
    classes = classes_of(estimator)
    if method == "predict":
        if isinstance(classes, list) and classes and isinstance(classes[0], np.ndarray):
            return [  # multi-output classifier: one label column per output
                OutputColumn(f"{names.prediction}_{i}", _arrow_type(c), method, index=i)
                for i, c in enumerate(classes)
            ]
        label = _label_type(estimator, classes)
        outputs = _n_outputs(estimator)
        if outputs > 1:
            return [
                OutputColumn(f"{names.prediction}_{i}", label, method, index=i)
                for i in range(outputs)
            ]
        return [OutputColumn(names.prediction, label, method)]
    if method == "predict_proba":
        if isinstance(classes, list) and classes and isinstance(classes[0], np.ndarray):
            return [
                OutputColumn(
                    f"{names.probability}_{i}_{c}", pa.float64(), method, index=j, output=i
                )
                for i, labels in enumerate(classes)
                for j, c in enumerate(np.asarray(labels).tolist())
            ]
        labels = [] if classes is None else np.asarray(classes).tolist()
        if len(labels) == 2:
            return [OutputColumn(names.probability, pa.float64(), method, index=1)]
        if not labels:
            raise ModelError(
                f"{type(final_step(estimator)).__name__} has predict_proba but no classes_",
                "fit the model before saving it, or leave predict_proba out of --outputs",
            )
        return [
            OutputColumn(f"{names.probability}_{c}", pa.float64(), method, index=i)
            for i, c in enumerate(labels)
        ]
    if method == "decision_function":
        labels = [] if classes is None else np.asarray(classes).tolist()
        if len(labels) > 2:
            final = final_step(estimator)
            if getattr(final, "decision_function_shape", "ovr") == "ovo":
                pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]
                return [
                    OutputColumn(f"{names.decision}_{a}_{b}", pa.float64(), method, index=i)
                    for i, (a, b) in enumerate(pairs)
                ]
            return [
                OutputColumn(f"{names.decision}_{c}", pa.float64(), method, index=i)
                for i, c in enumerate(labels)
            ]
        return [OutputColumn(names.decision, pa.float64(), method)]
    return [OutputColumn(names.score, pa.float64(), method)]  # score_samples


def columns_from_results(results: dict[str, Any], plan: OutputPlan, rows: int) -> list[pa.Array]:
    """The added columns from one batch's method results, checked against the plan's shapes."""
    arrays = []
    for column in plan.columns:
        result = results[column.method]
        if column.output is not None:
            result = np.asarray(result[column.output])
        else:
            result = np.asarray(result)
        if column.index is None:
            if result.ndim == 2 and result.shape[1] == 1:
                result = result[:, 0]
            if result.ndim != 1:
                raise ModelError(
                    f"{column.method} returned shape {result.shape}; {column.name!r} "
                    "expects one value per row",
                    "report this model type; as a workaround choose other --outputs",
                )
            values = result
        else:
            if result.ndim != 2 or result.shape[1] <= column.index:
                raise ModelError(
                    f"{column.method} returned shape {result.shape}, but the model's attributes "
                    f"announced column {column.index} for {column.name!r}",
                    "report this model type; as a workaround choose other --outputs",
                )
            values = result[:, column.index]
        arrays.append(pa.array(values, type=column.type))
    return arrays


def final_step(estimator: Any) -> Any:
    """A Pipeline's last step (the model that gives the outputs), else the estimator itself."""
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def classes_of(estimator: Any) -> Any:
    """A classifier's labels (``classes_``; a list of arrays for a multi-output classifier), or
    None for any other model.

    The model's own word comes first (scikit-learn's tags, or its ``_estimator_type``): a
    ``classes_`` attribute alone proves nothing, CatBoost's regressors have an empty one.
    """
    if estimator_type(estimator) not in (None, "classifier"):
        return None
    try:
        classes = getattr(estimator, "classes_", None)
    except AttributeError:  # a property that needs a fitted model
        return None
    if classes is None or (isinstance(classes, list) and classes and np.ndim(classes[0]) == 1):
        return classes
    return classes if np.size(classes) else None


def _is_classifier(estimator: Any) -> bool:
    return estimator_type(estimator) == "classifier" or classes_of(estimator) is not None


def estimator_type(estimator: Any) -> str | None:
    """The kind the model says it is ("classifier", "regressor", "clusterer", ...), or None."""
    final = final_step(estimator)
    try:
        from sklearn.utils import get_tags  # here: a compiled run never imports scikit-learn

        return get_tags(final).estimator_type
    except Exception:  # an estimator that does not implement the tags, or an older scikit-learn
        return getattr(final, "_estimator_type", None)


def _label_type(estimator: Any, classes: Any) -> pa.DataType:
    """The prediction column's type: the classes' own type, ints for detectors and clusterers."""
    if classes is not None:
        return _arrow_type(classes)
    kind = estimator_type(estimator)
    if kind == "outlier_detector":
        return pa.int64()
    if kind == "clusterer":
        labels = getattr(final_step(estimator), "labels_", None)
        if labels is not None and np.asarray(labels).dtype.kind in "iu":
            return pa.from_numpy_dtype(np.asarray(labels).dtype)
        return pa.int64()
    return pa.float64()


def _arrow_type(values: Any) -> pa.DataType:
    return pa.array(np.asarray(values)).type


def _n_outputs(estimator: Any) -> int:
    """How many values ``predict`` gives per row (multi-output regressors give several)."""
    final = final_step(estimator)
    if classes_of(estimator) is not None:
        return 1
    for attribute in ("n_outputs_", "_n_outputs"):
        value = getattr(final, attribute, None)
        if isinstance(value, int | np.integer):
            return int(value)
    estimators = getattr(final, "estimators_", None)
    if type(final).__name__ in ("MultiOutputRegressor", "RegressorChain") and estimators:
        return len(estimators)
    coef = getattr(final, "coef_", None)
    if coef is not None and np.ndim(coef) == 2 and np.shape(coef)[0] > 1:
        return int(np.shape(coef)[0])
    y = getattr(final, "_y", None)  # nearest neighbours keep the training targets
    if y is not None and np.ndim(y) == 2 and np.shape(y)[1] > 1:
        return int(np.shape(y)[1])
    scale_and_bias = getattr(final, "get_scale_and_bias", None)  # CatBoost: one bias per target
    if callable(scale_and_bias) and type(final).__module__.split(".")[0] == "catboost":
        return max(1, int(np.size(scale_and_bias()[1])))
    return 1


def _argmax_of_proba(estimator: Any) -> bool:
    """Classifiers whose ``predict`` is literally ``classes_[argmax(predict_proba)]``.

    For them, one ``predict_proba`` call gives both columns, exactly as ``predict`` would, and
    the model's work is not done twice (a forest's predict runs every tree again).
    """
    import sys

    final = final_step(estimator)
    if np.ndim(getattr(final, "classes_", None)) != 1:
        return False
    # looked up, not imported (30 ms): a model of these classes has imported their modules
    forest = sys.modules.get("sklearn.ensemble._forest")
    hgb = sys.modules.get("sklearn.ensemble._hist_gradient_boosting.gradient_boosting")
    known = [
        getattr(forest, "ForestClassifier", None),
        getattr(hgb, "HistGradientBoostingClassifier", None),
    ]
    return type(final).predict in {cls.predict for cls in known if cls is not None}
