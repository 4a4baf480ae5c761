"""What a run records about itself: the facts as it goes, the manifest it commits, the report
it returns, and the drift against the previous committed run."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from .config import RunConfig
from .observe.facts import RunFacts
from .observe.statistics import RunStatistics, drift
from .planning import PreparedRun
from .redaction import redact_data, redact_url
from .report import RunReport
from .targets import (
    OutputFile,
    Target,
    earlier_dated_manifest,
    is_reject_file,
)

log = logging.getLogger(__name__)


def note_plan(facts: RunFacts, prepared: PreparedRun) -> None:
    """What the plan and the loaded model tell, before anything is scored."""
    plan, model = prepared.plan, prepared.model
    facts.output = prepared.target.url
    facts.inputs = [f.url for f in plan.files]
    facts.rows_in = plan.total_rows
    facts.files_in = len(plan.files)
    facts.fragments = len(plan.fragments)
    facts.bytes_read = plan.total_bytes
    facts.model_path = model.estimator.url
    facts.model_version = model.version
    facts.model_sha256 = model.sha256
    facts.runtime = model.runtime
    facts.engine = prepared.config.engine.kind


def noted(facts: RunFacts, report: RunReport) -> RunReport:
    facts.status = report.status
    facts.rows_scored = report.rows_out
    facts.rows_rejected = report.rows_rejected
    facts.files_out = report.files_out
    facts.run_id = report.run_id
    return report


def run_report(prepared: PreparedRun, manifest: dict[str, Any], started: float) -> RunReport:
    plan, model = prepared.plan, prepared.model
    return RunReport(
        run_id=manifest.get("run_id", ""),
        output=prepared.target.url,
        rows_in=plan.total_rows,
        rows_out=manifest.get("rows_out", 0),
        rows_rejected=manifest.get("rows_rejected", 0),
        files_in=len(plan.files),
        files_out=len(manifest.get("files", [])),
        fragments=len(plan.fragments),
        seconds=round(time.monotonic() - started, 3),
        model_sha256=model.sha256,
        model_version=model.version,
        runtime=model.runtime,
        **engine_facts(prepared),
        predicted_at=manifest.get("predicted_at", prepared.spec.predicted_at.isoformat()),
        run_date=prepared.config.run_date.isoformat() if prepared.config.run_date else None,
        table_commit=manifest.get("table_commit"),
        where=prepared.plan.where,
        rows_selected=manifest.get("rows_selected"),
    )


def statistics_columns(
    prepared: PreparedRun,
) -> tuple[list[str], list[str], list[str], list[str]] | None:
    """What the report's sketches follow: the features, the model's outputs, the partitions."""
    if not prepared.config.observe.statistics:
        return None
    outputs = [f.name for f in prepared.model.outputs.fields()]
    probabilities = [c.name for c in prepared.model.outputs.columns if c.method == "predict_proba"]
    return prepared.model.features, outputs, prepared.config.output.partition_by, probabilities


def note_statistics(
    facts: RunFacts,
    columns: tuple[list[str], list[str], list[str], list[str]] | None,
    sketches: list[dict[str, Any]],
) -> None:
    """Merge the fragments' sketches into the run's statistics."""
    if columns is None:
        return
    merged = RunStatistics(*columns)
    unreadable = 0
    for sketch in sketches:
        try:
            merged.merge(RunStatistics.from_dict(sketch))
        except (KeyError, ValueError, TypeError):  # staged by another batch-infer version
            unreadable += 1
    if unreadable:
        log.warning(
            "the statistics of %d resumed row group(s) are unreadable; the report's statistics "
            "cover the others",
            unreadable,
        )
    facts.statistics = merged.to_dict()
    facts.rejected_by_reason = dict(facts.statistics["rejects_by_reason"]["top"])


def compare_with_baseline(prepared: PreparedRun) -> None:
    """Drift against the previous committed run of the same output, if there is one."""
    facts = prepared.facts
    if facts is None or facts.statistics is None:
        return
    previous = previous_manifest(prepared.config, prepared.target)
    if previous is None or not previous.get("statistics"):
        return
    facts.baseline = previous["statistics"]
    facts.baseline_run_id = previous.get("run_id")
    facts.drift = drift(facts.statistics, facts.baseline)


def previous_manifest(config: RunConfig, target: Target) -> dict[str, Any] | None:
    """The manifest of the run before this one: the committed one at the output, or, for a
    ``{run_date}`` output, the latest committed one of an earlier date."""
    if target.is_committed():
        return target.read_manifest()
    earlier = target.previous_manifest()  # a table: the latest other run's
    if earlier is not None:
        return earlier
    if config.run_date is None:
        return None
    return earlier_dated_manifest(
        config.output.path, config.output.storage_options, config.run_date.isoformat()
    )


def build_manifest(prepared: PreparedRun, run_id: str, files: list[OutputFile]) -> dict[str, Any]:
    from importlib.metadata import version

    model = prepared.model
    plan = prepared.plan
    manifest = {
        "run_id": run_id,
        "committed_at": dt.datetime.now(dt.UTC).isoformat(),
        "run_date": prepared.config.run_date.isoformat() if prepared.config.run_date else None,
        "predicted_at": prepared.spec.predicted_at.isoformat(),
        "config": prepared.config.redacted(),
        "input_version": plan.version,  # a table's version or snapshot; None for files
        "inputs": [
            {"path": f.url, "bytes": f.size, "rows": f.num_rows, "row_groups": f.num_row_groups}
            for f in plan.files
        ],
        "model": {
            "path": model.estimator.url,
            "sha256": model.sha256,
            "version": model.version,
            "kind": model.kind,
            "classes": model.classes,
            "features": model.features,
            "methods": model.outputs.methods,
            "contract": model.contract.to_dict(),
            "saved_sklearn_version": model.estimator.saved_sklearn_version,
            "scaler_path": model.scaler.url if model.scaler else None,
            "scaler_sha256": model.scaler.sha256 if model.scaler else None,
            # an MLflow model: source URI, name, version, alias, run id, sha256, flavor
            "registry": model.registry.record() if model.registry is not None else None,
            "requirement_mismatches": model.requirement_mismatches,
        },
        "runtime": model.runtime,
        "engine": engine_facts(prepared),
        "batch_infer_version": version("batch-infer"),
        "sklearn_version": version("scikit-learn"),  # without importing it (compiled runtimes)
        "rows_in": plan.total_rows,
        **_where(plan, files),
        "rows_out": sum(f.rows for f in files if not is_reject_file(f.path)),
        "rows_rejected": sum(f.rows for f in files if is_reject_file(f.path)),
        "partition_by": prepared.config.output.partition_by,
        "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in files],
        **_observed(prepared),
    }
    return redact_data(manifest)


def _where(plan: Any, files: list[OutputFile]) -> dict[str, Any]:
    """--where: its text, the input files it pruned unread, the rows it selected of rows_in."""
    if not plan.where:
        return {}
    selected = sum(f.rows for f in files)  # scored and rejected
    return {
        "where": {
            "text": plan.where,
            "files_pruned": plan.files_pruned,
            "row_groups_pruned": plan.row_groups_pruned,
        },
        "rows_selected": selected,
    }


def _observed(prepared: PreparedRun) -> dict[str, Any]:
    """What `batch-infer report` needs later: the run's facts so far, statistics and drift."""
    facts = prepared.facts
    if facts is None:
        return {}
    run = facts.to_dict()
    statistics = run.pop("statistics")
    drift = {"baseline_run_id": run.pop("baseline_run_id"), "psi": run.pop("drift")}
    return {"run": run, "statistics": statistics, "drift": drift}


def engine_facts(prepared: PreparedRun) -> dict[str, Any]:
    """The engine that scored and, for Dask, where (credentials masked) and on how many workers."""
    stats = prepared.engine_stats
    facts: dict[str, Any] = {"engine": prepared.config.engine.kind}
    if stats is not None:
        facts["scheduler"] = redact_url(stats.scheduler)
        facts["workers_used"] = len(stats.workers)
        facts["task_retries"] = stats.task_retries
        facts["worker_peak_rss_mib"] = stats.worker_peak_rss_mib
    return facts
