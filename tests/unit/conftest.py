"""Unit tests never read the host's real config file or VMKEEP_CONNECT."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_config(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The config lives outside tmp_path: tests assert that refused commands left it empty.
    config = tmp_path_factory.mktemp("config") / "config.toml"
    config.write_text(f'[lab]\ndir = "{tmp_path / "lab"}"\n')
    monkeypatch.setenv("VMKEEP_CONFIG", str(config))
    monkeypatch.delenv("VMKEEP_CONNECT", raising=False)
