"""The run's statistics sketches (merge, drift, round trip) and the HTML report in a real browser."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from batch_infer import run
from batch_infer.errors import BatchInferError
from batch_infer.observe.facts import RunFacts
from batch_infer.observe.html import render
from batch_infer.observe.statistics import RunStatistics, bin_edges, drift
from batch_infer.scoring import REJECT_FIELDS

from .conftest import churn_table, make_config, write_parquet

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FEATURES = ["age", "tenure", "monthly_charges", "total_charges", "region", "active"]
OUTPUTS = ["prediction", "probability", "value"]
BAR = (0x4C, 0x78, 0xA8)  # the histograms' blue


def scored_table(rows: int, seed: int = 0, shift: float = 0.0) -> pa.Table:
    """Churn rows with nulls, NaN, a boolean, and the columns a run adds (label, probability,
    regression value); ``shift`` moves monthly_charges and the probabilities up."""
    rng = np.random.default_rng(seed)
    table = churn_table(rows, seed)
    charges = table.column("monthly_charges").to_numpy() + shift
    charges[rng.random(rows) < 0.05] = np.nan
    age = pa.array(table.column("age").to_numpy(), mask=rng.random(rows) < 0.1)
    probability = np.clip(rng.beta(2, 5, rows) + shift / 100, 0, 1)
    return (
        table.set_column(1, "age", age)
        .set_column(3, "monthly_charges", pa.array(charges))
        .append_column("active", pa.array(rng.random(rows) < 0.3))
        .append_column("prediction", pa.array((probability > 0.5).astype("int64")))
        .append_column("probability", pa.array(probability))
        .append_column("value", pa.array(rng.lognormal(3, 2, rows) * rng.choice([-1, 1], rows)))
    )


def rejects_batch(table: pa.Table, codes: list[str]) -> pa.RecordBatch:
    rows = len(codes)
    why = pa.table(
        [
            pa.array(["in.parquet"] * rows),
            pa.array([0] * rows, pa.int32()),
            pa.array(range(rows), pa.int64()),
            pa.array(["age"] * rows),
            pa.array(codes),
            pa.array(["bad"] * rows),
        ],
        schema=pa.schema(REJECT_FIELDS),
    )
    inputs = table.slice(0, rows).drop_columns(OUTPUTS)
    for name in inputs.column_names:
        why = why.append_column(name, inputs.column(name))
    return why.combine_chunks().to_batches()[0]


def sketch(table: pa.Table, partition_by: list[str] | None = None) -> RunStatistics:
    stats = RunStatistics(FEATURES, OUTPUTS, partition_by or [])
    for batch in table.to_batches(max_chunksize=1_000):
        stats.add_scored(batch)
    return stats


# ---------------------------------------------------------------- sketches


def test_merged_fragment_sketches_equal_the_sketch_of_all_rows():
    table = scored_table(5_000)
    whole = sketch(table, ["region"])
    whole.add_rejected(rejects_batch(table, ["NULL", "NAN", "NULL"]))
    merged = RunStatistics(FEATURES, OUTPUTS, ["region"])
    for start in (0, 1_700, 3_100):
        part = sketch(table.slice(start, {0: 1_700, 1_700: 1_400, 3_100: 1_900}[start]), ["region"])
        merged.merge(part)
    merged.merge(RunStatistics(FEATURES, OUTPUTS, ["region"]))  # an empty fragment
    last = RunStatistics(FEATURES, OUTPUTS, ["region"])
    last.add_rejected(rejects_batch(table, ["NULL", "NAN", "NULL"]))
    merged.merge(last)

    expected, got = whole.to_dict(), merged.to_dict()
    for section in ("features", "outputs"):
        for name in expected[section]:
            a, b = expected[section][name], got[section][name]
            if "sum" in a:  # added in another order: equal up to rounding
                assert a.pop("sum") == pytest.approx(b.pop("sum"), rel=1e-12)
    assert got == expected

    charges = expected["features"]["monthly_charges"]
    values = table.column("monthly_charges").to_numpy()
    finite = values[~np.isnan(values)]
    nans = int(np.isnan(values).sum() + np.isnan(values[:3]).sum())  # the rejects repeat 3 rows
    assert (charges["rows"], charges["nulls"], charges["nans"]) == (5_003, 0, nans)
    assert charges["min"] == finite.min() and charges["max"] == finite.max()
    assert sum(charges["counts"]) == 5_003 - nans
    age = expected["features"]["age"]
    assert (
        age["nulls"] == table.column("age").null_count + table.slice(0, 3).column("age").null_count
    )
    assert age["min"] == pc.min(table.column("age")).as_py()
    region = expected["features"]["region"]
    counts = table.column("region").value_counts().to_pylist()
    top = {c["values"]: c["counts"] for c in counts}
    for value in table.slice(0, 3).column("region").to_pylist():
        top[value] += 1
    assert region["top"] == dict(sorted(top.items(), key=lambda kv: (-kv[1], kv[0])))
    assert expected["features"]["active"]["top"].keys() == {"true", "false"}
    assert expected["outputs"]["prediction"]["kind"] == "categorical"  # labels, counted
    assert sum(expected["outputs"]["probability"]["counts"]) == 5_000
    assert expected["outputs"]["probability"]["bins"][0] >= 0
    assert expected["rejects_by_reason"] == {"top": {"NULL": 2, "NAN": 1}, "other": 0}
    scored = expected["partitions"]["scored"]["top"]
    assert sum(scored.values()) == 5_000 and set(scored) == {f"region={r}" for r in top}
    assert sum(expected["partitions"]["rejected"]["top"].values()) == 3


def test_statistics_round_trip_through_json_and_pickle():
    table = scored_table(3_000)
    stats = sketch(table, ["region"])
    stats.add_rejected(rejects_batch(table, ["NULL"]))
    data = stats.to_dict()
    text = json.dumps(data, allow_nan=False)  # strict JSON: no NaN or Infinity in it
    assert RunStatistics.from_dict(json.loads(text)).to_dict() == data
    assert pickle.loads(pickle.dumps(stats)).to_dict() == data
    again = RunStatistics.from_dict(json.loads(text))
    again.add_scored(table.to_batches()[0])  # a sketch read back keeps counting
    assert again.rows_scored == 3_000 + table.to_batches()[0].num_rows


def test_each_value_lands_in_the_log_bin_that_holds_it():
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            [0.0, -0.0, 1.0, -1.0, 1e-300, 1e300, 0.5, 2.0],
            rng.lognormal(0, 8, 200) * rng.choice([-1, 1], 200),
        ]
    )
    for value in values:
        stats = RunStatistics(["x"], [], [])
        stats.add_scored(pa.record_batch({"x": pa.array([value])}))
        [ordinal] = stats.to_dict()["features"]["x"]["bins"]
        low, high = bin_edges(ordinal, "log")
        holds = low <= value < high if ordinal >= 0 else low < value <= high
        assert holds or (value == 0 and ordinal == 0), (value, low, high)
        assert value == 0 or high / low <= 1.125 + 1e-12 or low == 0


def test_infinities_and_all_null_columns_keep_the_json_strict():
    batch = pa.record_batch(
        {
            "x": pa.array([1.0, math.inf, -math.inf, math.nan, None]),
            "empty": pa.array([None] * 5, pa.float64()),
            "probability": pa.array([0.2, 1.0, 1.5, -0.1, None]),
        }
    )
    stats = RunStatistics(["x", "empty"], ["probability"], [])
    stats.add_scored(batch)
    data = stats.to_dict()
    json.dumps(data, allow_nan=False)
    x = data["features"]["x"]
    assert (x["nulls"], x["nans"], x["infinite"], x["min"], x["max"]) == (1, 1, 2, 1.0, 1.0)
    assert data["features"]["empty"]["min"] is None and data["features"]["empty"]["nulls"] == 5
    probability = data["outputs"]["probability"]
    assert dict(zip(probability["bins"], probability["counts"], strict=True)) == {
        0: 1,
        10: 1,
        49: 2,
    }
    only_infinite = RunStatistics(["x"], [], [])
    only_infinite.add_scored(pa.record_batch({"x": pa.array([math.inf, None])}))
    for statistics in (data, only_infinite.to_dict()):
        assert "<code>x</code>" in render({"job": "j", "statistics": statistics})


def test_psi_is_near_zero_for_the_same_distribution_and_flags_a_shift():
    baseline = sketch(scored_table(20_000, seed=1)).to_dict()
    same = sketch(scored_table(20_000, seed=2)).to_dict()
    shifted = sketch(scored_table(20_000, seed=3, shift=25)).to_dict()
    steady = drift(same, baseline)
    assert set(steady) == set(FEATURES) | set(OUTPUTS)
    assert max(steady.values()) < 0.02, steady
    moved = drift(shifted, baseline)
    assert moved["monthly_charges"] > 0.2 and moved["probability"] > 0.2
    assert moved["age"] < 0.02 and moved["tenure"] < 0.02
    assert drift(baseline, baseline) == {name: 0.0 for name in steady}


def test_categorical_drift_and_nulls_count_as_drift():
    def table(regions: list[str], null_share: float) -> dict:
        rng = np.random.default_rng(len(regions))
        tenure = pa.array(rng.integers(0, 72, 10_000), mask=rng.random(10_000) < null_share)
        batch = pa.record_batch({"region": pa.array(rng.choice(regions, 10_000)), "tenure": tenure})
        stats = RunStatistics(["region", "tenure"], [], [])
        stats.add_scored(batch)
        return stats.to_dict()

    baseline = table(["north", "south", "east", "west"], 0.0)
    assert drift(table(["north", "south", "east", "west", "north"], 0.0), baseline)["region"] > 0.1
    assert drift(table(["north", "south", "east", "west"], 0.0), baseline)["region"] < 0.01
    new_values = drift(table(["north", "south", "mars", "venus"], 0.3), baseline)
    assert new_values["region"] > 0.2 and new_values["tenure"] > 0.2  # 30% nulls now


def test_values_past_the_limit_are_counted_as_other():
    values = pa.array([f"id-{i}" for i in range(1_500)] + ["id-1"] * 10)
    stats = RunStatistics(["id"], [], [])
    stats.add_scored(pa.record_batch({"id": values}))
    data = stats.to_dict()["features"]["id"]
    assert len(data["top"]) == 1_000 and data["top"]["id-1"] == 11
    assert sum(data["top"].values()) + data["other"] == 1_510


# ---------------------------------------------------------------- the page


def failed_facts(tmp_path: Path) -> dict:
    facts = RunFacts(job="<scores>")
    missing_model = tmp_path / "<no-model>.joblib"
    with pytest.raises(BatchInferError):
        run(make_config(tmp_path, tmp_path / "out", missing_model), facts=facts)
    return facts.to_dict()


def test_every_string_is_escaped(tmp_path):
    name = '<img src=x onerror="alert(1)">'
    stats = RunStatistics([name], [], [name])
    stats.add_scored(pa.record_batch({name: pa.array(["<b>bold</b>", "x"])}))
    facts = {**failed_facts(tmp_path), "statistics": stats.to_dict()}
    page = render(facts)
    assert "<img" not in page and "<b>bold" not in page and "<scores>" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "&lt;scores&gt;" in page and "failed" in page
    assert "<script" not in page and "http" not in page


def test_no_baseline_says_so_and_a_baseline_gives_psi():
    current, baseline = sketch(scored_table(5_000, shift=25)), sketch(scored_table(5_000, seed=9))
    facts = {
        "job": "scores",
        "status": "committed",
        "exit_code": 0,
        "statistics": current.to_dict(),
    }
    assert "No previous run to compare" in render(facts)
    page = render(facts, None, baseline.to_dict())
    assert "No previous run to compare" not in page
    assert page.count('class="drift"') >= 2  # monthly_charges and probability moved


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by playwright; skipped without it, except in CI."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_offline(browser, html_file: Path):
    """Open the file; return the page, console errors and page errors, and every request."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html_file.as_uri())
    page.wait_for_load_state("load")
    return page, errors, requests


@pytest.fixture(scope="module")
def drifted_run(tmp_path_factory, trained_models):
    """Two real runs into one output: a baseline, then a day whose charges moved and whose
    input has rows the model cannot take."""
    root = tmp_path_factory.mktemp("report")
    out = root / "scores"
    baseline = churn_table(4_000, seed=1)
    write_parquet(baseline, root / "day1" / "part.parquet")
    run(
        make_config(
            root / "day1", out, trained_models["binary"], output={"partition_by": ["region"]}
        )
    )
    moved = churn_table(4_000, seed=2)
    charges = moved.column("monthly_charges").to_numpy() + 40
    tenure = moved.column("tenure").to_numpy().astype("float64")
    tenure[:25] = np.nan
    moved = moved.set_column(3, "monthly_charges", pa.array(charges))
    moved = moved.set_column(2, "tenure", pa.array(tenure))
    write_parquet(moved, root / "day2" / "part.parquet")
    facts = RunFacts(job="scores")
    config = make_config(
        root / "day2",
        out,
        trained_models["binary"],
        output={"partition_by": ["region"], "mode": "overwrite", "max_reject_rows": 100},
    )
    run(config, facts=facts)
    return facts


def test_report_of_a_run_opens_offline_with_its_plots_drawn(tmp_path, browser, drifted_run):
    from PIL import Image

    facts = drifted_run
    html_file = tmp_path / "report.html"
    html_file.write_text(render(facts.to_dict(), facts.manifest, facts.baseline))
    page, errors, requests = open_offline(browser, html_file)

    assert errors == []
    assert requests == [html_file.as_uri()]  # the file itself, nothing from the network
    assert "committed" in page.inner_text("header")
    svgs = page.query_selector_all("svg")
    assert len(svgs) == 1 + 2 + 1 + 1 + 4  # stages, 2 outputs, throughput, rejects, 4 features
    for svg in svgs:
        box = svg.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
    assert len(page.query_selector_all("svg rect")) > 100
    assert len(page.query_selector_all("svg path")) >= 2  # the throughput line and its area
    flagged = [e.inner_text() for e in page.query_selector_all("tr:has(.drift) code")]
    assert "monthly_charges" in flagged and "age" not in flagged
    assert "NAN" in page.inner_text("body")  # rejects by reason

    shot = Path(os.environ.get("BATCH_INFER_REPORT_PNG", tmp_path / "report.png"))
    page.screenshot(path=str(shot), full_page=True)
    histogram = page.query_selector("section:has(h2:text('Score distribution')) svg")
    pixels = np.asarray(Image.open(io.BytesIO(histogram.screenshot())).convert("RGB"))
    assert (pixels == BAR).all(axis=2).sum() > 500  # bars drawn, not just a frame
    with Image.open(shot) as image:
        assert image.size[1] > 900  # the whole page, not the viewport
    page.close()


def test_report_of_a_failed_run_opens_and_says_why(tmp_path, browser):
    facts = failed_facts(tmp_path)
    html_file = tmp_path / "failed.html"
    html_file.write_text(render(facts))
    page, errors, requests = open_offline(browser, html_file)
    assert errors == [] and requests == [html_file.as_uri()]
    header = page.inner_text("header")
    assert "failed" in header and "<no-model>.joblib" in header
    assert f"exit code {facts['exit_code']}" in header
    colour = page.eval_on_selector("header .badge", "e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(207, 34, 46)"
    page.close()
