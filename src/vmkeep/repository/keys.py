"""Key files: the master keys wrapped by a password-derived key.

A repository has one or more key files ``keys/<key id>``, each wrapping the *same* master keys
under a different secret, so passwords can be added, changed and removed without
re-encrypting any data. The master keys are sealed with AES-256-GCM under a random nonce,
which is safe here because each wrapping key encrypts exactly one message.

Two kinds of secret:

- a **password** chosen by a person: the wrapping key comes from scrypt (memory-hard, in the
  cryptography package), which makes every guess cost 64 MiB and ~0.2 s;
- a **random key** made by vmkeep (``new_random_secret``: 256 random bits, as text) for
  unattended hosts: guessing it is hopeless, so stretching would only slow every command
  down; the wrapping key is BLAKE3's key derivation over the secret and the salt.

Key file (JSON)::

    {"version": 1, "kdf": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": b64,
     "nonce": b64, "sealed": b64, "created": "...", "host": "...", "user": "..."}
    {"version": 1, "kdf": "blake3", "salt": b64, "nonce": b64, "sealed": b64, ...}

A ``blake3`` key file is only ever written for a secret from ``new_random_secret``, and only
such a secret is ever tried against one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vmkeep.domain.errors import RepositoryError, WrongPasswordError
from vmkeep.repository.codec import MasterKeys
from vmkeep.repository.config import b64, unb64

KEY_PREFIX = "keys/"
DEFAULT_SCRYPT_N = 1 << 16  # 64 MiB and ~0.2 s per unlock: slow for guessing, fine for use
RANDOM_SECRET_PREFIX = b"vmkeep-random-key-v1:"
_RANDOM_SECRET_BYTES = 32
_RANDOM_KDF_CONTEXT = "vmkeep 2026-12 random key file wrapping key"
Kdf = Literal["scrypt", "blake3"]
KDF_KINDS: dict[str, str] = {"scrypt": "password", "blake3": "random key"}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``repo key list`` shows; never anything secret."""

    key_id: str
    created: str
    host: str
    user: str
    kind: str  # "password" or "random key"


def new_random_secret(random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh random key: 256 random bits as one line of text, to be kept in a 0600 file
    and given wherever a password is asked for (``--password-file``)."""
    encoded = base64.urlsafe_b64encode(random_bytes(_RANDOM_SECRET_BYTES)).rstrip(b"=")
    return RANDOM_SECRET_PREFIX + encoded


def random_secret_bits(secret: bytes) -> bytes | None:
    """The 32 random bytes of a secret made by ``new_random_secret``, else None."""
    if not secret.startswith(RANDOM_SECRET_PREFIX):
        return None
    encoded = secret[len(RANDOM_SECRET_PREFIX) :]
    try:
        raw = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _RANDOM_SECRET_BYTES else None


def _wrapping_key(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)


def _random_wrapping_key(bits: bytes, salt: bytes) -> bytes:
    # No stretching: 256 random bits cannot be guessed, however cheap each guess is.
    return blake3.blake3(bits + salt, derive_key_context=_RANDOM_KDF_CONTEXT).digest()


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
    kdf: Kdf = "scrypt",
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """The key file content for ``keys`` under ``password``. ``kdf="blake3"`` is for a secret
    from ``new_random_secret`` only (ValueError for anything else)."""
    salt, nonce = random_bytes(32), random_bytes(12)
    document: dict[str, object] = {"version": 1, "kdf": kdf}
    if kdf == "blake3":
        bits = random_secret_bits(password)
        if bits is None:
            raise ValueError("a blake3 key file needs a secret from new_random_secret")
        wrapping = _random_wrapping_key(bits, salt)
    else:
        wrapping = _wrapping_key(password, salt, scrypt_n, 8, 1)
        document.update(n=scrypt_n, r=8, p=1)
    secret = json.dumps(
        {"encryption": b64(keys.encryption), "chunk_id": b64(keys.chunk_id), "mac": b64(keys.mac)}
    ).encode()
    sealed = AESGCM(wrapping).encrypt(nonce, secret, _aad(repo_id, key_id))
    document.update(
        salt=b64(salt),
        nonce=b64(nonce),
        sealed=b64(sealed),
        created=created,
        host=host,
        user=user,
    )
    return json.dumps(document, indent=1).encode()


def key_info(key_id: str, blob: bytes) -> KeyInfo:
    """The public facts of a key file. Raises RepositoryError if it is malformed."""
    document = _parse(key_id, blob)
    return KeyInfo(
        key_id,
        str(document.get("created", "")),
        str(document.get("host", "")),
        str(document.get("user", "")),
        KDF_KINDS[str(document["kdf"])],
    )


def key_kdf(key_id: str, blob: bytes) -> str:
    """How the key file's wrapping key is derived: ``scrypt`` or ``blake3``."""
    return str(_parse(key_id, blob)["kdf"])


def _parse(key_id: str, blob: bytes) -> dict[str, object]:
    try:
        document = json.loads(blob)
    except ValueError as exc:
        raise RepositoryError(f"key file {key_id} is not valid JSON") from exc
    kdf = document.get("kdf") if isinstance(document, dict) else None
    if not isinstance(kdf, str) or kdf not in KDF_KINDS:
        raise RepositoryError(f"key file {key_id} has an unknown format")
    parsed: dict[str, object] = document
    return parsed


def unwrap_keys(blob: bytes, password: bytes, *, repo_id: bytes, key_id: str) -> MasterKeys:
    """The master keys in a key file. Raises WrongPasswordError if ``password`` does not open
    it (at once, without deriving anything, when a random-key file is offered something that
    is not a random key), RepositoryError if the file is malformed."""
    document = _parse(key_id, blob)
    try:
        salt, nonce = unb64(str(document["salt"])), unb64(str(document["nonce"]))
        sealed = unb64(str(document["sealed"]))
        if document["kdf"] == "blake3":
            bits = random_secret_bits(password)
            if bits is None:
                raise WrongPasswordError("not a random key")
            wrapping = _random_wrapping_key(bits, salt)
        else:
            n, r, p = int(str(document["n"])), int(str(document["r"])), int(str(document["p"]))
            if not (1 << 10 <= n <= 1 << 22 and r <= 32 and p <= 16):
                raise RepositoryError(f"key file {key_id} asks for unreasonable scrypt parameters")
            wrapping = _wrapping_key(password, salt, n, r, p)
    except (KeyError, ValueError) as exc:
        raise RepositoryError(f"key file {key_id} is malformed: {exc}") from exc
    try:
        secret = json.loads(AESGCM(wrapping).decrypt(nonce, sealed, _aad(repo_id, key_id)))
    except InvalidTag:
        raise WrongPasswordError("wrong password") from None
    except ValueError as exc:  # a nonce of the wrong length, sealed bytes that are not JSON
        raise RepositoryError(f"key file {key_id} is malformed: {exc}") from exc
    return MasterKeys(
        encryption=unb64(secret["encryption"]),
        chunk_id=unb64(secret["chunk_id"]),
        mac=unb64(secret["mac"]),
    )
