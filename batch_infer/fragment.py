"""The unit of work: read one fragment, score it, stage its output and record it as done.

Both engines run exactly this (``run_fragment``); they only decide where. It depends only on its
arguments, so a thread, a Dask worker or a test can run any fragment of a run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import failpoints
from .config import OutputConfig
from .errors import BatchInferError, InputError, ModelError, first_line
from .inputs import Fragment, read_fragment
from .model import LoadedModel
from .observe.statistics import RunStatistics
from .scoring import REJECT_FIELDS, RowOrigin, ScoringSpec, score_batch
from .targets import OutputFile, Target, check_partition_values, is_reject_file


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
    target: Target
    output: OutputConfig
    dictionary_columns: list[str]
    statistics: tuple[list[str], list[str], list[str]] | None = (
        None  # features, outputs, partitions
    )
    row_filter: pc.Expression | None = None  # --where: rows it does not select are not scored
    # batches already decoded, by fragment name (planning.read_ahead_while); taken once
    prefetched: dict[str, list[pa.RecordBatch]] | None = None


@dataclass(frozen=True)
class StagedFragment:
    """A fragment whose output is wholly written to staging."""

    name: str
    source: str
    rows: int
    files: list[OutputFile]
    statistics: dict[str, Any] | None = None  # observe.statistics sketch of its rows


REJECT_COLUMNS = [f.name for f in REJECT_FIELDS]  # where a rejected row came from, and why


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

    def add_staged(self, rows: int, target: Target, file: OutputFile) -> None:
        """Rows a Dask task rejected and staged; over the limit, name the first of them."""
        with self._lock:
            self.count += rows
            over = self.count > self.allowed
        if over:
            path = target.staged_path(file.path)
            with target.fs.open(path, "rb") as handle:
                first = pq.ParquetFile(handle).read_row_group(0, columns=REJECT_COLUMNS)
            self._refuse(first.slice(0, 1).to_pylist()[0])

    def add(self, rejected: pa.RecordBatch) -> None:
        with self._lock:
            self.count += rejected.num_rows
            over = self.count > self.allowed
        if over:
            # only where and why: the row's own values may not convert (a year past 9999)
            self._refuse(rejected.select(REJECT_COLUMNS).slice(0, 1).to_pylist()[0])

    def _refuse(self, first: dict[str, Any]) -> None:
        raise InputError(
            f"{self.count} row(s) rejected, more than the {self.allowed} allowed; first: "
            f"{first['reject_source_file']} row group {first['reject_row_group']} "
            f"row {first['reject_row_index']}: {first['reject_message']}",
            "fix those rows, or let them go to the rejects dataset with --max-reject-rows N "
            f"or --max-reject-rate R (it would be {self.where})",
        )


def score_fragment(
    fragment: Fragment,
    job: FragmentJob,
    cancel: threading.Event | None = None,
    budget: RejectBudget | None = None,
) -> StagedFragment:
    """Read one row group, score it and stage its output; touches nothing outside staging."""
    rejected: list[pa.RecordBatch] = []
    selected = 0  # rows --where selected (all rows read without one)
    statistics = None
    if job.statistics is not None:
        statistics = RunStatistics(*job.statistics)

    def scored() -> Iterator[pa.RecordBatch]:
        nonlocal selected
        batches = (job.prefetched or {}).pop(fragment.name, None) or read_fragment(
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
            origin = RowOrigin(fragment.file.url, fragment.row_group, first_row)
            first_row += batch.num_rows
            read_batch = batch
            if job.row_filter is not None:
                batch = batch.filter(job.row_filter)
                if batch.num_rows == 0:
                    continue
            selected += batch.num_rows
            check_partition_values(batch, job.output.partition_by, fragment.describe())
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
            if outcome.rejected is not None and batch is not read_batch:
                outcome = replace(
                    outcome, rejected=_in_read_batch(outcome.rejected, read_batch, job, origin)
                )
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

    files = job.target.stage_fragment(
        fragment.name, scored(), job.output_schema, job.output, job.dictionary_columns
    )
    if rejected:
        files.append(job.target.stage_rejects(fragment.name, rejected))
    # a row lost or doubled is a bug, never a result (without --where: checked for the run)
    if job.row_filter is not None and sum(f.rows for f in files) != selected:
        raise RuntimeError(
            f"{fragment.describe()}: staged {sum(f.rows for f in files)} rows of {selected}"
        )
    return StagedFragment(
        name=fragment.name,
        source=fragment.file.path,
        rows=sum(f.rows for f in files if not is_reject_file(f.path)),
        files=files,
        statistics=statistics.to_dict() if statistics is not None else None,
    )


def _in_read_batch(
    rejected: pa.RecordBatch, read: pa.RecordBatch, job: FragmentJob, origin: RowOrigin
) -> pa.RecordBatch:
    """Rejected rows' indices counted in the file, not among the rows --where selected."""
    marker = "__batch_infer_row__"
    numbered = read.append_column(marker, pa.array(np.arange(read.num_rows), pa.int64()))
    positions = numbered.filter(job.row_filter).column(marker).to_numpy()
    index = rejected.schema.get_field_index("reject_row_index")
    selected = rejected.column(index).to_numpy() - origin.first_row
    return rejected.set_column(
        index,
        rejected.schema.field(index),
        pa.array(origin.first_row + positions[selected], pa.int64()),
    )


def _row_count_mismatch(fragment: Fragment, read: int) -> InputError:
    return InputError(
        f"{fragment.describe()} holds {'more than ' if read > fragment.num_rows else ''}"
        f"{read} rows but its footer says {fragment.num_rows}: the file is corrupt",
        "rewrite the file (e.g. read and write it again with pyarrow), or remove it from the input",
    )


def run_fragment(
    fragment: Fragment,
    job: FragmentJob,
    cancel: threading.Event | None = None,
    budget: RejectBudget | None = None,
) -> StagedFragment:
    """Score and stage one fragment, then record it as done: a resumed run skips it."""
    staged = score_fragment(fragment, job, cancel, budget)
    job.target.record_fragment(fragment.name, staged.files, staged.statistics)
    failpoints.reached("between-fragments")
    return staged
