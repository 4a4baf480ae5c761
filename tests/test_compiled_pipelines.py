"""Compiled runtimes for pipelines as teams ship them: scalers and imputers before boosted trees
or a linear model, as a Pipeline or a separate ``--scaler`` file.

Compiled by the real CLI (a C compiler for trees) into a private cache, run with
``--runtime compiled``, and compared with the model's own ``predict`` / ``predict_proba`` on the
same rows (labels identical, probabilities within compile's TOLERANCE). The preprocessing steps
alone are compared with scikit-learn's ``transform`` bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    MaxAbsScaler,
    MinMaxScaler,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)

from batch_infer import run
from batch_infer.model.compiled import TOLERANCE
from batch_infer.model.runtimes import Preprocessing, preprocessing_ops

from . import zoo
from .conftest import make_config, read_output
from .test_compiled import compile_cli, credit_binary, penguins_species

ROW_ID = zoo.ROW_ID


def _hgb() -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(max_iter=40, random_state=0)


PIPELINES = {
    # name: (data, model, engine, steps compiled before the model)
    "standard-scaler-hgb": (
        credit_binary,
        lambda: make_pipeline(StandardScaler(), _hgb()),
        "treelite",
        ["StandardScaler"],
    ),
    "imputer-hgb-missing-values": (
        penguins_species,  # measurements with NaN, three species
        lambda: make_pipeline(SimpleImputer(strategy="median"), _hgb()),
        "treelite",
        ["SimpleImputer"],
    ),
    "minmax-logreg": (
        credit_binary,
        lambda: make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=2000)),
        "numpy-linear",
        ["MinMaxScaler"],
    ),
    "imputer-robust-logreg-missing-values": (
        penguins_species,
        lambda: make_pipeline(SimpleImputer(), RobustScaler(), LogisticRegression(max_iter=2000)),
        "numpy-linear",
        ["SimpleImputer", "RobustScaler"],
    ),
}


def _compile(*args: str) -> dict:
    built = compile_cli(*args, "--output-format", "json")
    assert built.returncode == 0, built.stderr
    return json.loads(built.stdout.strip().splitlines()[-1])


def _scored(tmp_path: Path, data: Path, model_path: Path, **model: str) -> pd.DataFrame:
    out = tmp_path / "out"
    config = make_config(
        data,
        out,
        model_path,
        model={"runtime": "compiled", **model},
        output={"methods": "predict,predict_proba"},
    )
    report = run(config)
    assert report.rows_out == report.rows_in
    return read_output(out).to_pandas().sort_values(ROW_ID).reset_index(drop=True), report


def _assert_models_own(scored: pd.DataFrame, expected: dict[str, np.ndarray]) -> None:
    """Labels identical; probabilities within TOLERANCE of the model's own."""
    assert set(expected) <= set(scored.columns)
    for column, want in expected.items():
        got = scored[column].to_numpy()
        if column == "prediction":
            assert np.array_equal(got, want), column
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE, err_msg=column)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_a_compiled_pipeline_scores_as_the_model_itself(tmp_path: Path, name: str) -> None:
    data, make, engine, steps = PIPELINES[name]
    frame, features, target = data()
    frame = frame.sort_values(ROW_ID).reset_index(drop=True)
    model = make().fit(frame[features], frame[target])
    model_path = tmp_path / f"{name}.joblib"
    joblib.dump(model, model_path)
    folder = zoo.write_dataset(frame[[ROW_ID, *features]], tmp_path / "data", "pyarrow", files=2)

    built = _compile("--model", str(model_path), "--sample", str(folder))
    assert built["engine"] == engine
    assert built["preprocessing"]["steps"] == steps
    assert built["verification"]["label_differences"] == 0

    scored, report = _scored(tmp_path, folder, model_path)
    assert report.runtime == engine
    if frame[features].isna().any().any():
        assert scored[features].isna().any().any()  # the missing values reached the runtime
    expected = zoo.model_outputs(model, frame[features], ["predict", "predict_proba"])
    _assert_models_own(scored, expected)


def test_a_separate_scaler_file_and_the_pipeline_share_one_runtime(tmp_path: Path) -> None:
    """``--scaler scaler.joblib --model hgb.joblib`` compiles to the same steps as
    ``Pipeline(scaler, hgb)`` and scores as the scaler then the model do."""
    frame, features, target = credit_binary()
    frame = frame.sort_values(ROW_ID).reset_index(drop=True)
    scaler = StandardScaler().fit(frame[features])
    scaled = pd.DataFrame(scaler.transform(frame[features]), columns=features)
    model = _hgb().fit(scaled, frame[target])
    joblib.dump(scaler, tmp_path / "scaler.joblib")
    joblib.dump(model, tmp_path / "model.joblib")
    folder = zoo.write_dataset(frame[[ROW_ID, *features]], tmp_path / "data", "pyarrow", files=2)

    built = _compile(
        "--model", str(tmp_path / "model.joblib"), "--scaler", str(tmp_path / "scaler.joblib")
    )
    assert built["engine"] == "treelite"
    assert built["preprocessing"] == {"steps": ["StandardScaler"], "ops": ["subtract", "divide"]}

    scored, report = _scored(
        tmp_path, folder, tmp_path / "model.joblib", scaler=str(tmp_path / "scaler.joblib")
    )
    assert report.runtime == "treelite"
    expected = zoo.model_outputs(model, scaled, ["predict", "predict_proba"])
    _assert_models_own(scored, expected)

    # a run on the compiled trees loads their library only: no tl2cgen, treelite, SciPy or
    # scikit-learn (their imports were most of such a run's start-up)
    script = (
        "import sys\n"
        "from batch_infer.cli import app\n"
        f"app(['run', '--quiet', '--input', {str(folder)!r}, '--output', {str(tmp_path / 'again')!r},"
        f" '--model', {str(tmp_path / 'model.joblib')!r}, '--scaler', {str(tmp_path / 'scaler.joblib')!r},"
        " '--runtime', 'compiled'], standalone_mode=False)\n"
        "print(sorted(m for m in ('tl2cgen', 'treelite', 'scipy', 'sklearn') if m in sys.modules))\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "again" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        (QuantileTransformer(n_quantiles=50), "QuantileTransformer is not compiled"),
        (
            SimpleImputer(add_indicator=True),
            "SimpleImputer(add_indicator=True) is not compiled",
        ),
    ],
)
def test_an_unsupported_step_is_refused_with_the_reason(
    tmp_path: Path, step: object, reason: str
) -> None:
    frame, features, target = credit_binary()
    path = tmp_path / "model.joblib"
    joblib.dump(make_pipeline(step, LogisticRegression()).fit(frame[features], frame[target]), path)
    built = compile_cli("--model", str(path))
    assert built.returncode == 4, built.stderr
    assert reason in built.stderr
    assert "--runtime sklearn" in built.stderr
    assert "Traceback" not in built.stderr
    cache = Path(os.environ["BATCH_INFER_CACHE_DIR"])
    assert not list(cache.glob("compiled/*/compiled.json"))


STEPS = [
    StandardScaler(),
    StandardScaler(with_mean=False),
    MinMaxScaler(),
    MinMaxScaler(feature_range=(-2, 3), clip=True),
    MaxAbsScaler(),
    MaxAbsScaler(clip=True),
    RobustScaler(),
    RobustScaler(with_centering=False, quantile_range=(10, 90)),
    SimpleImputer(strategy="mean"),
    SimpleImputer(strategy="median"),
    SimpleImputer(strategy="most_frequent"),
    SimpleImputer(strategy="constant", fill_value=-7.5),
    SimpleImputer(strategy="mean", keep_empty_features=True),
]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: repr(s))
def test_preprocessing_is_bit_identical_to_the_steps_transform(step: object) -> None:
    """Values of very different magnitudes, NaN, a constant column and (for the imputers) a
    column never seen at fit, which SimpleImputer drops unless ``keep_empty_features``."""
    rng = np.random.default_rng(0)
    X = rng.normal(5, 3, (5_000, 6)) * np.array([1, 1e-3, 1e4, 1, 1e8, 1])
    X[:, 5] = 2.0
    X[rng.random(X.shape) < 0.05] = np.nan
    if "Imputer" in type(step).__name__:
        X[:3_000, 3] = np.nan  # no value seen at fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Skipping features without any observed"
        step.fit(X[:3_000])
        want = step.transform(X)
    preprocessing = Preprocessing(preprocessing_ops(step, [step]), [type(step).__name__])
    for layout in (np.ascontiguousarray(X), np.asfortranarray(X)):
        before = layout.copy()
        got = preprocessing.transform(layout)
        assert got.shape == want.shape
        assert np.array_equal(got, want, equal_nan=True)
        assert np.array_equal(layout, before, equal_nan=True)  # the input is left unchanged
    one_row = preprocessing.transform(X[7:8])
    assert np.array_equal(one_row, want[7:8], equal_nan=True)
