"""Orchestrate a run: plan, check, score fragment by fragment into staging, commit once.

Never prints; progress goes to the ``Progress`` the caller hands in, facts to ``logging``.
``score_fragment`` is the unit of work (read one row group, score it, stage its output) and
depends only on its arguments, so a pool or a cluster can run fragments anywhere.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa

from . import sinks, sources, storage
from .config import OutputConfig, RunConfig
from .errors import BatchInferError, ConfigError, InputError, first_line
from .executor import available_cores, library_threads, run_parallel
from .model import LoadedModel, load_model
from .progress import NoProgress, Progress
from .report import RunReport, ValidationReport
from .scoring import ScoringSpec, is_numeric, label_type, output_fields, score_batch

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class StagedFragment:
    """A fragment whose output is wholly written to staging."""

    name: str
    source: str
    rows: int
    files: list[sinks.OutputFile]


@dataclass
class _Prepared:
    config: RunConfig
    plan: sources.InputPlan
    model: LoadedModel
    spec: ScoringSpec
    output_schema: pa.Schema
    target: sinks.OutputTarget

    @property
    def own_prefixes(self) -> set[str]:
        """File-name prefixes of this run's output files (see ``sinks.check_target``)."""
        return {sinks.own_prefix(f.name) for f in self.plan.fragments} | {sinks.own_prefix("empty")}

    @property
    def probability_columns(self) -> set[str]:
        return {
            name
            for name in self.output_schema.names[len(self.plan.schema) :]
            if name.startswith(self.config.output.columns.probability)
        }


def run(config: RunConfig, progress: Progress | None = None) -> RunReport:
    """Score the input with the model and commit the output. Raises a BatchInferError on failure."""
    started = time.monotonic()
    progress = progress or NoProgress()
    prepared = _prepare(config, run_id=_new_run_id())
    plan, target = prepared.plan, prepared.target
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
            prepared.output_schema, prepared.probability_columns, config.output.partition_by
        ),
    )
    fragments = plan.fragments
    log.info(
        "scoring %d rows in %d file(s), %d row group(s) from %s into %s (run %s)",
        plan.total_rows,
        len(plan.files),
        len(fragments),
        plan.root,
        target.url,
        target.run_id,
    )
    progress.start(plan.total_rows, len(fragments), len(plan.files))
    row_groups_left = {f.path: f.num_row_groups for f in plan.files}

    def advance(done: StagedFragment) -> None:
        row_groups_left[done.source] -= 1
        progress.advance(rows=done.rows, fragments=1, files=int(row_groups_left[done.source] == 0))

    try:
        with library_threads(workers, available_cores()):
            staged = run_parallel(
                lambda fragment: score_fragment(fragment, job),
                fragments,
                workers,
                on_result=advance,
            )
        files = [f for s in staged for f in s.files]
        rows_out = sum(s.rows for s in staged)
        if rows_out != plan.total_rows:  # a row lost or doubled is a bug, never a result
            raise RuntimeError(f"scored {rows_out} rows but the input holds {plan.total_rows}")
        if not files:
            files = [sinks.stage_empty(target, prepared.output_schema, config.output.partition_by)]
        sinks.commit(
            target, files, _manifest(prepared, files), config.output.mode, prepared.own_prefixes
        )
    except BaseException:
        sinks.discard_staging(target)
        raise
    finally:
        progress.finish()
    report = RunReport(
        run_id=target.run_id,
        output=target.url,
        rows_in=plan.total_rows,
        rows_out=rows_out,
        files_in=len(plan.files),
        files_out=len(files),
        fragments=len(fragments),
        seconds=round(time.monotonic() - started, 3),
        model_sha256=prepared.model.sha256,
        model_version=prepared.model.version,
        predicted_at=prepared.spec.predicted_at.isoformat(),
        run_date=config.run_date.isoformat() if config.run_date else None,
    )
    log.info("committed %d rows in %d file(s) to %s", rows_out, len(files), target.url)
    return report


def validate(config: RunConfig) -> ValidationReport:
    """Everything ``run`` checks before scoring, without writing anything."""
    prepared = _prepare(config, run_id="validate")
    plan, target = prepared.plan, prepared.target
    state = "exists, will be replaced" if sinks.visible_data_files(target) else "empty or new"
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
        added_columns=prepared.output_schema.names[len(plan.schema) :],
    )


def score_fragment(fragment: sources.Fragment, job: FragmentJob) -> StagedFragment:
    """Read one row group, score it and stage its output; touches nothing outside staging."""

    def scored() -> Iterator[pa.RecordBatch]:
        for batch in sources.read_fragment(
            job.input_fs,
            fragment,
            job.input_schema,
            job.partition_schema,
            job.batch_size,
            job.decode_threads,
        ):
            try:
                result = score_batch(batch, job.model, job.spec)
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise InputError(
                    f"the model could not score {fragment.describe()}: {first_line(exc)}",
                    "check that feature values are finite and of the kind the model was fitted on",
                ) from None
            yield result

    files = sinks.stage_fragment(
        scored(),
        job.output_schema,
        job.target,
        fragment.name,
        job.output,
        job.dictionary_columns,
    )
    return StagedFragment(
        name=fragment.name, source=fragment.file.path, rows=sum(f.rows for f in files), files=files
    )


def _prepare(config: RunConfig, run_id: str) -> _Prepared:
    """Load the model, plan the input, check features and output: all before any scoring."""
    output_url = config.output_path
    # Unpickling imports scikit-learn (~0.5 s of Python); reading footers waits on storage.
    # Overlap them. A model problem is reported first, as if loaded first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model") as pool:
        model_future = pool.submit(load_model, config.model)
        try:
            plan = sources.plan_input(config.input)
        except BatchInferError:
            model_future.result()
            raise
        model = model_future.result()
    _check_features(plan, model.features)
    spec = ScoringSpec(
        features=model.features,
        columns=config.output.columns,
        predicted_at=_predicted_at(config.run_date),
        model_version=model.version,
    )
    added = output_fields(model, spec, label_type(model))
    output_schema = _output_schema(plan.schema, added, config.output.partition_by)
    target = sinks.open_target(output_url, config.output.storage_options, run_id)
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
    prepared = _Prepared(config, plan, model, spec, output_schema, target)
    sinks.check_target(target, config.output.mode, prepared.own_prefixes)
    return prepared


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


def _check_features(plan: sources.InputPlan, features: list[str]) -> None:
    """Every feature column must exist and be numeric in every file."""
    for file in plan.files:
        schema = file.schema
        for name in features:
            if name in plan.partition_schema.names and name not in schema.names:
                field = plan.partition_schema.field(name)
            elif name in schema.names:
                field = schema.field(name)
            else:
                raise InputError(
                    f"{file.url} has no column {name!r}, a feature the model needs",
                    "add the column to the input, or check --features and the model's features",
                )
            if not is_numeric(field.type):
                raise InputError(
                    f"column {name!r} in {file.url} is {field.type}, not numeric",
                    "cast it to a number upstream, or leave it out of --features",
                )


def _manifest(prepared: _Prepared, files: list[sinks.OutputFile]) -> dict[str, Any]:
    import sklearn

    model = prepared.model
    plan = prepared.plan
    return {
        "run_id": prepared.target.run_id,
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
            "saved_sklearn_version": model.estimator.saved_sklearn_version,
            "scaler_path": model.scaler.url if model.scaler else None,
            "scaler_sha256": model.scaler.sha256 if model.scaler else None,
        },
        "sklearn_version": sklearn.__version__,
        "rows_in": plan.total_rows,
        "rows_out": sum(f.rows for f in files),
        "partition_by": prepared.config.output.partition_by,
        "files": [{"path": f.path, "rows": f.rows} for f in files],
    }


def _predicted_at(run_date: dt.date | None) -> dt.datetime:
    if run_date is not None:
        return dt.datetime.combine(run_date, dt.time(0, 0), tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _new_run_id() -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _inside(child: str, parent: str) -> bool:
    child, parent = child.rstrip("/") + "/", parent.rstrip("/") + "/"
    return child.startswith(parent)
