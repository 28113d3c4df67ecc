"""Key files: the master keys wrapped by a password-derived key.

A repository has one or more key files ``keys/<key id>``, each wrapping the *same* master keys
under a different password, so passwords can be added, changed and removed without
re-encrypting any data. The wrapping key comes from scrypt (memory-hard, in the cryptography
package); the master keys are sealed with AES-256-GCM under a random nonce, which is safe
here because each wrapping key encrypts exactly one message.

Key file (JSON)::

    {"version": 1, "kdf": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": b64,
     "nonce": b64, "sealed": b64, "created": "...", "host": "...", "user": "..."}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vmkeep.domain.errors import RepositoryError, WrongPasswordError
from vmkeep.repository.codec import MasterKeys
from vmkeep.repository.config import b64, unb64

KEY_PREFIX = "keys/"
DEFAULT_SCRYPT_N = 1 << 16  # 64 MiB and ~0.2 s per unlock: slow for guessing, fine for use


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``repo key list`` shows; never anything secret."""

    key_id: str
    created: str
    host: str
    user: str


def _wrapping_key(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)


def _aad(repo_id: bytes, key_id: str) -> bytes:
    return b"vmkeep key file|" + repo_id + b"|" + key_id.encode()


def wrap_keys(
    keys: MasterKeys,
    password: bytes,
    *,
    repo_id: bytes,
    key_id: str,
    created: str,
    host: str,
    user: str,
    scrypt_n: int = DEFAULT_SCRYPT_N,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """The key file content for ``keys`` under ``password``."""
    salt, nonce = random_bytes(32), random_bytes(12)
    wrapping = _wrapping_key(password, salt, scrypt_n, 8, 1)
    secret = json.dumps(
        {"encryption": b64(keys.encryption), "chunk_id": b64(keys.chunk_id), "mac": b64(keys.mac)}
    ).encode()
    sealed = AESGCM(wrapping).encrypt(nonce, secret, _aad(repo_id, key_id))
    document = {
        "version": 1,
        "kdf": "scrypt",
        "n": scrypt_n,
        "r": 8,
        "p": 1,
        "salt": b64(salt),
        "nonce": b64(nonce),
        "sealed": b64(sealed),
        "created": created,
        "host": host,
        "user": user,
    }
    return json.dumps(document, indent=1).encode()


def key_info(key_id: str, blob: bytes) -> KeyInfo:
    """The public facts of a key file. Raises RepositoryError if it is malformed."""
    document = _parse(key_id, blob)
    return KeyInfo(
        key_id,
        str(document.get("created", "")),
        str(document.get("host", "")),
        str(document.get("user", "")),
    )


def _parse(key_id: str, blob: bytes) -> dict[str, object]:
    try:
        document = json.loads(blob)
    except ValueError as exc:
        raise RepositoryError(f"key file {key_id} is not valid JSON") from exc
    if not isinstance(document, dict) or document.get("kdf") != "scrypt":
        raise RepositoryError(f"key file {key_id} has an unknown format")
    return document


def unwrap_keys(blob: bytes, password: bytes, *, repo_id: bytes, key_id: str) -> MasterKeys:
    """The master keys in a key file. Raises WrongPasswordError if ``password`` does not open
    it, RepositoryError if the file is malformed."""
    document = _parse(key_id, blob)
    try:
        n, r, p = int(str(document["n"])), int(str(document["r"])), int(str(document["p"]))
        salt, nonce = unb64(str(document["salt"])), unb64(str(document["nonce"]))
        sealed = unb64(str(document["sealed"]))
    except (KeyError, ValueError) as exc:
        raise RepositoryError(f"key file {key_id} is malformed: {exc}") from exc
    if not (1 << 10 <= n <= 1 << 22 and r <= 32 and p <= 16):
        raise RepositoryError(f"key file {key_id} asks for unreasonable scrypt parameters")
    wrapping = _wrapping_key(password, salt, n, r, p)
    try:
        secret = json.loads(AESGCM(wrapping).decrypt(nonce, sealed, _aad(repo_id, key_id)))
    except InvalidTag:
        raise WrongPasswordError("wrong password") from None
    return MasterKeys(
        encryption=unb64(secret["encryption"]),
        chunk_id=unb64(secret["chunk_id"]),
        mac=unb64(secret["mac"]),
    )
