"""Publish a run's facts (metrics, HTML report, lineage events) when it starts and when it ends.

Publishing never changes a run's outcome: a gateway or receiver that is down is a warning. Only a
report or metrics file that cannot be written is an error, and only when the run itself succeeded
(a failed run's own error is the one to report).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.parquet as pq

from .. import storage
from ..config import RunConfig
from ..errors import BatchInferError, ConfigError, InputError, explain, first_line
from ..redaction import redact_text, redact_url
from ..targets import MANIFEST, SUCCESS, earlier_dated_manifest, is_reject_file
from .facts import RunFacts
from .statistics import RunStatistics

log = logging.getLogger(__name__)


def output_name(path: str) -> str:
    """A bounded name for an output: its last path element that is not a ``{run_date}`` template."""
    path = redact_url(path)
    parts = [p for p in path.rstrip("/").split("/") if p and "{" not in p and not p.endswith(":")]
    return parts[-1] if parts else "output"


@contextmanager
def published(config: RunConfig, facts: RunFacts) -> Iterator[RunFacts]:
    """Lineage START before the run; metrics, HTML report and COMPLETE/FAIL after, however it ends."""
    observe = config.observe
    facts.run_date = config.run_date.isoformat() if config.run_date else None
    try:
        facts.output = facts.output or config.output_path  # named in the START event
    except BatchInferError:
        pass  # a {run_date} output without a run date: the run itself says so
    _lineage("emit_start", facts, observe.openlineage_url)
    failed: BaseException | None = None
    try:
        yield facts
    except BaseException as exc:
        failed = exc
        facts.status = "failed"
        facts.exit_code = explain(exc).exit_code
        facts.error = redact_text(str(explain(exc)))
        raise
    finally:
        facts.finished_at = time.time()
        if failed is None and facts.exit_code is None:
            facts.exit_code = 0
        _lineage("emit_end", facts, observe.openlineage_url)
        if observe.pushgateway:
            from . import metrics  # prometheus_client only when asked for: start-up time

            metrics.push(facts, observe.pushgateway)
        _write(observe.metrics_file, "metrics file", failed, lambda p: _metrics_file(facts, p))
        _write(observe.report_html, "HTML report", failed, lambda p: write_html(facts, p))


def _lineage(step: str, facts: RunFacts, url: str | None) -> None:
    if not (url or os.environ.get("OPENLINEAGE_URL")):
        return  # openlineage-python is an extra: not imported unless asked for
    from . import lineage  # the [lineage] extra: imported only when lineage is asked for

    getattr(lineage, step)(facts, url)


def _metrics_file(facts: RunFacts, path: str) -> None:
    from . import metrics  # prometheus_client only when asked for: start-up time

    metrics.write_textfile(facts, path)


def write_html(
    facts: RunFacts | dict[str, Any],
    path: str,
    manifest: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
) -> None:
    """Render the report and write it atomically (a local path or any fsspec URL)."""
    data = facts.to_dict() if isinstance(facts, RunFacts) else facts
    if isinstance(facts, RunFacts):
        manifest = manifest or facts.manifest
        baseline = baseline or facts.baseline
    from . import html  # only a run that writes a report renders one: start-up time

    page = html.render(data, manifest, baseline)
    fs, target = storage.resolve(path, {})
    folder = posixpath.dirname(target)
    if folder:
        fs.makedirs(folder, exist_ok=True)
    storage.write_bytes_atomically(fs, target, page.encode())


def _write(path: str | None, what: str, failed: BaseException | None, write: Any) -> None:
    if not path:
        return
    try:
        write(path)
    except Exception as exc:
        if failed is not None:  # the run's own failure is what the caller must see
            log.warning("could not write the %s %s: %s", what, path, first_line(exc))
            return
        if isinstance(exc, BatchInferError):
            raise
        raise ConfigError(
            f"the run committed, but the {what} {path} could not be written: {first_line(exc)}",
            "check that its folder exists and is writable; the output itself is committed",
        ) from exc


def report_of_output(output: str, html_path: str) -> None:
    """The HTML report of a committed output: from its manifest, or from its data when the
    manifest predates statistics; drift against the run it was compared with, when found."""
    fs, root = storage.resolve(output, {})
    try:
        manifest = json.loads(fs.cat_file(storage.join(root, MANIFEST)))
        committed = fs.exists(storage.join(root, SUCCESS))
    except (OSError, ValueError):
        manifest, committed = None, False
    if manifest is None or not committed:
        raise InputError(
            f"{output} holds no committed batch-infer output (no readable _manifest.json "
            "with _SUCCESS)",
            "give the output folder of a run that committed",
        )
    facts = dict(manifest.get("run") or {})
    facts.update(
        status="committed",
        exit_code=0,
        run_id=manifest.get("run_id"),
        rows_scored=manifest.get("rows_out", 0),
        rows_rejected=manifest.get("rows_rejected", 0),
        files_out=len(manifest.get("files", [])),
        bytes_written=sum(int(f.get("bytes", 0)) for f in manifest.get("files", [])),
    )
    if manifest.get("committed_at"):
        facts["finished_at"] = dt.datetime.fromisoformat(manifest["committed_at"]).timestamp()
    facts.setdefault("job", output_name(output))
    facts.setdefault("output", storage.display(fs, root))
    statistics = manifest.get("statistics") or _statistics_from_data(fs, root, manifest)
    facts["statistics"] = statistics
    drift = manifest.get("drift") or {}
    facts["drift"], facts["baseline_run_id"] = drift.get("psi"), drift.get("baseline_run_id")
    baseline = None
    config = manifest.get("config") or {}
    template = (config.get("output") or {}).get("path", "")
    if drift.get("baseline_run_id") and manifest.get("run_date"):
        earlier = earlier_dated_manifest(template, {}, manifest["run_date"])
        if earlier and earlier.get("run_id") == drift["baseline_run_id"]:
            baseline = earlier.get("statistics")
    write_html(facts, html_path, manifest, baseline)


def _statistics_from_data(fs: Any, root: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Sketch a committed output by reading it (outputs written before statistics existed)."""
    features = list((manifest.get("model") or {}).get("features") or [])
    columns = manifest.get("config", {}).get("output", {}).get("columns", {})
    stats: RunStatistics | None = None
    for entry in manifest.get("files", []) + manifest.get("rejects", []):  # data files first
        rejects = is_reject_file(entry["path"])
        with fs.open(storage.join(root, entry["path"]), "rb") as handle:
            parquet = pq.ParquetFile(handle)
            if stats is None and not rejects:
                outputs = _added_columns(columns, parquet.schema_arrow.names, features)
                probabilities = _added_columns(columns, outputs, [], ("probability",))
                partition_by = manifest.get("partition_by") or []
                stats = RunStatistics(features, outputs, partition_by, probabilities)
            if stats is None:
                continue
            add = stats.add_rejected if rejects else stats.add_scored
            for batch in parquet.iter_batches(batch_size=65_536):
                add(batch)
    return stats.to_dict() if stats is not None else {}


def _added_columns(
    columns: dict[str, str],
    names: list[str],
    features: list[str],
    kinds: tuple[str, ...] = ("prediction", "probability", "decision", "score"),
) -> list[str]:
    """The model's output columns (of these kinds, as the config named them) among ``names``."""
    bases = [columns.get(kind, kind) for kind in kinds]
    return [
        n
        for n in names
        if n not in features and any(n == b or n.startswith(f"{b}_") for b in bases)
    ]
