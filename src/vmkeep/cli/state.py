"""What the top-level options of every command carry down to the subcommands."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer

from vmkeep.repository.repo import Repository
from vmkeep.services.config import Settings, resolve_settings
from vmkeep.services.context import Services, open_services
from vmkeep.services.repository import RepoAccess, unlock_repository


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    """``--connect``, ``--config`` and ``-v`` as given on the command line."""

    connect: str | None
    config: Path | None
    verbose: int


def settings_for(
    ctx: typer.Context, repo: str | None = None, s3_endpoint: str | None = None
) -> Settings:
    """Resolve settings from the global options, command options and the environment."""
    options = ctx.find_root().obj
    if not isinstance(options, GlobalOptions):  # a subcommand app invoked on its own
        options = GlobalOptions(connect=None, config=None, verbose=0)
    return resolve_settings(
        connect_flag=options.connect,
        config_flag=options.config,
        env=os.environ,
        is_root=os.geteuid() == 0,
        repo_flag=repo,
        s3_endpoint_flag=s3_endpoint,
    )


def open_repository_for(
    ctx: typer.Context, repo: str | None, password_file: Path | None, s3_endpoint: str | None
) -> tuple[Settings, Repository]:
    """Settings for this invocation and the repository they name, unlocked."""
    settings = settings_for(ctx, repo, s3_endpoint)
    repository = unlock_repository(settings, RepoAccess(password_file=password_file), os.environ)
    return settings, repository


@contextmanager
def services_for(ctx: typer.Context) -> Iterator[Services]:
    """Settings for this invocation, then services opened on them."""
    with open_services(settings_for(ctx)) as services:
        yield services
