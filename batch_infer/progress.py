"""Progress reporting, handed to the runner by the caller so the core never draws on a terminal.

``RichProgress`` draws a bar on stderr for people at a terminal; ``LogProgress`` writes plain log
lines for cron and Airflow; ``NoProgress`` is silent.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

log = logging.getLogger("batch_infer.progress")


class Progress(Protocol):
    def start(self, total_rows: int, total_fragments: int) -> None: ...
    def advance(self, rows: int = 0, fragments: int = 0) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, total_rows: int, total_fragments: int) -> None:
        pass

    def advance(self, rows: int = 0, fragments: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


class LogProgress:
    """A log line at most every ``interval`` seconds, and one at the end: no animation."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.rows = self.fragments = self.total_rows = self.total_fragments = 0
        self.started = self.last = 0.0

    def start(self, total_rows: int, total_fragments: int) -> None:
        self.total_rows, self.total_fragments = total_rows, total_fragments
        self.started = self.last = time.monotonic()

    def advance(self, rows: int = 0, fragments: int = 0) -> None:
        self.rows += rows
        self.fragments += fragments
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._log(now)

    def finish(self) -> None:
        self._log(time.monotonic())

    def _log(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        percent = 100.0 * self.rows / self.total_rows if self.total_rows else 100.0
        log.info(
            "scored %d/%d rows (%.0f%%), %d/%d row groups, %.0f rows/s",
            self.rows,
            self.total_rows,
            percent,
            self.fragments,
            self.total_fragments,
            self.rows / elapsed,
        )


class RichProgress:
    """A rich progress bar on stderr: rows, row groups, rows/s and ETA."""

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
            TextColumn("rows"),
            TextColumn("{task.fields[fragments]} row groups"),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = None
        self._fragments = 0
        self._total_fragments = 0
        self._started = 0.0
        self._rows = 0

    def start(self, total_rows: int, total_fragments: int) -> None:
        self._total_fragments = total_fragments
        self._started = time.monotonic()
        self._progress.start()
        self._task = self._progress.add_task(
            "scoring", total=total_rows, fragments=f"0/{total_fragments}", rate="0"
        )

    def advance(self, rows: int = 0, fragments: int = 0) -> None:
        self._fragments += fragments
        self._rows += rows
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._progress.update(
            self._task,
            advance=rows,
            fragments=f"{self._fragments}/{self._total_fragments}",
            rate=f"{self._rows / elapsed:,.0f}",
        )

    def finish(self) -> None:
        self._progress.stop()
