"""The codec: round trips, and every kind of damage is detected, never silently accepted."""

from __future__ import annotations

import os

import pytest
import zstandard

from vmkeep.domain.errors import IntegrityError
from vmkeep.repository import codec as codec_module
from vmkeep.repository.codec import HEADER_BYTES, Codec, MasterKeys, ObjectType

KEYS = MasterKeys(b"e" * 32, b"i" * 32, b"m" * 32)
REPO = bytes(16)


def codecs() -> list[Codec]:
    return [Codec(REPO, KEYS, encrypted=True), Codec(REPO, KEYS, encrypted=False)]


@pytest.mark.parametrize("codec", codecs(), ids=["aes", "none"])
@pytest.mark.parametrize(
    "data",
    [b"", b"x", b"compressible " * 5000, os.urandom(100_000)],
    ids=["empty", "1", "text", "random"],
)
def test_round_trip(codec: Codec, data: bytes) -> None:
    blob = codec.seal(ObjectType.CHUNK, "abc", data)
    assert codec.open(ObjectType.CHUNK, "abc", blob) == data


def test_compressible_data_is_compressed_random_is_not() -> None:
    codec = Codec(REPO, KEYS, encrypted=True)
    assert len(codec.seal(ObjectType.CHUNK, "a", b"a" * 100_000)) < 1000
    noise = os.urandom(100_000)
    assert len(codec.seal(ObjectType.CHUNK, "a", noise)) <= len(noise) + 64


def test_encryption_hides_plaintext_and_uses_fresh_salt() -> None:
    codec = Codec(REPO, KEYS, encrypted=True)
    secret = b"top secret payload " * 10
    one, two = (codec.seal(ObjectType.CHUNK, "a", secret) for _ in range(2))
    assert b"top secret" not in one
    assert one != two  # fresh per-object key


@pytest.mark.parametrize("codec", codecs(), ids=["aes", "none"])
def test_every_flipped_byte_is_detected(codec: Codec) -> None:
    blob = codec.seal(ObjectType.CHUNK, "abc", b"payload " * 64)
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityError, match="abc"):
            codec.open(ObjectType.CHUNK, "abc", bytes(damaged))


@pytest.mark.parametrize("codec", codecs(), ids=["aes", "none"])
def test_truncation_is_detected(codec: Codec) -> None:
    blob = codec.seal(ObjectType.CHUNK, "abc", b"payload " * 64)
    for length in (0, 1, HEADER_BYTES, len(blob) // 2, len(blob) - 1):
        with pytest.raises(IntegrityError):
            codec.open(ObjectType.CHUNK, "abc", blob[:length])


@pytest.mark.parametrize("codec", codecs(), ids=["aes", "none"])
def test_object_is_bound_to_name_type_and_repository(codec: Codec) -> None:
    blob = codec.seal(ObjectType.CHUNK, "abc", b"data")
    with pytest.raises(IntegrityError):
        codec.open(ObjectType.CHUNK, "abd", blob)
    with pytest.raises(IntegrityError):
        codec.open(ObjectType.INDEX, "abc", blob)
    other_repo = Codec(b"\x01" * 16, KEYS, encrypted=codec.encrypted)
    with pytest.raises(IntegrityError):
        other_repo.open(ObjectType.CHUNK, "abc", blob)


def test_wrong_key_fails() -> None:
    blob = Codec(REPO, KEYS, encrypted=True).seal(ObjectType.CHUNK, "a", b"data")
    other = MasterKeys(b"E" * 32, b"i" * 32, b"m" * 32)
    with pytest.raises(IntegrityError):
        Codec(REPO, other, encrypted=True).open(ObjectType.CHUNK, "a", blob)


def test_chunk_ids_are_keyed() -> None:
    data = b"same data"
    one = Codec(REPO, KEYS, encrypted=True).chunk_id(data)
    other = Codec(REPO, MasterKeys(b"e" * 32, b"I" * 32, b"m" * 32), encrypted=True).chunk_id(data)
    assert len(one) == 64 and one != other


def test_compression_tables_are_capped_and_frames_stay_standard() -> None:
    params = codec_module.compression_parameters(3)
    assert params.hash_log == codec_module.MATCH_TABLE_LOG
    assert params.chain_log <= codec_module.MATCH_TABLE_LOG
    fast = zstandard.ZstdCompressionParameters.from_level(1)  # small tables already: unchanged
    capped_fast = codec_module.compression_parameters(1)
    assert (capped_fast.strategy, capped_fast.hash_log) == (fast.strategy, fast.hash_log)
    strong = zstandard.ZstdCompressionParameters.from_level(9)
    assert codec_module.compression_parameters(9).hash_log == strong.hash_log  # not capped
    data = b"vmkeep " * 300_000
    frame = zstandard.ZstdCompressor(compression_params=params).compress(data)
    assert len(frame) < len(data) // 100
    assert zstandard.ZstdDecompressor().decompress(frame) == data  # content size is in it


def test_sealed_layout_is_header_salt_then_aes_gcm_of_the_payload() -> None:
    """The on-disk format, computed independently: sealing in place must not change it."""
    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt = b"s" * codec_module.SALT_BYTES
    codec = Codec(REPO, KEYS, encrypted=True, random_bytes=lambda n: salt[:n])
    data = os.urandom(5000)  # incompressible: stored as it is
    blob = codec.seal(ObjectType.CHUNK, "abc", data)
    header = codec_module.MAGIC + bytes([codec_module.FORMAT_VERSION, ObjectType.CHUNK, 0])
    aad = REPO + bytes([ObjectType.CHUNK]) + (3).to_bytes(2, "big") + b"abc" + header
    subkey = blake3.blake3(
        KEYS.encryption + salt, derive_key_context=codec_module._SUBKEY_CONTEXT
    ).digest()
    expected = header + salt + AESGCM(subkey).encrypt(bytes(12), data, aad)
    assert bytes(blob) == expected
