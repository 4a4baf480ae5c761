"""The HTML report through the CLI: `run --report-html` (also for a failed run) and
`batch-infer report OUTPUT --html` for a committed output, with drift found across run dates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from typer.testing import CliRunner

from batch_infer.cli import app

runner = CliRunner()


def _run(sample: Path, input_path: Path, out: str, run_date: str, *extra: str):
    return runner.invoke(
        app,
        [
            "run",
            "-i",
            str(input_path),
            "-m",
            str(sample / "models" / "pipeline.joblib"),
            "-o",
            out,
            "--run-date",
            run_date,
            "--quiet",
            *extra,
        ],
    )


def _shifted_copy(sample: Path, target: Path) -> Path:
    """The sample with monthly charges raised by half: a drift the report must flag."""
    table = ds.dataset(sample / "churn", partitioning="hive").to_table()
    charges = pc.multiply(table.column("monthly_charges"), 1.5)
    table = table.set_column(
        table.schema.get_field_index("monthly_charges"), "monthly_charges", charges
    )
    target.mkdir(parents=True)
    pq.write_table(table.drop_columns(["event_date"]), target / "part-0.parquet")
    return target


def _drift_rows(page: str) -> set[str]:
    """Names on the table rows the report flags for drift (a `drift` badge in the row)."""
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    return {re.search(r"<code>([^<]+)</code>", r).group(1) for r in rows if 'class="drift"' in r}


def test_run_report_and_report_command_flag_drift_against_the_previous_date(sample_copy, tmp_path):
    template = str(tmp_path / "scores" / "dt={run_date}")
    first = _run(sample_copy, sample_copy / "churn", template, "2026-01-04")
    assert first.exit_code == 0, first.stderr
    shifted = _shifted_copy(sample_copy, tmp_path / "shifted")
    html = tmp_path / "run.html"
    second = _run(sample_copy, shifted, template, "2026-01-05", "--report-html", str(html))
    assert second.exit_code == 0, second.stderr

    page = html.read_text()
    manifest = json.loads((tmp_path / "scores" / "dt=2026-01-05" / "_manifest.json").read_text())
    previous = json.loads((tmp_path / "scores" / "dt=2026-01-04" / "_manifest.json").read_text())
    assert manifest["drift"]["baseline_run_id"] == previous["run_id"]
    assert manifest["drift"]["psi"]["monthly_charges"] > 0.2
    assert manifest["drift"]["psi"]["age"] < 0.1  # unchanged column, same rows
    assert previous["run_id"] in page
    assert "monthly_charges" in _drift_rows(page) and "age" not in _drift_rows(page)
    assert manifest["statistics"]["rows_scored"] == 20_000

    later = tmp_path / "later.html"
    result = runner.invoke(
        app, ["report", str(tmp_path / "scores" / "dt=2026-01-05"), "--html", str(later)]
    )
    assert result.exit_code == 0, result.stderr
    again = later.read_text()
    assert "monthly_charges" in _drift_rows(again) and manifest["run_id"] in again
    assert "<script" not in again and "http://" not in again and "https://" not in again


def test_report_command_sketches_an_output_whose_manifest_has_no_statistics(sample_copy, tmp_path):
    out = tmp_path / "scores"
    assert _run(sample_copy, sample_copy / "churn", str(out), "2026-01-04").exit_code == 0
    manifest_path = out / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    kept = manifest.pop("statistics")
    manifest.pop("run"), manifest.pop("drift")
    manifest_path.write_text(json.dumps(manifest))  # as written before statistics existed

    html = tmp_path / "old.html"
    result = runner.invoke(app, ["report", str(out), "--html", str(html)])
    assert result.exit_code == 0, result.stderr
    page = html.read_text()
    assert "Score distribution" in page and "monthly_charges" in page
    # the same figures as the sketch taken while scoring
    assert f"{kept['features']['monthly_charges']['max']:,.4g}" in page
    assert f"{kept['features']['total_charges']['max']:,.4g}" in page


def test_failed_run_still_writes_its_report_and_a_non_output_is_refused(sample_copy, tmp_path):
    html = tmp_path / "failed.html"
    result = _run(
        sample_copy,
        tmp_path / "missing",
        str(tmp_path / "scores"),
        "2026-01-04",
        "--report-html",
        str(html),
    )
    assert result.exit_code == 3
    page = html.read_text()
    assert "failed" in page and "exit code 3" in page and "missing" in page

    refused = runner.invoke(app, ["report", str(tmp_path), "--html", str(tmp_path / "x.html")])
    assert refused.exit_code == 3
    assert "no committed batch-infer output" in refused.stderr
    assert not (tmp_path / "x.html").exists()


def test_report_html_in_a_missing_folder_is_created(sample_copy, tmp_path):
    html = tmp_path / "reports" / "nightly" / "run.html"
    result = _run(
        sample_copy,
        sample_copy / "churn",
        str(tmp_path / "scores"),
        "2026-01-04",
        "--report-html",
        str(html),
    )
    assert result.exit_code == 0, result.stderr
    assert html.read_text().startswith("<!DOCTYPE html>")
