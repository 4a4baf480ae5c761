"""Workloads the benchmark times, each run as its own process: data, IO bound, naive loop.

python benchmarks/workloads.py make-data ROWS FILES OUT_DIR [churn|mixed]
python benchmarks/workloads.py make-models MODELS_DIR [churn|mixed]
python benchmarks/workloads.py io-bound INPUT OUT_DIR THREADS [zstd|snappy]
python benchmarks/workloads.py model-bound INPUT MODELS_DIR MODEL      (prints CPU seconds)
python benchmarks/workloads.py model-bound-compiled INPUT MODELS_DIR MODEL
    (the runtime `batch-infer compile` cached in BATCH_INFER_CACHE_DIR; prints CPU seconds)
python benchmarks/workloads.py naive INPUT MODELS_DIR MODEL OUT_FILE
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 128 * 1024
FEATURES = ["age", "tenure", "monthly_charges", "total_charges"]
REGIONS = np.array(["north", "south", "east", "west", "central"])
# the mixed-type case (issue 19): 4 numeric columns, ~3% missing in monthly_charges, and 4 string
# columns of 5, 12, 25 and 40 values, ~1% missing in device
MIXED_NUMERIC = FEATURES
STRINGS = {
    "plan": np.array([f"plan-{i}" for i in range(5)]),
    "state": np.array([f"state-{i:02d}" for i in range(12)]),
    "device": np.array([f"device-{i:02d}" for i in range(25)]),
    "city": np.array([f"city-{i:02d}" for i in range(40)]),
}
CATEGORIES = list(STRINGS)
MIXED_FEATURES = MIXED_NUMERIC + CATEGORIES
NUMERIC_MISSING = ("monthly_charges", 0.03)
STRING_MISSING = ("device", 0.01)


def churn_batch(rng: np.random.Generator, first_id: int, rows: int) -> pa.RecordBatch:
    """Churn-like rows: ids, 4 numeric features, a string and a date column."""
    tenure = rng.integers(0, 72, rows).astype("int32")
    monthly = np.round(rng.uniform(18.0, 120.0, rows), 2)
    return pa.record_batch(
        {
            "customer_id": np.arange(first_id, first_id + rows, dtype="int64"),
            "age": rng.integers(18, 90, rows).astype("int32"),
            "tenure": tenure,
            "monthly_charges": monthly,
            "total_charges": np.round(monthly * tenure + rng.uniform(0, 50, rows), 2),
            "region": pa.array(REGIONS[rng.integers(0, len(REGIONS), rows)]),
            "event_date": pa.array(
                np.datetime64("2026-01-01") + rng.integers(0, 28, rows).astype("timedelta64[D]")
            ),
        }
    )


def mixed_batch(rng: np.random.Generator, first_id: int, rows: int) -> pa.RecordBatch:
    """Churn rows (monthly_charges ~3% null) plus four plain string columns (device ~1% null)."""
    batch = churn_batch(rng, first_id, rows)
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    name, share = NUMERIC_MISSING
    columns[name] = pa.array(columns[name].to_numpy(), mask=rng.uniform(size=rows) < share)
    for name, values in STRINGS.items():
        picked = values[rng.integers(0, len(values), rows)]
        mask = rng.uniform(size=rows) < STRING_MISSING[1] if name == STRING_MISSING[0] else None
        columns[name] = pa.array(picked, type=pa.string(), mask=mask)
    return pa.record_batch(columns)


BATCHES = {"churn": churn_batch, "mixed": mixed_batch}


def make_data(rows: int, files: int, out_dir: str, kind: str = "churn") -> None:
    """Seeded: the same rows whether written to one file or spread over many."""
    make_batch = BATCHES[kind]
    rng = np.random.default_rng(12345)
    os.makedirs(out_dir, exist_ok=True)
    per_file = -(-rows // files)
    written = 0
    for index in range(files):
        count = min(per_file, rows - written)
        path = os.path.join(out_dir, f"part-{index:03d}.parquet")
        with pq.ParquetWriter(path, make_batch(rng, 0, 1).schema) as writer:
            done = 0
            while done < count:
                step = min(ROW_GROUP, count - done)
                writer.write_batch(make_batch(rng, written + done, step), row_group_size=ROW_GROUP)
                done += step
        written += count


def make_models(models_dir: str, kind: str = "churn") -> None:
    """churn: scaler + LogisticRegression (two files, as `--scaler` takes them) and the two
    HistGradientBoosting pipelines; mixed: the mixed-type Pipeline."""
    if kind == "mixed":
        return make_mixed_model(models_dir)
    import joblib
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = churn_training(200_000)
    os.makedirs(models_dir, exist_ok=True)
    scaler = StandardScaler().fit(X)
    joblib.dump(scaler, f"{models_dir}/scaler.joblib")
    joblib.dump(LogisticRegression().fit(scaler.transform(X), y), f"{models_dir}/logreg.joblib")
    for name, step in (("scaler-hgb", StandardScaler()), ("imputer-hgb", SimpleImputer())):
        trees = HistGradientBoostingClassifier(max_iter=200, early_stopping=False, random_state=0)
        joblib.dump(
            make_pipeline(step, trees).fit(X[:100_000], y[:100_000]), f"{models_dir}/{name}.joblib"
        )


def churn_training(rows: int):
    """Seeded churn rows and labels drawn from a known logit (the churn models' training set)."""
    rng = np.random.default_rng(7)
    frame = pa.Table.from_batches([churn_batch(rng, 0, rows)]).to_pandas()
    X = frame[FEATURES].astype("float64")
    logit = (
        -0.03 * (X["age"] - 50) - 0.06 * (X["tenure"] - 36) + 0.025 * (X["monthly_charges"] - 70)
    )
    y = (rng.uniform(size=len(X)) < 1 / (1 + np.exp(-logit))).astype("int64")
    return X, y


def make_mixed_model(models_dir: str) -> None:
    """Pipeline(ColumnTransformer(SimpleImputer + StandardScaler on the numbers, SimpleImputer +
    OneHotEncoder(handle_unknown="ignore") on the strings), LogisticRegression), fitted on 50k
    rows as pandas reads the data."""
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(8)
    X = pa.Table.from_batches([mixed_batch(rng, 0, 50_000)]).to_pandas()[MIXED_FEATURES]
    logit = (
        -0.03 * (X["age"] - 50)
        - 0.06 * (X["tenure"] - 36)
        + 0.025 * (X["monthly_charges"].fillna(70) - 70)
        + 0.3 * X["plan"].isin(["plan-0", "plan-3"])
        - 0.02 * X["city"].str[-2:].astype("float64").fillna(20)
        + 0.5 * (X["device"] == "device-07")
    ).astype("float64")
    y = (rng.uniform(size=len(X)) < 1 / (1 + np.exp(-logit))).astype("int64")
    columns = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), FEATURES),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                CATEGORIES,
            ),
        ]
    )
    model = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1000))])
    os.makedirs(models_dir, exist_ok=True)
    joblib.dump(model.fit(X, y), f"{models_dir}/mixed.joblib")


def _files(input_path: str) -> list[str]:
    return (
        sorted(glob.glob(os.path.join(input_path, "*.parquet")))
        if os.path.isdir(input_path)
        else [input_path]
    )


# What batch-infer adds to every row, in its order and types (pq.read_schema of its output):
# prediction int64 (the label), probability float64, predicted_at timestamp[us, UTC] and
# model_version, a string of 12 hex characters (the model file's sha256[:12] by default).
MODEL_VERSION = hashlib.sha256(b"io-bound").hexdigest()[:12]
PLAIN_COLUMNS = {"probability"}  # nearly all distinct: batch-infer writes them without a dictionary


def io_bound(input_path: str, out_dir: str, threads: int, codec: str = "zstd") -> None:
    """Stream-read every row group and write it back with batch-infer's four added columns
    (same names, types and order), in ``codec``, with batch-infer's dictionary choice (every
    column but the probability): the same output, no model."""
    os.makedirs(out_dir, exist_ok=True)
    units = [(f, rg) for f in _files(input_path) for rg in range(pq.ParquetFile(f).num_row_groups)]
    stamp = pa.scalar(0, pa.timestamp("us", tz="UTC"))
    version = pa.scalar(MODEL_VERSION, pa.string())
    added = ["prediction", "probability", "predicted_at", "model_version"]

    def work(worker: int) -> None:
        mine = units[worker::threads]
        if not mine:
            return
        writer = None
        rng = np.random.default_rng(worker)
        for path, rg in mine:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP, row_groups=[rg]):
                n = batch.num_rows
                probability = rng.uniform(size=n)
                extra = [
                    pa.array((probability > 0.5).astype("int64")),
                    pa.array(probability),
                    pa.repeat(stamp, n),
                    pa.repeat(version, n),
                ]
                batch = pa.RecordBatch.from_arrays(
                    batch.columns + extra, names=batch.schema.names + added
                )
                if writer is None:
                    writer = pq.ParquetWriter(
                        f"{out_dir}/part-{worker}.parquet",
                        batch.schema,
                        compression=codec,
                        use_dictionary=[n for n in batch.schema.names if n not in PLAIN_COLUMNS],
                    )
                writer.write_batch(batch)
        writer.close()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def _load(models_dir: str, model: str):
    import joblib

    if model == "logreg":
        return joblib.load(f"{models_dir}/scaler.joblib"), joblib.load(
            f"{models_dir}/logreg.joblib"
        )
    return None, joblib.load(f"{models_dir}/{model}.joblib")


def _features(model: str) -> list[str]:
    return MIXED_FEATURES if model == "mixed" else FEATURES


def model_bound(input_path: str, models_dir: str, model: str) -> None:
    """CPU seconds of scaler + predict + predict_proba on the whole feature matrix in memory.

    The mixed Pipeline gets the DataFrame pandas reads (``pd.read_parquet``, as a notebook
    would: str columns); its CPU seconds include the ColumnTransformer, which predict and
    predict_proba each run. The HistGradientBoosting pipelines get the numeric DataFrame.
    """
    import pandas as pd

    scaler, estimator = _load(models_dir, model)
    if model == "mixed":
        X = pd.read_parquet(input_path, columns=MIXED_FEATURES)
    else:
        table = pa.concat_tables(pq.read_table(f, columns=FEATURES) for f in _files(input_path))
        X = table.to_pandas()
        del table
    cpu = time.process_time()
    wall = time.perf_counter()
    features = scaler.transform(X) if scaler is not None else X
    if scaler is not None:
        features = pd.DataFrame(features)
    estimator.predict(features)
    estimator.predict_proba(features)
    print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}))


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def model_bound_compiled(input_path: str, models_dir: str, model: str) -> None:
    """CPU seconds of the compiled runtime alone (``batch-infer compile`` cached it in
    BATCH_INFER_CACHE_DIR): predict + predict_proba on the whole float64 feature matrix."""
    from batch_infer.model.compiled import find_compiled

    if model == "logreg":
        model_sha = _sha256(f"{models_dir}/logreg.joblib")
        scaler_sha = _sha256(f"{models_dir}/scaler.joblib")
    else:
        model_sha, scaler_sha = _sha256(f"{models_dir}/{model}.joblib"), None
    compiled = find_compiled(model_sha, scaler_sha)
    if compiled is None:
        raise SystemExit(f"no compiled runtime for {model} in BATCH_INFER_CACHE_DIR")
    names = [feature.name for feature in compiled.contract().features]
    table = pa.concat_tables(pq.read_table(f, columns=names) for f in _files(input_path))
    matrix = np.empty((table.num_rows, len(names)), dtype=np.float64)
    for index, name in enumerate(names):
        matrix[:, index] = table.column(name).to_numpy()
    del table
    cpu = time.process_time()
    wall = time.perf_counter()
    compiled.call(matrix, ["predict", "predict_proba"])
    print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}))


def naive(input_path: str, models_dir: str, model: str, out_file: str) -> None:
    """What a user writes by hand: iter_batches -> to_pandas -> predict -> append -> concat -> to_parquet."""
    import pandas as pd

    scaler, estimator = _load(models_dir, model)
    features = _features(model)
    frames = []
    for path in _files(input_path):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP):
            frame = batch.to_pandas()
            X = frame[features]
            if scaler is not None:
                X = scaler.transform(X)
            frame["prediction"] = estimator.predict(X)
            frame["probability"] = estimator.predict_proba(X)[:, 1]
            frame["predicted_at"] = pd.Timestamp.now(tz="UTC")
            frames.append(frame)
    pd.concat(frames, ignore_index=True).to_parquet(out_file, compression="zstd")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "make-data":
        make_data(int(args[0]), int(args[1]), *args[2:])
    elif command == "make-models":
        make_models(*args)
    elif command == "io-bound":
        io_bound(args[0], args[1], int(args[2]), *args[3:])
    elif command == "model-bound":
        model_bound(args[0], args[1], args[2])
    elif command == "model-bound-compiled":
        model_bound_compiled(args[0], args[1], args[2])
    elif command == "naive":
        naive(*args)
    else:
        raise SystemExit(__doc__)
