"""Settings: the config file, the environment and command-line flags, in that order of
increasing priority.

The file is TOML, found at ``--config``, then ``$VMKEEP_CONFIG``, then ``/etc/vmkeep/config.toml``
for root or ``$XDG_CONFIG_HOME/vmkeep/config.toml`` for other users. A missing default file is
fine (defaults apply); a file given explicitly must exist.

    connect = "qemu:///system"                 # libvirt URI
    repository = "/var/lib/vmkeep/repository"  # or "s3://bucket/prefix"
    state_dir = "/var/lib/vmkeep"              # backup jobs' scratch files, host locks

    [s3]
    endpoint = "https://s3.example.com"        # S3-compatible endpoint (omit for AWS)

    [lab]
    dir = "/var/lib/vmkeep/lab"                # where lab VMs and the cached guest live

    [cache]
    dir = "/var/cache/vmkeep"                  # local caches (dedup chunk ids)

    [snapshots]
    dir = "/var/lib/vmkeep/snapshots"          # overlays and memory states (default: next to
                                               # each disk)
    max_age = "72h"                            # snapshot usage warns about older snapshots,
    max_chain = 3                              # longer chains,
    fill_warning = "24h"                       # and filesystems filling sooner than this

    [hooks]                                    # argv lists, run without a shell
    pre = ["/usr/local/sbin/flush-db"]         # before the guest is frozen
    post = ["/usr/local/sbin/resume-db"]       # after it is thawed
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep.domain.errors import ConfigError

DEFAULT_URI = "qemu:///system"


@dataclass(frozen=True, slots=True)
class SnapshotPolicySettings:
    """``[snapshots]`` limits for ``snapshot usage`` as written (durations as text, parsed
    where used); None where the config says nothing."""

    max_age: str | None = None
    max_chain: int | None = None
    fill_warning: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Effective settings after flags, environment and config file are merged."""

    uri: str
    lab_dir: Path
    config_file: Path | None
    repository: str = ""
    s3_endpoint: str | None = None
    cache_dir: Path = Path("/var/cache/vmkeep")
    data_dir: Path = Path("/var/lib/vmkeep")
    hooks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    snapshot_dir: Path | None = None
    snapshot_policy: SnapshotPolicySettings = field(
        default_factory=lambda: SnapshotPolicySettings()
    )


def default_config_path(env: Mapping[str, str], is_root: bool) -> Path:
    """Where the config file lives when neither ``--config`` nor ``VMKEEP_CONFIG`` say."""
    if is_root:
        return Path("/etc/vmkeep/config.toml")
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "/")) / ".config")
    return Path(base) / "vmkeep" / "config.toml"


def default_data_dir(env: Mapping[str, str], is_root: bool) -> Path:
    """``/var/lib/vmkeep`` for root, ``$XDG_DATA_HOME/vmkeep`` for others."""
    if is_root:
        return Path("/var/lib/vmkeep")
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "/")) / ".local" / "share")
    return Path(base) / "vmkeep"


def default_cache_dir(env: Mapping[str, str], is_root: bool) -> Path:
    """``/var/cache/vmkeep`` for root, ``$XDG_CACHE_HOME/vmkeep`` for others."""
    if is_root:
        return Path("/var/cache/vmkeep")
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "/")) / ".cache")
    return Path(base) / "vmkeep"


def _table(config: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    section = config.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return section


def read_config_file(path: Path, required: bool) -> dict[str, Any]:
    """The parsed TOML at ``path``; ``{}`` if it is missing and not ``required``."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        if required:
            raise ConfigError(f"config file {path} does not exist") from exc
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _string(config: Mapping[str, Any], key: str, where: str) -> str | None:
    value = config.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: '{key}' must be a string")
    return value


def resolve_settings(
    *,
    connect_flag: str | None,
    config_flag: Path | None,
    env: Mapping[str, str],
    is_root: bool,
    repo_flag: str | None = None,
    s3_endpoint_flag: str | None = None,
) -> Settings:
    """Merge flag > environment > config file > default, for every setting.

    Raises ConfigError for an explicit config file that is missing, unreadable TOML, or a
    value of the wrong type.
    """
    explicit = config_flag or (Path(env["VMKEEP_CONFIG"]) if env.get("VMKEEP_CONFIG") else None)
    path = explicit or default_config_path(env, is_root)
    config = read_config_file(path, required=explicit is not None)
    lab_section = _table(config, "lab", path)
    s3_section = _table(config, "s3", path)
    cache_section = _table(config, "cache", path)
    uri = connect_flag or env.get("VMKEEP_CONNECT") or _string(config, "connect", str(path))
    lab_dir = _string(lab_section, "dir", f"{path} [lab]")
    repository = repo_flag or env.get("VMKEEP_REPO") or _string(config, "repository", str(path))
    endpoint = (
        s3_endpoint_flag
        or env.get("VMKEEP_S3_ENDPOINT")
        or _string(s3_section, "endpoint", f"{path} [s3]")
    )
    cache_dir = _string(cache_section, "dir", f"{path} [cache]")
    state_dir = _string(config, "state_dir", str(path))
    hooks = _hooks(_table(config, "hooks", path), path)
    snapshots = _table(config, "snapshots", path)
    where = f"{path} [snapshots]"
    snapshot_dir = _string(snapshots, "dir", where)
    max_chain = snapshots.get("max_chain")
    if max_chain is not None and (not isinstance(max_chain, int) or isinstance(max_chain, bool)):
        raise ConfigError(f"{where}: 'max_chain' must be a whole number")
    return Settings(
        uri=uri or DEFAULT_URI,
        lab_dir=Path(lab_dir) if lab_dir else default_data_dir(env, is_root) / "lab",
        config_file=path if config else None,
        repository=repository or str(default_data_dir(env, is_root) / "repository"),
        s3_endpoint=endpoint or None,
        cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(env, is_root),
        data_dir=Path(state_dir) if state_dir else default_data_dir(env, is_root),
        hooks=hooks,
        snapshot_dir=Path(snapshot_dir) if snapshot_dir else None,
        snapshot_policy=SnapshotPolicySettings(
            max_age=_string(snapshots, "max_age", where),
            max_chain=max_chain,
            fill_warning=_string(snapshots, "fill_warning", where),
        ),
    )


def _hooks(section: Mapping[str, Any], path: Path) -> dict[str, tuple[str, ...]]:
    hooks = {}
    for phase, argv in section.items():
        if phase not in ("pre", "post"):
            raise ConfigError(f"{path} [hooks]: unknown phase {phase!r} (use pre or post)")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(f"{path} [hooks] {phase}: must be a non-empty list of strings")
        hooks[phase] = tuple(argv)
    return hooks
