"""The seed-style FastAPI app that `batch-infer serve` replaces: the baseline of `make bench-serve`.

Written the way teams write it today (issue 11): a pydantic request model, one-row DataFrame per
request, `model.predict` + `model.predict_proba`, one uvicorn worker. The response JSON is the
same as `batch-infer serve`'s `POST /predict`, so the two answer the same load.

    BASELINE_MODEL=path/to/model.joblib uvicorn serve_baseline_app:app --port 8000
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import joblib
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_PATH = Path(os.environ["BASELINE_MODEL"])
model = joblib.load(MODEL_PATH)
MODEL_VERSION = hashlib.sha256(MODEL_PATH.read_bytes()).hexdigest()[:12]

app = FastAPI(title="churn model (seed-style baseline)")


class PredictRequest(BaseModel):
    features: dict[str, float]


class PredictResponse(BaseModel):
    prediction: int
    probability: list[float]  # the whole predict_proba row, as the seed apps answer
    model_version: str


@app.get("/health")
def health() -> dict:
    return {"status": "healthy", "model_loaded": True}


@app.post("/predict", response_model=PredictResponse)
def predict(request: PredictRequest) -> PredictResponse:
    frame = pd.DataFrame([request.features])
    prediction = model.predict(frame)[0]
    probability = model.predict_proba(frame)[0]
    return PredictResponse(
        prediction=int(prediction), probability=probability.tolist(), model_version=MODEL_VERSION
    )
