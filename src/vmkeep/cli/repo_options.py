"""Options shared by every command that works on a repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmkeep.domain.units import parse_size

RepoOption = Annotated[
    str | None,
    typer.Option(
        "--repo",
        "-r",
        help="Repository: a directory or s3://bucket/prefix (env VMKEEP_REPO; else the config "
        "file; else /var/lib/vmkeep/repository).",
    ),
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        help="File holding the repository password, mode 0600 (env VMKEEP_PASSWORD_FILE; "
        "or VMKEEP_PASSWORD_COMMAND; else a prompt)."
    ),
]
S3EndpointOption = Annotated[
    str | None,
    typer.Option(help="S3 endpoint URL for s3:// repositories (env VMKEEP_S3_ENDPOINT)."),
]
LimitUploadOption = Annotated[
    str | None, typer.Option(help="Cap uploads at this many bytes per second, e.g. 50M.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
QuiesceOption = Annotated[
    bool | None,
    typer.Option(
        "--quiesce/--no-quiesce",
        help="Freeze guest filesystems through the agent (default: when it answers).",
        show_default=False,
    ),
]
TagOption = Annotated[list[str] | None, typer.Option(help="Tag the backup; repeatable.")]


def parse_rate(text: str | None) -> int | None:
    return parse_size(text) if text else None
