"""What a run needs from where its output goes: the ``Target`` seam.

A run checks the target may be written, stages each fragment's files where no reader sees them
(on any worker), lists what an earlier attempt staged, commits everything once, and finds an
earlier commit of the same output. The folder of Parquet files (``folder.FolderTarget``) is the
first target; tables plug in behind the same methods. Modelled on Ray Data's ``Datasink``:
``check`` ~ ``on_write_start``, ``stage_fragment`` ~ ``write``, ``commit`` ~
``on_write_complete``, ``discard_staging`` ~ ``on_write_failed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from ..config import OutputConfig


@dataclass(frozen=True)
class OutputFile:
    """A written Parquet file: its path relative to the output root, its rows and size, and
    for a table the statistics its commit records (Delta's ``stats`` JSON), if any."""

    path: str
    rows: int
    bytes: int = 0
    stats: str | None = None


@dataclass(frozen=True)
class FragmentRecord:
    """What a finished fragment left: its staged files, and the statistics of its rows."""

    files: list[OutputFile]
    statistics: dict[str, Any] | None = None


class Target(Protocol):
    """Where a run's output goes. Staging methods run on workers; the rest on the client."""

    url: str  # as the user wrote it, credentials masked when shown
    staging_key: str  # the run key: inputs, model, config and run date hashed

    @property
    def rejects_url(self) -> str: ...

    # -- before scoring -------------------------------------------------------------------
    def check(self, mode: str, own_prefixes: set[str]) -> None:
        """Raise unless this run may write here in ``mode`` (before anything is scored)."""

    def read_manifest(self) -> dict[str, Any] | None:
        """The committed result's manifest, or None."""

    def is_committed(self) -> bool:
        """Whether a result is committed here."""

    def previous_manifest(self) -> dict[str, Any] | None:
        """The manifest of an earlier run into this output (a drift baseline), if the target
        keeps several runs' results (a table); a folder holds one and says None."""

    def abort_unfinished_uploads(self) -> None:
        """Clean what a killed writer left half-written (under the run's lock)."""

    # -- staging (any worker) ---------------------------------------------------------------
    def stage_fragment(
        self,
        fragment_name: str,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        config: OutputConfig,
        dictionary_columns: list[str] | bool = True,
    ) -> list[OutputFile]:
        """Write one fragment's scored rows where no reader sees them."""

    def stage_rejects(self, fragment_name: str, batches: list[pa.RecordBatch]) -> OutputFile: ...

    def stage_empty(self, schema: pa.Schema, partition_by: list[str]) -> OutputFile: ...

    def staged_path(self, relative: str) -> str: ...

    def record_fragment(
        self, fragment_name: str, files: list[OutputFile], statistics: dict[str, Any] | None
    ) -> None:
        """Note that a fragment is wholly staged: a resumed run skips it."""

    # -- resuming ---------------------------------------------------------------------------
    def recorded_fragments(self) -> dict[str, FragmentRecord]:
        """What an earlier attempt with the same run key staged."""

    def read_run_record(self, key: str | None = None) -> dict[str, Any] | None: ...

    def write_run_record(self, record: dict[str, Any]) -> None: ...

    def other_stagings(self) -> list[str]:
        """Run keys of other, interrupted runs into this output."""

    def discard_unrecorded(self, done: set[str]) -> None: ...

    def discard_staging(self, key: str | None = None) -> None:
        """Drop a run's staged files (this run's by default)."""

    # -- committing (once) ------------------------------------------------------------------
    def commit(
        self,
        files: list[OutputFile],
        manifest: dict[str, Any],
        mode: str,
        own_prefixes: set[str],
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Make every staged file visible at once, with the manifest; returns the manifest."""

    def pending_commit(self) -> dict[str, Any] | None:
        """The plan of this run's commit that a crash interrupted, if any."""

    def finish_commit(self) -> dict[str, Any]: ...

    def committed_but_not_cleaned(self) -> dict[str, Any] | None: ...

    def finish_cleanup(self, intent: dict[str, Any]) -> None: ...
