"""Progress reporting, handed to the runner by the caller so the core never draws on a terminal.

``RichProgress`` draws a bar on stderr for people at a terminal; ``LogProgress`` writes plain log
lines for cron and Airflow; ``NoProgress`` is silent. The runner calls them from one thread.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

log = logging.getLogger("batch_infer.progress")


class Progress(Protocol):
    def start(self, total_rows: int, total_fragments: int, total_files: int) -> None: ...
    def advance(self, rows: int = 0, fragments: int = 0, files: int = 0) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, total_rows: int, total_fragments: int, total_files: int) -> None:
        pass

    def advance(self, rows: int = 0, fragments: int = 0, files: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


class _Counts:
    """Done and total rows, row groups and files, and the rate since start."""

    def __init__(self) -> None:
        self.rows = self.fragments = self.files = 0
        self.total_rows = self.total_fragments = self.total_files = 0
        self.started = time.monotonic()

    def start(self, total_rows: int, total_fragments: int, total_files: int) -> None:
        self.total_rows, self.total_fragments, self.total_files = (
            total_rows,
            total_fragments,
            total_files,
        )
        self.started = time.monotonic()

    def add(self, rows: int, fragments: int, files: int) -> None:
        self.rows += rows
        self.fragments += fragments
        self.files += files

    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-9)


class LogProgress:
    """A log line at most every ``interval`` seconds, and one at the end: no animation."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.counts = _Counts()
        self.last = 0.0

    def start(self, total_rows: int, total_fragments: int, total_files: int) -> None:
        self.counts.start(total_rows, total_fragments, total_files)
        self.last = time.monotonic()

    def advance(self, rows: int = 0, fragments: int = 0, files: int = 0) -> None:
        self.counts.add(rows, fragments, files)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._log()

    def finish(self) -> None:
        if self.last:  # started: a run that only finished a commit has nothing to report
            self._log()

    def _log(self) -> None:
        c = self.counts
        percent = 100.0 * c.rows / c.total_rows if c.total_rows else 100.0
        log.info(
            "scored %d/%d rows (%.0f%%), %d/%d files, %d/%d row groups, %.0f rows/s",
            c.rows,
            c.total_rows,
            percent,
            c.files,
            c.total_files,
            c.fragments,
            c.total_fragments,
            c.rate(),
        )


class RichProgress:
    """A rich progress bar on stderr: rows, files, row groups, rows/s, elapsed and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows · {task.fields[files]} files · {task.fields[fragments]} row groups"),
            TextColumn("· {task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = None
        self.counts = _Counts()

    def start(self, total_rows: int, total_fragments: int, total_files: int) -> None:
        self.counts.start(total_rows, total_fragments, total_files)
        self._progress.start()
        self._task = self._progress.add_task("scoring", total=total_rows, **self._fields())

    def advance(self, rows: int = 0, fragments: int = 0, files: int = 0) -> None:
        self.counts.add(rows, fragments, files)
        self._progress.update(self._task, advance=rows, **self._fields())

    def finish(self) -> None:
        if self._task is not None:
            self._progress.stop()

    def _fields(self) -> dict[str, str]:
        c = self.counts
        return {
            "files": f"{c.files}/{c.total_files}",
            "fragments": f"{c.fragments}/{c.total_fragments}",
            "rate": f"{c.rate():,.0f}",
        }
