"""Regenerate sample_data/: a churn-like dataset and fitted sample models. Deterministic (seeded).

Layout written:
  sample_data/churn/event_date=YYYY-MM-DD/part-{0,1}.parquet   20,000 rows, 1,000-row groups;
      one file stores its columns in another order, as real datasets sometimes do
  sample_data/models/scaler.joblib + model.joblib               separate StandardScaler + LogisticRegression
  sample_data/models/pipeline.joblib                            the same as one Pipeline

Run with: make sample-data
"""

from __future__ import annotations

import shutil
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent / "sample_data"
FEATURES = ["age", "tenure", "monthly_charges", "total_charges"]
DATES = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
FILES_PER_DATE = 2
ROWS_PER_FILE = 2_500
ROW_GROUP_SIZE = 1_000
REGIONS = ["north", "south", "east", "west"]


def churn_frame(rng: np.random.Generator, rows: int, first_id: int) -> pd.DataFrame:
    """Churn-like customers: older, longer-tenured, cheaper plans churn less."""
    age = rng.integers(18, 90, rows).astype("int32")
    tenure = rng.integers(0, 72, rows).astype("int32")
    monthly = np.round(rng.uniform(18.0, 120.0, rows), 2)
    total = np.round(monthly * tenure + rng.normal(0.0, 25.0, rows).clip(0), 2)
    return pd.DataFrame(
        {
            "customer_id": np.arange(first_id, first_id + rows, dtype="int64"),
            "age": age,
            "tenure": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "region": rng.choice(REGIONS, rows),
        }
    )


def churn_labels(rng: np.random.Generator, frame: pd.DataFrame) -> np.ndarray:
    logit = (
        -0.5
        - 0.03 * (frame["age"] - 50)
        - 0.06 * (frame["tenure"] - 36)
        + 0.025 * (frame["monthly_charges"] - 70)
    )
    return (rng.uniform(size=len(frame)) < 1 / (1 + np.exp(-logit))).astype("int64")


def write_dataset(rng: np.random.Generator) -> None:
    target = ROOT / "churn"
    shutil.rmtree(target, ignore_errors=True)
    next_id = 1
    for day_index, day in enumerate(DATES):
        folder = target / f"event_date={day}"
        folder.mkdir(parents=True)
        for file_index in range(FILES_PER_DATE):
            frame = churn_frame(rng, ROWS_PER_FILE, next_id)
            next_id += ROWS_PER_FILE
            if day_index == len(DATES) - 1 and file_index == 1:
                frame = frame[
                    ["region", "total_charges", "customer_id", "tenure", "age", "monthly_charges"]
                ]
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(
                table, folder / f"part-{file_index}.parquet", row_group_size=ROW_GROUP_SIZE
            )


def write_models(rng: np.random.Generator) -> None:
    models = ROOT / "models"
    models.mkdir(parents=True, exist_ok=True)
    train = churn_frame(rng, 20_000, 1_000_000)
    labels = churn_labels(rng, train)
    features = train[FEATURES].astype("float64")

    scaler = StandardScaler().fit(features)
    model = LogisticRegression(max_iter=1_000).fit(scaler.transform(features), labels)
    joblib.dump(scaler, models / "scaler.joblib")
    joblib.dump(model, models / "model.joblib")

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1_000)).fit(
        features, labels
    )
    joblib.dump(pipeline, models / "pipeline.joblib")


def main() -> None:
    rng = np.random.default_rng(20260101)
    write_dataset(rng)
    write_models(rng)
    print(f"wrote {ROOT}")


if __name__ == "__main__":
    main()
