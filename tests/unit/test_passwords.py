"""Password sources, their order, and the refusal of readable password files."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.domain.errors import InsecureFileError, UsageError
from vmkeep.services.passwords import read_new_password, read_password


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "pw"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_file_flag_wins_and_one_newline_is_stripped(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "s3cret\n")
    env = {"VMKEEP_PASSWORD": "other"}
    assert read_password(env, path, confirm=False) == b"s3cret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_readable_password_file_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, "x", mode)
    with pytest.raises(InsecureFileError, match=f"chmod 600 {path}"):
        read_password({}, path, confirm=False)


def test_environment_order(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "from-file")
    assert (
        read_password(
            {"VMKEEP_PASSWORD_FILE": str(path), "VMKEEP_PASSWORD": "x"}, None, confirm=False
        )
        == b"from-file"
    )
    command = "printf 'from command'"
    assert (
        read_password(
            {"VMKEEP_PASSWORD_COMMAND": command, "VMKEEP_PASSWORD": "x"}, None, confirm=False
        )
        == b"from command"
    )
    assert read_password({"VMKEEP_PASSWORD": "plain"}, None, confirm=False) == b"plain"


def test_failing_command_is_an_error() -> None:
    with pytest.raises(UsageError, match="exited with 1"):
        read_password({"VMKEEP_PASSWORD_COMMAND": "false"}, None, confirm=False)


def test_prompt_and_confirmation() -> None:
    answers = iter(["pw", "pw"])
    assert (
        read_password({}, None, confirm=True, prompt=lambda _: next(answers), interactive=True)
        == b"pw"
    )
    answers = iter(["pw", "typo"])
    with pytest.raises(UsageError, match="do not match"):
        read_password({}, None, confirm=True, prompt=lambda _: next(answers), interactive=True)


def test_no_source_and_no_terminal_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="password-file"):
        read_password({}, None, confirm=False, interactive=False)


def test_new_password_ignores_the_environment(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "new")
    assert read_new_password(path) == b"new"
    with pytest.raises(UsageError):
        read_new_password(None, interactive=False)
