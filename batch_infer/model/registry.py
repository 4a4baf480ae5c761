"""Models from MLflow: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH`` or
a local folder holding an ``MLmodel`` file, resolved once to a local, pinned copy.

An alias is resolved at planning to a registered version; the version's artifacts are downloaded
once per machine into ``BATCH_INFER_CACHE_DIR/mlflow/<name>/<version>/<sha256>/`` and hashed, so
Dask workers and resumes load exactly that version (a registered version's files never change),
and a resume works offline once it is cached. The tracking and registry servers and their
credentials are found the MLflow way (``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``,
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``); credentials never reach an error line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import BatchInferError, ConfigError, ModelError, RegistryUnavailable, first_line
from ..redaction import redact_text, redact_url
from .cache import cache_dir

log = logging.getLogger(__name__)

SCHEMES = ("models:/", "runs:/")
# the flavors loaded as the estimators they are, and scored through batch-infer's own path
ESTIMATOR_FLAVORS = ("sklearn", "xgboost", "lightgbm", "catboost")
# the libraries whose versions decide whether an estimator unpickles and scores as it was saved
VERSIONED = {
    "sklearn": ["scikit-learn", "cloudpickle", "numpy"],
    "xgboost": ["xgboost", "scikit-learn"],
    "lightgbm": ["lightgbm", "scikit-learn"],
    "catboost": ["catboost"],
}


def is_mlflow_uri(path: str | None) -> bool:
    """A registry or run URI, or a local folder holding an ``MLmodel`` file."""
    if not path:
        return False
    if path.startswith(SCHEMES):
        return True
    local = path.removeprefix("file://")
    return "://" not in local and os.path.isfile(os.path.join(local, "MLmodel"))


@dataclass(frozen=True)
class RegistryModel:
    """A resolved MLflow model: where it came from, its pinned version, and its local copy."""

    source: str  # the URI as given
    folder: Path  # the local model folder (MLmodel and its files)
    sha256: str  # of every file of the folder (see ``folder_sha256``)
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    mlmodel: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """``NAME/VERSION`` for a registered model, else the run id and path, else the folder."""
        if self.name and self.version:
            return f"{self.name}/{self.version}"
        if self.source.startswith("runs:/"):
            return self.source.removeprefix("runs:/").strip("/")
        return f"{self.folder.name}@{self.sha256[:12]}"

    @property
    def pinned_uri(self) -> str:
        """The URI of exactly this version: what workers and resumes load."""
        if self.name and self.version:
            return f"models:/{self.name}/{self.version}"
        return self.source

    @property
    def flavors(self) -> dict[str, Any]:
        return self.mlmodel.get("flavors") or {}

    @property
    def flavor(self) -> str:
        """The flavor batch-infer loads: an estimator flavor if any, else ``python_function``."""
        return next((f for f in ESTIMATOR_FLAVORS if f in self.flavors), "python_function")

    @property
    def signature_inputs(self) -> list[dict[str, Any]] | None:
        """The signature's column specs (name, type, required), or None without a column schema."""
        raw = (self.mlmodel.get("signature") or {}).get("inputs")
        if not raw:
            return None
        specs = json.loads(raw) if isinstance(raw, str) else raw
        if not all(isinstance(s, dict) and s.get("name") for s in specs):
            return None  # a tensor or unnamed schema: nothing to check by column
        return specs

    def record(self) -> dict[str, Any]:
        """What the manifest, report and lineage record (no credential: a URI has none)."""
        return {
            "source": redact_url(self.source),
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "sha256": self.sha256,
            "flavor": self.flavor,
        }


def parse(uri: str) -> dict[str, str | None]:
    """``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` / ``runs:/RUN_ID/PATH`` in parts."""
    if uri.startswith("models:/"):
        rest = uri.removeprefix("models:/").strip("/")
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            if name and alias and "/" not in alias:
                return {"name": name, "alias": alias, "version": None}
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            if name and (version.isdigit() or version == "latest"):
                return {"name": name, "version": version, "alias": None}
        raise ConfigError(
            f"--model {uri} is not an MLflow model URI batch-infer understands",
            "use models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest",
        )
    rest = uri.removeprefix("runs:/").strip("/")
    run_id, _, path = rest.partition("/")
    if not run_id or not path:
        raise ConfigError(f"--model {uri} names no artifact path", "use runs:/RUN_ID/PATH")
    return {"run_id": run_id, "path": path}


def resolve(
    uri: str, pinned_version: str | None = None, pinned_sha256: str | None = None
) -> RegistryModel:
    """The model ``uri`` names, as a local folder: from the cache when there, else downloaded.

    ``pinned_version`` (a resume, a Dask worker) replaces the alias's current version; with
    ``pinned_sha256`` a cached copy of another sha256 is not used, and a download of another
    sha256 is refused.
    """
    if not uri.startswith(SCHEMES):
        folder = Path(uri.removeprefix("file://"))
        return _local(uri, folder, pinned_sha256)
    parts = parse(uri)
    if uri.startswith("runs:/"):
        key = Path("runs") / _safe(parts["run_id"] or "") / _safe(parts["path"] or "")
        cached = _cached(key, pinned_sha256)
        if cached is not None:
            return _local(uri, cached, pinned_sha256, run_id=parts["run_id"])
        folder = _download(uri, key, pinned_sha256)
        return _local(uri, folder, pinned_sha256, run_id=parts["run_id"])
    name = parts["name"] or ""
    alias = parts["alias"]
    version = pinned_version or parts["version"]
    run_id = None
    if version and version != "latest":
        cached = _cached(Path("models") / _safe(name) / version, pinned_sha256)
        if cached is not None:
            meta = _meta(cached)
            return _local(uri, cached, pinned_sha256, name, version, alias, meta.get("run_id"))
    registered = _registered_version(name, alias, version)
    version, run_id = str(registered.version), registered.run_id
    key = Path("models") / _safe(name) / version
    cached = _cached(key, pinned_sha256)
    folder = cached or _download(f"models:/{name}/{version}", key, pinned_sha256, run_id)
    return _local(uri, folder, pinned_sha256, name, version, alias, run_id)


def moved_alias(model: RegistryModel) -> str | None:
    """The version an alias points at now, when it is not the pinned one (None if unknown)."""
    if not model.alias or not model.name:
        return None
    try:
        current = str(_registered_version(model.name, model.alias, None).version)
    except (ConfigError, RegistryUnavailable):
        return None
    return current if current != model.version else None


# ---------------------------------------------------------------- the server


def import_mlflow() -> Any:
    """MLflow, imported once with its import-time notes silenced (they are about its own type
    hints, not about the model); ConfigError when the extra is not installed."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mlflow
            import mlflow.artifacts
            import mlflow.pyfunc
    except ImportError:
        raise ConfigError(
            "MLflow model URIs need MLflow", "pip install 'batch-infer[mlflow]'"
        ) from None
    return mlflow


def _client() -> Any:
    return import_mlflow().MlflowClient()


def _registered_version(name: str, alias: str | None, version: str | None) -> Any:
    """The registry's ModelVersion for an alias, a version number or ``latest``."""
    client = _client()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            found = client.search_model_versions(f"name='{name}'")
            if not found:
                raise ModelError(f"registered model {name!r} has no version", "register one")
            return max(found, key=lambda v: int(v.version))
        return client.get_model_version(name, str(version))
    except BatchInferError:
        raise
    except Exception as exc:
        raise registry_error(
            exc, f"models:/{name}" + (f"@{alias}" if alias else f"/{version}")
        ) from None


def registry_error(exc: BaseException, what: str) -> Exception:
    """An MLflow failure as one of our errors: unreachable (75), credentials (2), else exit 4."""
    server = redact_url(_server())
    status = _status(exc)
    message = redact_text(first_line(exc))
    if status in (401, 403):
        return ConfigError(
            f"the MLflow server {server} refused access to {what} (HTTP {status})",
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
            "to credentials that may read the model registry; not retried",
        )
    if status is None and _unreachable(exc) or status in (429, 500, 502, 503, 504):
        return RegistryUnavailable(
            f"the MLflow server {server} could not be reached for {what}"
            + (f" (HTTP {status})" if status else ""),
            "check MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI and that the server runs; nothing "
            "was scored, rerun later (a version cached in BATCH_INFER_CACHE_DIR needs no server)",
        )
    if status == 404 or "RESOURCE_DOES_NOT_EXIST" in message or "not found" in message.lower():
        return ModelError(
            f"{what} does not exist on the MLflow server {server}: {message}",
            "check the model's name, version or alias (mlflow models list, the registry UI)",
        )
    return ModelError(
        f"MLflow cannot give {what} from {server}: {message}",
        "check the URI and the server; rerun with --verbose for details",
    )


def _server() -> str:
    try:
        import mlflow

        return mlflow.get_registry_uri() or mlflow.get_tracking_uri()
    except Exception:
        return os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI", "")


def _status(exc: BaseException) -> int | None:
    for error in _chain(exc):
        getter = getattr(error, "get_http_status_code", None)
        if getter is not None and getattr(error, "error_code", None) not in (
            None,
            "INTERNAL_ERROR",
        ):
            try:
                return int(getter())
            except (TypeError, ValueError):
                pass
        response = getattr(error, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
        found = re.search(
            r"error code (\d{3})|status code (\d{3})|(\d{3}) (?:Client|Server) Error", str(error)
        )
        if found:
            return int(next(g for g in found.groups() if g))
    return None


def _unreachable(exc: BaseException) -> bool:
    names = {type(e).__name__ for error in _chain(exc) for e in [error]}
    text = str(exc)
    return bool(
        names
        & {
            "ConnectionError",
            "MaxRetryError",
            "NewConnectionError",
            "Timeout",
            "ConnectTimeout",
            "ReadTimeout",
            "ConnectionRefusedError",
        }
    ) or any(
        s in text
        for s in ("Max retries exceeded", "Connection refused", "Failed to establish", "timed out")
    )


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 16 and all(current is not c for c in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


# ---------------------------------------------------------------- the cache


def _safe(part: str) -> str:
    return quote(part, safe="") or "_"


def registry_cache() -> Path:
    return cache_dir() / "mlflow"


def _cached(key: Path, pinned_sha256: str | None) -> Path | None:
    """A complete cached copy under ``key`` (of the pinned sha256, if given), or None."""
    parent = registry_cache() / key
    if not parent.is_dir():
        return None
    found = sorted(p for p in parent.iterdir() if (p / "registry.json").is_file())
    if pinned_sha256:
        found = [p for p in found if p.name == pinned_sha256]
    if not found:
        return None
    log.info("MLflow model from the cache %s", found[0])
    return found[0] / "model"


def _meta(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder.parent / "registry.json").read_text())
    except (OSError, ValueError):
        return {}


def _download(uri: str, key: Path, pinned_sha256: str | None, run_id: str | None = None) -> Path:
    """Download the model's artifacts, hash them, and move them into the cache in one rename."""
    mlflow = import_mlflow()

    parent = registry_cache() / key
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging / "model"))
        except Exception as exc:
            raise registry_error(exc, uri) from None
        downloaded = staging / "model"
        if not (downloaded / "MLmodel").is_file():
            inner = [p for p in downloaded.iterdir() if (p / "MLmodel").is_file()]
            if len(inner) != 1:
                raise ModelError(
                    f"{uri} holds no MLmodel file", "log the model with mlflow.<flavor>.log_model"
                )
            inner[0].rename(staging / "inner")
            shutil.rmtree(downloaded)
            (staging / "inner").rename(downloaded)
        digest = folder_sha256(downloaded)
        if pinned_sha256 and digest != pinned_sha256:
            raise ModelError(
                f"{uri} now has sha256 {digest}, not the pinned {pinned_sha256}; not loaded",
                "the registered version's files changed: start a new run (--resume false)",
            )
        (staging / "registry.json").write_text(
            json.dumps({"source": uri, "run_id": run_id, "sha256": digest})
        )
        final = parent / digest
        if final.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(final)
        log.info("downloaded MLflow model %s into %s", uri, final)
        return final / "model"
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def folder_sha256(folder: Path) -> str:
    """One sha256 for a model folder: of each file's relative path and sha256, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_digest}\n".encode())
    return digest.hexdigest()


def _local(
    uri: str,
    folder: Path,
    pinned_sha256: str | None,
    name: str | None = None,
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
) -> RegistryModel:
    import yaml

    try:
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{uri} holds no MLmodel file", "point --model at an MLflow model"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(
            f"cannot read {uri}'s MLmodel: {first_line(exc)}", "re-log the model"
        ) from None
    meta = _meta(folder)
    digest = meta.get("sha256") or folder_sha256(folder)
    if pinned_sha256 and digest != pinned_sha256:
        raise ModelError(
            f"{uri} has sha256 {digest}, not the pinned {pinned_sha256}; not loaded",
            "check which model --model points at, or update the pin (--model-sha256)",
        )
    return RegistryModel(
        source=uri,
        folder=folder,
        sha256=digest,
        name=name,
        version=version,
        alias=alias,
        run_id=run_id or (mlmodel or {}).get("run_id"),
        mlmodel=mlmodel or {},
    )


# ---------------------------------------------------------------- the recorded environment


def recorded_requirements(model: RegistryModel) -> dict[str, str]:
    """``name -> version`` of the ``==`` pins in the model's requirements.txt / python_env.yaml."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    lines: list[str] = []
    requirements = model.folder / "requirements.txt"
    if requirements.is_file():
        lines += requirements.read_text().splitlines()
    python_env = model.folder / "python_env.yaml"
    if python_env.is_file():
        import yaml

        try:
            env = yaml.safe_load(python_env.read_text()) or {}
        except yaml.YAMLError:
            env = {}
        lines += [d for d in env.get("dependencies") or [] if isinstance(d, str)]
    pins: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact:
            pins.setdefault(canonicalize_name(requirement.name), exact[0])
    return pins


_MODULES = {"scikit-learn": "sklearn"}


def check_requirements(model: RegistryModel, strict: bool) -> list[str]:
    """Compare the recorded versions of the libraries that load the model with the installed.

    A mismatch is a warning naming both versions; with ``strict`` (``--strict-versions``) it is
    a ModelError (exit 4). Returns the mismatches, for the report.
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = recorded_requirements(model)
    mismatches = []
    for package in VERSIONED.get(model.flavor, ["cloudpickle"]):
        saved = pins.get(package)
        try:
            installed = version(package)
        except PackageNotFoundError:  # another distribution of the module (xgboost-cpu)
            module = sys.modules.get(_MODULES.get(package, package))
            installed = getattr(module, "__version__", None)
        if saved and installed and saved != installed:
            mismatches.append(f"{package} {saved} (recorded by the model), {installed} installed")
    if mismatches and strict:
        raise ModelError(
            f"{model.source} was logged with other versions (--strict-versions): "
            + "; ".join(mismatches),
            "install the recorded versions (the model's requirements.txt), or re-log the model "
            "with these",
        )
    for mismatch in mismatches:
        log.warning("%s: %s; predictions may differ", model.source, mismatch)
    return mismatches
