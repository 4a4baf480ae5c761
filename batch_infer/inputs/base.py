"""What a run needs from where its rows come from: a plan of fragments, and a way to read one.

A :class:`Fragment` is one row group of one Parquet data file: the unit that is read, scored and
staged on its own. An input plans its fragments before anything is scored (``InputPlan``) and
says which version of the data it read (``InputPlan.version``: file sizes and ETags for a
folder; a table's version or snapshot), so a resumed run reads exactly the same rows. The folder
of Parquet files (``inputs.folder``) is the first input; tables plug in behind ``plan_input``.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BATCH_BYTES = 64 * 1024 * 1024  # decoded bytes per batch when no batch size is configured
MIN_BATCH_ROWS = 1024


@dataclass(frozen=True, eq=False)
class InputFile:
    """One Parquet file of the input, with its footer already read."""

    path: str
    url: str
    relative_path: str
    size: int
    version: str
    metadata: pq.FileMetaData = field(repr=False)
    partition: dict[str, str | None]
    # Columns converted to the unified type at a loss the config accepted (allow_lossy_types):
    # cast without Arrow's overflow/truncation checks, as the user asked.
    lossy_columns: frozenset[str] = frozenset()
    # --where: the row groups whose statistics may hold a selected row (None: all of them)
    row_groups: tuple[int, ...] | None = None

    @property
    def row_group_indices(self) -> range | tuple[int, ...]:
        """The row groups read, by their index in the file."""
        return range(self.metadata.num_row_groups) if self.row_groups is None else self.row_groups

    @property
    def num_rows(self) -> int:
        """Rows the row groups hold: what a reader reads (some writers put 0 in the file total)."""
        return sum(self.metadata.row_group(i).num_rows for i in self.row_group_indices)

    @property
    def num_row_groups(self) -> int:
        return len(self.row_group_indices)

    @property
    def schema(self) -> pa.Schema:
        return self.metadata.schema.to_arrow_schema()

    def first_row(self, row_group: int) -> int:
        """Index in the file of a row group's first row."""
        return sum(self.metadata.row_group(i).num_rows for i in range(row_group))


@dataclass(frozen=True, eq=False)
class Fragment:
    """One row group of one input file."""

    file: InputFile
    row_group: int
    num_rows: int

    @property
    def name(self) -> str:
        """A stable name for this fragment's output files: same input, same name on every rerun."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", posixpath.basename(self.file.path))
        stem = stem.removesuffix(".parquet").removeprefix("part-")[:60]
        digest = hashlib.sha1(self.file.relative_path.encode()).hexdigest()[:8]
        return f"{stem}-{digest}-rg{self.row_group:05d}"

    def describe(self) -> str:
        return f"row group {self.row_group} of {self.file.url}"

    def batch_rows(self, target_bytes: int = BATCH_BYTES) -> int:
        """Rows per batch so a decoded batch holds about ``target_bytes``, whatever the row width."""
        row_group = self.file.metadata.row_group(self.row_group)
        bytes_per_row = max(1.0, row_group.total_byte_size / max(1, row_group.num_rows))
        return max(MIN_BATCH_ROWS, min(max(1, self.num_rows), int(target_bytes / bytes_per_row)))


@dataclass(eq=False)
class InputPlan:
    """Everything known about the input before reading any data."""

    fs: fsspec.AbstractFileSystem
    root: str
    files: list[InputFile]
    schema: pa.Schema
    partition_schema: pa.Schema
    # what was read beyond the files' own versions: a table's version or snapshot, else None
    version: dict[str, Any] | None = None
    # --where: its text, the row filter bound to ``schema``, and the files it pruned unread
    where: str | None = None
    row_filter: pc.Expression | None = None
    files_pruned: int = 0
    row_groups_pruned: int = 0

    @property
    def fragments(self) -> list[Fragment]:
        return [
            Fragment(f, rg, f.metadata.row_group(rg).num_rows)
            for f in self.files
            for rg in f.row_group_indices
        ]

    @property
    def total_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)
