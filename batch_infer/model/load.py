"""Load and check model artifacts, and say what they need (features) and give (labels, classes).

A run uses either one estimator (often a scikit-learn Pipeline) or a separate scaler plus an
estimator, the layout many teams ship as ``scaler.joblib`` + ``model.joblib``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .. import storage
from ..config import ModelConfig, OutputColumns
from ..errors import ConfigError, ModelError, first_line, from_store
from .cache import CompiledModel, artifact_folder, find_compiled
from .contract import Contract, derive_contract, merge_saved
from .encoders import Encoded
from .outputs import OutputPlan, classes_of, estimator_type, plan_outputs

log = logging.getLogger(__name__)

ModelKind = Literal[
    "binary", "multiclass", "regressor", "outlier_detector", "clusterer", "multi_output", "other"
]


@dataclass(frozen=True)
class Artifact:
    """One loaded file: the object, where it came from, and what it was built with."""

    obj: Any = field(repr=False)
    url: str
    sha256: str
    saved_sklearn_version: str | None


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-use model: estimator, optional scaler, what it takes and what it gives."""

    estimator: Artifact
    scaler: Artifact | None
    contract: Contract
    outputs: OutputPlan
    kind: ModelKind
    classes: list[Any] | None
    version: str
    contract_sha256: str | None = None
    runtime: str = "sklearn"  # or the compiled engine that scores ("numpy-linear", "treelite")
    compiled: CompiledModel | None = field(default=None, repr=False)
    # a mixed-type Pipeline's ColumnTransformer computed from Arrow (encoders.py), if it can be
    encoder: Any = field(default=None, repr=False)
    encoding: str | None = None  # how that ColumnTransformer runs: "arrow" or "scikit-learn: why"
    registry: Any = None  # registry.RegistryModel: an MLflow model's name, version, sha256, ...
    requirement_mismatches: list[str] = field(default_factory=list)  # recorded vs installed

    @property
    def sha256(self) -> str:
        return self.estimator.sha256

    @property
    def features(self) -> list[str]:
        return self.contract.names

    @property
    def finite_checked(self) -> bool:
        """Every non-finite value was set aside before scoring, so the model need not scan."""
        return self.contract.all_numeric and all(
            f.nullable is False and not f.accepts_infinity for f in self.contract.features
        )

    def _frame(self, step: Any, matrix: Any) -> Any:
        """Give a step the column names it was fitted with, so scikit-learn checks them."""
        names = getattr(step, "feature_names_in_", None)
        if names is None or not isinstance(matrix, np.ndarray):
            return matrix
        import pandas as pd

        return pd.DataFrame(matrix, columns=list(names), copy=False)

    def transform(self, features: Any, scaler: Any = None) -> Any:
        """Apply the separate scaler (or the row-wise twin given), if any."""
        if self.scaler is None:
            return self._frame(self.estimator.obj, features)
        scaler = scaler if scaler is not None else self.scaler.obj
        scaled = scaler.transform(self._frame(scaler, features))
        return self._frame(self.estimator.obj, np.asarray(scaled))

    def call(self, features: Any) -> dict[str, Any]:
        """Each planned method's result for these rows (a matrix or a DataFrame).

        A row's result depends on that row only, not on the batch it came in (``rowwise``):
        linear models score with a row-wise kernel, models of unknown arithmetic on fixed tiles.
        Each method is called once; labels of forests and HistGradientBoosting come from
        ``predict_proba``, exactly as their ``predict`` computes them. When every non-finite
        value was set aside before, scikit-learn's finiteness scan is skipped (``assume_finite``).
        """
        if self.compiled is not None:
            return self.compiled.call(features, self.outputs.methods)
        from .rowwise import in_tiles, plan_for

        plan = plan_for(self.estimator.obj, self.scaler.obj if self.scaler else None)
        if plan.tiled:
            return in_tiles(lambda tile: self._call(tile, plan.estimator, plan.scaler), features)
        return self._call(features, plan.estimator, plan.scaler)

    def _call(self, features: Any, estimator: Any, scaler: Any) -> dict[str, Any]:
        from sklearn import config_context

        with config_context(assume_finite=self.finite_checked):
            if isinstance(features, Encoded):  # the ColumnTransformer's work is done
                inputs, estimator = features.matrix, estimator[1:]
                if len(estimator.steps) == 1:
                    estimator = estimator.steps[0][1]
            else:
                inputs = self.transform(features, scaler)
            steps = getattr(estimator, "steps", None)
            if steps and len(steps) > 1 and len(self.outputs.methods) > 1:
                # what Pipeline.predict and .predict_proba each do, done once: the encoders'
                # work is most of a mixed-type pipeline's cost
                inputs = estimator[:-1].transform(inputs)
                estimator = steps[-1][1]
            results: dict[str, Any] = {}
            for method in self.outputs.methods:
                if method == "predict" and self.outputs.labels_from_probability:
                    continue
                results[method] = getattr(estimator, method)(inputs)
            if self.outputs.labels_from_probability:
                proba = np.asarray(results["predict_proba"])
                classes = np.asarray(self.estimator.obj.classes_)
                results["predict"] = classes.take(np.argmax(proba, axis=1))
            return results


def load_model(
    config: ModelConfig,
    columns: OutputColumns | None = None,
    methods: list[str] | None = None,
    runtime: str | None = None,
) -> LoadedModel:
    """Load the estimator (and scaler), then derive its input contract and output columns.

    ``runtime`` (default ``config.runtime``): with ``auto`` or ``compiled``, a verified compiled
    runtime cached for these files is used, and the model is never unpickled.
    """
    from .registry import is_mlflow_uri

    if is_mlflow_uri(config.path):
        return _load_mlflow(config, columns, methods)
    runtime = runtime or config.runtime
    model_bytes, model_sha = read_artifact(config.path, config, "model", config.sha256)
    scaler_read = (
        read_artifact(config.scaler, config, "scaler", config.scaler_sha256)
        if config.scaler
        else None
    )
    if runtime != "sklearn":
        compiled = _compiled_model(
            config, model_sha, scaler_read[1] if scaler_read else None, columns, methods, runtime
        )
        if compiled is not None:
            return compiled
    estimator = deserialize(model_bytes, model_sha, config.path, config, "model")
    scaler = (
        deserialize(scaler_read[0], scaler_read[1], config.scaler, config, "scaler")
        if scaler_read and config.scaler
        else None
    )
    if scaler is not None and not hasattr(scaler.obj, "transform"):
        raise ModelError(
            f"{scaler.url} holds a {type(scaler.obj).__name__}, which has no transform()",
            "point --scaler at a fitted transformer such as a StandardScaler",
        )
    outputs = plan_outputs(estimator.obj, methods, columns or OutputColumns(), estimator.url)
    kind, classes = _kind(estimator)
    features = _features(config.features, estimator, scaler)
    contract = derive_contract(estimator.obj, scaler.obj if scaler else None, features)
    contract, contract_sha256 = _saved_contract(config, contract)
    encoder, encoding = _arrow_encoder(estimator, scaler, contract)
    return LoadedModel(
        estimator=estimator,
        scaler=scaler,
        contract=contract,
        outputs=outputs,
        kind=kind,
        classes=classes,
        version=config.version or estimator.sha256[:12],
        contract_sha256=contract_sha256,
        encoder=encoder,
        encoding=encoding,
    )


def _arrow_encoder(
    estimator: Artifact, scaler: Artifact | None, contract: Contract
) -> tuple[Any, str | None]:
    """A mixed-type Pipeline's ColumnTransformer from Arrow, checked against scikit-learn's own
    on probe rows; else None and why (logged once)."""
    if scaler is not None or contract.all_numeric:
        return None, None
    from .encoders import arrow_transform, leads_with_column_transformer

    if not leads_with_column_transformer(estimator.obj):
        return None, None
    try:
        encoder, why = arrow_transform(estimator.obj, contract)
    except Exception as exc:  # an unusual fitted object: scikit-learn's own transform scores
        encoder, why = None, f"{type(exc).__name__}: {first_line(exc)}"
    if encoder is None:
        log.info("the ColumnTransformer runs in scikit-learn: %s", why)
        return None, f"scikit-learn: {why}"
    log.info("the ColumnTransformer is computed from Arrow (checked against scikit-learn's)")
    return encoder, "arrow"


def _load_mlflow(
    config: ModelConfig, columns: OutputColumns | None, methods: list[str] | None
) -> LoadedModel:
    """An MLflow model: resolved to one pinned version, its flavor loaded as the estimator it is
    (scored through batch-infer's own path) or else through MLflow's pyfunc ``predict``."""
    from . import registry
    from .contract import merge_signature, signature_contract

    if config.scaler:
        raise ConfigError(
            f"--scaler cannot be combined with the MLflow model {config.path}",
            "log the scaler and the model as one Pipeline",
        )
    resolved = registry.resolve(config.path, config.registry_version, config.sha256)
    mismatches = registry.check_requirements(resolved, config.strict_versions)
    signature = resolved.signature_inputs
    if resolved.flavor in registry.ESTIMATOR_FLAVORS:
        estimator = _flavor_estimator(resolved, config)
        outputs = plan_outputs(estimator.obj, methods, columns or OutputColumns(), config.path)
        kind, classes = _kind(estimator)
        configured = config.features
        if configured is None and signature and _fitted_names(estimator.obj) is None:
            configured = [str(c["name"]) for c in signature]
        features = _features(configured, estimator, None)
        contract = derive_contract(estimator.obj, None, features)
        if signature:
            contract = merge_signature(contract, signature, config.path)
    else:
        estimator, outputs = _pyfunc_estimator(resolved, columns or OutputColumns(), methods)
        kind, classes = "other", None
        if signature is None:
            raise ModelError(
                f"{config.path} is a {resolved.flavor} model without an input signature",
                "log it with a signature (mlflow.models.infer_signature) so batch-infer knows "
                "its columns",
            )
        contract = signature_contract(signature, config.path)
    contract_sha256 = None
    if config.contract:  # no default contract file beside a registry URI
        contract, contract_sha256 = _saved_contract(config, contract)
    return LoadedModel(
        estimator=estimator,
        scaler=None,
        contract=contract,
        outputs=outputs,
        kind=kind,
        classes=classes,
        version=config.version or resolved.label,
        contract_sha256=contract_sha256,
        registry=resolved,
        requirement_mismatches=mismatches,
    )


def _flavor_estimator(resolved: Any, config: ModelConfig) -> Artifact:
    """The sklearn (pickle, cloudpickle or skops: our trusted-type rules), XGBoost, LightGBM or
    CatBoost estimator of an MLflow model; the sha256 is the whole folder's, checked already."""
    flavor = resolved.flavor
    conf = resolved.flavors[flavor]
    if flavor == "sklearn":
        path = resolved.folder / conf.get("pickled_model", "model.pkl")
        url = str(path)
        if conf.get("serialization_format") == "skops" and not url.endswith(".skops"):
            url += "#.skops"
        artifact = deserialize(path.read_bytes(), resolved.sha256, url, config, "model")
        return Artifact(artifact.obj, config.path, resolved.sha256, artifact.saved_sklearn_version)
    import importlib

    from .registry import import_mlflow

    import_mlflow()
    try:
        module = importlib.import_module(f"mlflow.{flavor}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MLflow's notes on its own APIs
            obj = module.load_model(str(resolved.folder))
    except ImportError as exc:
        raise ModelError(
            f"{config.path} is a {flavor} model, and {exc.name or flavor} is not installed",
            f"pip install 'batch-infer[{flavor}]'",
        ) from None
    except Exception as exc:
        raise ModelError(
            f"cannot load the {flavor} model {config.path}: {type(exc).__name__}: "
            f"{first_line(exc)}",
            "install the versions it was logged with (its requirements.txt)",
        ) from None
    return Artifact(obj, config.path, resolved.sha256, None)


class PyfuncModel:
    """An MLflow pyfunc model as an estimator: ``predict(DataFrame)``, its result as an array
    (a DataFrame's columns in the output signature's order)."""

    def __init__(self, model: Any, outputs: list[str], optional: list[str]) -> None:
        self.model = model
        self.outputs = outputs
        self.optional = optional

    def predict(self, frame: Any) -> Any:
        # an optional column no value of which is there is left out, as MLflow's own callers do
        absent = [c for c in self.optional if c in frame.columns and frame[c].isna().all()]
        result = self.model.predict(frame.drop(columns=absent) if absent else frame)
        if self.outputs and hasattr(result, "columns"):
            result = result[self.outputs]
        if hasattr(result, "to_numpy"):
            return result.to_numpy()
        return np.asarray(result)


def _pyfunc_estimator(
    resolved: Any, columns: OutputColumns, methods: list[str] | None
) -> tuple[Artifact, OutputPlan]:
    """Any other flavor through MLflow's pyfunc; its columns named by the output signature."""
    import pyarrow as pa

    from .outputs import OutputColumn

    if methods and methods != ["predict"]:
        raise ConfigError(
            f"--outputs {','.join(methods)}: {resolved.source} is scored through MLflow's "
            "pyfunc predict only",
            "leave --outputs out, or use predict",
        )
    from .registry import import_mlflow

    mlflow = import_mlflow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = mlflow.pyfunc.load_model(str(resolved.folder))
    except Exception as exc:
        raise ModelError(
            f"cannot load the MLflow model {resolved.source}: {type(exc).__name__}: "
            f"{first_line(exc)}",
            "install what it was logged with (its requirements.txt)",
        ) from None
    raw = (resolved.mlmodel.get("signature") or {}).get("outputs")
    specs = json.loads(raw) if isinstance(raw, str) else (raw or [])
    types = {
        "double": pa.float64(),
        "float": pa.float32(),
        "long": pa.int64(),
        "integer": pa.int32(),
        "boolean": pa.bool_(),
        "string": pa.string(),
    }
    named = [s for s in specs if isinstance(s, dict) and s.get("name")]
    if not named:  # one array (or no output signature): one column
        kind = specs[0].get("type") if specs and isinstance(specs[0], dict) else None
        out = [OutputColumn(columns.prediction, types.get(kind, pa.float64()), "predict")]
    else:  # a DataFrame: a column per named output
        out = [
            OutputColumn(
                f"{columns.prediction}_{s['name']}",
                types.get(s.get("type"), pa.float64()),
                "predict",
                index=i,
            )
            for i, s in enumerate(named)
        ]
    optional = [
        str(c["name"]) for c in resolved.signature_inputs or [] if c.get("required") is False
    ]
    outputs = [str(spec["name"]) for spec in named]
    artifact = Artifact(
        PyfuncModel(model, outputs, optional), resolved.source, resolved.sha256, None
    )
    return artifact, OutputPlan(["predict"], out)


def _compiled_model(
    config: ModelConfig,
    model_sha: str,
    scaler_sha: str | None,
    columns: OutputColumns | None,
    methods: list[str] | None,
    runtime: str,
) -> LoadedModel | None:
    """The model as its cached compiled runtime gives it, or None to use scikit-learn."""

    def unusable(why: str) -> None:
        if runtime == "compiled":
            raise ModelError(
                f"--runtime compiled: {why}",
                f"run batch-infer compile --model {config.path}"
                + (f" --scaler {config.scaler}" if config.scaler else "")
                + " first (BATCH_INFER_CACHE_DIR must be the same), or use --runtime auto",
            )
        log.info("scoring with scikit-learn: %s", why)

    compiled = find_compiled(model_sha, scaler_sha)
    if compiled is None:
        folder = artifact_folder(model_sha, scaler_sha)
        return unusable(f"no compiled runtime for this model (sha256 {model_sha[:12]}) in {folder}")
    meta = compiled.meta
    outputs = compiled.output_plan(methods, columns or OutputColumns(), config.path)
    lacking = [m for m in outputs.methods if m not in compiled.methods]
    if lacking:
        return unusable(f"the compiled runtime has no {', '.join(lacking)}")
    contract = compiled.contract()
    if config.features and set(config.features) != set(contract.names):
        raise ModelError(
            f"--features {config.features} do not match the {len(contract.names)} features "
            f"{config.path} was fitted with: {contract.names}",
            "drop --features to use the model's own, or pass exactly those names",
        )
    contract, contract_sha256 = _saved_contract(config, contract)
    if not contract.all_numeric:
        return unusable("the saved contract makes some features non-numeric")
    estimator = Artifact(None, config.path, model_sha, meta.get("saved_sklearn_version"))
    scaler = (
        Artifact(None, config.scaler, scaler_sha, None) if config.scaler and scaler_sha else None
    )
    log.info("scoring with the compiled runtime %s from %s", compiled.engine, compiled.folder)
    return LoadedModel(
        estimator=estimator,
        scaler=scaler,
        contract=contract,
        outputs=outputs,
        kind=meta["kind"],
        classes=meta["classes"],
        version=config.version or model_sha[:12],
        contract_sha256=contract_sha256,
        runtime=compiled.engine,
        compiled=compiled,
    )


def contract_for(
    model_url: str,
    scaler: str | None = None,
    features: str | None = None,
    sample: str | None = None,
    write: str | None = None,
) -> str:
    """``batch-infer contract``: the derived contract as JSON, refined by a training sample."""
    from .contract import contract_from_sample, write_contract

    config = ModelConfig(path=model_url, scaler=scaler, features=features, contract=None)
    estimator = load_artifact(config.path, config, "model", None)
    scaler_artifact = load_artifact(scaler, config, "scaler", None) if scaler else None
    names = _features(config.features, estimator, scaler_artifact)
    contract = derive_contract(
        estimator.obj, scaler_artifact.obj if scaler_artifact else None, names
    )
    if sample:
        from ..config import InputConfig
        from ..inputs import plan_input

        plan = plan_input(InputConfig(path=sample))
        frame = sample_frame(plan, names)
        contract = contract_from_sample(contract, frame)
    text = write_contract(contract)
    if write:
        fs, path = storage.resolve(write, {})
        with fs.open(path, "w") as handle:
            handle.write(text)
    return text


def sample_frame(plan: Any, names: list[str]) -> Any:
    """Up to 100,000 rows of the sample's feature columns, as pandas reads them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [n for n in names if n not in plan.schema.names]
    if missing:
        raise ModelError(
            f"the sample {plan.root} has no column(s) {missing}, feature(s) of the model",
            "pass a sample of the data the model was fitted on",
        )
    tables, rows = [], 0
    for file in plan.files:
        parquet = pq.ParquetFile(file.path, filesystem=storage.arrow_filesystem(plan.fs))
        table = parquet.read(columns=[n for n in names if n in file.schema.names])
        tables.append(table)
        rows += table.num_rows
        if rows >= 100_000:
            break
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.slice(0, 100_000).to_pandas()


def contract_path(model_url: str) -> str:
    """Where a model's saved contract lives by default: ``model.joblib`` -> ``model.contract.json``."""
    stem = model_url.rsplit(".", 1)[0] if "." in model_url.rsplit("/", 1)[-1] else model_url
    return stem + ".contract.json"


def _saved_contract(config: ModelConfig, derived: Contract) -> tuple[Contract, str | None]:
    """Merge the contract file (``model.contract``, else the one beside the model, if any)."""
    url = config.contract or contract_path(config.path)
    fs, path = storage.resolve(url, config.storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        if config.contract:
            raise ModelError(f"contract file {url} does not exist", "check --contract") from None
        return derived, None
    except OSError as exc:
        if (store_error := from_store(exc)) is not None:
            raise store_error from None
        raise ModelError(
            f"cannot read contract file {url}: {first_line(exc)}", "check --contract"
        ) from None
    try:
        saved = json.loads(data)
    except ValueError as exc:
        raise ModelError(
            f"contract file {url} is not JSON: {first_line(exc)}", "fix or remove it"
        ) from None
    if not isinstance(saved, dict):
        raise ModelError(
            f"contract file {url} must hold a JSON object",
            "see the docs, Models and the input contract (docs/models.md)",
        )
    return merge_saved(derived, saved, url), hashlib.sha256(data).hexdigest()


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
    data, digest = read_artifact(url, config, role, expected_sha256)
    return deserialize(data, digest, url, config, role)


def read_artifact(
    url: str, config: ModelConfig, role: str, expected_sha256: str | None
) -> tuple[bytes, str]:
    """An artifact's bytes and sha256, the pin checked: nothing is deserialized yet."""
    fs, path = storage.resolve(url, config.storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise ModelError(f"{role} file {url} does not exist", f"check --{role}") from None
    except OSError as exc:
        if (store_error := from_store(exc)) is not None:
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
    return data, digest


def deserialize(data: bytes, digest: str, url: str, config: ModelConfig, role: str) -> Artifact:
    """Unpickle (joblib) or load (.skops, trusted types only) an artifact's checked bytes."""
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
    """What the model is, for reports: classifier (binary/multiclass), regressor, detector, ...

    As the model says (scikit-learn's tags, ``_estimator_type``) before its ``classes_``.
    """
    obj = estimator.obj
    kind = estimator_type(obj)
    classes = classes_of(obj)
    if classes is None:
        if kind == "classifier":
            raise ModelError(
                f"{estimator.url} holds a classifier that is not fitted (no classes_)",
                "fit the model before saving it",
            )
        if kind in ("regressor", "outlier_detector", "clusterer"):
            return kind, None
        return "other", None
    if isinstance(classes, list) and classes and isinstance(classes[0], np.ndarray):
        return "multi_output", [np.asarray(c).tolist() for c in classes]
    classes = np.asarray(classes).tolist()
    return ("binary" if len(classes) == 2 else "multiclass"), classes


def _fitted_names(obj: Any) -> list[str] | None:
    """The column names a model was fitted with (CatBoost keeps them as ``feature_names_``)."""
    names = getattr(obj, "feature_names_in_", None)
    if names is None and type(obj).__module__.split(".")[0] == "catboost":
        names = getattr(obj, "feature_names_", None)
        if names and all(str(n).isdigit() for n in names):
            names = None  # fitted on an array: CatBoost numbers the columns
    return [str(n) for n in names] if names is not None else None


def _features(
    configured: list[str] | None, estimator: Artifact, scaler: Artifact | None
) -> list[str]:
    """The feature columns: configured, else the model's fitted names, else the scaler's."""
    first = scaler or estimator
    named = next(
        (a for a in (estimator, scaler) if a is not None and _fitted_names(a.obj) is not None),
        first,
    )
    fitted_names = _fitted_names(named.obj)
    expected = getattr(first.obj, "n_features_in_", None)
    if not isinstance(expected, int | np.integer) or expected <= 0:
        expected = None  # unknown (CatBoost reports 0 once unpickled)
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
