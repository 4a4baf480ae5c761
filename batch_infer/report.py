"""The run report: what a run did, as JSON for schedulers and as a short text summary for people."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunReport:
    """The outcome of a committed run."""

    run_id: str
    output: str
    rows_in: int
    rows_out: int
    files_in: int
    files_out: int
    fragments: int
    seconds: float
    model_sha256: str
    model_version: str
    predicted_at: str
    run_date: str | None = None
    rows_rejected: int = 0
    status: str = "committed"
    runtime: str = "sklearn"
    engine: str = "local"
    scheduler: str | None = None
    workers_used: int | None = None
    task_retries: int | None = None
    worker_peak_rss_mib: float | None = None
    table_commit: str | None = None  # "version 4" / "snapshot 123…" when the output is a table
    where: str | None = None  # --where: rows_in were read, rows_selected scored or rejected
    rows_selected: int | None = None

    def to_dict(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {**asdict(self), "version": version("batch-infer")}

    def summary(self) -> str:
        rate = self.rows_in / self.seconds if self.seconds > 0 else 0.0
        if self.status == "skipped":
            return f"Skipped: {self.output} is already committed (run {self.run_id})"
        return "\n".join(
            [
                f"Committed {self.rows_out:,} rows to {self.output}",
                f"  input     {self.rows_in:,} rows in {self.files_in} file(s), {self.fragments} row group(s)",
                *(
                    [f"  where     {self.rows_selected:,} rows selected by {self.where}"]
                    if self.where is not None and self.rows_selected is not None
                    else []
                ),
                f"  output    {self.files_out} data file(s) in {self.table_commit}"
                if self.table_commit
                else f"  output    {self.files_out} Parquet file(s), _manifest.json, _SUCCESS",
                *(
                    [f"  rejected  {self.rows_rejected:,} rows (see _manifest.json: rejects)"]
                    if self.rows_rejected
                    else []
                ),
                f"  model     version {self.model_version} (sha256 {self.model_sha256[:16]}…), "
                f"{self.runtime} runtime",
                *(
                    [
                        f"  engine    dask, {self.scheduler}, {self.workers_used} worker(s), "
                        f"{self.task_retries} task retries, worker peak RSS "
                        f"{self.worker_peak_rss_mib} MiB"
                    ]
                    if self.engine == "dask"
                    else []
                ),
                f"  time      {self.seconds:.2f} s ({rate:,.0f} rows/s)",
                f"  run id    {self.run_id}",
            ]
        )


@dataclass(frozen=True)
class ValidationReport:
    """What a run would do, found without writing anything."""

    output: str
    output_state: str
    rows: int
    files: int
    fragments: int
    bytes: int
    features: list[str]
    model_kind: str
    model_sha256: str
    added_columns: list[str] = field(default_factory=list)
    status: str = "valid"
    runtime: str = "sklearn"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return "\n".join(
            [
                f"Valid: {self.rows:,} rows in {self.files} file(s), {self.fragments} row group(s) "
                f"({self.bytes:,} bytes) would be scored",
                f"  model     {self.model_kind}, features {', '.join(self.features)}, "
                f"{self.runtime} runtime",
                f"  adds      {', '.join(self.added_columns)}",
                f"  output    {self.output} ({self.output_state})",
            ]
        )
