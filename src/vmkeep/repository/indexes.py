"""Disk indexes: the ordered chunk ids of one disk, so any backup restores on its own.

Binary layout (big-endian), before sealing::

    "VKIX" | version u8 | chunk_size u32 | disk_size u64 | count u32 | count x 32-byte id

An all-zero id stands for an all-zero chunk, which is recorded, not stored. The last chunk
may be shorter than ``chunk_size``: its length is what remains of ``disk_size``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmkeep.domain.errors import IntegrityError

ZERO_CHUNK = "0" * 64
_MAGIC = b"VKIX"
_HEADER = struct.Struct(">4sBIQI")
_ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class DiskIndex:
    """Chunk ids in disk order; ``ZERO_CHUNK`` marks a chunk of zeros."""

    disk_size: int
    chunk_size: int
    chunk_ids: tuple[str, ...]

    def chunk_length(self, number: int) -> int:
        """Plaintext length of chunk ``number`` (the last one may be short)."""
        return min(self.chunk_size, self.disk_size - number * self.chunk_size)

    def data_bytes(self) -> int:
        """How many bytes of the disk lie in non-zero chunks (what a restore writes)."""
        return sum(
            self.chunk_length(n) for n, cid in enumerate(self.chunk_ids) if cid != ZERO_CHUNK
        )

    def stored_ids(self) -> set[str]:
        """Ids of the chunks that exist as objects (everything but zero chunks)."""
        return {cid for cid in self.chunk_ids if cid != ZERO_CHUNK}


def chunk_count(disk_size: int, chunk_size: int) -> int:
    return (disk_size + chunk_size - 1) // chunk_size


def encode_index(index: DiskIndex) -> bytes:
    if len(index.chunk_ids) != chunk_count(index.disk_size, index.chunk_size):
        raise ValueError("index does not cover the whole disk")
    header = _HEADER.pack(_MAGIC, 1, index.chunk_size, index.disk_size, len(index.chunk_ids))
    return header + b"".join(bytes.fromhex(cid) for cid in index.chunk_ids)


def decode_index(data: bytes, index_id: str) -> DiskIndex:
    """Raises IntegrityError if the bytes are not a well-formed index."""
    if len(data) < _HEADER.size:
        raise IntegrityError(f"index {index_id}: truncated")
    magic, version, chunk_size, disk_size, count = _HEADER.unpack_from(data)
    body = data[_HEADER.size :]
    if (
        magic != _MAGIC
        or version != 1
        or chunk_size <= 0
        or len(body) != count * _ID_BYTES
        or count != chunk_count(disk_size, chunk_size)
    ):
        raise IntegrityError(f"index {index_id}: malformed")
    ids = tuple(body[i : i + _ID_BYTES].hex() for i in range(0, len(body), _ID_BYTES))
    return DiskIndex(disk_size=disk_size, chunk_size=chunk_size, chunk_ids=ids)
