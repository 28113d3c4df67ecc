"""Settings precedence: flag > environment > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.domain.errors import ConfigError
from vmkeep.services.config import DEFAULT_URI, resolve_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_for_root_without_config(tmp_path: Path) -> None:
    settings = resolve_settings(
        connect_flag=None,
        config_flag=None,
        env={"VMKEEP_CONFIG": ""},
        is_root=True,
    )
    assert settings.uri == DEFAULT_URI
    assert settings.lab_dir == Path("/var/lib/vmkeep/lab")


def test_defaults_for_user_follow_xdg(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data")}
    settings = resolve_settings(connect_flag=None, config_flag=None, env=env, is_root=False)
    assert settings.lab_dir == tmp_path / "data" / "vmkeep" / "lab"
    assert settings.config_file is None


def test_user_config_file_is_found_under_xdg(tmp_path: Path) -> None:
    (tmp_path / "vmkeep").mkdir()
    write(tmp_path / "vmkeep" / "config.toml", 'connect = "qemu:///session"\n')
    settings = resolve_settings(
        connect_flag=None, config_flag=None, env={"XDG_CONFIG_HOME": str(tmp_path)}, is_root=False
    )
    assert settings.uri == "qemu:///session"


def test_precedence_flag_env_file(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", 'connect = "test:///file"\n[lab]\ndir = "/srv/lab"\n')
    from_file = resolve_settings(connect_flag=None, config_flag=config, env={}, is_root=True)
    assert from_file.uri == "test:///file"
    assert from_file.lab_dir == Path("/srv/lab")
    assert from_file.config_file == config
    from_env = resolve_settings(
        connect_flag=None, config_flag=config, env={"VMKEEP_CONNECT": "test:///env"}, is_root=True
    )
    assert from_env.uri == "test:///env"
    from_flag = resolve_settings(
        connect_flag="test:///flag",
        config_flag=config,
        env={"VMKEEP_CONNECT": "test:///env"},
        is_root=True,
    )
    assert from_flag.uri == "test:///flag"


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", 'connect = "test:///viaenv"\n')
    settings = resolve_settings(
        connect_flag=None, config_flag=None, env={"VMKEEP_CONFIG": str(config)}, is_root=True
    )
    assert settings.uri == "test:///viaenv"


def test_explicit_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings(
            connect_flag=None, config_flag=tmp_path / "nope.toml", env={}, is_root=True
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("connect = ", "not valid TOML"),
        ("connect = 5\n", "'connect' must be a string"),
        ('lab = "x"\n', r"\[lab\] must be a table"),
        ("[lab]\ndir = 3\n", "'dir' must be a string"),
        ("[snapshots]\nmax_chain = true\n", "'max_chain' must be a whole number"),
        ("[snapshots]\nmax_age = 72\n", "'max_age' must be a string"),
    ],
)
def test_invalid_config_values(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=message):
        resolve_settings(connect_flag=None, config_flag=config, env={}, is_root=True)


def test_snapshot_settings(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.toml",
        '[snapshots]\ndir = "/srv/snaps"\nmax_age = "2d"\nmax_chain = 5\n',
    )
    settings = resolve_settings(connect_flag=None, config_flag=config, env={}, is_root=True)
    assert settings.snapshot_dir == Path("/srv/snaps")
    policy = settings.snapshot_policy
    assert (policy.max_age, policy.max_chain, policy.fill_warning) == ("2d", 5, None)
    bare = resolve_settings(connect_flag=None, config_flag=None, env={}, is_root=True)
    assert bare.snapshot_dir is None and bare.snapshot_policy.max_chain is None
