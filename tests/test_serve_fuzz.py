"""Schemathesis fuzzes the REST API from its own OpenAPI document, against a real server.

``st run --checks all``: no 5xx, every response as documented, every schema-valid request
accepted (positive_data_acceptance) and every schema-violating one refused (negative_data_
rejection). The examples, coverage and fuzzing phases run (the stateful phase has nothing to
chain: every endpoint is stateless); a fixed number of examples per operation keeps the time
bounded, and under CI the generation is deterministic, so a failure reproduces.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import schemathesis  # noqa: F401  (missing: the test fails, as under CI it must)
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from .test_serve_rest import FEATURES, ServeProcess

MAX_EXAMPLES = 15  # per operation; with the coverage phase about 1,300 cases, 30-60 s


def mixed_model(folder: Path) -> Path:
    """Every kind of feature the document describes: numbers the model takes missing (imputed)
    and refuses missing (scaled only), text and integer categories; three string labels."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(0, 100, (300, 4)), columns=FEATURES)
    frame["region"] = rng.choice(["north", "south", "east"], 300)
    frame["plan"] = rng.choice([1, 2, 3], 300)
    prepare = ColumnTransformer(
        [
            ("imputed", make_pipeline(SimpleImputer(), StandardScaler()), FEATURES[:2]),
            ("scaled", StandardScaler(), FEATURES[2:]),
            ("categories", OneHotEncoder(), ["region", "plan"]),
        ]
    )
    model = make_pipeline(prepare, LogisticRegression())
    model.fit(frame, rng.choice(["stay", "leave", "undecided"], 300))
    joblib.dump(model, folder / "mixed.joblib")
    return folder / "mixed.joblib"


def test_the_rest_api_keeps_to_its_openapi_document(tmp_path):
    st = Path(sys.executable).with_name("st")
    assert st.exists(), f"schemathesis's `st` is not next to {sys.executable}"
    generation = (
        ["--generation-deterministic"]
        if os.environ.get("CI", "").lower() in ("1", "true", "yes")
        else ["--seed", str(int.from_bytes(os.urandom(4), "little"))]
    )
    with ServeProcess(tmp_path, mixed_model(tmp_path)) as running:
        features = httpx.get(f"{running.url}/openapi.json").json()["components"]["schemas"][
            "Features"
        ]["properties"]
        result = subprocess.run(
            [
                str(st),
                "run",
                f"{running.url}/openapi.json",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--no-shrink",
                "--request-timeout",
                "30",
                *generation,
            ],
            cwd=tmp_path,  # its .hypothesis folder goes there, not into the repository
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "NO_COLOR": "1"},
        )
    output = result.stdout + result.stderr
    summary = re.search(r"(\d+) generated, (\d+) passed", output)
    assert result.returncode == 0 and summary is not None, (
        f"schemathesis found failures ({' '.join(generation)}):\n{_failures(output)}"
    )
    print(summary.group(0), " ".join(generation))  # shown with -s or -rA
    generated, passed = map(int, summary.groups())
    assert generated == passed >= 13 * MAX_EXAMPLES  # the document describes all 13 operations
    assert "Operations:       13 selected / 13 total" in output
    assert "Traceback" not in running.log.read_text()
    # the document said what each feature takes (so the fuzzing covered each kind)
    assert {name: schema.get("type", schema.get("enum")) for name, schema in features.items()} == {
        "age": ["number", "null"],
        "tenure": ["number", "null"],
        "monthly_charges": "number",
        "total_charges": "number",
        "region": ["east", "north", "south"],
        "plan": [1, 2, 3],
    }


def _failures(output: str) -> str:
    """The failures part of the report, without the megabyte-long reproduction bodies."""
    lines = [line[:400] for line in output.splitlines()]
    start = next((i for i, line in enumerate(lines) if "FAILURES" in line), 0)
    return "\n".join(lines[start : start + 120])
