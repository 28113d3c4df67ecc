"""Where a repository password comes from, in order: ``--password-file``,
``VMKEEP_PASSWORD_FILE``, ``VMKEEP_PASSWORD_COMMAND``, ``VMKEEP_PASSWORD`` (with a warning:
environments leak into process listings and crash reports), then an interactive prompt.

Password files must not be readable by group or others. The password itself is never logged.
A *key file* (``create_key_file``) is a password file holding a random key made by vmkeep.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from vmkeep.domain.errors import InsecureFileError, UsageError
from vmkeep.repository.keys import new_random_secret

log = logging.getLogger(__name__)

Prompt = Callable[[str], str]


def check_private_file(path: Path) -> None:
    """Refuse a secret file that group or others can read or write; the message gives the fix."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"password file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureFileError(
            f"{path} is accessible by other users (mode {stat.filemode(mode)}); "
            f"fix it with: chmod 600 {path}"
        )


def _strip_newline(text: bytes) -> bytes:
    return text[:-1] if text.endswith(b"\n") else text


def _from_file(path: Path) -> bytes:
    check_private_file(path)
    secret = _strip_newline(path.read_bytes())
    if not secret:
        raise UsageError(f"password file {path} is empty")
    return secret


def _from_command(command: str) -> bytes:
    argv = shlex.split(command)  # run without a shell: no injection through the environment
    try:
        done = subprocess.run(argv, capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"VMKEEP_PASSWORD_COMMAND could not run: {exc}") from exc
    if done.returncode != 0:
        raise UsageError(f"VMKEEP_PASSWORD_COMMAND exited with {done.returncode}")
    secret = _strip_newline(done.stdout)
    if not secret:
        raise UsageError("VMKEEP_PASSWORD_COMMAND printed nothing")
    return secret


def read_password(
    env: Mapping[str, str],
    password_file: Path | None,
    *,
    confirm: bool,
    prompt: Prompt = getpass.getpass,
    interactive: bool | None = None,
) -> bytes:
    """The password from the first source that has one. With ``confirm`` (new passwords) an
    interactive password is asked twice. Raises UsageError when no source has one."""
    if password_file is not None:
        return _from_file(password_file)
    if env.get("VMKEEP_PASSWORD_FILE"):
        return _from_file(Path(env["VMKEEP_PASSWORD_FILE"]))
    if env.get("VMKEEP_PASSWORD_COMMAND"):
        return _from_command(env["VMKEEP_PASSWORD_COMMAND"])
    if env.get("VMKEEP_PASSWORD"):
        log.warning("using VMKEEP_PASSWORD: prefer --password-file or VMKEEP_PASSWORD_FILE")
        return env["VMKEEP_PASSWORD"].encode()
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        raise UsageError(
            "a repository password is needed: use --password-file, VMKEEP_PASSWORD_FILE or "
            "VMKEEP_PASSWORD_COMMAND"
        )
    secret = prompt("Repository password: ")
    if not secret:
        raise UsageError("empty password")
    if confirm and prompt("Repeat the password: ") != secret:
        raise UsageError("the passwords do not match")
    return secret.encode()


def read_new_password(
    password_file: Path | None,
    *,
    prompt: Prompt = getpass.getpass,
    interactive: bool | None = None,
) -> bytes:
    """A *new* password for ``key add`` and ``key change-password``: from
    ``--new-password-file`` or asked twice. The environment is not consulted, since it holds
    the current password."""
    return read_password({}, password_file, confirm=True, prompt=prompt, interactive=interactive)


def create_key_file(path: Path) -> bytes:
    """Make a new random key (repository.keys.new_random_secret), write it to ``path`` (mode
    0600, a new file: an existing one is never overwritten, nor a symlink followed) and
    return it. The caller removes the file again if what it was made for fails."""
    secret = new_random_secret()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists already; a key file is never overwritten") from None
    except OSError as exc:
        raise UsageError(f"cannot create the key file {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_directory(path.parent)  # the file's name must survive a crash as its key does
    except BaseException as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write the key file {path}: {exc.strerror or exc}") from exc
        raise
    return secret


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
