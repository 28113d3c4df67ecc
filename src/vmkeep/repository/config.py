"""The repository config object: written once by ``repo init``, read by every command.

It is stored in clear (a user must be able to tell what a repository is before typing a
password) and authenticated: ``mac`` is a keyed BLAKE3 over the canonical JSON of the other
fields, checked once the master keys are known. Unencrypted repositories keep their
(non-secret) id and MAC keys right in here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass

from vmkeep.domain.errors import IntegrityError, RepositoryError

CONFIG_NAME = "config"
ENCRYPTION_AES = "aes-256-gcm"
ENCRYPTION_NONE = "none"
REPO_VERSION = 1


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """Facts fixed at ``repo init``. ``repo_id`` is 32 hex digits."""

    version: int
    repo_id: str
    encryption: str
    chunk_size: int
    compression_level: int
    created: str
    plain_keys: dict[str, str] | None = None  # only for ENCRYPTION_NONE: b64 chunk_id, mac

    @property
    def encrypted(self) -> bool:
        return self.encryption != ENCRYPTION_NONE

    @property
    def repo_id_bytes(self) -> bytes:
        return bytes.fromhex(self.repo_id)

    def canonical(self) -> bytes:
        """The bytes the MAC covers: sorted-key compact JSON of every field."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


def encode_config(config: RepoConfig, mac: str) -> bytes:
    document = asdict(config)
    document["mac"] = mac
    return json.dumps(document, indent=1, sort_keys=True).encode()


def decode_config(blob: bytes) -> tuple[RepoConfig, str]:
    """The config and its MAC (unchecked: check it with the keys). Raises RepositoryError
    for anything that is not a vmkeep repository config of a known version."""
    try:
        document = json.loads(blob)
        mac = document.pop("mac")
        config = RepoConfig(**document)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RepositoryError("not a vmkeep repository (unreadable config)") from exc
    if config.version != REPO_VERSION:
        raise RepositoryError(f"repository format version {config.version} is not supported")
    if config.encryption not in (ENCRYPTION_AES, ENCRYPTION_NONE):
        raise RepositoryError(f"unknown repository encryption {config.encryption!r}")
    if not 4096 <= config.chunk_size <= 64 << 20 or config.chunk_size & (config.chunk_size - 1):
        raise IntegrityError(f"repository config has an invalid chunk size {config.chunk_size}")
    return config, str(mac)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
