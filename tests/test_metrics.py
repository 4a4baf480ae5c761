"""Prometheus metrics: the textfile read back with prometheus_client's parser, a real Pushgateway
started on loopback, and the CLI publishing both when a run commits and when it fails."""

from __future__ import annotations

import logging
import os
import resource
import socket
import subprocess
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batch_infer.errors import ConfigError
from batch_infer.observe import metrics
from batch_infer.observe.facts import RunFacts

from .conftest import churn_table, run_sample_cli, write_parquet

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
STARTED = 1_780_000_000.0


def committed_facts(**changes) -> RunFacts:
    facts = RunFacts(
        job="scores",
        output="s3://bucket/scores/dt=2026-06-01",
        inputs=["s3://bucket/events/part-0.parquet"],
        run_id="20260601T000000Z-abcdef12",
        model_version="v7",
        runtime="sklearn",
        status="committed",
        exit_code=0,
        started_at=STARTED,
        finished_at=STARTED + 8.0,
        stage_seconds={"plan": 1.5, "score": 6.0, "commit": 0.5},
        rows_in=1_000,
        rows_scored=990,
        rows_rejected=10,
        rejected_by_reason={"NAN": 7, "UNKNOWN_CATEGORY": 3},
        files_in=4,
        files_out=3,
        fragments=6,
        bytes_read=123_456,
        bytes_written=65_432,
    )
    for name, value in changes.items():
        setattr(facts, name, value)
    return facts


def failed_facts(**changes) -> RunFacts:
    base = dict(
        status="failed",
        exit_code=3,
        error="input not found",
        started_at=STARTED + 3600,
        finished_at=STARTED + 3602,
        stage_seconds={"plan": 2.0},
        rows_in=0,
        rows_scored=0,
        rows_rejected=0,
        rejected_by_reason={},
        files_in=0,
        files_out=0,
        fragments=0,
        bytes_read=0,
        bytes_written=0,
    )
    return committed_facts(**{**base, **changes})


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def names(found: dict) -> set[str]:
    return {name for name, _ in found}


def test_textfile_of_a_committed_run(tmp_path):
    path = tmp_path / "batch_infer_scores.prom"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    metrics.write_textfile(committed_facts(), str(path))
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    found = samples(path.read_text())
    out = {"output": "scores"}
    expected = {
        "batch_infer_rows_in": 1_000,
        "batch_infer_rows_scored": 990,
        "batch_infer_rows_rejected": 10,
        "batch_infer_files_in": 4,
        "batch_infer_files_out": 3,
        "batch_infer_fragments": 6,
        "batch_infer_read_bytes": 123_456,
        "batch_infer_written_bytes": 65_432,
        "batch_infer_duration_seconds": 8.0,
        "batch_infer_rows_per_second": 125.0,
        "batch_infer_exit_code": 0,
        "batch_infer_last_run_timestamp_seconds": STARTED + 8,
        "batch_infer_last_success_timestamp_seconds": STARTED + 8,
    }
    for name, number in expected.items():
        assert value(found, name, **out) == number, name
    assert {
        stage: value(found, "batch_infer_stage_seconds", **out, stage=stage)
        for stage in ("plan", "score", "commit")
    } == {"plan": 1.5, "score": 6.0, "commit": 0.5}
    by_reason = {
        reason: value(found, "batch_infer_rows_rejected_by_reason", **out, reason=reason)
        for reason in metrics.REJECT_CODES
    }
    assert by_reason == {"INF": 0, "NAN": 7, "NULL": 0, "UNKNOWN_CATEGORY": 3, "MODEL_ERROR": 0}
    info = {"model_version": "v7", "runtime": "sklearn", "engine": "local"}
    assert value(found, "batch_infer_run_info", **out, **info, version=version("batch-infer")) == 1
    assert peak_before <= value(found, "batch_infer_peak_memory_bytes", **out) <= peak_after
    # bounded labels only: no run id, no file names anywhere
    labels = {key for _, pairs in found for key, _ in pairs}
    assert labels == {"output", "stage", "reason", "model_version", "runtime", "engine", "version"}
    assert "abcdef12" not in path.read_text() and "part-0" not in path.read_text()


def test_textfile_of_a_failed_run_keeps_the_last_success(tmp_path):
    path = tmp_path / "batch_infer_scores.prom"
    metrics.write_textfile(committed_facts(), str(path))
    metrics.write_textfile(failed_facts(), str(path))

    found = samples(path.read_text())
    assert value(found, "batch_infer_exit_code", output="scores") == 3
    assert value(found, "batch_infer_rows_scored", output="scores") == 0
    assert value(found, "batch_infer_last_run_timestamp_seconds", output="scores") == STARTED + 3602
    assert (
        value(found, "batch_infer_last_success_timestamp_seconds", output="scores") == STARTED + 8
    )


def test_a_failed_first_run_has_no_last_success(tmp_path):
    path = tmp_path / "batch_infer_scores.prom"
    metrics.write_textfile(failed_facts(), str(path))
    found = samples(path.read_text())
    assert value(found, "batch_infer_exit_code", output="scores") == 3
    assert "batch_infer_last_success_timestamp_seconds" not in names(found)


def test_textfile_is_replaced_whole_by_a_rename(tmp_path):
    path = tmp_path / "batch_infer_scores.prom"
    path.write_text("# an older, longer file that must not survive in part\n" + "x" * 100_000)
    inode = path.stat().st_ino

    metrics.write_textfile(committed_facts(), str(path))

    assert path.stat().st_ino != inode  # a new file renamed over the old, not rewritten in place
    assert "xxx" not in path.read_text()
    assert value(samples(path.read_text()), "batch_infer_rows_in", output="scores") == 1_000
    assert os.listdir(tmp_path) == [path.name]  # no temp file left behind


def test_textfile_in_a_missing_folder_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "no-such-folder" / "batch_infer_scores.prom"
    with pytest.raises(ConfigError) as raised:
        metrics.write_textfile(committed_facts(), str(path))
    assert str(path) in str(raised.value)
    assert "--metrics-file" in str(raised.value)
    assert not path.parent.exists()


# A real Pushgateway ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def pushgateway(tmp_path):
    """The Debian Pushgateway on a free loopback port, nothing persisted; its URL."""
    if not os.path.exists(PUSHGATEWAY):
        message = f"{PUSHGATEWAY} is missing: apt-get install prometheus-pushgateway"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    url = f"http://127.0.0.1:{free_port()}"
    log = (tmp_path / "pushgateway.log").open("w")
    process = subprocess.Popen(
        [
            PUSHGATEWAY,
            f"--web.listen-address={url.removeprefix('http://')}",
            "--persistence.file=",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(
                        f"the Pushgateway exited: {(tmp_path / 'pushgateway.log').read_text()}"
                    )
                time.sleep(0.05)
        else:
            pytest.fail("the Pushgateway did not become ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def gateway_samples(url: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        return samples(answer.read().decode())


def test_pushgateway_keeps_the_last_success_when_a_run_fails(pushgateway):
    group = {"job": "batch-infer", "output": "scores", "instance": ""}

    assert metrics.push(committed_facts(), pushgateway) is True
    found = gateway_samples(pushgateway)
    assert value(found, "batch_infer_exit_code", **group) == 0
    assert value(found, "batch_infer_rows_rejected_by_reason", **group, reason="NAN") == 7
    assert value(found, "batch_infer_last_success_timestamp_seconds", **group) == STARTED + 8

    assert metrics.push(failed_facts(), pushgateway) is True
    found = gateway_samples(pushgateway)
    assert value(found, "batch_infer_exit_code", **group) == 3
    assert value(found, "batch_infer_rows_scored", **group) == 0
    assert value(found, "batch_infer_rows_rejected_by_reason", **group, reason="NAN") == 0
    assert value(found, "batch_infer_stage_seconds", **group, stage="score") == 0
    assert value(found, "batch_infer_last_run_timestamp_seconds", **group) == STARTED + 3602
    assert value(found, "batch_infer_last_success_timestamp_seconds", **group) == STARTED + 8
    assert value(found, "push_failure_time_seconds", **group) == 0  # every push was accepted


def test_pushgateway_groups_by_output(pushgateway):
    assert metrics.push(committed_facts(), pushgateway)
    assert metrics.push(failed_facts(job="features"), pushgateway)
    found = gateway_samples(pushgateway)
    base = {"job": "batch-infer", "instance": ""}
    assert value(found, "batch_infer_exit_code", **base, output="scores") == 0
    assert value(found, "batch_infer_exit_code", **base, output="features") == 3


@pytest.mark.parametrize(
    "gateway, shown",
    [
        ("http://127.0.0.1:{port}", "http://127.0.0.1:{port}"),
        ("https://ops:hunter22@127.0.0.1:{port}/", "https://127.0.0.1:{port}/"),
    ],
    ids=["plain", "with-credentials"],
)
def test_a_gateway_that_is_down_is_a_warning(caplog, gateway, shown):
    port = free_port()  # nothing listens there
    caplog.set_level(logging.WARNING, logger="batch_infer.observe.metrics")
    assert metrics.push(committed_facts(), gateway.format(port=port)) is False
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"Pushgateway {shown.format(port=port)}" in record.getMessage()
    assert "hunter22" not in caplog.text


# batch-infer run publishes ------------------------------------------------------------------------


def run_cli(sample: Path, tmp_path: Path, *extra: str, input_path: Path | None = None):
    return run_sample_cli(sample, tmp_path, *extra, input_path=input_path)


def test_run_publishes_a_committed_run(sample_copy, tmp_path, pushgateway):
    metrics_file = tmp_path / "batch_infer.prom"
    result = run_cli(
        sample_copy, tmp_path, "--metrics-file", str(metrics_file), "--pushgateway", pushgateway
    )
    assert result.exit_code == 0, result.stderr

    from_file = samples(metrics_file.read_text())
    from_gateway = gateway_samples(pushgateway)
    group = {"job": "batch-infer", "output": "scores", "instance": ""}
    for found, labels in ((from_file, {"output": "scores"}), (from_gateway, group)):
        assert value(found, "batch_infer_exit_code", **labels) == 0
        assert value(found, "batch_infer_rows_in", **labels) == 20_000
        assert value(found, "batch_infer_rows_scored", **labels) == 20_000
        assert value(found, "batch_infer_files_in", **labels) == 8
        assert value(found, "batch_infer_stage_seconds", **labels, stage="score") > 0
        assert "batch_infer_last_success_timestamp_seconds" in names(found)


def test_run_publishes_a_failed_run_with_its_exit_code(sample_copy, tmp_path, pushgateway):
    metrics_file = tmp_path / "batch_infer.prom"
    missing = tmp_path / "no-such-input"
    result = run_cli(
        sample_copy,
        tmp_path,
        "--metrics-file",
        str(metrics_file),
        "--pushgateway",
        pushgateway,
        input_path=missing,
    )
    assert result.exit_code == 3, result.stderr

    from_file = samples(metrics_file.read_text())
    from_gateway = gateway_samples(pushgateway)
    group = {"job": "batch-infer", "output": "scores", "instance": ""}
    for found, labels in ((from_file, {"output": "scores"}), (from_gateway, group)):
        assert value(found, "batch_infer_exit_code", **labels) == 3
        assert value(found, "batch_infer_rows_scored", **labels) == 0
        assert "batch_infer_last_success_timestamp_seconds" not in names(found)


def test_run_with_a_gateway_down_still_commits(sample_copy, tmp_path):
    gateway = f"http://127.0.0.1:{free_port()}"
    result = run_cli(sample_copy, tmp_path, "--pushgateway", gateway)
    assert result.exit_code == 0, result.stderr
    assert f"could not push metrics to the Pushgateway {gateway}" in result.stderr
    assert (tmp_path / "scores" / "_SUCCESS").exists()


def test_run_publishes_rejects_by_reason(sample_copy, tmp_path):
    table = churn_table(1_000)
    charges = table.column("monthly_charges").to_numpy().copy()
    charges[:7] = np.nan
    table = table.set_column(3, "monthly_charges", pa.array(charges))
    source = write_parquet(table, tmp_path / "events" / "part-0.parquet")
    metrics_file = tmp_path / "batch_infer.prom"
    result = run_cli(
        sample_copy,
        tmp_path,
        "--metrics-file",
        str(metrics_file),
        "--max-reject-rows",
        "10",
        input_path=source.parent,
    )
    assert result.exit_code == 0, result.stderr

    found = samples(metrics_file.read_text())
    assert value(found, "batch_infer_rows_scored", output="scores") == 993
    assert value(found, "batch_infer_rows_rejected", output="scores") == 7
    by_reason = {
        reason: value(found, "batch_infer_rows_rejected_by_reason", output="scores", reason=reason)
        for reason in metrics.REJECT_CODES
    }
    assert by_reason == {"INF": 0, "NAN": 7, "NULL": 0, "UNKNOWN_CATEGORY": 0, "MODEL_ERROR": 0}


def test_run_publishes_the_bytes_it_wrote(sample_copy, tmp_path):
    metrics_file = tmp_path / "batch_infer.prom"
    result = run_cli(sample_copy, tmp_path, "--metrics-file", str(metrics_file))
    assert result.exit_code == 0, result.stderr
    written = sum(f.stat().st_size for f in (tmp_path / "scores").rglob("*.parquet"))
    found = samples(metrics_file.read_text())
    assert value(found, "batch_infer_written_bytes", output="scores") == written
