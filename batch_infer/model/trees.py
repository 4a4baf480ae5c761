"""Gradient-boosted tree ensembles compiled to native code (treelite -> TL2cgen -> a C compiler).

Chosen by measurement (`make bench`, the scaler/imputer + HGB cases): HistGradientBoosting
with 200 iterations predicts several times faster compiled than in scikit-learn, with
probabilities within 1e-15. Treelite's interpreter (GTIL) was slower than scikit-learn, ONNX
Runtime's double-precision tree ensembles 0.9x, and deep random forests compiled slower than
scikit-learn's own traversal and took minutes to compile (``python
benchmarks/forest_compiled.py`` measures it), so forests stay on scikit-learn.

Building needs a C compiler (gcc or clang) and the ``treelite`` and ``tl2cgen`` packages;
scoring needs only the shared library: it carries its own batch loop (``BATCH_C``), called
through ctypes (which releases the GIL), so a run imports neither tl2cgen nor treelite (nor the
SciPy they import; see ``python -X importtime``).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .runtime_meta import saved_classes

LIBRARY = "model.so"
CHECKPOINT = "model.treelite"
BOOSTED = {
    "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
    "LGBMClassifier",
    "LGBMRegressor",
}
FORESTS = {
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
}
# scikit-learn's DecisionTree-based models compare float32(x) with their thresholds
FLOAT32_INPUT = {"GradientBoostingClassifier", "GradientBoostingRegressor"}
UNITS = 32  # translation units the trees are split into: each one's code stays in the CPU cache
BLOCK_VALUES = 262_144  # feature values per block of rows (2 MiB of entries)
# What TL2cgen's predictor does for each row, as C beside the generated code: a NaN is "missing",
# every other value a number, each row's result starts at zero; then the trees of each unit for a
# block of rows before the next unit's (measured on 300k rows, 200 trees: 2x faster than all the
# trees row by row, whose code does not fit the instruction cache). A row's sums are added in
# the same order either way, so its bits are the same. BASE is ``predict``'s own code after the
# trees (the base scores), copied from the generated main.c.
BATCH_C = """
#include "header.h"

typedef void (*unit_fn)(union Entry*, double*);
static const unit_fn units[] = { UNITS };

static void base_scores(double* result) {
  unsigned int tmp;
  (void)tmp;
  BASE
}

int32_t batch_outputs(void) { return N_TARGET * MAX_N_CLASS; }

void predict_batch(const double* rows, size_t count, int pred_margin, double* out) {
  const size_t width = (size_t)(get_num_feature() > 0 ? get_num_feature() : 1);
  const size_t outputs = (size_t)(N_TARGET * MAX_N_CLASS);
  size_t block = BLOCK_VALUES / width;
  block = block < 16 ? 16 : (block > 1024 ? 1024 : block);
  union Entry* entries = (union Entry*)malloc(sizeof(union Entry) * width * block);
  for (size_t start = 0; start < count; start += block) {
    const size_t n = count - start < block ? count - start : block;
    for (size_t r = 0; r < n; ++r) {
      const double* row = rows + (start + r) * width;
      union Entry* entry = entries + r * width;
      for (size_t j = 0; j < width; ++j) {
        if (isnan(row[j])) { entry[j].missing = -1; } else { entry[j].fvalue = row[j]; }
      }
      for (size_t k = 0; k < outputs; ++k) { out[(start + r) * outputs + k] = 0.0; }
    }
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); ++u) {
      for (size_t r = 0; r < n; ++r) { units[u](entries + r * width, out + (start + r) * outputs); }
    }
    for (size_t r = 0; r < n; ++r) {
      double* result = out + (start + r) * outputs;
      base_scores(result);
      if (!pred_margin) { postprocess(result); }
    }
  }
  free(entries);
}
"""


def batch_source(main_c: str) -> str:
    """BATCH_C for this model: its units, in ``predict``'s order, and its base scores."""
    units = re.findall(r"^\s*(predict_unit\d+)\(data, result\);", main_c, re.MULTILINE)
    start, end = main_c.find("// Apply base_scores"), main_c.find("// Apply postprocessor")
    if not units or not 0 <= start < end:
        raise ModelError(
            "the C code TL2cgen generated has an unexpected form (no predict_unit calls or base "
            "scores in main.c)",
            "report the tl2cgen version; " + NO_RUNTIME,
        )
    return (
        BATCH_C.replace("{ UNITS }", "{" + ", ".join(units) + "}")
        .replace("BASE", main_c[start:end])
        .replace("BLOCK_VALUES", str(BLOCK_VALUES))
    )


NO_RUNTIME = "score it with the scikit-learn runtime (--runtime sklearn; the default when nothing is compiled)"


def is_tree_ensemble(model: Any) -> bool:
    name = type(model).__name__
    if name in FORESTS:
        raise ModelError(
            f"{name} is not compiled: a deep forest compiled to native code predicts slower than "
            "scikit-learn (deep trees do not fit the CPU caches as code) and takes minutes to "
            "compile (measured by benchmarks/forest_compiled.py)",
            NO_RUNTIME,
        )
    if name.startswith("XGB"):
        raise ModelError(
            f"{name} is not compiled: XGBoost computes in float32 (so 1e-12 cannot be verified) "
            "and its own predictor was faster than the compiled code (1.1 s vs 1.9 s on 1M rows)",
            NO_RUNTIME,
        )
    if name.startswith("HistGradientBoosting") and np.any(getattr(model, "is_categorical_", None)):
        raise ModelError(
            f"{name} with categorical features is not compiled: the generated code sends missing "
            "and unknown categories down the other branch (measured: 533 of 1M labels differed)",
            NO_RUNTIME,
        )
    return name in BOOSTED


@dataclass
class TreeRuntime:
    """A shared library with the ensemble's trees as C code, called through TL2cgen."""

    engine = "treelite"
    library: Path
    classes: np.ndarray | None
    float32_input: bool
    margin: bool  # the model has a decision_function (boosted classifiers): the raw scores
    thresholds: list[np.ndarray] = field(default_factory=list, repr=False)
    _library: Any = field(default=None, repr=False)  # the ctypes handle, loaded when needed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _model: Any = field(default=None, repr=False)  # the treelite model, loaded when needed

    @property
    def methods(self) -> tuple[str, ...]:
        if self.classes is None:
            return ("predict",)
        return ("predict", "predict_proba", *(("decision_function",) if self.margin else ()))

    @property
    def width(self) -> int:
        """How many features the trees take (known when built, for probing)."""
        return len(self.thresholds)

    @classmethod
    def from_model(cls, model: Any) -> TreeRuntime:
        compiler = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
        if compiler is None:
            raise ModelError(
                "compiling a tree ensemble needs a C compiler (gcc or clang), and none is on PATH",
                "install one (apt-get install gcc), or " + NO_RUNTIME,
            )
        try:
            import tl2cgen
            import treelite  # noqa: F401
        except ImportError:
            raise ModelError(
                "compiling a tree ensemble needs the treelite and tl2cgen packages",
                "pip install 'batch-infer[compiled]', or " + NO_RUNTIME,
            ) from None
        name = type(model).__name__
        imported = _to_treelite(model, name)
        folder = Path(tempfile.mkdtemp(prefix="batch-infer-compile-"))
        library = folder / LIBRARY
        toolchain = "clang" if os.path.basename(compiler).startswith("clang") else "gcc"
        cores = max(1, len(os.sched_getaffinity(0)))
        sources = folder / "src"
        try:
            tl2cgen.generate_c_code(imported, str(sources), params={"parallel_comp": UNITS})
            batch = batch_source((sources / "main.c").read_text())
            (sources / "batch.c").write_text(batch)
            recipe = json.loads((sources / "recipe.json").read_text())
            recipe["sources"].append({"name": "batch", "length": batch.count("\n")})
            (sources / "recipe.json").write_text(json.dumps(recipe))
            built = tl2cgen.create_shared(
                toolchain, str(sources), nthread=cores, long_build_time_warning=False
            )
            shutil.move(built, library)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"compiling {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                NO_RUNTIME,
            ) from None
        finally:
            shutil.rmtree(sources, ignore_errors=True)
        imported.serialize(str(folder / CHECKPOINT))
        classes = getattr(model, "classes_", None)
        margin = classes is not None and callable(getattr(model, "decision_function", None))
        return cls(
            library=library,
            classes=np.asarray(classes) if classes is not None else None,
            float32_input=name in FLOAT32_INPUT,
            margin=margin,
            thresholds=_thresholds(model, name),
        )

    def describe(self) -> dict[str, Any]:
        import tl2cgen
        import treelite

        return {
            "runtime_needs": f"the shared library only (C code from treelite {treelite.__version__}"
            f" and tl2cgen {tl2cgen.__version__}, built with a C compiler)",
            "float32_input": self.float32_input,
            "margin": self.margin,
        }

    def save(self, folder: Path) -> None:
        shutil.copy(self.library, folder / LIBRARY)
        shutil.copy(self.library.parent / CHECKPOINT, folder / CHECKPOINT)
        shutil.rmtree(self.library.parent, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> TreeRuntime:
        runtime = cls(
            library=folder / LIBRARY,
            classes=saved_classes(meta),
            float32_input=meta["float32_input"],
            margin=meta["margin"],
        )
        runtime._loaded()  # a library that does not load falls back to scikit-learn now
        return runtime

    def _loaded(self) -> Any:
        """The shared library, loaded once; its functions are re-entrant (no global state), so
        the run's workers call it side by side, each call on one thread."""
        with self._lock:
            if self._library is None:
                library = ctypes.CDLL(str(self.library))
                library.predict_batch.restype = None
                library.predict_batch.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_size_t,
                    ctypes.c_int,
                    ctypes.c_void_p,
                ]
                library.batch_outputs.restype = ctypes.c_int32
                library.get_num_feature.restype = ctypes.c_int32
                self._library = library
        return self._library

    def _raw(self, matrix: np.ndarray, margin: bool = False) -> np.ndarray:
        library = self._loaded()
        features = np.ascontiguousarray(matrix, dtype=np.float64)
        if self.float32_input:  # what scikit-learn's trees compare: float32(x)
            features = features.astype(np.float32).astype(np.float64)
        if features.shape[1] != library.get_num_feature():
            raise ValueError(
                f"the compiled trees take {library.get_num_feature()} features, "
                f"not {features.shape[1]}"
            )
        raw = np.empty((features.shape[0], library.batch_outputs()), dtype=np.float64)
        library.predict_batch(features.ctypes.data, features.shape[0], int(margin), raw.ctypes.data)
        misread = _misread_as_missing(features)
        if misread.any():
            raw[misread] = self._interpreted(features[misread], margin)[:, 0, :]
        return raw  # (rows, classes): one target

    def _interpreted(self, rows: np.ndarray, margin: bool) -> np.ndarray:
        """Treelite's interpreter (exact, slower) for the rare rows the C code would misread."""
        import treelite
        import treelite.gtil

        with self._lock:
            if self._model is None:
                self._model = treelite.Model.deserialize(str(self.library.parent / CHECKPOINT))
        if margin or self.classes is None or len(self.classes) <= 2:
            return treelite.gtil.predict(self._model, rows, nthread=1, pred_margin=margin)
        # the interpreter's own softmax is float32-accurate: apply it in float64 here
        scores = treelite.gtil.predict(self._model, rows, nthread=1, pred_margin=True)
        scores = np.asarray(scores, dtype=np.float64)
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        return scores

    def call(self, matrix: np.ndarray, methods: list[str]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        if self.classes is None:
            results["predict"] = self._raw(matrix)[:, 0]
            return results
        if "decision_function" in methods:
            margin = self._raw(matrix, margin=True)
            results["decision_function"] = margin[:, 0] if margin.shape[1] == 1 else margin
        if "predict" in methods or "predict_proba" in methods:
            raw = self._raw(matrix)
            proba = np.column_stack([1.0 - raw[:, 0], raw[:, 0]]) if raw.shape[1] == 1 else raw
            if "predict_proba" in methods:
                results["predict_proba"] = proba
            if "predict" in methods:
                results["predict"] = self.classes.take(np.argmax(proba, axis=1))
        return results

    def probe_rows(self, rng: np.random.Generator, allow_nan: list[bool]) -> np.ndarray:
        """Rows whose values sit on and beside the split thresholds, where rounding would show."""
        columns = []
        rows = 5_000
        for feature, nan_allowed in enumerate(allow_nan):
            values = self.thresholds[feature] if feature < len(self.thresholds) else np.empty(0)
            if len(values) > 300:
                values = rng.choice(values, 300, replace=False)
            candidates = np.concatenate(
                [
                    values,
                    np.nextafter(values, -np.inf),
                    np.nextafter(values, np.inf),
                    np.nextafter(values.astype(np.float32), np.float32(np.inf)).astype(np.float64),
                    rng.normal(0, 100, 50),
                ]
            )
            column = rng.choice(candidates, rows)
            if nan_allowed:
                column[rng.random(rows) < 0.05] = np.nan
            columns.append(column)
        return np.column_stack(columns)


def _misread_as_missing(features: np.ndarray) -> np.ndarray:
    """Rows the generated C code would take as having a missing value where there is none.

    TL2cgen passes each value in a union of a double and an int and takes int -1 as "missing",
    so a double whose low 32 bits are all ones (80.49999999999999 is one) reads as missing.
    Found by ``compile``'s verification on values one ulp below split thresholds.
    """
    words = features.view(np.uint32).reshape(features.shape[0], -1)
    low_words = words[:, 0::2] if np.little_endian else words[:, 1::2]
    return ((low_words == 0xFFFFFFFF) & ~np.isnan(features)).any(axis=1)


def _to_treelite(model: Any, name: str) -> Any:
    import treelite

    try:
        if name.startswith("LGBM"):
            return treelite.frontend.from_lightgbm(model.booster_)
        return treelite.sklearn.import_model(model)
    except Exception as exc:
        raise ModelError(
            f"treelite cannot import {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            NO_RUNTIME,
        ) from None


def _thresholds(model: Any, name: str) -> list[np.ndarray]:
    """Every split threshold, per feature (numeric splits only)."""
    width = int(getattr(model, "n_features_in_", 0) or 0)
    found: list[list[np.ndarray]] = [[] for _ in range(width)]
    if name.startswith("HistGradientBoosting"):
        for iteration in model._predictors:
            for predictor in iteration:
                nodes = predictor.nodes
                split = (nodes["is_leaf"] == 0) & (nodes["is_categorical"] == 0)
                for feature in np.unique(nodes["feature_idx"][split]):
                    mask = split & (nodes["feature_idx"] == feature)
                    found[feature].append(nodes["num_threshold"][mask])
    elif name.startswith("GradientBoosting"):
        for tree in np.ravel(model.estimators_):
            structure = tree.tree_
            split = structure.feature >= 0
            for feature in np.unique(structure.feature[split]):
                found[feature].append(structure.threshold[split & (structure.feature == feature)])
    elif name.startswith("LGBM"):
        frame = model.booster_.trees_to_dataframe()
        frame = frame[frame["split_feature"].notna() & (frame["decision_type"] == "<=")]
        names = list(model.booster_.feature_name())
        for feature_name, group in frame.groupby("split_feature"):
            found[names.index(feature_name)].append(group["threshold"].to_numpy(np.float64))
    return [np.unique(np.concatenate(parts)) if parts else np.empty(0) for parts in found]
