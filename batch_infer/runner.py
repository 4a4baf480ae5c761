"""Orchestrate a run: plan, check, score fragment by fragment into staging, commit once.

Never prints; progress goes to the ``Progress`` the caller hands in, facts to ``logging``.
``score_fragment`` is the unit of work (read one row group, score it, stage its output) and
depends only on its arguments, so a pool or a cluster can run fragments anywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import pyarrow as pa

from . import failpoints, lock, redaction, sinks, sources, storage
from .config import OutputConfig, RunConfig
from .errors import (
    BatchInferError,
    ConfigError,
    InputError,
    ModelError,
    OutputConflictError,
    first_line,
    from_store,
)
from .executor import available_cores, library_threads, run_parallel
from .logs import RUN_ID
from .model import LoadedModel, load_model
from .model.contract import type_problem
from .observe.facts import RunFacts
from .progress import NoProgress, Progress
from .redaction import redact_data, redact_url
from .report import RunReport, ValidationReport
from .scoring import (
    REJECT_FIELDS,
    RowOrigin,
    ScoringSpec,
    output_fields,
    score_batch,
)

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """A worker saw the cancel event and stopped between two batches."""


@dataclass(frozen=True)
class FragmentJob:
    """Everything needed to score any fragment of a run; the same for all of them."""

    input_fs: fsspec.AbstractFileSystem
    input_schema: pa.Schema
    partition_schema: pa.Schema
    output_schema: pa.Schema
    batch_size: int | None
    decode_threads: bool
    model: LoadedModel
    spec: ScoringSpec
    target: sinks.OutputTarget
    output: OutputConfig
    dictionary_columns: list[str]
    statistics: tuple[list[str], list[str], list[str]] | None = (
        None  # features, outputs, partitions
    )


@dataclass(frozen=True)
class StagedFragment:
    """A fragment whose output is wholly written to staging."""

    name: str
    source: str
    rows: int
    files: list[sinks.OutputFile]
    statistics: dict[str, Any] | None = None  # observe.statistics sketch of its rows


@dataclass
class _Prepared:
    config: RunConfig
    plan: sources.InputPlan
    model: LoadedModel
    spec: ScoringSpec
    output_schema: pa.Schema
    target: sinks.OutputTarget
    fingerprint: dict[str, Any]
    engine_stats: Any = None  # engines.dask.DaskStats when the Dask engine scored
    facts: RunFacts | None = None
    resumed_statistics: list[dict[str, Any]] = field(default_factory=list)  # of staged fragments

    @property
    def own_prefixes(self) -> set[str]:
        """File-name prefixes of this run's output files (see ``sinks.check_target``)."""
        return {sinks.own_prefix(f.name) for f in self.plan.fragments} | {sinks.own_prefix("empty")}

    @property
    def float_columns(self) -> set[str]:
        """Added columns of floats (probabilities, scores): nearly all distinct, no dictionary."""
        added = self.output_schema.names[len(self.plan.schema) :]
        return {n for n in added if pa.types.is_floating(self.output_schema.field(n).type)}


def run(
    config: RunConfig,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    facts: RunFacts | None = None,
) -> RunReport:
    """Score the input with the model and commit the output. Raises a BatchInferError on failure.

    Setting ``cancel`` (a signal handler does) stops the workers within a batch; what they
    finished stays staged, and the next run with the same inputs, model and config resumes it.
    ``facts`` fills in as the run goes; metrics, the HTML report and lineage events publish it
    (``config.observe``), also when the run fails.
    """
    from .observe.publish import output_name, published

    redaction.remember_config(config.model_dump(mode="json"))  # masked wherever they appear
    facts = facts or RunFacts(job=output_name(config.output.path))
    with published(config, facts), _store_errors():
        return _run(config, progress, cancel, facts)


def validate(config: RunConfig) -> ValidationReport:
    """Everything ``run`` checks before scoring, without writing anything."""
    with _store_errors():
        return _validate(config)


@contextmanager
def _store_errors() -> Iterator[None]:
    """Object store failures that escaped as raw botocore/s3fs errors become ours (75 or 2)."""
    try:
        yield
    except Exception as exc:
        translated = from_store(exc)
        if translated is None:
            raise
        raise translated from exc


def _run(
    config: RunConfig,
    progress: Progress | None,
    cancel: threading.Event | None,
    facts: RunFacts,
) -> RunReport:
    started = time.monotonic()
    progress = progress or NoProgress()
    cancel = cancel or threading.Event()
    with facts.stage("plan"):
        prepared = _prepare(config)
    prepared.facts = facts
    _note_plan(facts, prepared)
    target = prepared.target
    if sinks.committed_but_not_cleaned(target) is not None:
        return _noted(facts, _finish_cleanup(prepared, started))
    skipped = _skip_if_committed(prepared, started)
    if skipped is not None:
        return _noted(facts, skipped)
    sinks.check_target(target, config.output.mode, prepared.own_prefixes)  # fail before writing
    held = lock.acquire(target, _new_run_id())
    try:
        # uploads left open by a run that died mid-file: ours to abort now that we hold the lock
        storage.abort_multipart_uploads(target.fs, storage.join(target.root, sinks.STAGING))
        sinks.check_target(target, config.output.mode, prepared.own_prefixes)
        record, done = _resume(prepared)
        RUN_ID.set(record["run_id"])  # on every log line from now on
        facts.run_id = record["run_id"]
        held.rename(record["run_id"])
        prepared.spec = replace(
            prepared.spec, predicted_at=dt.datetime.fromisoformat(record["predicted_at"])
        )
        if sinks.pending_commit(target) is not None:
            log.info("finishing the interrupted commit of run %s", record["run_id"])
            with facts.stage("commit"):
                manifest = sinks.finish_commit(target)
        else:
            failpoints.reached("after-plan")
            with facts.stage("score"):
                files = _score(prepared, done, progress, cancel)
            _compare_with_baseline(prepared)
            with facts.stage("commit"):
                manifest = sinks.commit(
                    target,
                    files,
                    _manifest(prepared, record["run_id"], files),
                    config.output.mode,
                    prepared.own_prefixes,
                    previous=record.get("inherited_manifest"),
                )
    except (ConfigError, InputError, ModelError, OutputConflictError):
        sinks.discard_staging(target)  # the input, model or config must change: no resuming
        raise
    except BaseException:
        cancel.set()  # interrupted or failed on the way: keep what is staged for a resume
        raise
    finally:
        held.release()
        progress.finish()
    report = _report(prepared, manifest, started)
    log.info("committed %d rows in %d file(s) to %s", report.rows_out, report.files_out, target.url)
    facts.manifest = manifest
    facts.bytes_written = sum(int(f.get("bytes", 0)) for f in manifest.get("files", []))
    return _noted(facts, report)


def _note_plan(facts: RunFacts, prepared: _Prepared) -> None:
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


def _noted(facts: RunFacts, report: RunReport) -> RunReport:
    facts.status = report.status
    facts.rows_scored = report.rows_out
    facts.rows_rejected = report.rows_rejected
    facts.files_out = report.files_out
    facts.run_id = report.run_id
    return report


def _validate(config: RunConfig) -> ValidationReport:
    prepared = _prepare(config)
    plan, target = prepared.plan, prepared.target
    committed = target.fs.exists(storage.join(target.root, sinks.SUCCESS))
    if not (committed and config.output.if_exists == "skip"):
        sinks.check_target(target, config.output.mode, prepared.own_prefixes)
    state = "holds a committed result" if committed else "empty or new"
    return ValidationReport(
        output=target.url,
        output_state=state,
        rows=plan.total_rows,
        files=len(plan.files),
        fragments=len(plan.fragments),
        bytes=plan.total_bytes,
        features=prepared.model.features,
        model_kind=prepared.model.kind,
        model_sha256=prepared.model.sha256,
        runtime=prepared.model.runtime,
        added_columns=prepared.output_schema.names[len(plan.schema) :],
    )


def _finish_cleanup(prepared: _Prepared, started: float) -> RunReport:
    """The same run was killed after committing: finish its cleanup and report it as done."""
    held = lock.acquire(prepared.target, _new_run_id())
    try:
        intent = sinks.committed_but_not_cleaned(prepared.target)
        if intent is not None:
            sinks.finish_cleanup(prepared.target, intent)
    finally:
        held.release()
    manifest = sinks.read_manifest(prepared.target) or {}
    log.info("run %s was already committed; finished its cleanup", manifest.get("run_id"))
    return _report(prepared, manifest, started)


def _skip_if_committed(prepared: _Prepared, started: float) -> RunReport | None:
    """``--if-exists skip``: a committed output in mode error is success, not a conflict."""
    config, target = prepared.config, prepared.target
    if config.output.if_exists != "skip" or config.output.mode != "error":
        return None
    if not target.fs.exists(storage.join(target.root, sinks.SUCCESS)):
        return None
    manifest = sinks.read_manifest(target) or {}
    log.info("%s is already committed (run %s): skipping", target.url, manifest.get("run_id"))
    report = _report(prepared, manifest, started)
    return replace(report, status="skipped", rows_out=0, files_out=0)


def _score(
    prepared: _Prepared,
    done: dict[str, list[sinks.OutputFile]],
    progress: Progress,
    cancel: threading.Event,
) -> list[sinks.OutputFile]:
    """Score every fragment not already staged; return all staged files of the run."""
    config, plan, target = prepared.config, prepared.plan, prepared.target
    workers = config.workers or available_cores()
    job = FragmentJob(
        input_fs=plan.fs,
        input_schema=plan.schema,
        partition_schema=plan.partition_schema,
        output_schema=prepared.output_schema,
        batch_size=config.input.batch_size,
        decode_threads=workers == 1,
        model=prepared.model,
        spec=prepared.spec,
        target=target,
        output=config.output,
        dictionary_columns=sinks.dictionary_columns(
            prepared.output_schema, prepared.float_columns, config.output.partition_by
        ),
        statistics=_statistics_columns(prepared),
    )
    fragments = plan.fragments
    todo = [f for f in fragments if f.name not in done]
    log.info(
        "scoring %d rows in %d file(s), %d row group(s) from %s into %s%s",
        plan.total_rows,
        len(plan.files),
        len(fragments),
        plan.root,
        target.url,
        f" ({len(fragments) - len(todo)} row groups already staged)" if done else "",
    )
    progress.start(plan.total_rows, len(fragments), len(plan.files))
    row_groups_left = {f.path: f.num_row_groups for f in plan.files}

    facts = prepared.facts or RunFacts(job="")

    def advance(fragment: sources.Fragment, rows: int) -> None:
        row_groups_left[fragment.file.path] -= 1
        finished_file = int(row_groups_left[fragment.file.path] == 0)
        progress.advance(rows=rows, fragments=1, files=finished_file)
        facts.progressed(fragment.num_rows)

    for fragment in fragments:
        if fragment.name in done:
            advance(fragment, fragment.num_rows)

    output = config.output
    budget = RejectBudget(
        plan.total_rows, output.max_reject_rows, output.max_reject_rate, target.rejects_url
    )
    for files in done.values():
        budget.count += sum(f.rows for f in files if sinks.is_reject_file(f.path))

    def work(fragment: sources.Fragment) -> tuple[sources.Fragment, StagedFragment]:
        staged = score_fragment(fragment, job, cancel, budget)
        sinks.record_fragment(target, fragment.name, staged.files, staged.statistics)
        failpoints.reached("between-fragments")
        return fragment, staged

    results: list[tuple[sources.Fragment, StagedFragment]] = []
    try:
        if config.engine.kind == "dask":
            from .engines import dask as dask_engine

            def finished(fragment: sources.Fragment, staged: StagedFragment) -> None:
                results.append((fragment, staged))
                advance(fragment, staged.rows)
                rejected = [f for f in staged.files if sinks.is_reject_file(f.path)]
                if rejected:  # the limit holds across workers: counted here, as tasks end
                    budget.add_staged(sum(f.rows for f in rejected), target, rejected[0])

            ref = dask_engine.model_ref(
                prepared.model, config.model, config.output.columns, config.output.methods
            )
            remote_job = replace(job, model=None, decode_threads=False)
            prepared.engine_stats = dask_engine.run_fragments(
                config.engine, remote_job, ref, todo, finished, cancel, available_cores()
            )
        else:
            with library_threads(workers, available_cores()):
                done_here = run_parallel(
                    work,
                    todo,
                    workers,
                    on_result=lambda r: advance(r[0], r[1].rows),
                    cancel=cancel,
                )
                results.extend(done_here)
    finally:
        facts.rows_rejected = budget.count  # also when the reject limit stopped the run

    files = [f for name in done for f in done[name]] + [f for _, s in results for f in s.files]
    sketches = prepared.resumed_statistics + [s.statistics for _, s in results if s.statistics]
    _note_statistics(facts, job.statistics, sketches)
    rows = sum(f.rows for f in files)  # scored and rejected
    if rows != plan.total_rows:  # a row lost or doubled is a bug, never a result
        raise RuntimeError(f"staged {rows} rows but the input holds {plan.total_rows}")
    if budget.count:
        log.warning("%d row(s) rejected, kept in %s", budget.count, target.rejects_url)
    if not [f for f in files if not sinks.is_reject_file(f.path)]:  # keep the rejects, if any
        files.append(sinks.stage_empty(target, prepared.output_schema, config.output.partition_by))
    return files


def _statistics_columns(
    prepared: _Prepared,
) -> tuple[list[str], list[str], list[str], list[str]] | None:
    """What the report's sketches follow: the features, the model's outputs, the partitions."""
    if not prepared.config.observe.statistics:
        return None
    outputs = [f.name for f in prepared.model.outputs.fields()]
    probabilities = [c.name for c in prepared.model.outputs.columns if c.method == "predict_proba"]
    return prepared.model.features, outputs, prepared.config.output.partition_by, probabilities


def _note_statistics(
    facts: RunFacts,
    columns: tuple[list[str], list[str], list[str], list[str]] | None,
    sketches: list[dict[str, Any]],
) -> None:
    """Merge the fragments' sketches into the run's statistics."""
    from .observe.statistics import RunStatistics

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


def _compare_with_baseline(prepared: _Prepared) -> None:
    """Drift against the previous committed run of the same output, if there is one."""
    from .observe.statistics import drift

    facts = prepared.facts
    if facts is None or facts.statistics is None:
        return
    previous = previous_manifest(prepared.config, prepared.target)
    if previous is None or not previous.get("statistics"):
        return
    facts.baseline = previous["statistics"]
    facts.baseline_run_id = previous.get("run_id")
    facts.drift = drift(facts.statistics, facts.baseline)


def previous_manifest(config: RunConfig, target: sinks.OutputTarget) -> dict[str, Any] | None:
    """The manifest of the run before this one: the committed one at the output, or, for a
    ``{run_date}`` output, the latest committed one of an earlier date."""
    if target.fs.exists(storage.join(target.root, sinks.SUCCESS)):
        return sinks.read_manifest(target)
    if config.run_date is None:
        return None
    return earlier_dated_manifest(
        config.output.path, config.output.storage_options, config.run_date.isoformat()
    )


def earlier_dated_manifest(
    template: str, storage_options: dict[str, Any], run_date: str
) -> dict[str, Any] | None:
    """The committed manifest of the latest date before ``run_date`` of a ``{run_date}`` output."""
    if "{run_date}" not in template:
        return None
    import re

    fs, pattern = storage.resolve(template.replace("{run_date}", "*"), storage_options)
    dated = re.compile(re.escape(pattern).replace(r"\*", r"(\d{4}-\d{2}-\d{2})") + "$")
    earlier = []
    for path in fs.glob(pattern):
        match = dated.match(path.rstrip("/"))
        if match and match.group(1) < run_date:
            earlier.append((match.group(1), path.rstrip("/")))
    for _, path in sorted(earlier, reverse=True):
        if fs.exists(storage.join(path, sinks.SUCCESS)):
            try:
                return json.loads(fs.cat_file(storage.join(path, sinks.MANIFEST)))
            except (OSError, ValueError):
                continue
    return None


def _resume(prepared: _Prepared) -> tuple[dict[str, Any], dict[str, list[sinks.OutputFile]]]:
    """Pick up an interrupted run with the same staging key, or start a new one.

    The staging key hashes the inputs (sizes and versions), the model and the config, so a
    matching folder holds output this run would write byte for byte: resuming it is safe and is
    the default. Folders of runs whose inputs, model or config differ are discarded (``--resume``
    refuses instead, saying what changed).
    """
    config, target = prepared.config, prepared.target
    record = sinks.read_run_record(target)
    others = {key: sinks.read_run_record(target, key) for key in sinks.other_stagings(target)}
    if config.resume is True and record is None:
        if others:
            key, other = next(iter(others.items()))
            changes = _what_changed((other or {}).get("fingerprint", {}), prepared.fingerprint)
            raise ConfigError(
                f"cannot resume run {(other or {}).get('run_id', key)}: {'; '.join(changes)}",
                "rerun without --resume to start over with the new inputs, model or config",
            )
        # killed before anything was staged (or never started): nothing to match, so start;
        # an Airflow retry configured with --resume must not fail forever
        log.info("nothing staged to resume in %s: starting the run", target.url)
    # A discarded run may have been mid-commit: its moved files are batch-infer's, and the
    # manifest it meant to write is the last word on what the output holds (the old one is
    # already gone). This run's record inherits both before the folder goes.
    discarded = list(others)
    if config.resume is False and record is not None:
        discarded.append(target.staging_key)
    inherited = sorted({p for key in discarded for p in sinks.files_of_pending_commit(target, key)})
    pending = [m for key in discarded if (m := sinks.pending_manifest(target, key)) is not None]
    inherited_manifest = pending[-1] if pending else None
    if config.resume is False and record is not None:
        sinks.discard_staging(target)
        record = None
    for key, other in others.items():
        changes = _what_changed((other or {}).get("fingerprint", {}), prepared.fingerprint)
        log.warning(
            "discarding interrupted run %s, not resumable: %s",
            (other or {}).get("run_id", key),
            "; ".join(changes),
        )
        sinks.discard_staging(target, key)
    if record is None:
        record = {
            "run_id": _new_run_id(),
            "predicted_at": prepared.spec.predicted_at.isoformat(),
            "fingerprint": prepared.fingerprint,
            "inherited": inherited,
            "inherited_manifest": inherited_manifest,
        }
        sinks.write_run_record(target, record)
        return record, {}
    if inherited:
        record["inherited"] = sorted(set(record.get("inherited", [])) | set(inherited))
        record["inherited_manifest"] = inherited_manifest or record.get("inherited_manifest")
        sinks.write_run_record(target, record)
    names = {f.name for f in prepared.plan.fragments}
    records = {n: r for n, r in sinks.recorded_fragments(target).items() if n in names}
    done = {n: r.files for n, r in records.items()}
    prepared.resumed_statistics = [r.statistics for r in records.values() if r.statistics]
    sinks.discard_unrecorded(target, set(done))
    log.info("resuming run %s: %d row group(s) already staged", record["run_id"], len(done))
    return record, done


def _what_changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    changes = []
    old_inputs, new_inputs = before.get("inputs", {}), after.get("inputs", {})
    added = sorted(set(new_inputs) - set(old_inputs))
    removed = sorted(set(old_inputs) - set(new_inputs))
    modified = sorted(
        k for k in set(old_inputs) & set(new_inputs) if old_inputs[k] != new_inputs[k]
    )
    for label, paths in (
        ("input added", added),
        ("input removed", removed),
        ("input changed", modified),
    ):
        if paths:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            changes.append(f"{label}: {paths[0]}{more}")
    for part in ("model", "scaler"):
        if before.get(part) != after.get(part):
            changes.append(
                f"{part} changed (sha256 {str(before.get(part))[:12]} -> {str(after.get(part))[:12]})"
            )
    old_config, new_config = before.get("config", {}), after.get("config", {})
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) != new_config.get(key):
            changes.append(
                f"config {key} changed ({old_config.get(key)!r} -> {new_config.get(key)!r})"
            )
    return changes or ["its run record is unreadable"]


def _report(prepared: _Prepared, manifest: dict[str, Any], started: float) -> RunReport:
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
        **_engine_facts(prepared),
        predicted_at=manifest.get("predicted_at", prepared.spec.predicted_at.isoformat()),
        run_date=prepared.config.run_date.isoformat() if prepared.config.run_date else None,
    )


class RejectBudget:
    """Counts rejected rows across workers; raises once more are rejected than allowed.

    With neither limit set none are allowed: the default is to fail and commit nothing.
    """

    def __init__(self, total_rows: int, max_rows: int | None, max_rate: float | None, where: str):
        limits = []
        if max_rows is not None:
            limits.append(max_rows)
        if max_rate is not None:
            limits.append(int(max_rate * total_rows))
        self.allowed = min(limits) if limits else 0
        self.count = 0
        self.where = where
        self._lock = threading.Lock()

    def add_staged(self, rows: int, target: sinks.OutputTarget, file: sinks.OutputFile) -> None:
        """Rows a Dask task rejected and staged; over the limit, name the first of them."""
        with self._lock:
            self.count += rows
            over = self.count > self.allowed
        if over:
            import pyarrow.parquet as pq

            path = sinks._staged(target, file.path)
            with target.fs.open(path, "rb") as handle:
                first = pq.ParquetFile(handle).read_row_group(0).slice(0, 1).to_pylist()[0]
            self._refuse(first)

    def add(self, rejected: pa.RecordBatch) -> None:
        with self._lock:
            self.count += rejected.num_rows
            over = self.count > self.allowed
        if over:
            self._refuse(rejected.slice(0, 1).to_pylist()[0])

    def _refuse(self, first: dict[str, Any]) -> None:
        raise InputError(
            f"{self.count} row(s) rejected, more than the {self.allowed} allowed; first: "
            f"{first['reject_source_file']} row group {first['reject_row_group']} "
            f"row {first['reject_row_index']}: {first['reject_message']}",
            "fix those rows, or let them go to the rejects dataset with --max-reject-rows N "
            f"or --max-reject-rate R (it would be {self.where})",
        )


def score_fragment(
    fragment: sources.Fragment,
    job: FragmentJob,
    cancel: threading.Event | None = None,
    budget: RejectBudget | None = None,
) -> StagedFragment:
    """Read one row group, score it and stage its output; touches nothing outside staging."""
    rejected: list[pa.RecordBatch] = []
    statistics = None
    if job.statistics is not None:
        from .observe.statistics import RunStatistics

        statistics = RunStatistics(*job.statistics)

    def scored() -> Iterator[pa.RecordBatch]:
        batches = sources.read_fragment(
            job.input_fs,
            fragment,
            job.input_schema,
            job.partition_schema,
            job.batch_size,
            job.decode_threads,
        )
        first_row = fragment.file.first_row(fragment.row_group)
        read = 0
        for batch in batches:
            read += batch.num_rows
            if read > fragment.num_rows:
                raise _row_count_mismatch(fragment, read)
            if cancel is not None and cancel.is_set():
                raise Cancelled(fragment.describe())
            sinks.check_partition_values(batch, job.output.partition_by, fragment.describe())
            origin = RowOrigin(fragment.file.url, fragment.row_group, first_row)
            first_row += batch.num_rows
            try:
                outcome = score_batch(batch, job.model, job.spec, origin)
            except (InputError, ModelError) as exc:  # name where it happened
                raise type(exc)(f"{fragment.describe()}: {exc.what}", exc.fix) from None
            except BatchInferError:
                raise
            except Exception as exc:  # not about some rows: the model fails as a whole
                raise ModelError(
                    f"the model failed on {fragment.describe()}: "
                    f"{type(exc).__name__}: {first_line(exc)}",
                    "check that the model loads and predicts in the environment batch-infer "
                    "runs in (library versions), e.g. with batch-infer inspect MODEL",
                ) from None
            if outcome.rejected is not None:
                rejected.append(outcome.rejected)
                if budget is not None:
                    budget.add(outcome.rejected)
                if statistics is not None:
                    statistics.add_rejected(outcome.rejected)
            if statistics is not None:
                statistics.add_scored(outcome.scored)
            yield outcome.scored
            failpoints.reached("mid-fragment")  # the writer holds this batch, its file is open
        if read != fragment.num_rows:
            raise _row_count_mismatch(fragment, read)

    files = sinks.stage_fragment(
        scored(),
        job.output_schema,
        job.target,
        fragment.name,
        job.output,
        job.dictionary_columns,
    )
    if rejected:
        files.append(sinks.stage_rejects(job.target, fragment.name, rejected))
    return StagedFragment(
        name=fragment.name,
        source=fragment.file.path,
        rows=sum(f.rows for f in files if not sinks.is_reject_file(f.path)),
        files=files,
        statistics=statistics.to_dict() if statistics is not None else None,
    )


def _row_count_mismatch(fragment: sources.Fragment, read: int) -> InputError:
    return InputError(
        f"{fragment.describe()} holds {'more than ' if read > fragment.num_rows else ''}"
        f"{read} rows but its footer says {fragment.num_rows}: the file is corrupt",
        "rewrite the file (e.g. read and write it again with pyarrow), or remove it from the input",
    )


def _prepare(config: RunConfig) -> _Prepared:
    """Load the model, plan the input, check features and output: all before any scoring."""
    output_url = config.output_path
    # Unpickling imports scikit-learn (~0.5 s of Python); reading footers waits on storage.
    # Overlap them. A model problem is reported first, as if loaded first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model") as pool:
        model_future = pool.submit(
            load_model, config.model, config.output.columns, config.output.methods
        )
        try:
            plan = sources.plan_input(config.input)
        except BatchInferError:
            model_future.result()
            raise
        model = model_future.result()
    check_input_types(plan, model)
    spec = ScoringSpec(
        features=model.features,
        columns=config.output.columns,
        predicted_at=_predicted_at(config.run_date),
        model_version=model.version,
    )
    added = output_fields(model, spec)
    output_schema = _output_schema(plan.schema, added, config.output.partition_by)
    fingerprint = _fingerprint(config, plan, model)
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    target = sinks.open_target(
        output_url,
        config.output.storage_options,
        key,
        config.output.rejects,
        commit_concurrency=config.output.commit_concurrency,
    )
    if config.engine.kind == "dask":
        from .engines.dask import check_reachable

        model_fs, _ = storage.resolve(config.model.path, config.model.storage_options)
        check_reachable(
            config.engine,
            {
                "input": (plan.root, plan.fs),
                "output": (target.url, target.fs),
                "model": (config.model.path, model_fs),
            },
        )
    clash = [f.name for f in REJECT_FIELDS if f.name in plan.schema.names]
    if clash:
        raise ConfigError(
            f"input column(s) {clash} clash with the rejects dataset's own columns",
            "rename them upstream",
        )
    output_root = storage.display(target.fs, target.root)
    if _inside(output_root, plan.root):
        raise ConfigError(
            f"the output {target.url} is inside the input {plan.root}",
            "write the output somewhere else, or a rerun would read its own output",
        )
    if any(_inside(f.url, output_root) for f in plan.files):
        raise ConfigError(
            f"the input {plan.root} is inside the output {target.url}",
            "keep inputs out of the output folder: overwriting it would touch them",
        )
    return _Prepared(config, plan, model, spec, output_schema, target, fingerprint)


def _fingerprint(config: RunConfig, plan: sources.InputPlan, model: LoadedModel) -> dict[str, Any]:
    """What the output depends on: a run with the same fingerprint writes the same bytes."""
    output = config.output
    return {
        "inputs": {f.url: [f.size, f.version] for f in plan.files},
        "model": model.sha256,
        "scaler": model.scaler.sha256 if model.scaler else None,
        "contract": model.contract_sha256,
        "runtime": model.runtime,
        "config": {
            "features": model.features,
            "methods": model.outputs.methods,
            "model_version": model.version,
            "columns": output.columns.model_dump(),
            "partition_by": output.partition_by,
            "compression": output.compression,
            "row_group_size": output.row_group_size,
            "max_rows_per_file": output.max_rows_per_file,
            "batch_size": config.input.batch_size,
            "run_date": config.run_date.isoformat() if config.run_date else None,
        },
    }


def _output_schema(
    input_schema: pa.Schema, added: list[pa.Field], partition_by: list[str]
) -> pa.Schema:
    """Input columns then added ones; names unique, partition keys existing and flat."""
    names = [f.name for f in added]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"output.columns gives two added columns the same name: {duplicates}",
            "give each of prediction, probability, predicted_at and model_version its own name",
        )
    clashes = [n for n in names if n in input_schema.names]
    if clashes:
        raise ConfigError(
            f"output column(s) {clashes} would overwrite input column(s) of the same name",
            "rename them under output.columns in the config",
        )
    schema = pa.schema(list(input_schema) + added)
    missing = [name for name in partition_by if name not in schema.names]
    if missing:
        raise ConfigError(
            f"--partition-by names column(s) {missing} that the output does not have",
            f"choose from: {', '.join(schema.names)}",
        )
    if len(set(partition_by)) != len(partition_by):
        raise ConfigError(
            f"--partition-by repeats a column: {partition_by}", "name each column once"
        )
    nested = [n for n in partition_by if pa.types.is_nested(schema.field(n).type)]
    if nested:
        raise ConfigError(
            f"--partition-by column(s) {nested} are nested (struct, list or map)",
            "partition by columns of plain values such as strings, integers or dates",
        )
    return schema


def check_input_types(plan: sources.InputPlan, model: LoadedModel) -> None:
    """Every feature column must exist in every file, with a type its contract accepts."""
    for file in plan.files:
        schema = file.schema
        for spec in model.contract.features:
            name = spec.name
            if name in plan.partition_schema.names and name not in schema.names:
                field = plan.partition_schema.field(name)
            elif name in schema.names:
                field = schema.field(name)
            else:
                raise InputError(
                    f"{file.url} has no column {name!r}, a feature the model needs",
                    "add the column to the input, or check --features and the model's features",
                )
            problem = type_problem(spec, field.type)
            if problem is not None:
                raise InputError(
                    f"column {name!r} in {file.url} is {field.type}, but the model {problem}",
                    "cast it upstream, leave it out of --features, or correct the model's "
                    "contract (batch-infer inspect MODEL shows it)",
                )


def _manifest(prepared: _Prepared, run_id: str, files: list[sinks.OutputFile]) -> dict[str, Any]:
    from importlib.metadata import version

    model = prepared.model
    plan = prepared.plan
    manifest = {
        "run_id": run_id,
        "committed_at": dt.datetime.now(dt.UTC).isoformat(),
        "run_date": prepared.config.run_date.isoformat() if prepared.config.run_date else None,
        "predicted_at": prepared.spec.predicted_at.isoformat(),
        "config": prepared.config.redacted(),
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
        },
        "runtime": model.runtime,
        "engine": _engine_facts(prepared),
        "batch_infer_version": version("batch-infer"),
        "sklearn_version": version("scikit-learn"),  # without importing it (compiled runtimes)
        "rows_in": plan.total_rows,
        "rows_out": sum(f.rows for f in files if not sinks.is_reject_file(f.path)),
        "rows_rejected": sum(f.rows for f in files if sinks.is_reject_file(f.path)),
        "partition_by": prepared.config.output.partition_by,
        "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in files],
        **_observed(prepared),
    }
    return redact_data(manifest)


def _observed(prepared: _Prepared) -> dict[str, Any]:
    """What `batch-infer report` needs later: the run's facts so far, statistics and drift."""
    facts = prepared.facts
    if facts is None:
        return {}
    run = facts.to_dict()
    statistics = run.pop("statistics")
    drift = {"baseline_run_id": run.pop("baseline_run_id"), "psi": run.pop("drift")}
    return {"run": run, "statistics": statistics, "drift": drift}


def _engine_facts(prepared: _Prepared) -> dict[str, Any]:
    """The engine that scored and, for Dask, where (credentials masked) and on how many workers."""
    stats = prepared.engine_stats
    facts: dict[str, Any] = {"engine": prepared.config.engine.kind}
    if stats is not None:
        facts["scheduler"] = redact_url(stats.scheduler)
        facts["workers_used"] = len(stats.workers)
        facts["task_retries"] = stats.task_retries
        facts["worker_peak_rss_mib"] = stats.worker_peak_rss_mib
    return facts


def _predicted_at(run_date: dt.date | None) -> dt.datetime:
    if run_date is not None:
        return dt.datetime.combine(run_date, dt.time(0, 0), tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _new_run_id() -> str:
    """Sortable and unique: the start time plus 8 random hex digits."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _inside(child: str, parent: str) -> bool:
    child, parent = child.rstrip("/") + "/", parent.rstrip("/") + "/"
    return child.startswith(parent)
