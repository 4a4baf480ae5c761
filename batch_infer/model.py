"""Load and check model artifacts, and say what they need (features) and give (labels, classes).

A run uses either one estimator (often a scikit-learn Pipeline) or a separate scaler plus an
estimator, the layout many teams ship as ``scaler.joblib`` + ``model.joblib``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import storage
from .config import ModelConfig
from .errors import ConfigError, ModelError, first_line

log = logging.getLogger(__name__)

ModelKind = Literal["binary", "multiclass", "regressor"]


@dataclass(frozen=True)
class Artifact:
    """One loaded file: the object, where it came from, and what it was built with."""

    obj: Any = field(repr=False)
    url: str
    sha256: str
    saved_sklearn_version: str | None


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-use model: estimator, optional scaler, and the facts a run records about them."""

    estimator: Artifact
    scaler: Artifact | None
    features: list[str]
    kind: ModelKind
    classes: list[Any] | None
    has_probability: bool
    version: str
    labels_from_probability: bool = False
    allows_nan: bool = False

    @property
    def sha256(self) -> str:
        return self.estimator.sha256

    def _frame(self, step: Any, matrix: np.ndarray) -> Any:
        """Give a step the column names it was fitted with, so scikit-learn checks them."""
        names = getattr(step, "feature_names_in_", None)
        if names is None:
            return matrix
        import pandas as pd

        return pd.DataFrame(matrix, columns=list(names), copy=False)

    def transform(self, matrix: np.ndarray) -> Any:
        """Apply the separate scaler, if any."""
        if self.scaler is None:
            return self._frame(self.estimator.obj, matrix)
        scaled = self.scaler.obj.transform(self._frame(self.scaler.obj, matrix))
        return self._frame(self.estimator.obj, np.asarray(scaled))

    def predict(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (or values) and, for classifiers that have it, class probabilities.

        Rows with infinite (or, for models that refuse them, NaN) features were set aside
        before, so scikit-learn's own finiteness scan of every call is skipped
        (``assume_finite``, a thread-local setting).
        """
        from sklearn import config_context

        with config_context(assume_finite=True):
            features = self.transform(matrix)
            estimator = self.estimator.obj
            if not self.has_probability:
                return np.asarray(estimator.predict(features)), None
            proba = np.asarray(estimator.predict_proba(features))
            if self.labels_from_probability:
                return np.asarray(estimator.classes_).take(np.argmax(proba, axis=1)), proba
            return np.asarray(estimator.predict(features)), proba


def load_model(config: ModelConfig) -> LoadedModel:
    """Load the estimator (and scaler), then work out its features, kind and version."""
    estimator = load_artifact(config.path, config, "model", config.sha256)
    scaler = (
        load_artifact(config.scaler, config, "scaler", config.scaler_sha256)
        if config.scaler
        else None
    )
    if not hasattr(estimator.obj, "predict"):
        raise ModelError(
            f"{estimator.url} holds a {type(estimator.obj).__name__}, which has no predict()",
            "point --model at a fitted estimator or Pipeline (a separate scaler goes in --scaler)",
        )
    if scaler is not None and not hasattr(scaler.obj, "transform"):
        raise ModelError(
            f"{scaler.url} holds a {type(scaler.obj).__name__}, which has no transform()",
            "point --scaler at a fitted transformer such as a StandardScaler",
        )
    kind, classes = _kind(estimator)
    has_probability = kind != "regressor" and hasattr(estimator.obj, "predict_proba")
    return LoadedModel(
        estimator=estimator,
        scaler=scaler,
        features=_features(config.features, estimator, scaler),
        kind=kind,
        classes=classes,
        has_probability=has_probability,
        version=config.version or estimator.sha256[:12],
        labels_from_probability=has_probability and _predicts_argmax_of_proba(estimator.obj),
        allows_nan=_allows_nan(([scaler.obj] if scaler else []) + [estimator.obj]),
    )


def _allows_nan(steps: list[Any]) -> bool:
    """Whether every step accepts NaN (scikit-learn's ``allow_nan`` tag), pipelines unrolled."""
    from sklearn.utils import get_tags

    flat: list[Any] = []
    for step in steps:
        if hasattr(step, "steps"):
            flat.extend(s for _, s in step.steps if s not in (None, "passthrough"))
        else:
            flat.append(step)
    try:
        return all(get_tags(step).input_tags.allow_nan for step in flat)
    except (AttributeError, TypeError, ValueError):
        return False  # not a scikit-learn estimator: NaN rows are set aside for it


def _predicts_argmax_of_proba(estimator: Any) -> bool:
    """Classifiers whose ``predict`` is literally ``classes_[argmax(predict_proba)]``.

    For them, one ``predict_proba`` call gives both columns, exactly as ``predict`` would, and
    the model's work is not done twice (a forest's predict runs every tree again).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.ensemble._forest import ForestClassifier

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    known = (ForestClassifier, HistGradientBoostingClassifier)
    return type(final).predict in {cls.predict for cls in known}


# scikit-learn's own internal types that skops does not trust by default, yet only hold arrays
SKOPS_TRUSTED = [
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
]


def load_artifact(
    url: str,
    config: ModelConfig | None = None,
    role: str = "model",
    expected_sha256: str | None = None,
) -> Artifact:
    """Read an artifact's bytes, hash them, check the pin, then deserialize.

    joblib/pickle files run code when loaded, so a configured sha256 is checked before anything
    is deserialized. ``.skops`` files load without running code and only with trusted types.
    Every failure is a ModelError (exit 4).
    """
    config = config or ModelConfig(path=url)
    fs, path = storage.resolve(url, config.storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise ModelError(f"{role} file {url} does not exist", f"check --{role}") from None
    except OSError as exc:
        if (store_error := storage.translate(exc)) is not None:
            raise store_error from None
        raise ModelError(
            f"cannot read {role} file {url}: {first_line(exc)}", f"check --{role}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256.strip().lower():
        raise ModelError(
            f"{role} file {url} has sha256 {digest}, not the pinned {expected_sha256}; not loaded",
            f"check which file --{role} points at, or update the pin (--{role}-sha256)",
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if url.lower().endswith(".skops"):
            obj = _load_skops(data, url, role, config.trusted_types)
        else:
            obj = _load_joblib(data, url, role)
    saved_version = _saved_sklearn_version(obj, caught)
    if config.strict_versions and saved_version is not None:
        import sklearn

        if saved_version != sklearn.__version__:
            raise ModelError(
                f"{role} file {url} was saved with scikit-learn {saved_version}, "
                f"{sklearn.__version__} is installed (--strict-versions)",
                f"install scikit-learn=={saved_version}, or re-save the model with this version",
            )
    return Artifact(obj=obj, url=url, sha256=digest, saved_sklearn_version=saved_version)


def _load_joblib(data: bytes, url: str, role: str) -> Any:
    import joblib

    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:  # unpickling can raise almost anything
        cause = (
            "not a joblib or pickle file"
            if isinstance(exc, KeyError | EOFError | pickle.UnpicklingError)
            else f"{type(exc).__name__}: {first_line(exc)}"
        )
        raise ModelError(
            f"cannot load {role} file {url}: {cause}",
            "it must be a joblib file saved with compatible scikit-learn/numpy versions",
        ) from None


def _load_skops(data: bytes, url: str, role: str, extra_trusted: list[str]) -> Any:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise ModelError(
            f"cannot load {role} file {url}: not a valid .skops file ({first_line(exc)})",
            "save it with skops.io.dump",
        ) from None
    trusted = set(SKOPS_TRUSTED) | set(extra_trusted)
    refused = sorted(set(untrusted) - trusted)
    if refused:
        raise ModelError(
            f"{role} file {url} holds types that are not trusted: {', '.join(refused)}; not loaded",
            "if you trust them, list them under model.trusted_types in the config",
        )
    try:
        return sio.loads(data, trusted=sorted(set(untrusted)))
    except Exception as exc:
        raise ModelError(
            f"cannot load {role} file {url}: {type(exc).__name__}: {first_line(exc)}",
            "re-save it with skops.io.dump and this scikit-learn version",
        ) from None


def _saved_sklearn_version(obj: Any, caught: list[warnings.WarningMessage]) -> str | None:
    """scikit-learn warns when unpickling across versions; otherwise the versions are equal."""
    import sklearn
    from sklearn.exceptions import InconsistentVersionWarning

    for message in caught:
        if isinstance(message.message, InconsistentVersionWarning):
            saved = message.message.original_sklearn_version
            log.warning(
                "%s was saved with scikit-learn %s but %s is installed; predictions may differ",
                type(obj).__name__,
                saved,
                sklearn.__version__,
            )
            return saved
        warnings.warn_explicit(message.message, message.category, message.filename, message.lineno)
    return sklearn.__version__ if _is_sklearn(obj) else None


def _is_sklearn(obj: Any) -> bool:
    return type(obj).__module__.startswith("sklearn.")


def _kind(estimator: Artifact) -> tuple[ModelKind, list[Any] | None]:
    from sklearn.base import is_classifier

    obj = estimator.obj
    if is_classifier(obj) or hasattr(obj, "classes_"):
        classes = getattr(obj, "classes_", None)
        if classes is None:
            raise ModelError(
                f"{estimator.url} holds a classifier that is not fitted (no classes_)",
                "fit the model before saving it",
            )
        classes = np.asarray(classes).tolist()
        return ("binary" if len(classes) == 2 else "multiclass"), classes
    return "regressor", None


def _features(
    configured: list[str] | None, estimator: Artifact, scaler: Artifact | None
) -> list[str]:
    """The feature columns: configured, else the model's ``feature_names_in_``, else the scaler's."""
    first = scaler or estimator
    named = next(
        (a for a in (estimator, scaler) if a is not None and hasattr(a.obj, "feature_names_in_")),
        first,
    )
    fitted_names = getattr(named.obj, "feature_names_in_", None)
    fitted_names = [str(n) for n in fitted_names] if fitted_names is not None else None
    expected = getattr(first.obj, "n_features_in_", None)
    if configured:
        if fitted_names is not None and set(configured) != set(fitted_names):
            raise ModelError(
                f"--features {configured} do not match the {len(fitted_names)} features "
                f"{named.url} was fitted with: {fitted_names}",
                "drop --features to use the model's own, or pass exactly those names",
            )
        if fitted_names is None and expected is not None and len(configured) != expected:
            raise ModelError(
                f"--features names {len(configured)} columns but {first.url} expects {expected}",
                "pass exactly the feature columns the model was fitted with, in order",
            )
        return fitted_names or list(configured)
    if fitted_names is not None:
        return fitted_names
    raise ConfigError(
        f"{first.url} does not record its feature names (fitted on an array, not a DataFrame)",
        "pass --features col1,col2,... in the order the model was fitted with",
    )
