"""The repository: config, keys, and the typed reading and writing of its objects.

Object names (the store is a flat namespace of write-once objects)::

    config                      RepoConfig, clear text, authenticated (config.py)
    keys/<key id>               master keys wrapped by a password (keys.py)
    data/<id[:2]>/<id>          chunk: sealed plaintext of one fixed-size disk chunk
    indexes/<id[:2]>/<id>       disk index: sealed DiskIndex (indexes.py); content-addressed
    manifests/<backup id>       sealed BackupManifest JSON (manifests.py); written last
    locks/<lock id>             LockRecord JSON (locks.py)

Every sealed object is bound to its name and type (codec.py), so a swapped or renamed object
fails authentication.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

from vmkeep.domain.backup import BackupId, BackupManifest
from vmkeep.domain.errors import (
    AlreadyExistsError,
    IntegrityError,
    NotFoundError,
    ObjectNotFoundError,
    RepositoryError,
    UsageError,
    WrongPasswordError,
)
from vmkeep.domain.tokens import random_hex
from vmkeep.ports import ObjectStore
from vmkeep.repository import keys as keyfiles
from vmkeep.repository.codec import Codec, MasterKeys, ObjectType
from vmkeep.repository.config import (
    CONFIG_NAME,
    ENCRYPTION_AES,
    ENCRYPTION_NONE,
    REPO_VERSION,
    RepoConfig,
    b64,
    decode_config,
    encode_config,
    unb64,
)
from vmkeep.repository.indexes import DiskIndex, decode_index, encode_index
from vmkeep.repository.manifests import decode_manifest, encode_manifest, validate_backup_id

CHUNK_PREFIX = "data/"
INDEX_PREFIX = "indexes/"
MANIFEST_PREFIX = "manifests/"
DEFAULT_CHUNK_SIZE = 1 << 20
PasswordSource = Callable[[], bytes]


def chunk_object(chunk_id: str) -> str:
    return f"{CHUNK_PREFIX}{chunk_id[:2]}/{chunk_id}"


def index_object(index_id: str) -> str:
    return f"{INDEX_PREFIX}{index_id[:2]}/{index_id}"


def manifest_object(backup_id: BackupId) -> str:
    return f"{MANIFEST_PREFIX}{backup_id}"


def _is_hex_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True, slots=True)
class InitOptions:
    """``repo init`` choices."""

    encryption: str = ENCRYPTION_AES
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int = 3
    scrypt_n: int = keyfiles.DEFAULT_SCRYPT_N
    random_key: bool = False  # the password is a keys.new_random_secret: no scrypt


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is acting, for key files and locks."""

    host: str
    user: str

    @classmethod
    def current(cls) -> Identity:
        return cls(host=socket.gethostname(), user=getpass.getuser())


class Repository:
    """An opened repository. Thread-safe for chunk reads and writes."""

    def __init__(
        self, store: ObjectStore, config: RepoConfig, codec: Codec, key_id: str | None
    ) -> None:
        self.store = store
        self.config = config
        self.codec = codec
        self.key_id = key_id

    @property
    def repo_id(self) -> str:
        return self.config.repo_id

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    # -- chunks ------------------------------------------------------------------------------

    def chunk_id(self, data: bytes | bytearray) -> str:
        return self.codec.chunk_id(data)

    def store_chunk(self, chunk_id: str, data: bytes | bytearray) -> int:
        """Seal and store ``data`` as ``chunk_id``; returns the bytes written, 0 if the chunk
        was there already."""
        blob = self.codec.seal(ObjectType.CHUNK, chunk_id, data)
        return len(blob) if self.store.put(chunk_object(chunk_id), blob) else 0

    def load_chunk(self, chunk_id: str) -> bytes:
        """The plaintext of ``chunk_id``, authenticated and re-hashed. Raises IntegrityError
        for a corrupt chunk and ObjectNotFoundError for a missing one."""
        data = self.codec.open(ObjectType.CHUNK, chunk_id, self.store.get(chunk_object(chunk_id)))
        if self.codec.chunk_id(data) != chunk_id:
            raise IntegrityError(f"chunk {chunk_id}: content does not match its id")
        return data

    def list_chunks(self) -> dict[str, int]:
        """Every stored chunk id with its stored size."""
        found: dict[str, int] = {}
        for info in self.store.list(CHUNK_PREFIX):
            chunk_id = info.name.rsplit("/", 1)[-1]
            if _is_hex_id(chunk_id):
                found[chunk_id] = info.size
        return found

    # -- indexes -----------------------------------------------------------------------------

    def write_index(self, index: DiskIndex) -> str:
        data = encode_index(index)
        index_id = self.codec.content_id(data)
        self.store.put(index_object(index_id), self.codec.seal(ObjectType.INDEX, index_id, data))
        return index_id

    def load_index(self, index_id: str) -> DiskIndex:
        blob = self.store.get(index_object(index_id))
        data = self.codec.open(ObjectType.INDEX, index_id, blob)
        if self.codec.content_id(data) != index_id:
            raise IntegrityError(f"index {index_id}: content does not match its id")
        return decode_index(data, index_id)

    # -- manifests ---------------------------------------------------------------------------

    def write_manifest(self, manifest: BackupManifest) -> None:
        """Publish a backup. Call only after every chunk and index it names is stored: this
        first makes them durable, then writes the manifest and makes it durable too."""
        blob = self.codec.seal(ObjectType.MANIFEST, manifest.backup_id, encode_manifest(manifest))
        self.store.sync()
        if not self.store.put(manifest_object(manifest.backup_id), blob):
            raise AlreadyExistsError(f"backup {manifest.backup_id} exists already")
        self.store.sync()

    def load_manifest(self, backup_id: BackupId) -> BackupManifest:
        validate_backup_id(backup_id)
        try:
            blob = self.store.get(manifest_object(backup_id))
        except ObjectNotFoundError:
            raise NotFoundError(f"no backup {backup_id} in {self.store.location}") from None
        data = self.codec.open(ObjectType.MANIFEST, backup_id, blob)
        return decode_manifest(data, backup_id)

    def list_backup_ids(self) -> list[BackupId]:
        ids = [info.name[len(MANIFEST_PREFIX) :] for info in self.store.list(MANIFEST_PREFIX)]
        return sorted(i for i in ids if "/" not in i)

    # -- keys --------------------------------------------------------------------------------

    def list_keys(self) -> list[keyfiles.KeyInfo]:
        infos = []
        for info in self.store.list(keyfiles.KEY_PREFIX):
            key_id = info.name[len(keyfiles.KEY_PREFIX) :]
            infos.append(keyfiles.key_info(key_id, self.store.get(info.name)))
        return sorted(infos, key=lambda k: (k.created, k.key_id))

    def add_key(
        self,
        password: bytes,
        who: Identity,
        now: str,
        scrypt_n: int | None = None,
        *,
        random_key: bool = False,
    ) -> str:
        """Add a key file opening this repository with ``password``; returns its id. With
        ``random_key`` the secret must come from ``keys.new_random_secret`` and is not
        stretched (see repository.keys)."""
        self._require_encrypted()
        key_id = random_hex(8)
        blob = keyfiles.wrap_keys(
            self.codec_keys,
            password,
            repo_id=self.config.repo_id_bytes,
            key_id=key_id,
            created=now,
            host=who.host,
            user=who.user,
            scrypt_n=scrypt_n or keyfiles.DEFAULT_SCRYPT_N,
            kdf="blake3" if random_key else "scrypt",
        )
        self.store.put(keyfiles.KEY_PREFIX + key_id, blob)
        self.store.sync()
        return key_id

    def remove_key(self, key_id: str) -> None:
        """Remove a key file. Refuses the key in use (change the password instead) and the
        last key, which would make the repository unreadable forever."""
        self._require_encrypted()
        ids = [k.key_id for k in self.list_keys()]
        if key_id not in ids:
            raise NotFoundError(f"no key {key_id} in this repository")
        if len(ids) == 1:
            raise UsageError("refusing to remove the last key")
        if key_id == self.key_id:
            raise UsageError("refusing to remove the key in use; use change-password instead")
        self.store.delete(keyfiles.KEY_PREFIX + key_id)

    def change_password(self, new_password: bytes, who: Identity, now: str) -> str:
        """Replace the key in use by one for ``new_password``; returns the new key id.
        The new key is written before the old one is deleted, so a crash loses nothing."""
        self._require_encrypted()
        new_id = self.add_key(new_password, who, now)
        old_id = self.key_id
        self.key_id = new_id
        if old_id is not None:
            self.store.delete(keyfiles.KEY_PREFIX + old_id)
        return new_id

    def export_key(self) -> bytes:
        """The key file in use: still protected by its password, safe to print for a safe."""
        self._require_encrypted()
        if self.key_id is None:
            raise RepositoryError("no key in use")
        return self.store.get(keyfiles.KEY_PREFIX + self.key_id)

    def _require_encrypted(self) -> None:
        if not self.config.encrypted:
            raise UsageError("this repository is not encrypted: it has no keys")

    @property
    def codec_keys(self) -> MasterKeys:
        return self.codec.keys


def validate_init_options(options: InitOptions) -> None:
    """Raise UsageError for options ``init_repository`` would refuse, before anything is made."""
    if options.encryption not in (ENCRYPTION_AES, ENCRYPTION_NONE):
        raise UsageError(f"unknown encryption {options.encryption!r}: use {ENCRYPTION_AES} or none")
    size = options.chunk_size
    if size < 4096 or size > 16 << 20 or size & (size - 1):
        raise UsageError("the chunk size must be a power of two up to 16M")
    if not 1 <= options.compression_level <= 19:
        raise UsageError("the compression level must be from 1 to 19")


def init_repository(
    store: ObjectStore,
    password: bytes | None,
    options: InitOptions,
    *,
    now: str,
    who: Identity,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> Repository:
    """Create a repository in an empty store. Raises AlreadyExistsError if one is there.

    The key file is written before the config: a crash in between leaves no repository (no
    config) and an unused key file, never a repository nobody can open.
    """
    validate_init_options(options)
    if store.exists(CONFIG_NAME):
        raise AlreadyExistsError(f"a repository exists already at {store.location}")
    encrypted = options.encryption != ENCRYPTION_NONE
    if encrypted and not password:
        raise UsageError("an encrypted repository needs a password")
    keys = MasterKeys.generate(random_bytes)
    config = RepoConfig(
        version=REPO_VERSION,
        repo_id=random_bytes(16).hex(),
        encryption=options.encryption,
        chunk_size=options.chunk_size,
        compression_level=options.compression_level,
        created=now,
        plain_keys=None if encrypted else {"chunk_id": b64(keys.chunk_id), "mac": b64(keys.mac)},
    )
    if not encrypted:
        keys = replace(keys, encryption=b"")
    codec = Codec(
        config.repo_id_bytes,
        keys,
        encrypted=encrypted,
        compression_level=options.compression_level,
        random_bytes=random_bytes,
    )
    repo = Repository(store, config, codec, None)
    if password is not None and encrypted:
        repo.key_id = repo.add_key(
            password, who, now, options.scrypt_n, random_key=options.random_key
        )
    if not store.put(CONFIG_NAME, encode_config(config, codec.mac(config.canonical()))):
        raise AlreadyExistsError(f"a repository was created at {store.location} meanwhile")
    store.sync()
    return repo


def open_repository(store: ObjectStore, password: PasswordSource) -> Repository:
    """Open the repository in ``store``, asking ``password()`` only if it is encrypted.

    Raises RepositoryError if there is no repository, WrongPasswordError if no key opens with
    the password, IntegrityError if the config fails authentication.
    """
    try:
        config, mac = decode_config(store.get(CONFIG_NAME))
    except ObjectNotFoundError:
        raise RepositoryError(
            f"no vmkeep repository at {store.location} (create one with `vmkeep repo init`)"
        ) from None
    key_id: str | None = None
    if config.encrypted:
        secret = password()
        keys, key_id = _unlock(store, config, secret)
    else:
        plain = config.plain_keys or {}
        try:
            keys = MasterKeys(b"", unb64(plain["chunk_id"]), unb64(plain["mac"]))
        except (KeyError, ValueError) as exc:
            raise IntegrityError("repository config: unencrypted keys are malformed") from exc
    codec = Codec(
        config.repo_id_bytes,
        keys,
        encrypted=config.encrypted,
        compression_level=config.compression_level,
    )
    if codec.mac(config.canonical()) != mac:
        raise IntegrityError("repository config failed authentication (corrupt or tampered)")
    return Repository(store, config, codec, key_id)


def _unlock(store: ObjectStore, config: RepoConfig, secret: bytes) -> tuple[MasterKeys, str]:
    names = sorted(info.name for info in store.list(keyfiles.KEY_PREFIX))
    if not names:
        raise RepositoryError(f"the repository at {store.location} has no key files")
    blobs = {name[len(keyfiles.KEY_PREFIX) :]: store.get(name) for name in names}
    # Random-key files first: trying one costs microseconds, a password file ~0.2 s of scrypt.
    # A malformed key file is skipped, so that it cannot lock out the keys that are fine.
    order = sorted(blobs, key=lambda key_id: _unlock_order(key_id, blobs[key_id]))
    malformed: list[str] = []
    for key_id in order:
        try:
            keys = keyfiles.unwrap_keys(
                blobs[key_id], secret, repo_id=config.repo_id_bytes, key_id=key_id
            )
        except WrongPasswordError:
            continue
        except RepositoryError as exc:
            malformed.append(str(exc))
            continue
        return keys, key_id
    if malformed:
        raise RepositoryError(
            f"no key of the repository at {store.location} opens with this password, and "
            + "; ".join(malformed)
        )
    raise WrongPasswordError(f"wrong password for the repository at {store.location}")


def _unlock_order(key_id: str, blob: bytes) -> int:
    """0 for random-key files, 1 for password files, 2 for files that do not parse."""
    try:
        return 0 if keyfiles.key_kdf(key_id, blob) == "blake3" else 1
    except RepositoryError:
        return 2
