"""Rendering: Rich tables on stdout for people, JSON on stdout for scripts, logs on stderr."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape as rich_escape

stdout = Console(highlight=False, soft_wrap=False)
if not stdout.is_terminal:
    # Piped output is read by people with wide terminals or by grep: do not squeeze tables
    # into 80 columns and cut paths.
    stdout.width = 200
stderr = Console(stderr=True, highlight=False)
if not stderr.is_terminal:
    stderr.width = 200


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
    root.addHandler(RichHandler(console=stderr, show_path=verbosity > 1, markup=False))
    root.setLevel(level)


def error(message: str) -> None:
    """The one-line error users see."""
    stderr.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)


def warn(*warnings: str) -> None:
    """Warnings that belong to a command's result (printed with it on stdout)."""
    for warning in warnings:
        stdout.print(f"[yellow]warning:[/] {escape(warning)}")


def escape(text: str) -> str:
    """Make arbitrary text (VM names with brackets) safe inside Rich markup."""
    return rich_escape(text)
