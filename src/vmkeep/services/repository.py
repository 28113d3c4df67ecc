"""Opening repositories: picking the store for a location, wrapping it, unlocking it."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from vmkeep.backends.local import LocalStore
from vmkeep.backends.wrappers import RateLimitedStore, RetryingStore
from vmkeep.domain.errors import UsageError, WrongPasswordError
from vmkeep.drivers.allocator import tune_for_large_buffers
from vmkeep.drivers.hooks import CommandHooks
from vmkeep.drivers.nbd_image import QemuImageIO
from vmkeep.engine.image_backup import RepoSession
from vmkeep.engine.vm_backup import VmBackupDeps
from vmkeep.ports import Hypervisor, ObjectStore, Progress
from vmkeep.repository.cache import ChunkCache
from vmkeep.repository.config import CONFIG_NAME
from vmkeep.repository.locks import LockEnvironment, locked
from vmkeep.repository.repo import (
    Identity,
    InitOptions,
    Repository,
    init_repository,
    open_repository,
    validate_init_options,
)
from vmkeep.services.config import Settings
from vmkeep.services.context import host_locks
from vmkeep.services.passwords import create_key_file, read_password

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RepoAccess:
    """How to reach and unlock the repository, as given on the command line."""

    password_file: Path | None = None
    limit_upload: int | None = None  # bytes per second
    create_bucket: bool = False


def make_store(settings: Settings, access: RepoAccess, *, create: bool = False) -> ObjectStore:
    """The store for ``settings.repository``: a local directory or ``s3://bucket/prefix``,
    with retries (and an upload limit when asked)."""
    location = settings.repository
    store: ObjectStore
    if location.startswith("s3://"):
        from vmkeep.backends.s3 import S3Store  # boto3 takes a while to import: only if needed

        store = S3Store(
            location,
            endpoint_url=settings.s3_endpoint,
            create_bucket=create or access.create_bucket,
        )
    elif "://" in location:
        raise UsageError(f"unsupported repository location {location!r}: use a path or s3://")
    else:
        path = Path(location)
        if create and path.is_dir() and any(path.iterdir()) and not (path / "config").exists():
            raise UsageError(f"{path} is not empty: create a repository in an empty directory")
        store = LocalStore.create(path) if create else LocalStore(path)
    store = RetryingStore(store)
    if access.limit_upload:
        store = RateLimitedStore(store, access.limit_upload)
    return store


def lock_environment() -> LockEnvironment:
    return LockEnvironment(
        host=socket.gethostname(), pid=os.getpid(), now=lambda: datetime.now(UTC).timestamp()
    )


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_repository(
    settings: Settings,
    access: RepoAccess,
    options: InitOptions,
    env: Mapping[str, str],
    key_file: Path | None = None,
) -> Repository:
    """``repo init``: asks for a new password (twice when interactive) unless unencrypted,
    or with ``key_file`` writes a new random key there instead (removed again if the
    repository cannot be made). Bad options and a missing password are refused before
    anything is created."""
    validate_init_options(options)
    if key_file is not None and (options.encryption == "none" or access.password_file):
        raise UsageError("--key-file replaces the password of an encrypted repository")
    if key_file is None:
        password = None
        if options.encryption != "none":
            password = read_password(env, access.password_file, confirm=True)
        store = make_store(settings, access, create=True)
        return init_repository(store, password, options, now=now_text(), who=Identity.current())
    secret = create_key_file(key_file)
    made: ObjectStore | None = None
    try:
        made = make_store(settings, access, create=True)
        return init_repository(
            made,
            secret,
            replace(options, random_key=True),
            now=now_text(),
            who=Identity.current(),
        )
    except BaseException:
        discard_unused_key_file(key_file, made, secret)
        raise


def add_random_key(repository: Repository, key_file: Path) -> str:
    """``key add --key-file``: a new random key in ``key_file`` that opens ``repository``;
    returns its key id. The file is removed again if the key could not be added."""
    secret = create_key_file(key_file)
    try:
        with locked(repository.store, lock_environment(), exclusive=True, purpose="key add"):
            return repository.add_key(secret, Identity.current(), now_text(), random_key=True)
    except BaseException:
        discard_unused_key_file(key_file, repository.store, secret)
        raise


def discard_unused_key_file(key_file: Path, store: ObjectStore | None, secret: bytes) -> None:
    """After a failed ``init``/``key add``: remove the new key file unless the repository in
    ``store`` opens with it (it may have been written before the failure: then the file may
    be the only key). When that cannot be told, the file is kept."""
    try:
        if store is not None and store.exists(CONFIG_NAME):
            open_repository(store, lambda: secret)
            log.warning("kept the new key file %s: the repository opens with it", key_file)
            return
    except WrongPasswordError:
        pass  # its key was never written
    except Exception as exc:  # e.g. the store went away: keep the key, and say so
        log.warning("kept the new key file %s: cannot tell whether it is used: %s", key_file, exc)
        return
    key_file.unlink(missing_ok=True)


def unlock_repository(settings: Settings, access: RepoAccess, env: Mapping[str, str]) -> Repository:
    """Open the configured repository; the password is only asked for if it is encrypted."""
    tune_for_large_buffers()  # every user of a repository moves chunk-sized buffers
    store = make_store(settings, access)
    return open_repository(store, lambda: read_password(env, access.password_file, confirm=False))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a
    container or ``taskset`` limits it; ``os.cpu_count`` counts the whole host), else the
    CPU count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 2


def backup_workers() -> int:
    """Chunk workers for backups: twice the usable CPUs, at least 4 (each one also holds
    an NBD connection while it reads)."""
    return max(4, usable_cpus() * 2)


def restore_workers() -> int:
    """Chunk workers for restores: four times the usable CPUs, at least 8. A restore's worker
    spends most of its time waiting for a chunk file to be read or for its O_DIRECT write;
    on the benchmark disk 8 workers restored in 15 % less time than 4 (with the image's
    space reserved first: see raw_image.py)."""
    return max(8, usable_cpus() * 4)


@contextmanager
def repo_session(
    settings: Settings,
    access: RepoAccess,
    env: Mapping[str, str],
    progress: Progress,
    workers: int | None = None,
    *,
    with_cache: bool = False,
) -> Iterator[RepoSession]:
    """An opened repository with image IO and a lock environment; with ``with_cache`` also
    its dedup cache (loaded or rebuilt: only backups need it), else an empty one."""
    repo = unlock_repository(settings, access, env)
    if with_cache:
        cache = ChunkCache.load(repo, settings.cache_dir / "chunks")
    else:
        cache = ChunkCache(None, set(), [])
    yield RepoSession(
        repo=repo,
        cache=cache,
        images=QemuImageIO(),
        progress=progress,
        lock_env=lock_environment(),
        workers=workers or backup_workers(),
    )


def vm_backup_deps(
    settings: Settings, session: RepoSession, hypervisor: Hypervisor
) -> VmBackupDeps:
    """What VM backups need besides the repository: the hypervisor, per-VM host locks and the
    directory for job sockets and scratch files."""
    return VmBackupDeps(
        session=session,
        hypervisor=hypervisor,
        host_locks=host_locks(settings),
        hooks=CommandHooks(settings.hooks),
        jobs_dir=settings.data_dir / "jobs",
    )
