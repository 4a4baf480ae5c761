"""``batch-infer inspect``: what a Parquet input or a model artifact holds, as text and as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")


@dataclass(frozen=True)
class Description:
    text: str
    data: dict[str, Any]


def describe(path: str) -> Description:
    """Describe a model file (by its suffix) or else a Parquet input."""
    if path.lower().endswith(MODEL_SUFFIXES):
        return describe_model(path)
    return describe_parquet(path)


def describe_parquet(path: str) -> Description:
    from .config import InputConfig
    from .sources import plan_input

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


def describe_model(path: str) -> Description:
    import numpy as np
    import sklearn
    from sklearn.base import is_classifier, is_regressor

    from .model import load_artifact

    artifact = load_artifact(path)
    obj = artifact.obj
    names = getattr(obj, "feature_names_in_", None)
    classes = getattr(obj, "classes_", None)
    steps = [f"{name}: {type(step).__name__}" for name, step in getattr(obj, "steps", [])]
    kind = (
        "classifier" if is_classifier(obj) else "regressor" if is_regressor(obj) else "transformer"
    )
    data = {
        "kind": "model",
        "path": artifact.url,
        "type": f"{type(obj).__module__}.{type(obj).__name__}",
        "estimator_kind": kind,
        "steps": steps,
        "classes": None if classes is None else np.asarray(classes).tolist(),
        "features": None if names is None else [str(n) for n in names],
        "n_features": getattr(obj, "n_features_in_", None),
        "sha256": artifact.sha256,
        "saved_sklearn_version": artifact.saved_sklearn_version,
        "installed_sklearn_version": sklearn.__version__,
    }
    lines = [
        f"Model {artifact.url}",
        f"  type       {data['type']} ({kind})",
        *([f"  steps      {', '.join(steps)}"] if steps else []),
        f"  classes    {data['classes']}"
        if classes is not None
        else "  classes    (none: regressor or transformer)",
        f"  features   {data['features'] or '(not recorded)'} ({data['n_features']} in all)",
        f"  sha256     {artifact.sha256}",
        f"  sklearn    saved with {artifact.saved_sklearn_version}, installed {sklearn.__version__}",
    ]
    return Description("\n".join(lines), data)
