"""Backups of idle images read plain data straight from the image file (drivers/image_map.py)
and everything else through qemu-nbd. Checked on real images against what QEMU itself reads:
a qcow2 overlay whose data partly lives in its backing file, compressed clusters, and a raw
image whose size is not a multiple of 4 KiB."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_image_backup_cli import (
    backup,
    compare,
    data_bytes,
    env,  # noqa: F401 - the repository fixture, shared with those tests
    make_image,
    qemu_io,
    restore,
)
from vmkeep.domain.errors import LockedError
from vmkeep.drivers.image_map import MappedFileReader
from vmkeep.drivers.nbd_image import QemuImageIO

MiB = 1 << 20


def as_raw(image: Path, fmt: str, tmp_path: Path) -> bytes:
    """The image's guest-visible bytes, as qemu-img reads them."""
    out = tmp_path / f"{image.name}.reference.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", fmt, "-O", "raw", str(image), str(out)], check=True
    )
    return out.read_bytes()


def read_all(image: Path, fmt: str, step: int) -> tuple[bytes, int]:
    """Every byte through vmkeep's reader, in ``step`` pieces; and how much of it the map
    lets the reader take from the file directly."""
    with QemuImageIO().open_reader(image, image_format=fmt) as reader:
        assert isinstance(reader, MappedFileReader)
        parts = [
            reader.pread(offset, min(step, reader.size - offset))
            for offset in range(0, reader.size, step)
        ]
        return b"".join(parts), reader.direct_bytes


def test_overlay_reads_its_own_clusters_directly_and_the_backing_files_through_qemu(
    tmp_path: Path,
) -> None:
    base = make_image(tmp_path / "base.qcow2", "8M")
    qemu_io(base, "write -P 0x11 0 3M", "write -P 0x22 5M 1M")
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
        check=True,
    )
    # Half-chunk writes, so one chunk mixes overlay data, backing data and (at 7M) zeros.
    qemu_io(overlay, "write -P 0x33 1M 512k", "write -P 0x44 6656k 256k")
    data, direct = read_all(overlay, "qcow2", MiB)
    assert data == as_raw(overlay, "qcow2", tmp_path)
    assert direct == 768 * 1024  # only the overlay's own clusters


def test_compressed_clusters_are_read_through_qemu(tmp_path: Path) -> None:
    plain = make_image(tmp_path / "plain.qcow2", "4M")
    qemu_io(plain, "write -P 0x55 0 2M")
    compressed = tmp_path / "compressed.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-c", "-O", "qcow2", str(plain), str(compressed)], check=True
    )
    qemu_io(compressed, "write -P 0x66 3M 64k")  # a plain cluster beside compressed ones
    data, direct = read_all(compressed, "qcow2", MiB)
    assert data == as_raw(compressed, "qcow2", tmp_path)
    assert direct == 64 * 1024


@pytest.mark.parametrize("step", [MiB, 4096 + 512])
def test_raw_image_with_an_unaligned_size(tmp_path: Path, step: int) -> None:
    image = make_image(tmp_path / "odd.raw", str(3 * MiB + 1536), "raw")
    qemu_io(image, "write -P 0x77 0 1M", f"write -P 0x78 {3 * MiB} 1536", fmt="raw")
    data, direct = read_all(image, "raw", step)
    assert data == image.read_bytes()
    assert direct >= MiB + 1536


@pytest.mark.parametrize("out_format", ["qcow2", "raw"])
def test_restore_of_an_unaligned_disk_is_identical(
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    out_format: str,
) -> None:
    """Restores write straight into the file too (a preallocated qcow2, or a sparse raw
    file); a disk whose last block is short must still come back bit for bit."""
    image = make_image(tmp_path / "odd.raw", str(3 * MiB + 1536), "raw")
    qemu_io(image, "write -P 0x77 64k 1M", f"write -P 0x78 {3 * MiB} 1536", fmt="raw")
    manifest = backup(env, image)
    target = tmp_path / f"restored.{out_format}"
    restore(env, str(manifest["backup_id"]), target, "--format", out_format)
    compare(image, target)
    if out_format == "qcow2":
        assert data_bytes(target) == MiB + 1536  # the last cluster counts up to the disk end
        subprocess.run(["qemu-img", "check", "-q", str(target)], check=True)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_no_writer_can_open_an_image_while_it_is_read(tmp_path: Path, fmt: str) -> None:
    """qemu-nbd --read-only alone keeps writers out of qcow2 images but not raw ones; the
    reader takes QEMU's "refuses write" lock itself, so a VM starting mid-backup fails to
    open the disk instead of tearing the backup."""
    image = make_image(tmp_path / f"disk.{fmt}", "4M", fmt)
    write = ["qemu-io", "-f", fmt, "-c", "write -P 0x99 0 4k", str(image)]
    with QemuImageIO().open_reader(image, image_format=fmt):
        refused = subprocess.run(write, capture_output=True, text=True)
        assert refused.returncode != 0
        assert "lock" in refused.stderr
    subprocess.run(write, check=True, capture_output=True)  # free again afterwards


def test_an_image_open_for_writing_is_refused(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.raw", "4M", "raw")
    socket = tmp_path / "writer.sock"
    writer = subprocess.Popen(["qemu-nbd", "-f", "raw", "--socket", str(socket), str(image)])
    try:
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with (
            pytest.raises(LockedError, match="open for writing"),
            QemuImageIO().open_reader(image, image_format="raw"),
        ):
            pass
    finally:
        writer.terminate()
        writer.wait()


def test_a_much_fragmented_image_is_read_through_nbd_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vmkeep.drivers.image_map as image_map

    image = make_image(tmp_path / "disk.qcow2", "4M")
    qemu_io(image, "write -P 0x11 0 64k", "write -P 0x22 1M 64k", "write -P 0x33 2M 64k")
    monkeypatch.setattr(image_map, "MAX_MAP_ENTRIES", 3)  # this image has 6 ranges
    with QemuImageIO().open_reader(image, image_format="qcow2") as reader:
        assert not isinstance(reader, MappedFileReader)
        data = b"".join(reader.pread(o, MiB) for o in range(0, 4 * MiB, MiB))
    assert data == as_raw(image, "qcow2", tmp_path)


@pytest.mark.parametrize(("data_mib", "preallocated"), [(8, True), (1, False)])
def test_qcow2_restores_are_preallocated_only_when_enough_of_the_disk_holds_data(
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    data_mib: int,
    preallocated: bool,
) -> None:
    """Preallocating costs per GiB of virtual size: a disk that is almost empty (1 MiB of
    256) is restored through qemu-nbd instead; both ways give the same thin, identical image."""
    image = make_image(tmp_path / "disk.qcow2", "256M")
    qemu_io(image, f"write -P 0x42 16M {data_mib}M")
    manifest = backup(env, image)
    target = tmp_path / "restored.qcow2"
    restore(env, str(manifest["backup_id"]), target)
    compare(image, target)
    assert data_bytes(target) == data_mib * MiB
    # A preallocated image's file spans the virtual size (sparse); one written through
    # qemu-nbd ends after its last cluster.
    assert (target.stat().st_size >= 256 * MiB) == preallocated


def test_holes_read_through_nbd_are_zeros_in_reused_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NBD reads skip libnbd's zeroing of the buffer (nbd_client.py); qemu-nbd answers holes
    as hole replies, which libnbd must then fill with zeros itself. Reading data and holes in
    turn makes the allocator hand each hole read a buffer that just held data."""
    import vmkeep.drivers.image_map as image_map

    image = tmp_path / "striped.raw"
    with image.open("wb") as handle:
        for mib in range(0, 16, 2):  # data in even MiBs, holes in odd ones
            handle.seek(mib * MiB)
            handle.write(bytes([0x40 + mib]) * MiB)
        handle.truncate(16 * MiB)
    monkeypatch.setattr(image_map, "MAX_MAP_ENTRIES", 1)  # everything through qemu-nbd
    with QemuImageIO().open_reader(image, image_format="raw") as reader:
        assert not isinstance(reader, MappedFileReader)
        for _ in range(20):
            for mib in range(16):
                data = reader.pread(mib * MiB, MiB)
                expected = bytes([0x40 + mib]) * MiB if mib % 2 == 0 else bytes(MiB)
                assert data == expected, f"MiB {mib}"
