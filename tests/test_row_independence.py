"""A row's scored outputs are the same bits whatever batch it is scored in (README: Row
independence): alone, in random micro-batches of 1-64 rows as ``serve`` makes them, or in one
whole batch as ``run`` reads it, through ``score_batch``, the core both share.

Against the model called on the whole table, as a notebook would: trees, boosting and sparse
inputs are identical; linear models on dense inputs (a row-wise kernel, not BLAS) are within the
rounding bound of a dot product, and their probabilities within 4 ulp of 1.0; models scored on
fixed tiles of rows (MLP, k-means, nearest neighbours, PCA) within 1e-12, as are forests whose
threads add the trees in any order.
"""

from __future__ import annotations

import datetime as dt
import warnings
from typing import Any, NamedTuple

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from batch_infer.model import load_model, rowwise
from batch_infer.model.runtimes import LinearRuntime
from batch_infer.scoring import ScoringSpec, score_batch

from . import zoo
from .conftest import make_config

EPS = np.finfo(np.float64).eps
ROWS = 192  # rows scored each way; the per-row calls are the test's cost


class Case(NamedTuple):
    fit: str
    data: str
    # against the model's own: "exact" (row-wise already); "linear" (row-wise kernel: the
    # rounding bound of a dot product); "close" (scored on tiles, or trees added serially
    # where the model's threads add them in any order: within 1e-12)
    arithmetic: str
    methods: list[str] | None = None
    named_features: bool = False  # CatBoost fitted without column names: pass --features


def _extra_fit(name: str):
    """Families the zoo's golden tests do not cover, fitted on CreditCard's numbers."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    final = {
        "sgd": SGDClassifier(loss="log_loss", random_state=0),
        "ridge": Ridge(),
        "forest": RandomForestClassifier(n_estimators=40, n_jobs=2, random_state=0),
        "mlp": MLPClassifier((16,), max_iter=300, random_state=0),
        "knn": KNeighborsClassifier(7),
        "pca_logistic": make_pipeline(PCA(4), LogisticRegression(max_iter=1_000)),
    }[name]

    def fit(data: zoo.DataSet):
        y = data.frame["expenditure"] if name == "ridge" else data.y
        with warnings.catch_warnings():  # a few hundred iterations are plenty for this test
            warnings.simplefilter("ignore", ConvergenceWarning)
            return make_pipeline(StandardScaler(), final).fit(data.X, y)

    return fit


CASES = {
    "onehot": Case("fit_onehot", "penguins", "linear"),
    "ordinal": Case("fit_ordinal", "penguins", "linear"),
    "target_encoder": Case("fit_target_encoder", "default", "linear"),
    "tfidf_sparse": Case("fit_tfidf", "titanic", "exact"),  # sparse: SciPy's sums, as sklearn
    "imputed_logistic": Case("fit_imputed_logistic", "penguins", "linear"),
    "hashed_logistic": Case("fit_hashed_logistic", "credit_card_hashed", "linear"),
    "linear_svc_binary": Case(
        "fit_linear_svc_binary", "credit_card", "linear", ["predict", "decision_function"]
    ),
    "linear_svc_multiclass": Case(
        "fit_linear_svc_multiclass", "penguins", "linear", ["predict", "decision_function"]
    ),
    "multioutput_ridge": Case("fit_multioutput_ridge", "credit_card", "linear"),
    "sgd": Case("sgd", "credit_card", "linear"),
    "ridge": Case("ridge", "credit_card", "linear"),
    "forest_threads": Case("forest", "credit_card", "close"),  # n_jobs=2: made serial
    "hist_gradient_boosting": Case("fit_hist_gradient_boosting", "diamonds", "exact"),
    "xgboost": Case("fit_xgboost", "diamonds", "exact"),
    "lightgbm": Case("fit_lightgbm", "penguins_categorical", "exact"),
    "catboost": Case("fit_catboost", "penguins_filled", "exact", named_features=True),
    "isolation_forest": Case(
        "fit_isolation_forest",
        "credit_card",
        "exact",
        ["predict", "decision_function", "score_samples"],
    ),
    "kmeans": Case("fit_kmeans", "default", "close"),
    "mlp": Case("mlp", "credit_card", "close"),
    "knn": Case("knn", "credit_card", "close"),
    "pca_logistic": Case("pca_logistic", "credit_card", "close"),
}


class Scorer(NamedTuple):
    model: Any  # the fitted model, loaded back from its file
    loaded: Any  # batch-infer's LoadedModel of the same file
    spec: ScoringSpec
    frame: pd.DataFrame
    features: list[str]
    case: Case

    def outputs(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        scored = score_batch(batch, self.loaded, self.spec)
        assert scored.rejected is None
        names = [f.name for f in self.loaded.outputs.fields()]
        return {n: scored.scored.column(n).to_numpy(zero_copy_only=False) for n in names}

    def in_parts(self, batch: pa.RecordBatch, sizes: list[int]) -> dict[str, np.ndarray]:
        starts = np.cumsum([0, *sizes[:-1]])
        parts = [self.outputs(batch.slice(s, n)) for s, n in zip(starts, sizes, strict=True)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """``scorer(case_name, rows)``: the case's model fitted, saved, loaded by batch-infer."""
    folder = tmp_path_factory.mktemp("row-independence")
    cache: dict[tuple[str, int], Scorer] = {}

    def make(name: str, rows: int = ROWS) -> Scorer:
        if (name, rows) in cache:
            return cache[(name, rows)]
        case = CASES[name]
        data = getattr(zoo, case.data)()
        fit = getattr(zoo, case.fit, None) or _extra_fit(case.fit)
        path = zoo.save(fit(data), folder / f"{name}.joblib")
        sections: dict[str, Any] = {"model": {"runtime": "sklearn"}}
        if case.methods:
            sections["output"] = {"methods": case.methods}
        if case.named_features:
            sections["model"]["features"] = data.features
        config = make_config(folder / "in", folder / "out", path, **sections)
        loaded = load_model(config.model, config.output.columns, config.output.methods)
        spec = ScoringSpec(
            loaded.features, config.output.columns, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "v"
        )
        model = joblib.load(path)
        frame = pd.concat([data.frame] * -(-rows // len(data.frame)), ignore_index=True)
        features = data.features if case.named_features else zoo.model_features(model)
        cache[(name, rows)] = Scorer(model, loaded, spec, frame.iloc[:rows], features, case)
        return cache[(name, rows)]

    return make


def as_batch(frame: pd.DataFrame) -> pa.RecordBatch:
    return pa.Table.from_pandas(frame, preserve_index=False).combine_chunks().to_batches()[0]


def random_sizes(rows: int, seed: int, largest: int = 64) -> list[int]:
    """Micro-batch sizes of 1 to ``largest`` rows that add up to ``rows``."""
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < rows:
        sizes.append(int(min(rng.integers(1, largest + 1), rows - sum(sizes))))
    return sizes


def assert_same_bits(got: np.ndarray, want: np.ndarray, name: str) -> None:
    if want.dtype.kind == "f":
        assert got.dtype == want.dtype, name
        differing = np.flatnonzero(got.view(np.uint64) != want.view(np.uint64))
        assert differing.size == 0, f"{name}: rows {differing[:10].tolist()} differ in bits"
    else:
        assert got.tolist() == want.tolist(), name


@pytest.mark.parametrize("name", list(CASES))
def test_a_row_scores_the_same_bits_in_any_batch(scorer, name):
    model = scorer(name)
    batch = as_batch(model.frame)

    whole = model.outputs(batch)
    alone = model.in_parts(batch, [1] * batch.num_rows)
    split = model.in_parts(batch, random_sizes(batch.num_rows, seed=len(name)))

    assert set(whole) == set(alone) == set(split) and whole
    for column, values in whole.items():
        assert_same_bits(alone[column], values, f"{column}, each row alone")
        assert_same_bits(split[column], values, f"{column}, in batches of 1-64 rows")


@pytest.mark.parametrize("name", list(CASES))
def test_scores_are_the_models_own_within_the_stated_bound(scorer, name):
    model = scorer(name)
    got = model.outputs(as_batch(model.frame))
    X = model.frame[model.features]
    assert zoo.arithmetic(model.model, X) == model.case.arithmetic  # the table above is right
    want = zoo.expected_outputs(model.model, model.frame, model.case.methods, model.features)
    assert set(got) == set(want)
    zoo.assert_models_own(got, model.model, X, model.case.methods)


def test_what_batch_infer_calls_is_the_model_or_its_row_wise_twin(scorer):
    """A linear model's twin (a copy with the row-wise kernel) scores the bits batch-infer
    gives, in one call; a tiled model is called as it is; a forest's threads are turned off."""
    model = scorer("onehot")
    got = model.outputs(as_batch(model.frame))
    plan = rowwise.plan_for(model.model)
    assert not plan.tiled and plan.estimator is not model.model
    assert plan.estimator.steps[-1][1] is not model.model.steps[-1][1]
    want = zoo.expected_outputs(plan.estimator, model.frame, None, model.features)
    for column, expected in want.items():
        assert_same_bits(got[column], expected, column)
    mlp = scorer("mlp").model
    assert rowwise.plan_for(mlp).tiled and rowwise.plan_for(mlp).estimator is mlp
    forest = rowwise.plan_for(scorer("forest_threads").model)
    assert not forest.tiled and forest.estimator.steps[-1][1].n_jobs is None


def test_tiles_join_across_their_boundary(scorer):
    """Beyond TILE rows a tiled model is called several times: a row still scores as alone."""
    model = scorer("mlp", rows=rowwise.TILE + 130)
    batch = as_batch(model.frame)
    whole = model.outputs(batch)
    near = slice(rowwise.TILE - 65, rowwise.TILE + 65)  # rows around the tiles' boundary
    alone = model.in_parts(batch.slice(near.start, near.stop - near.start), [1] * 130)
    split = model.in_parts(batch, random_sizes(batch.num_rows, seed=7, largest=500))
    for column, values in whole.items():
        assert_same_bits(alone[column], values[near], f"{column}, each row alone")
        assert_same_bits(split[column], values, f"{column}, in batches of 1-500 rows")


def test_the_linear_kernel_sums_a_row_the_same_way_dense_sparse_and_alone():
    """A ColumnTransformer gives dense or sparse output by the batch's density: either way, and
    whatever the batch, a row's score is the same bits."""
    rng = np.random.default_rng(0)
    for rows, terms, outputs in [(700, 4, 1), (300, 37, 3), (129, 300, 12)]:
        X = rng.normal(0, 3, (rows, terms)) * (rng.random((rows, terms)) < 0.4)
        coef = rng.normal(size=(outputs, terms))
        whole = rowwise.linear_scores(np.asfortranarray(X), coef)
        alone = np.concatenate([rowwise.linear_scores(X[i : i + 1], coef) for i in range(rows)])
        sparse = rowwise.linear_scores(sp.csr_matrix(X), coef)
        assert_same_bits(alone, whole, "alone")
        assert_same_bits(rowwise.linear_scores(np.ascontiguousarray(X), coef), whole, "C order")
        assert_same_bits(sparse, whole, "sparse")
        assert np.allclose(whole, X @ coef.T, rtol=0, atol=terms * EPS * np.abs(X) @ np.abs(coef.T))


def test_the_compiled_linear_runtime_scores_a_row_the_same_in_any_batch():
    from sklearn.linear_model import LogisticRegression

    data = zoo.penguins()
    X = data.frame[["bill_length_mm", "body_mass_g", "year"]].fillna(0.0).to_numpy()
    model = LogisticRegression(max_iter=1_000).fit(X, data.y)
    runtime = LinearRuntime.from_model(model, X.mean(axis=0), X.std(axis=0))
    methods = ["predict", "predict_proba", "decision_function"]
    whole = runtime.call(np.asfortranarray(X), methods)
    sizes = random_sizes(len(X), seed=3)
    for start, size in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True):
        part = runtime.call(np.asfortranarray(X[start : start + size]), methods)
        for method in methods:
            assert_same_bits(part[method], whole[method][start : start + size], method)
    assert np.array_equal(whole["predict"], model.predict((X - X.mean(axis=0)) / X.std(axis=0)))
