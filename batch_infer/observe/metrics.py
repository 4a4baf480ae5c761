"""Prometheus metrics of one run, published the two ways batch jobs publish them.

``write_textfile`` leaves a file for node_exporter's textfile collector; ``push`` sends the same
metrics to a Pushgateway. Every value is a Gauge (a batch job reports its last run, it does not
count across runs), and every series is labelled only with the output's name and bounded sets
(stage, reject code, model version, runtime): never a file name or a run id.

A failed run publishes too, but without ``batch_infer_last_success_timestamp_seconds``: the
Pushgateway push is a POST, which replaces only the metrics it carries, so the previous success
time stays in the group; the textfile carries the previous file's value forward.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Info, pushadd_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from ..errors import ConfigError
from ..redaction import split_userinfo
from .facts import RunFacts

log = logging.getLogger(__name__)

PREFIX = "batch_infer"
SUCCEEDED = ("committed", "skipped")
STAGES = ("plan", "score", "commit")
# Every reject code scoring can give: each is published, 0 when absent, so a Pushgateway POST
# replaces a previous run's counts and a query never meets a missing series.
REJECT_CODES = ("INF", "NAN", "NULL", "UNKNOWN_CATEGORY", "MODEL_ERROR")
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"
RUN_INFO = (
    "Always 1; its labels say what the last run used: model_version, runtime, engine, version."
)
PUSH_TIMEOUT_SECONDS = 10


# name (after batch_infer_) -> meaning, labels besides ``output``. Also the README's table.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rows_in": ("Rows the input holds (planned).", ()),
    "rows_scored": ("Rows scored and written.", ()),
    "rows_rejected": ("Rows set aside as rejects, all reasons.", ()),
    "rows_rejected_by_reason": (
        "Rows rejected, by reject code (0 for codes that did not occur).",
        ("reason",),
    ),
    "files_in": ("Input Parquet files planned.", ()),
    "files_out": ("Data files committed.", ()),
    "fragments": ("Fragments (row-group ranges) the input was split into.", ()),
    "read_bytes": ("Parquet bytes of the input files planned.", ()),
    "written_bytes": ("Bytes of the committed data files.", ()),
    "stage_seconds": ("Wall seconds spent in each stage: plan, score, commit.", ("stage",)),
    "duration_seconds": ("Wall seconds of the whole run.", ()),
    "rows_per_second": ("Rows scored or rejected per wall second of the whole run.", ()),
    "peak_memory_bytes": ("Peak resident memory of the batch-infer process.", ()),
    "exit_code": (
        "The run's exit code (0: committed or skipped; see batch-infer's exit codes).",
        (),
    ),
    "last_run_timestamp_seconds": ("When the last run ended (Unix time), whatever its end.", ()),
    "last_success_timestamp_seconds": (
        "When the last successful run (committed or skipped) ended (Unix time).",
        (),
    ),
    "input_table_version": (
        "The Delta version or Iceberg snapshot id read (a table input only).",
        (),
    ),
    "output_table_version": (
        "The Delta version or Iceberg snapshot id holding the run (a table output only).",
        (),
    ),
}
# published only when the run has them: a folder's run carries no table version
OPTIONAL = ("last_success_timestamp_seconds", "input_table_version", "output_table_version")


def registry_for(facts: RunFacts, last_success: float | None = None) -> CollectorRegistry:
    """The run's metrics; ``last_success`` (an earlier run's) is used when this run failed."""
    finished = facts.finished_at or time.time()
    if facts.status in SUCCEEDED:
        last_success = finished
    registry = CollectorRegistry()
    optional = {
        "last_success_timestamp_seconds": last_success,
        "input_table_version": table_version(facts.input_version),
        "output_table_version": table_version(facts.table_commit),
    }
    gauges = {
        name: Gauge(f"{PREFIX}_{name}", meaning, ["output", *labels], registry=registry)
        for name, (meaning, labels) in METRICS.items()
        if name not in OPTIONAL or optional[name] is not None
    }

    def put(name: str, value: float, **labels: str) -> None:
        gauges[name].labels(output=facts.job, **labels).set(value)

    put("rows_in", facts.rows_in)
    put("rows_scored", facts.rows_scored)
    put("rows_rejected", facts.rows_rejected)
    for code in sorted(set(REJECT_CODES) | set(facts.rejected_by_reason)):
        put("rows_rejected_by_reason", facts.rejected_by_reason.get(code, 0), reason=code)
    put("files_in", facts.files_in)
    put("files_out", facts.files_out)
    put("fragments", facts.fragments)
    put("read_bytes", facts.bytes_read)
    put("written_bytes", facts.bytes_written)
    for stage in sorted(set(STAGES) | set(facts.stage_seconds)):
        put("stage_seconds", facts.stage_seconds.get(stage, 0.0), stage=stage)
    seconds = facts.seconds
    put("duration_seconds", seconds)
    done = facts.rows_scored + facts.rows_rejected
    put("rows_per_second", done / seconds if seconds > 0 else 0.0)
    put("peak_memory_bytes", facts.peak_rss_bytes)
    put("exit_code", exit_code(facts))
    put("last_run_timestamp_seconds", finished)
    for name, number in optional.items():
        if number is not None:
            put(name, number)
    info = Info(f"{PREFIX}_run", RUN_INFO, ["output"], registry=registry)
    info.labels(output=facts.job).info(
        {
            "model_version": facts.model_version,
            "runtime": facts.runtime,
            "engine": facts.engine,
            "version": version("batch-infer"),
        }
    )
    return registry


def table_version(version: dict[str, Any] | str | None) -> int | None:
    """The number of ``{"format": "delta", "version": 3}`` (a version read) or of
    ``"snapshot 6123…"`` (a commit). An Iceberg snapshot id past 2**53 is rounded by
    Prometheus' float; the manifest and the HTML report keep it exactly."""
    if isinstance(version, dict):
        number = version.get("version", version.get("snapshot"))
    else:
        number = (version or "").rpartition(" ")[2]
    try:
        return int(number) if number is not None else None
    except ValueError:
        return None


def exit_code(facts: RunFacts) -> int:
    if facts.exit_code is not None:
        return facts.exit_code
    return 0 if facts.status in SUCCEEDED else 1


def write_textfile(facts: RunFacts, path: str) -> None:
    """Write the metrics for node_exporter's textfile collector: a temp file, then a rename."""
    registry = registry_for(facts, last_success=_previous_success(path))
    try:
        write_to_textfile(path, registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the metrics file {path}: {exc.strerror or exc}",
            "give --metrics-file a path in an existing, writable folder",
        ) from exc


def _previous_success(path: str) -> float | None:
    """The success time an earlier run left in the file, carried over a failed run."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return sample.value
    except (OSError, ValueError):
        return None
    return None


def push(facts: RunFacts, gateway: str, job: str = "batch-infer") -> bool:
    """Push to a Pushgateway, grouped by job and output; a gateway that is down is a warning.

    A POST (``pushadd``) replaces only the metrics it carries, so a failed run's push updates
    the exit code and counts but keeps the previous ``last_success_timestamp_seconds``.
    """
    url, handler = _without_credentials(gateway)
    try:
        pushadd_to_gateway(
            url,
            job=job,
            registry=registry_for(facts),
            grouping_key={"output": facts.job},
            timeout=PUSH_TIMEOUT_SECONDS,
            handler=handler,
        )
    except Exception as exc:  # a publishing problem never fails the run
        log.warning("could not push metrics to the Pushgateway %s: %s", url, _reason(exc))
        return False
    return True


def _without_credentials(gateway: str) -> tuple[str, Callable[..., Any]]:
    """``https://user:password@host`` becomes basic auth, kept out of the URL that is logged."""
    url, user, password = split_userinfo(gateway)
    if user is None:
        return gateway, default_handler

    def handler(url, method, timeout, headers, data):
        return basic_auth_handler(url, method, timeout, headers, data, user, password or "")

    return url, handler


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    return " ".join(str(reason).split()) or type(exc).__name__
