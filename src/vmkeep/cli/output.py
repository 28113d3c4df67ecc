"""Rendering: Rich tables on stdout for people, JSON on stdout for scripts, logs on stderr."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


class _LazyConsole:
    """A Rich console made on first use. Rich is about 55 modules, 0.07 s of a cold start:
    commands that print only JSON (``--json``, what scripts and timers run) never load it."""

    def __init__(self, *, to_stderr: bool) -> None:
        self._to_stderr = to_stderr
        self._console: Console | None = None
        self._lock = threading.Lock()  # a worker's first log line and the progress bar

    def get(self) -> Console:
        with self._lock:
            if self._console is None:
                from rich.console import Console

                console = Console(stderr=self._to_stderr, highlight=False, soft_wrap=False)
                if not console.is_terminal:
                    # Piped output is read by people with wide terminals or by grep: do not
                    # squeeze tables into 80 columns and cut paths.
                    console.width = 200
                self._console = console
            return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


_STDOUT = _LazyConsole(to_stderr=False)
_STDERR = _LazyConsole(to_stderr=True)
if TYPE_CHECKING:
    stdout: Console
    stderr: Console
else:
    stdout, stderr = _STDOUT, _STDERR  # used as Consoles: attribute access goes through


def stderr_console() -> Console:
    """The stderr console itself (for Rich objects that want a real Console)."""
    return _STDERR.get()


def jsonable(value: Any) -> Any:
    """Turn dataclasses, enums, paths and tuples into plain JSON values, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def print_json(value: Any) -> None:
    """Write ``value`` as indented JSON to stdout (unicode kept as is)."""
    sys.stdout.write(json.dumps(jsonable(value), indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def setup_logging(verbosity: int) -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv; always to stderr."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(_DeferredRichHandler(show_path=verbosity > 1))
    root.setLevel(level)


class _DeferredRichHandler(logging.Handler):
    """Hands records to a Rich log handler, made (and Rich loaded) at the first record."""

    def __init__(self, *, show_path: bool) -> None:
        super().__init__()
        self._show_path = show_path
        self._rich: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._rich is None:
            from rich.logging import RichHandler

            self._rich = RichHandler(
                console=stderr_console(), show_path=self._show_path, markup=False
            )
        self._rich.handle(record)


def error(message: str) -> None:
    """The one-line error users see."""
    stderr.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)


def warn(*warnings: str) -> None:
    """Warnings that belong to a command's result (printed with it on stdout)."""
    for warning in warnings:
        stdout.print(f"[yellow]warning:[/] {escape(warning)}")


def escape(text: str) -> str:
    """Make arbitrary text (VM names with brackets) safe inside Rich markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def new_table(*headers: str, **options: Any) -> Table:
    """A Rich table (Rich loaded now: see _LazyConsole)."""
    from rich.table import Table

    return Table(*headers, **options)


def new_grid(**options: Any) -> Table:
    """A Rich grid: a table without borders or headers."""
    from rich.table import Table

    return Table.grid(**options)
