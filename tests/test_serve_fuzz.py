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

import schemathesis  # noqa: F401  (missing: the test fails, as under CI it must)

from .test_serve_rest import MODEL, SCALER, ServeProcess

MAX_EXAMPLES = 25  # per operation: about 1,000 cases in all, 30-60 s on two busy cores


def test_the_rest_api_keeps_to_its_openapi_document(tmp_path):
    st = Path(sys.executable).with_name("st")
    assert st.exists(), f"schemathesis's `st` is not next to {sys.executable}"
    generation = (
        ["--generation-deterministic"]
        if os.environ.get("CI", "").lower() in ("1", "true", "yes")
        else ["--seed", str(int.from_bytes(os.urandom(4), "little"))]
    )
    with ServeProcess(tmp_path, MODEL, SCALER, serve={"name": "churn"}) as running:
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
    generated, passed = map(int, summary.groups())
    assert generated == passed >= 500  # the document describes all 13 operations
    assert "Operations:       13 selected / 13 total" in output
    assert "Traceback" not in running.log.read_text()


def _failures(output: str) -> str:
    """The failures part of the report, without the megabyte-long reproduction bodies."""
    lines = [line[:400] for line in output.splitlines()]
    start = next((i for i, line in enumerate(lines) if "FAILURES" in line), 0)
    return "\n".join(lines[start : start + 120])
