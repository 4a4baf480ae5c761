"""What each feature must be, derived from the fitted model itself (or a saved contract file).

scikit-learn records only feature names, so the kind of each feature is read off the step that
first consumes it: an encoder's ``categories_`` (categorical), a vectorizer (text), a
HistGradientBoosting/LightGBM/XGBoost/CatBoost model's categorical features, and otherwise
numbers. Whether a missing value is the model's business is read off the steps it flows through
(an imputer handles it; a step whose ``allow_nan`` tag is false refuses it).

A contract saved beside the model (``<model>.contract.json``, see :func:`write_contract`) wins for
the features it lists: it is how a user says what derivation cannot know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ..errors import ModelError

Kind = Literal["numeric", "categorical", "text", "any"]
Unknown = Literal["error", "ignore", "missing"]
KINDS = ("numeric", "categorical", "text", "any")
FORMAT = "batch-infer-contract/1"


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: what kind of values the model takes there, and what it does with odd ones.

    ``dtype`` is the pandas dtype the model was fitted on, when known ("category" means a pandas
    Categorical with exactly ``categories``, in that order). ``unknown`` says what the model does
    with a category it never saw; ``nullable`` False means it refuses missing values there (the
    row is rejected before scoring), None that only the model can tell.
    """

    name: str
    kind: Kind = "numeric"
    dtype: str | None = None
    categories: list[Any] | None = None
    unknown: Unknown | None = None
    nullable: bool | None = None
    accepts_infinity: bool = False
    source: str = ""

    def describe(self) -> str:
        """One line for ``inspect`` and error messages."""
        text = self.kind
        if self.dtype:
            text += f" ({self.dtype})"
        if self.categories is not None:
            shown = ", ".join(map(str, self.categories[:8]))
            more = f", … {len(self.categories)} in all" if len(self.categories) > 8 else ""
            text += f" [{shown}{more}]"
        if self.unknown:
            text += f", unknown categories: {self.unknown}"
        if self.nullable is not None:
            text += ", missing values: " + ("the model's business" if self.nullable else "refused")
        if self.source:
            text += f"; from {self.source}"
        return text


@dataclass(frozen=True)
class Contract:
    """The features in the model's order, and where the contract came from."""

    features: list[FeatureSpec]
    origin: str = "derived from the model"
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def all_numeric(self) -> bool:
        """True when a float64 matrix is all the model needs (the fast path, no pandas)."""
        return all(f.kind == "numeric" and f.dtype in (None, "float64") for f in self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "origin": self.origin,
            "features": [
                {k: _plain(v) for k, v in asdict(f).items() if v is not None and v != ""}
                for f in self.features
            ],
        }


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays become Python values."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


# ---------------------------------------------------------------- derivation


def derive_contract(estimator: Any, scaler: Any | None, features: list[str]) -> Contract:
    """Read each feature's kind, categories and missing-value handling off the fitted model."""
    first = scaler if scaler is not None else estimator
    after = [estimator] if scaler is not None else []
    routes = _routes(first, features, after)
    specs = []
    for name in features:
        chains = routes.get(name) or [[first, *after]]
        specs.append(_spec_for(name, chains))
    return Contract(specs)


def _steps(pipeline: Any) -> list[Any]:
    return [s for _, s in pipeline.steps if s is not None and not isinstance(s, str)]


def _routes(step: Any, names: list[str], after: list[Any]) -> dict[str, list[list[Any]]]:
    """For each input column, every chain of steps its values flow through, in order.

    Each step in a chain is located: it knows the column's position among the columns it was
    given (an encoder's ``categories_[position]``).
    """
    if _is(step, "Pipeline"):
        steps = _steps(step)
        if not steps:
            return {n: [list(after)] for n in names}
        # the pipeline's later steps see the same columns as its first, until one re-shapes them
        return _routes(steps[0], names, [_SameColumns(s) for s in steps[1:]] + after)
    if _is(step, "ColumnTransformer") and hasattr(step, "transformers_"):
        fitted = [str(n) for n in getattr(step, "feature_names_in_", names)]
        routes: dict[str, list[list[Any]]] = {}
        outer = [a.step if isinstance(a, _SameColumns) else a for a in after]
        for _, transformer, columns in step.transformers_:
            if isinstance(transformer, str) and transformer == "drop":
                continue
            selected = _column_names(columns, fitted)
            if isinstance(transformer, str):  # "passthrough"
                for column in selected:
                    routes.setdefault(column, []).append(list(outer))
                continue
            for column, chains in _routes(transformer, selected, outer).items():
                routes.setdefault(column, []).extend(chains)
        return routes
    inner = _inner_estimators(step)
    if inner:  # a union or a meta-estimator: every inner estimator sees all the columns
        routes = {}
        outer = [a.step if isinstance(a, _SameColumns) else a for a in after]
        for estimator in inner:
            for name, chains in _routes(estimator, names, outer).items():
                routes.setdefault(name, []).extend(chains)
        return routes
    width = len(names)
    return {
        name: [
            [
                _Located(step, position, width),
                *(
                    _Located(a.step, position, width) if isinstance(a, _SameColumns) else a
                    for a in after
                ),
            ]
        ]
        for position, name in enumerate(names)
    }


def _inner_estimators(step: Any) -> list[Any]:
    """The fitted estimators a union or meta-estimator hands its input to, unchanged.

    A grid search, a calibrated classifier or a target transformer scores with the pipeline
    inside it: that pipeline's encoders say what the columns must be.
    """
    if _is(step, "FeatureUnion"):
        return [t for _, t in step.transformer_list if not isinstance(t, str)]
    for attribute in ("best_estimator_", "regressor_"):
        found = getattr(step, attribute, None)
        if found is not None:
            return [found]
    calibrated = getattr(step, "calibrated_classifiers_", None)
    if calibrated:
        return [getattr(c, "estimator", None) for c in calibrated[:1] if c is not None]
    if _is(step, *_META_WITH_ESTIMATORS):
        return [e for e in (getattr(step, "estimators_", None) or [])[:1] if e is not None]
    return []


# meta-estimators whose fitted estimators_ each take the whole input (the first one speaks for all)
_META_WITH_ESTIMATORS = (
    "MultiOutputRegressor",
    "MultiOutputClassifier",
    "OneVsRestClassifier",
    "OneVsOneClassifier",
    "VotingClassifier",
    "VotingRegressor",
    "StackingClassifier",
    "StackingRegressor",
)


@dataclass(frozen=True)
class _SameColumns:
    """A later step of a pipeline: it sees the columns its first step saw, in that order."""

    step: Any


@dataclass(frozen=True)
class _Located:
    """A step and the position of the column among the columns it was given."""

    step: Any
    position: int
    width: int


def _column_names(columns: Any, fitted: list[str]) -> list[str]:
    """A ColumnTransformer's column selection as names (strings, ints, slices, masks)."""
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, int | np.integer):
        return [fitted[int(columns)]]
    if isinstance(columns, slice):
        return (
            fitted[columns] if not isinstance(columns.start, str) else _name_slice(columns, fitted)
        )
    values = list(columns)
    if values and all(isinstance(v, bool | np.bool_) for v in values):
        return [n for n, keep in zip(fitted, values, strict=False) if keep]
    return [fitted[int(v)] if isinstance(v, int | np.integer) else str(v) for v in values]


def _name_slice(columns: slice, fitted: list[str]) -> list[str]:
    start = fitted.index(columns.start) if columns.start is not None else 0
    stop = fitted.index(columns.stop) + 1 if columns.stop is not None else len(fitted)
    return fitted[start:stop]


def _unwrap(item: Any) -> tuple[Any, int, int]:
    if isinstance(item, _Located):
        return item.step, item.position, item.width
    return item, 0, 1


def _spec_for(name: str, chains: list[list[Any]]) -> FeatureSpec:
    """Combine what every chain that consumes the column says about it."""
    specs = [_spec_from_chain(name, chain) for chain in chains]
    # the most demanding view wins: a column one-hot encoded and also scaled must be numeric
    # and categorical at once, which no value can be; report the non-numeric need first
    specs.sort(key=lambda s: ("categorical", "text", "any", "numeric").index(s.kind))
    chosen = specs[0]
    nullables = [s.nullable for s in specs]
    nullable = False if False in nullables else (None if None in nullables else True)
    return replace(
        chosen, nullable=nullable, accepts_infinity=all(s.accepts_infinity for s in specs)
    )


def _spec_from_chain(name: str, chain: list[Any]) -> FeatureSpec:
    # imputers in front do not change what the column is; the next step does
    kind_index = 0
    while kind_index < len(chain) and _is_imputer(_unwrap(chain[kind_index])[0]):
        kind_index += 1
    if kind_index == len(chain):
        return FeatureSpec(name, "any", nullable=True, source="an imputer")
    step, position, width = _unwrap(chain[kind_index])
    spec = _spec_from_step(name, step, position, width)
    if kind_index > 0:  # an imputer in front fills missing values before the step sees them
        return replace(spec, nullable=True)
    steps = [_unwrap(s)[0] for s in chain]
    nullable = spec.nullable if spec.nullable is not None else _missing_handled(steps)
    return replace(spec, nullable=nullable)


def _spec_from_step(name: str, step: Any, position: int, width: int) -> FeatureSpec:
    """What the first real consumer of a column says it must be."""
    label = type(step).__name__
    if _is_vectorizer(step):
        return FeatureSpec(name, "text", dtype="str", nullable=False, source=label)
    if _is(step, "OneHotEncoder", "OrdinalEncoder", "TargetEncoder") and hasattr(
        step, "categories_"
    ):
        categories = list(step.categories_[position])
        known_nan = any(_is_nan(c) for c in categories)
        categories = [c for c in categories if not _is_nan(c)]
        handle = getattr(step, "handle_unknown", "error")
        unknown: Unknown = "error" if handle == "error" else "ignore"
        if _is(step, "TargetEncoder"):
            unknown = "ignore"  # unseen categories get the target mean
        nullable: bool | None = known_nan or unknown != "error"
        if known_nan and _is(step, "OrdinalEncoder"):
            nullable = None  # NaN passes on (encoded_missing_value): the later steps decide
        return FeatureSpec(
            name,
            "categorical",
            dtype=_values_dtype(categories),
            categories=categories,
            unknown=unknown,
            nullable=nullable,
            source=label,
        )
    categories = _model_categories(step, name, position)
    if categories is not None:
        values, source, unknown, nullable = categories
        return FeatureSpec(
            name,
            "categorical",
            dtype="category" if values is not None else None,
            categories=values,
            unknown=unknown,
            nullable=nullable,
            accepts_infinity=_is(step, *_HGB),
            source=source,
        )
    text_features = _catboost_indices(step, "get_text_feature_indices")
    if text_features is not None and position in text_features:
        return FeatureSpec(
            name, "text", dtype="str", nullable=False, source=f"{label} text_features"
        )
    if _takes_strings(step):
        return FeatureSpec(name, "any", source=label)
    return FeatureSpec(name, "numeric", accepts_infinity=_is(step, *_HGB), source=label)


_HGB = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")


def _model_categories(
    step: Any, name: str, position: int
) -> tuple[list[Any] | None, str, Unknown, bool | None] | None:
    """Categorical features of tree models fitted on pandas categories: (categories, source, ...)."""
    label = type(step).__name__
    if _is(step, *_HGB) and getattr(step, "is_categorical_", None) is not None:
        if not step.is_categorical_[position]:
            return None
        encoder = _hgb_encoder(step)
        if encoder is None:  # categories given as integer codes: the user encoded them
            return None
        index = [i for i, c in enumerate(step.is_categorical_) if c].index(position)
        values = [c for c in encoder.categories_[index] if not _is_nan(c)]
        return values, f"{label} categorical_features", "missing", True
    booster = getattr(step, "booster_", None)
    pandas_categorical = getattr(booster, "pandas_categorical", None)
    if pandas_categorical and booster is not None:  # LightGBM on pandas category columns
        names = list(step.feature_name_)
        categorical = _lightgbm_categorical(step, names)
        if name in categorical:
            values = list(pandas_categorical[categorical.index(name)])
            return values, f"{label} pandas_categorical", "missing", True
        return None
    if hasattr(step, "get_booster"):  # XGBoost
        return _xgboost_categories(step, name, position)
    cat_features = _catboost_indices(step, "get_cat_feature_indices")
    if cat_features is not None and position in cat_features:
        # CatBoost hashes categories: it knows no list, takes any value, refuses missing ones
        return None, f"{label} cat_features", "ignore", False
    return None


def _hgb_encoder(step: Any) -> Any:
    preprocessor = getattr(step, "_preprocessor", None)
    if preprocessor is None:
        return None
    return getattr(preprocessor, "named_transformers_", {}).get("encoder")


def _lightgbm_categorical(step: Any, names: list[str]) -> list[str]:
    """Names of the columns LightGBM took as pandas categories, in its order.

    At predict time LightGBM pairs the frame's category columns with ``pandas_categorical`` by
    position, so exactly these columns must arrive as categories, in this order.
    """
    params = getattr(step.booster_, "params", None) or {}
    indices = params.get("categorical_column") or params.get("categorical_feature") or []
    if isinstance(indices, str):
        indices = [int(i) for i in indices.split(",") if i.strip()]
    if indices and all(isinstance(i, int) for i in indices):
        return [names[i] for i in indices]
    infos = step.booster_.dump_model(num_iteration=1).get("feature_infos", {})
    return [n for n in names if infos.get(n, {}).get("values")]


def _xgboost_categories(
    step: Any, name: str, position: int
) -> tuple[list[Any] | None, str, Unknown, bool | None] | None:
    booster = step.get_booster()
    types = booster.feature_types or []
    if position >= len(types) or types[position] != "c":
        return None
    label = type(step).__name__
    try:
        saved = dict(booster.get_categories(export_to_arrow=True).to_arrow())
    except (AttributeError, TypeError, ValueError):
        saved = {}
    values = saved.get(name)
    if values is None:
        import xgboost

        raise ModelError(
            f"{label} treats feature {name!r} as categorical, but XGBoost {xgboost.__version__} "
            "did not save its categories: it maps pandas categories by code "
            "(dmlc/xgboost#8431), so scores would depend on each file's dictionary",
            "re-save the model with XGBoost >= 3.1, or save a contract with the training "
            "categories in order (batch-infer contract MODEL --sample TRAIN.parquet)",
        )
    return values.to_pylist(), f"{label} enable_categorical", "missing", True


def _catboost_indices(step: Any, method: str) -> list[int] | None:
    if type(step).__module__.split(".")[0] != "catboost" or not hasattr(step, method):
        return None
    return list(getattr(step, method)())


def _missing_handled(steps: list[Any]) -> bool | None:
    """Whether a missing value flowing through these steps reaches an end without an error.

    An imputer ends the question (handled); a step whose ``allow_nan`` tag is false refuses it;
    a step we cannot read tags from leaves it to the model (None).
    """
    from sklearn.utils import get_tags

    for step in steps:
        if _is_imputer(step):
            return True
        if _is(step, "OneHotEncoder", "TargetEncoder"):
            return True  # encoded like a category; the encoder's own rule is in its spec
        try:
            allow = get_tags(step).input_tags.allow_nan
        except Exception:  # not a scikit-learn estimator, or tags it cannot give
            return None
        if not allow:
            return False
    return True


def _takes_strings(step: Any) -> bool:
    from sklearn.utils import get_tags

    try:
        tags = get_tags(step).input_tags
    except Exception:
        return True
    return bool(tags.string or tags.categorical or tags.dict)


def _is(step: Any, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(step).__mro__)


def _is_imputer(step: Any) -> bool:
    return any(
        cls.__name__ in ("_BaseImputer", "SimpleImputer", "KNNImputer", "IterativeImputer")
        for cls in type(step).__mro__
    )


def _is_vectorizer(step: Any) -> bool:
    return _is(step, "CountVectorizer", "TfidfVectorizer", "HashingVectorizer")


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and value != value)


def _values_dtype(categories: list[Any]) -> str:
    """How encoder categories' values arrive: strings, or numbers."""
    if categories and all(
        isinstance(c, int | float | np.integer | np.floating | bool | np.bool_) for c in categories
    ):
        return "float64" if any(isinstance(c, float | np.floating) for c in categories) else "int64"
    return "str"


# ---------------------------------------------------------------- Arrow type checks


def type_problem(spec: FeatureSpec, arrow_type: pa.DataType) -> str | None:
    """Why a column of this Arrow type cannot feed the feature, or None when it can."""
    value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if pa.types.is_null(value_type) or spec.kind == "any":
        return None
    stringy = _is_string(value_type)
    numeric = _is_number(value_type)
    if spec.kind == "numeric" and not numeric:
        return f"takes numbers ({spec.source or 'the model'})"
    if spec.kind == "text" and not stringy:
        return f"takes text ({spec.source})"
    if spec.kind == "categorical":
        wants_numbers = spec.categories is not None and spec.dtype in ("int64", "float64")
        if spec.categories and all(
            isinstance(c, int | float | np.integer | np.floating) for c in spec.categories
        ):
            wants_numbers = True
        if wants_numbers and not numeric:
            return f"takes numeric categories ({spec.source})"
        if spec.categories is not None and not wants_numbers and not stringy:
            return f"takes categories given as text ({spec.source})"
        if spec.categories is None and not (stringy or pa.types.is_integer(value_type)):
            return f"takes categories as text or integers ({spec.source})"
    return None


def _is_string(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or getattr(pa.types, "is_string_view", lambda t: False)(arrow_type)
    )


def _is_number(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


# ---------------------------------------------------------------- saved contracts


def merge_saved(derived: Contract, saved: dict[str, Any], where: str) -> Contract:
    """Features listed in a saved contract replace the derived ones; order stays the model's."""
    if saved.get("format") != FORMAT:
        raise ModelError(
            f'{where} is not a batch-infer contract (no "format": "{FORMAT}")',
            "write it with batch-infer contract MODEL, or fix the file",
        )
    entries = saved.get("features")
    if not isinstance(entries, list):
        raise ModelError(
            f"{where} has no list of features",
            "see the docs, Models and the input contract (docs/models.md)",
        )
    by_name: dict[str, FeatureSpec] = {}
    for entry in entries:
        try:
            spec = FeatureSpec(**{k: v for k, v in entry.items() if k != "describe"})
        except TypeError as exc:
            raise ModelError(
                f"{where}: feature entry {entry!r} is not understood ({exc})",
                "allowed keys: name, kind, dtype, categories, unknown, nullable, "
                "accepts_infinity, source",
            ) from None
        if spec.kind not in KINDS:
            raise ModelError(
                f"{where}: feature {spec.name!r} has kind {spec.kind!r}",
                f"use one of {', '.join(KINDS)}",
            )
        by_name[spec.name] = replace(spec, source=spec.source or f"contract {where}")
    unknown = sorted(set(by_name) - set(derived.names))
    if unknown:
        raise ModelError(
            f"{where} names feature(s) {unknown} that the model does not use",
            f"the model's features are: {', '.join(derived.names)}",
        )
    features = [by_name.get(f.name, f) for f in derived.features]
    return Contract(features, origin=f"derived, with {where}")


def contract_from_sample(contract: Contract, frame: Any) -> Contract:
    """Refine a derived contract with a training sample's pandas dtypes (``batch-infer contract``)."""
    import pandas as pd

    features = []
    for spec in contract.features:
        if spec.name not in frame.columns:
            raise ModelError(
                f"the sample has no column {spec.name!r}, a feature of the model",
                "pass a sample of the training data (the DataFrame the model was fitted on)",
            )
        column = frame[spec.name]
        dtype = str(column.dtype)
        if isinstance(column.dtype, pd.CategoricalDtype):
            # fitted on a pandas Categorical: hand it one, with the categories the model knows
            # (or, when it records none, those of the training sample, in their order)
            categories = spec.categories
            if categories is None:
                categories = column.cat.categories.tolist()
            features.append(
                replace(
                    spec,
                    kind="categorical" if spec.kind != "text" else "text",
                    dtype="category",
                    categories=categories,
                    unknown=spec.unknown or "missing",
                )
            )
        elif spec.kind == "numeric":
            features.append(spec)  # numbers reach scikit-learn as float64 whatever they were
        else:
            features.append(replace(spec, dtype=spec.dtype or dtype))
    return Contract(features, origin="derived from the model and a training sample")


def write_contract(contract: Contract) -> str:
    return json.dumps(contract.to_dict(), indent=2, default=str) + "\n"


# ---------------------------------------------------------------- MLflow signatures

# MLflow's column types (mlflow.types.DataType) and the Arrow types that carry them
_SIGNATURE_TYPES = {
    "double": "numbers",
    "float": "numbers",
    "long": "integers",
    "integer": "integers",
    "boolean": "booleans",
    "string": "strings",
    "binary": "bytes",
    "datetime": "timestamps",
}


def signature_problem(mlflow_type: str, arrow_type: pa.DataType) -> bool:
    """Whether a column of this Arrow type cannot carry the signature's type (MLflow's rules:
    integers widen to doubles, never the other way)."""
    value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if pa.types.is_null(value_type):
        return False
    wants = _SIGNATURE_TYPES.get(mlflow_type)
    if wants == "numbers":
        return not _is_number(value_type)
    if wants == "integers":
        return not (pa.types.is_integer(value_type) or pa.types.is_boolean(value_type))
    if wants == "booleans":
        return not pa.types.is_boolean(value_type)
    if wants == "strings":
        return not _is_string(value_type)
    if wants == "bytes":
        return not (pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type))
    if wants == "timestamps":
        return not (pa.types.is_timestamp(value_type) or pa.types.is_date(value_type))
    return False  # a type MLflow added since: the model's own contract still checks the column


def signature_contract(inputs: list[dict[str, Any]], where: str) -> Contract:
    """A pyfunc model's contract: its signature's columns, each of kind ``any``.

    MLflow converts the columns itself (``predict`` enforces the signature), so batch-infer only
    hands them over as pandas reads them; a missing value is the model's business.
    """
    features = [
        FeatureSpec(
            str(column["name"]),
            "any",
            dtype=_SIGNATURE_DTYPES.get(str(column.get("type"))),
            nullable=True,
            source=f"MLflow signature ({column.get('type')})",
        )
        for column in inputs
    ]
    return Contract(features, origin=f"the MLflow signature of {where}")


_SIGNATURE_DTYPES = {"string": "str"}


def merge_signature(contract: Contract, inputs: list[dict[str, Any]], where: str) -> Contract:
    """Say where the signature and the model disagree (``inspect`` shows it); the model's own
    contract still decides how a column is handed over, the signature what a file must hold."""
    by_name = {str(c["name"]): c for c in inputs}
    notes = list(contract.notes)
    missing = [n for n in contract.names if n not in by_name]
    if missing:
        notes.append(f"the signature lacks feature(s) the model uses: {', '.join(missing)}")
    extra = [n for n in by_name if n not in contract.names]
    if extra:
        notes.append(f"the signature lists column(s) the model does not use: {', '.join(extra)}")
    for spec in contract.features:
        column = by_name.get(spec.name)
        if column is None:
            continue
        kind = _SIGNATURE_TYPES.get(str(column.get("type")))
        if spec.kind == "numeric" and kind in ("strings", "bytes"):
            notes.append(
                f"{spec.name!r}: the signature says {column.get('type')}, the model takes numbers"
            )
        if (
            spec.kind in ("categorical", "text")
            and kind in ("numbers", "integers")
            and (spec.dtype == "str")
        ):
            notes.append(
                f"{spec.name!r}: the signature says {column.get('type')}, the model takes text"
            )
    return replace(
        contract, origin=f"{contract.origin}, checked with the MLflow signature", notes=notes
    )
