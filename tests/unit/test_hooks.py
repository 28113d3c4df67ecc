"""Hook commands: argv without a shell, the environment they get, failures, config parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.domain.errors import ConfigError, HookError
from vmkeep.drivers.hooks import CommandHooks
from vmkeep.services.config import resolve_settings


def test_hook_gets_vm_phase_and_backup_id(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hooks = CommandHooks(
        {"pre": ["sh", "-c", f'echo "$VMKEEP_PHASE $VMKEEP_VM $VMKEEP_BACKUP_ID" > {out}']}
    )
    hooks.run("pre", "vm 'quoted'; rm -rf /", "20261123T000000Z-00000000")
    assert out.read_text() == "pre vm 'quoted'; rm -rf / 20261123T000000Z-00000000\n"
    hooks.run("post", "vm", "id")  # no post hook: nothing happens


def test_failing_and_missing_hooks_raise(tmp_path: Path) -> None:
    with pytest.raises(HookError, match="exited 3: nope"):
        CommandHooks({"pre": ["sh", "-c", "echo nope >&2; exit 3"]}).run("pre", "vm", "id")
    with pytest.raises(HookError, match="could not run"):
        CommandHooks({"pre": [str(tmp_path / "missing")]}).run("pre", "vm", "id")
    with pytest.raises(HookError, match="could not run"):
        CommandHooks({"post": ["sleep", "5"]}, timeout=0.2).run("post", "vm", "id")


def _settings(tmp_path: Path, text: str) -> dict[str, tuple[str, ...]]:
    config = tmp_path / "c.toml"
    config.write_text(text)
    return resolve_settings(connect_flag=None, config_flag=config, env={}, is_root=True).hooks


def test_hooks_from_config(tmp_path: Path) -> None:
    assert _settings(tmp_path, '[hooks]\npre = ["/bin/true", "--x"]\n') == {
        "pre": ("/bin/true", "--x")
    }
    for bad in ('[hooks]\npre = "/bin/true"\n', "[hooks]\npre = []\n", '[hooks]\nduring = ["x"]\n'):
        with pytest.raises(ConfigError):
            _settings(tmp_path, bad)
