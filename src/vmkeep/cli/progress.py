"""The Progress port on a terminal: phase lines and a Rich progress bar on stderr."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from vmkeep.cli.output import stderr, stderr_console

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn, TaskID


class TerminalProgress:
    """Shows a bar (bytes, rate, ETA) while a task runs; silent when ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        self._quiet = quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._lock = threading.Lock()

    def step(self, message: str) -> None:
        if not self._quiet:
            stderr.print(f"[dim]• {message}[/dim]", markup=True, highlight=False)

    def begin(self, label: str, total: int, unit: str = "bytes") -> None:
        self.finish()
        if self._quiet:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn()]
        if unit == "bytes":
            columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
        else:
            columns += [MofNCompleteColumn(), TextColumn(unit)]
        columns.append(TimeRemainingColumn())
        self._progress = Progress(*columns, console=stderr_console(), transient=False)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        with self._lock:
            if self._progress is not None and self._task is not None:
                self._progress.advance(self._task, amount)

    def finish(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
            self._progress = None
            self._task = None
