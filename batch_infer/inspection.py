"""``batch-infer inspect``: what a Parquet input or a model artifact holds, as text and as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")


@dataclass(frozen=True)
class Description:
    text: str
    data: dict[str, Any]


def describe(path: str, scaler: str | None = None, contract: str | None = None) -> Description:
    """Describe a model file (by its suffix) or else a Parquet input."""
    if path.lower().endswith(MODEL_SUFFIXES):
        return describe_model(path, scaler=scaler, contract=contract)
    return describe_parquet(path)


def describe_parquet(path: str) -> Description:
    from .config import InputConfig
    from .inputs import plan_input

    plan = plan_input(InputConfig(path=path))
    files = [
        {
            "path": f.url,
            "bytes": f.size,
            "rows": f.num_rows,
            "row_groups": [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)],
            "partition": f.partition,
        }
        for f in plan.files
    ]
    data = {
        "kind": "parquet",
        "root": plan.root,
        "rows": plan.total_rows,
        "bytes": plan.total_bytes,
        "files": files,
        "row_groups": sum(len(f["row_groups"]) for f in files),
        "schema": {field.name: str(field.type) for field in plan.schema},
        "partition_keys": plan.partition_schema.names,
    }
    lines = [
        f"Parquet input {plan.root}",
        f"  {plan.total_rows:,} rows, {len(files)} file(s), {data['row_groups']} row group(s), "
        f"{plan.total_bytes:,} bytes",
        "  schema:",
        *(f"    {name}: {kind}" for name, kind in data["schema"].items()),
        "  files:",
        *(
            f"    {f['path']}: {f['rows']:,} rows in {len(f['row_groups'])} row group(s)"
            for f in files[:50]
        ),
    ]
    if len(files) > 50:
        lines.append(f"    … and {len(files) - 50} more")
    if plan.partition_schema.names:
        lines.insert(2, f"  hive partition keys: {', '.join(plan.partition_schema.names)}")
    return Description("\n".join(lines), data)


def describe_model(
    path: str, scaler: str | None = None, contract: str | None = None
) -> Description:
    """The model's type, classes, input contract (what each feature must be) and output methods."""
    import sklearn

    from .config import ModelConfig
    from .errors import ConfigError
    from .model import load_artifact, load_model
    from .model.outputs import available_methods

    config = ModelConfig(path=path, scaler=scaler, contract=contract)
    try:
        model = load_model(config, runtime="sklearn")
    except ConfigError:  # fitted on an array: no names; show the columns by position
        count = getattr(load_artifact(scaler or path).obj, "n_features_in_", 0)
        names = [f"column {i}" for i in range(count)]
        model = load_model(config.model_copy(update={"features": names}), runtime="sklearn")
    artifact = model.estimator
    obj = artifact.obj
    steps = [f"{name}: {type(step).__name__}" for name, step in getattr(obj, "steps", [])]
    methods = available_methods(obj)
    data = {
        "kind": "model",
        "path": artifact.url,
        "type": f"{type(obj).__module__}.{type(obj).__name__}",
        "model_kind": model.kind,
        "steps": steps,
        "classes": model.classes,
        "features": model.features,
        "contract": model.contract.to_dict(),
        "methods": methods,
        "default_outputs": model.outputs.methods,
        "output_columns": [c.name for c in model.outputs.columns],
        "sha256": artifact.sha256,
        "saved_sklearn_version": artifact.saved_sklearn_version,
        "installed_sklearn_version": sklearn.__version__,
        "compiled_runtime": _compiled(model),
    }
    width = max((len(f.name) for f in model.contract.features), default=0)
    lines = [
        f"Model {artifact.url}",
        f"  type       {data['type']} ({model.kind})",
        *([f"  steps      {', '.join(steps)}"] if steps else []),
        *([f"  scaler     {model.scaler.url}"] if model.scaler else []),
        f"  classes    {model.classes}" if model.classes is not None else "  classes    (none)",
        f"  methods    {', '.join(methods)} (default --outputs: {','.join(model.outputs.methods)})",
        f"  columns    {', '.join(data['output_columns'])}",
        f"  sha256     {artifact.sha256}",
        f"  sklearn    saved with {artifact.saved_sklearn_version}, installed {sklearn.__version__}",
        "  runtime    "
        + (
            f"compiled {data['compiled_runtime']['engine']} cached in "
            f"{data['compiled_runtime']['folder']} (runs use it by default)"
            if data["compiled_runtime"]
            else "scikit-learn (nothing compiled; see batch-infer compile)"
        ),
        f"  input contract ({model.contract.origin}), {len(model.features)} feature(s):",
        *(f"    {f.name:<{width}}  {f.describe()}" for f in model.contract.features),
    ]
    return Description("\n".join(lines), data)


def _compiled(model: Any) -> dict[str, Any] | None:
    """The verified compiled runtime cached for this model, if any."""
    from .model.cache import find_compiled

    compiled = find_compiled(model.sha256, model.scaler.sha256 if model.scaler else None)
    if compiled is None:
        return None
    return {
        "engine": compiled.engine,
        "folder": str(compiled.folder),
        "methods": compiled.methods,
        "verification": compiled.meta.get("verification"),
    }
