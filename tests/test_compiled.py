"""Compiled runtimes: built and verified by `batch-infer compile`, used by `run`, equal to the
model's own methods (labels identical, numbers within 1e-12) on real data sets, NaN included.

Every family is compiled by the real CLI (a C compiler for trees) into a private cache, then the
same input is scored with --runtime compiled and --runtime sklearn and compared row by row.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from batch_infer import run

from . import zoo
from .conftest import make_config, read_output

ROW_ID = zoo.ROW_ID


def compile_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batch_infer", "compile", *args],
        capture_output=True,
        text=True,
        env=env or os.environ.copy(),
    )


def credit_binary():
    data = zoo.credit_card()
    return data.frame, zoo.CREDIT_NUMERIC, "card"


def penguins_species():
    data = zoo.penguins()  # measurements with NaN
    features = zoo.PENGUIN_NUMERIC
    return data.frame, features, "species"


def penguins_mass():
    """Body mass in kg from the other measurements (NaN kept in the features).

    In kg, not g: the check is 1e-12 absolute, and sums of 40 trees in another order differ by
    a few ulps, which at 4,000 g is 1e-12 already (compile refuses those, as it should).
    """
    data = zoo.penguins()
    frame = data.frame.dropna(subset=["body_mass_g"]).copy()
    frame = frame.iloc[: len(frame) // zoo.UNIT * zoo.UNIT]
    frame["body_mass_kg"] = frame["body_mass_g"] / 1000
    return frame, ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "year"], "body_mass_kg"


def penguins_filled_species():
    frame, features, target = penguins_species()
    return frame.fillna({f: 0.0 for f in features}), features, target


def _linear_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _ridge():
    from sklearn.linear_model import Ridge

    return Ridge(alpha=0.5)


def _hgb_classifier():
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=40, random_state=0)


def _hgb_regressor():
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=40, random_state=0)


def _gb_classifier():
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=30, random_state=0)


def _gb_regressor():
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=30, random_state=0)


def _lightgbm():
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=30, verbose=-1, random_state=0)


FAMILIES = {
    # name: (data, estimator, engine, methods)
    "logreg-pipeline-binary": (credit_binary, _linear_pipeline, "numpy-linear", None),
    "logreg-multiclass": (
        penguins_filled_species,
        _linear_pipeline,
        "numpy-linear",
        "predict,predict_proba,decision_function",
    ),
    "ridge": (penguins_mass, _ridge, "numpy-linear", None),
    "hgb-binary": (
        credit_binary,
        _hgb_classifier,
        "treelite",
        "predict,predict_proba,decision_function",
    ),
    "hgb-multiclass-nan": (penguins_species, _hgb_classifier, "treelite", None),
    "hgb-regressor-nan": (penguins_mass, _hgb_regressor, "treelite", None),
    "gb-binary": (credit_binary, _gb_classifier, "treelite", None),
    "gb-regressor": (penguins_mass, _gb_regressor, "treelite", None),
    "lightgbm-binary": (credit_binary, _lightgbm, "treelite", None),
}


def fit_and_write(tmp_path: Path, name: str) -> tuple[Path, Path, list[str]]:
    data, make, _, _ = FAMILIES[name]
    frame, features, target = data()
    model = make().fit(frame[features], frame[target])
    model_path = tmp_path / f"{name}.joblib"
    joblib.dump(model, model_path)
    folder = zoo.write_dataset(frame[[ROW_ID, *features]], tmp_path / "data", "pyarrow", files=2)
    return model_path, folder, features


@pytest.mark.parametrize("name", list(FAMILIES))
def test_compiled_runtime_scores_as_the_model(tmp_path: Path, name: str) -> None:
    model_path, data, _ = fit_and_write(tmp_path, name)
    engine, methods = FAMILIES[name][2], FAMILIES[name][3]
    built = compile_cli(
        "--model", str(model_path), "--sample", str(data), "--output-format", "json"
    )
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout.strip().splitlines()[-1])
    assert result["engine"] == engine
    assert result["verification"]["label_differences"] == 0
    assert all(d <= 1e-12 for d in result["verification"]["max_abs_diff"].values())

    outputs = {}
    for runtime in ("compiled", "sklearn"):
        config = make_config(
            data,
            tmp_path / f"out-{runtime}",
            model_path,
            model={"runtime": runtime},
            **({"output": {"methods": methods}} if methods else {}),
        )
        report = run(config)
        assert report.runtime == (engine if runtime == "compiled" else "sklearn")
        manifest = json.loads((tmp_path / f"out-{runtime}" / "_manifest.json").read_text())
        assert manifest["runtime"] == report.runtime
        outputs[runtime] = read_output(tmp_path / f"out-{runtime}").to_pandas().sort_values(ROW_ID)

    compiled, reference = outputs["compiled"], outputs["sklearn"]
    assert list(compiled.columns) == list(reference.columns)
    assert compiled[ROW_ID].tolist() == reference[ROW_ID].tolist()
    added = [
        c for c in reference.columns if c.startswith(("prediction", "probability", "decision"))
    ]
    assert added
    for column in added:
        left, right = compiled[column].to_numpy(), reference[column].to_numpy()
        if column.startswith("prediction") and reference[column].dtype.kind in "OUSb":
            assert (left == right).all(), column
        else:
            np.testing.assert_allclose(left.astype(float), right.astype(float), rtol=0, atol=1e-12)


def test_values_the_generated_code_would_misread_as_missing_are_scored_exactly(
    tmp_path: Path,
) -> None:
    """80.49999999999999 has all ones in its low 32 bits, TL2cgen's "missing" marker."""
    from batch_infer.model.trees import TreeRuntime, _misread_as_missing

    frame, features, target = credit_binary()
    model = _hgb_classifier().fit(frame[features], frame[target])
    runtime = TreeRuntime.from_model(model)
    runtime.save(tmp_path)  # the checkpoint the interpreter reads sits beside the library
    rng = np.random.default_rng(1)
    rows = runtime.probe_rows(rng, [False] * len(features))
    misread = _misread_as_missing(np.ascontiguousarray(rows))
    assert misread.sum() > 10
    meta = {"float32_input": False, "margin": True, "classes": model.classes_.tolist()}
    loaded = TreeRuntime.load(tmp_path, meta)
    got = loaded.call(rows, ["predict", "predict_proba"])
    want = model.predict_proba(pd.DataFrame(rows, columns=features))
    np.testing.assert_allclose(got["predict_proba"], want, rtol=0, atol=1e-12)
    assert (got["predict"] == model.classes_[want.argmax(axis=1)]).all()


def test_forests_are_refused_with_the_reason(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    frame, features, target = credit_binary()
    path = tmp_path / "forest.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=5).fit(frame[features], frame[target]), path)
    built = compile_cli("--model", str(path))
    assert built.returncode == 4
    assert "RandomForestClassifier is not compiled" in built.stderr
    assert "--runtime sklearn" in built.stderr
    assert "Traceback" not in built.stderr


def test_trees_without_a_c_compiler_get_a_clear_message(tmp_path: Path) -> None:
    model_path, _, _ = fit_and_write(tmp_path, "gb-binary")
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bare)}
    built = compile_cli("--model", str(model_path), env=env)
    assert built.returncode == 4, built.stderr
    assert "needs a C compiler" in built.stderr
    assert not any((Path(env["BATCH_INFER_CACHE_DIR"]) / "compiled").glob("*/compiled.json"))


def test_a_linear_model_compiles_without_a_c_compiler(tmp_path: Path) -> None:
    model_path, _, _ = fit_and_write(tmp_path, "ridge")
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    assert shutil.which("gcc", path=str(bare)) is None
    built = compile_cli("--model", str(model_path), env=env)
    assert built.returncode == 0, built.stderr
    assert "numpy-linear" in built.stdout


def test_runtime_choice_auto_compiled_and_a_changed_model(tmp_path: Path) -> None:
    model_path, data, features = fit_and_write(tmp_path, "ridge")

    def score(runtime: str, out: str):
        return run(make_config(data, tmp_path / out, model_path, model={"runtime": runtime}))

    assert score("auto", "before").runtime == "sklearn"  # nothing compiled yet
    with pytest.raises(Exception) as refused:
        score("compiled", "refused")
    assert refused.value.exit_code == 4
    assert "batch-infer compile --model" in refused.value.fix
    assert not (tmp_path / "refused" / "_SUCCESS").exists()

    assert compile_cli("--model", str(model_path)).returncode == 0
    assert score("auto", "after").runtime == "numpy-linear"
    assert score("sklearn", "opt-out").runtime == "sklearn"

    # the same file name with another model: another sha256, so the cached runtime is not used
    frame, _, target = penguins_mass()
    joblib.dump(_ridge().set_params(alpha=5.0).fit(frame[features], frame[target]), model_path)
    assert score("auto", "changed").runtime == "sklearn"


def test_a_runtime_that_differs_is_not_cached(tmp_path: Path) -> None:
    """A model whose arithmetic the runtime does not reproduce: a subclass of Ridge that adds
    one to every prediction. Verification must refuse it, say by how much, and cache nothing."""
    model_path, _, _ = fit_and_write(tmp_path, "ridge")
    model = joblib.load(model_path)
    shifted = _ShiftedRidge(alpha=model.alpha)
    shifted.__dict__.update(model.__dict__)
    shifted_path = tmp_path / "shifted.joblib"
    joblib.dump(shifted, shifted_path)
    built = compile_cli("--model", str(shifted_path))
    assert built.returncode == 4
    assert "differs from the model" in built.stderr
    assert "predict by up to 1" in built.stderr
    assert "nothing was cached" in built.stderr


from sklearn.linear_model import Ridge  # noqa: E402


class _ShiftedRidge(Ridge):
    def predict(self, X):  # noqa: N803
        return super().predict(X) + 1.0


def test_a_damaged_cache_entry_falls_back_to_scikit_learn_and_inspect_tells(
    tmp_path: Path,
) -> None:
    model_path, data, _ = fit_and_write(tmp_path, "ridge")
    assert compile_cli("--model", str(model_path)).returncode == 0
    shown = subprocess.run(
        [sys.executable, "-m", "batch_infer", "inspect", str(model_path)],
        capture_output=True,
        text=True,
    )
    assert "runtime    compiled numpy-linear cached in" in shown.stdout
    cache = Path(os.environ["BATCH_INFER_CACHE_DIR"])
    (damaged,) = cache.glob("compiled/*/linear.npz")
    damaged.write_bytes(b"not an npz file")
    report = run(make_config(data, tmp_path / "out", model_path))
    assert report.runtime == "sklearn"
    assert report.rows_out == report.rows_in
