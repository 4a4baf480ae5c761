"""Orchestrate a run: plan (``planning``), check, score fragment by fragment into staging
(``fragment`` on an engine), commit once to the target (``targets``).

Never prints; progress goes to the ``Progress`` the caller hands in, facts to ``logging``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from . import failpoints, lock, redaction
from .config import RunConfig
from .engines import dask as dask_engine
from .engines import local as local_engine
from .errors import (
    ConfigError,
    CredentialsError,
    InputError,
    ModelError,
    OutputConflictError,
    from_store,
)
from .executor import available_cores
from .fragment import FragmentJob, RejectBudget, StagedFragment
from .inputs import Fragment
from .logs import RUN_ID
from .manifest import (
    build_manifest,
    compare_with_baseline,
    note_plan,
    note_statistics,
    noted,
    run_report,
    statistics_columns,
)
from .observe.datasets import note_tables
from .observe.facts import RunFacts
from .observe.publish import output_name, published
from .planning import PreparedRun, prepare_run
from .progress import NoProgress, Progress
from .report import RunReport, ValidationReport
from .resume import new_run_id, resume_or_start
from .targets import (
    OutputFile,
    dictionary_columns,
    is_reject_file,
)

log = logging.getLogger(__name__)


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
    redaction.remember_config(config.model_dump(mode="json"))  # masked wherever they appear
    facts = facts or RunFacts(job=output_name(config.output.path))
    with published(config, facts), _store_errors():
        report = _run(config, progress, cancel, facts)
        facts.table_commit = report.table_commit  # committed now, or found committed
        return report


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
        prepared = prepare_run(config, read_ahead=True)
    prepared.facts = facts
    note_plan(facts, prepared)
    note_tables(facts, config, prepared.plan.version)
    target = prepared.target
    if target.committed_but_not_cleaned() is not None:
        return noted(facts, _finish_cleanup(prepared, started))
    skipped = _skip_if_committed(prepared, started)
    if skipped is not None:
        return noted(facts, skipped)
    target.check(config.output.mode, prepared.own_prefixes)  # fail before writing
    held = lock.acquire(target, new_run_id())
    try:
        # uploads left open by a run that died mid-file: ours to abort now that we hold the lock
        target.abort_unfinished_uploads()
        target.check(config.output.mode, prepared.own_prefixes)
        record, done = resume_or_start(prepared)
        RUN_ID.set(record["run_id"])  # on every log line from now on
        facts.run_id = record["run_id"]
        held.rename(record["run_id"])
        prepared.spec = replace(
            prepared.spec, predicted_at=dt.datetime.fromisoformat(record["predicted_at"])
        )
        if target.pending_commit() is not None:
            log.info("finishing the interrupted commit of run %s", record["run_id"])
            with facts.stage("commit"):
                held.check()  # a lock taken over while we stalled: never commit (exit 75)
                manifest = target.finish_commit()
        else:
            failpoints.reached("after-plan")
            with facts.stage("score"):
                files = _score(prepared, done, progress, cancel)
            compare_with_baseline(prepared)
            with facts.stage("commit"):
                held.check()
                manifest = target.commit(
                    files,
                    build_manifest(prepared, record["run_id"], files),
                    config.output.mode,
                    prepared.own_prefixes,
                    previous=record.get("inherited_manifest"),
                )
    except CredentialsError:
        cancel.set()  # expired or refused credentials: fix them and rerun, the work is kept
        raise
    except (ConfigError, InputError, ModelError, OutputConflictError):
        target.discard_staging()  # the input, model or config must change: no resuming
        raise
    except BaseException:
        cancel.set()  # interrupted or failed on the way: keep what is staged for a resume
        raise
    finally:
        held.release()
        progress.finish()
    report = run_report(prepared, manifest, started)
    log.info("committed %d rows in %d file(s) to %s", report.rows_out, report.files_out, target.url)
    facts.manifest = manifest
    facts.bytes_written = sum(int(f.get("bytes", 0)) for f in manifest.get("files", []))
    return noted(facts, report)


def _validate(config: RunConfig) -> ValidationReport:
    prepared = prepare_run(config)
    plan, target = prepared.plan, prepared.target
    committed = target.is_committed()
    if not (committed and config.output.if_exists == "skip"):
        target.check(config.output.mode, prepared.own_prefixes)
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


def _finish_cleanup(prepared: PreparedRun, started: float) -> RunReport:
    """The same run was killed after committing: finish its cleanup and report it as done."""
    held = lock.acquire(prepared.target, new_run_id())
    try:
        intent = prepared.target.committed_but_not_cleaned()
        if intent is not None:
            prepared.target.finish_cleanup(intent)
    finally:
        held.release()
    manifest = prepared.target.read_manifest() or {}
    log.info("run %s was already committed; finished its cleanup", manifest.get("run_id"))
    return run_report(prepared, manifest, started)


def _skip_if_committed(prepared: PreparedRun, started: float) -> RunReport | None:
    """``--if-exists skip``: a committed output in mode error is success, not a conflict."""
    config, target = prepared.config, prepared.target
    if config.output.if_exists != "skip" or config.output.mode != "error":
        return None
    if not target.is_committed():
        return None
    manifest = target.read_manifest() or {}
    log.info("%s is already committed (run %s): skipping", target.url, manifest.get("run_id"))
    report = run_report(prepared, manifest, started)
    return replace(report, status="skipped", rows_out=0, files_out=0)


def _score(
    prepared: PreparedRun,
    done: dict[str, list[OutputFile]],
    progress: Progress,
    cancel: threading.Event,
) -> list[OutputFile]:
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
        dictionary_columns=dictionary_columns(
            prepared.output_schema, prepared.float_columns, config.output.partition_by
        ),
        statistics=statistics_columns(prepared),
        row_filter=plan.row_filter,
        prefetched={n: b for n, b in prepared.prefetched.items() if n not in done},
    )
    prepared.prefetched = {}  # the job's copy is emptied as the workers take them
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

    def advance(fragment: Fragment, rows: int) -> None:
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
        budget.count += sum(f.rows for f in files if is_reject_file(f.path))

    results: list[tuple[Fragment, StagedFragment]] = []

    def finished(fragment: Fragment, staged: StagedFragment) -> None:
        results.append((fragment, staged))
        advance(fragment, staged.rows)

    try:
        if config.engine.kind == "dask":
            ref = dask_engine.model_ref(
                prepared.model, config.model, config.output.columns, config.output.methods
            )
            remote_job = replace(job, model=None, decode_threads=False)
            prepared.engine_stats = dask_engine.run_fragments(
                config.engine, remote_job, ref, todo, finished, cancel, available_cores(), budget
            )
        else:
            local_engine.run_fragments(job, todo, workers, finished, cancel, budget)
    finally:
        facts.rows_rejected = budget.count  # also when the reject limit stopped the run

    files = [f for name in done for f in done[name]] + [f for _, s in results for f in s.files]
    sketches = prepared.resumed_statistics + [s.statistics for _, s in results if s.statistics]
    note_statistics(facts, job.statistics, sketches)
    rows = sum(f.rows for f in files)  # scored and rejected
    # a row lost or doubled is a bug, never a result (with --where: checked per fragment)
    if plan.row_filter is None and rows != plan.total_rows:
        raise RuntimeError(f"staged {rows} rows but the input holds {plan.total_rows}")
    if budget.count:
        log.warning("%d row(s) rejected, kept in %s", budget.count, target.rejects_url)
    if not [f for f in files if not is_reject_file(f.path)]:  # keep the rejects, if any
        files.append(target.stage_empty(prepared.output_schema, config.output.partition_by))
    return files
