"""The facts of one run, filled in as it goes: what metrics, the HTML report and lineage publish.

A failed run publishes too (its exit code, how far it got), so the runner writes into one
``RunFacts`` from the start instead of building a report only at the end.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..redaction import redact_data


@dataclass
class RunFacts:
    """How far a run got and what it did; safe to update from the scoring threads."""

    job: str  # the output's name (last path element, {run_date} left as is): a bounded label
    output: str = ""  # the output URL (not a label)
    inputs: list[str] = field(default_factory=list)  # input file URLs (lineage, report)
    run_id: str | None = None
    lineage_run_id: str | None = None  # the OpenLineage run's UUID, made at START
    run_date: str | None = None
    model_path: str = ""
    model_version: str = ""
    model_sha256: str = ""
    runtime: str = ""
    engine: str = "local"
    status: str = "running"  # running | committed | skipped | failed
    exit_code: int | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)  # epoch seconds
    finished_at: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)  # plan, score, commit
    rows_in: int = 0  # rows the input holds (planned)
    rows_scored: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # reject_code -> rows
    files_in: int = 0
    files_out: int = 0
    fragments: int = 0
    bytes_read: int = 0  # Parquet bytes of the input files planned
    bytes_written: int = 0  # bytes of the committed data files
    throughput: list[tuple[float, int]] = field(default_factory=list)  # (s since start, rows done)
    statistics: dict[str, Any] | None = None  # observe.statistics sketch, as a dict
    drift: dict[str, float] | None = None  # PSI by feature/output against the baseline run
    baseline_run_id: str | None = None  # the previous committed run drift compares with
    # tables (observe.datasets.note_tables): the input table, the version/snapshot read, the
    # output table's commit ("version 4", "snapshot 61…"), the Iceberg catalog's lineage namespace
    input_table: str | None = None
    input_version: dict[str, Any] | None = None
    table_commit: str | None = None
    catalog_namespace: str | None = None
    # not part of to_dict: the committed manifest (holds these facts) and the baseline's sketch
    manifest: dict[str, Any] | None = field(default=None, repr=False)
    baseline: dict[str, Any] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def stage(self, name: str) -> _Stage:
        """``with facts.stage("score"): ...`` adds the wall time spent to ``stage_seconds``."""
        return _Stage(self, name)

    def progressed(self, rows: int) -> None:
        """Rows (scored or rejected) just finished; a point on the throughput curve."""
        with self._lock:
            done = (self.throughput[-1][1] if self.throughput else 0) + rows
            self.throughput.append((round(time.time() - self.started_at, 3), done))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what the manifest keeps under ``run`` for ``batch-infer report``)."""
        data = {
            k: v
            for k, v in self.__dict__.items()
            if not k.startswith("_") and k not in ("manifest", "baseline")
        }
        data["throughput"] = [list(point) for point in self.throughput]
        data["seconds"] = round(self.seconds, 3)
        data["peak_rss_bytes"] = self.peak_rss_bytes
        return redact_data(data)

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    @property
    def peak_rss_bytes(self) -> int:
        """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class _Stage:
    def __init__(self, facts: RunFacts, name: str) -> None:
        self.facts, self.name = facts, name

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        spent = time.monotonic() - self.started
        with self.facts._lock:
            self.facts.stage_seconds[self.name] = self.facts.stage_seconds.get(self.name, 0) + spent
