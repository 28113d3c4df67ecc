"""Module ordering and kernel discovery for the lab guest (no build, no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.domain.errors import LabError
from vmkeep.drivers.lab_guest import find_kernel, resolve_modules

# Shaped like Debian 12's modules.dep: the deepest dependency comes last on each line.
MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/lib/crc16.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/fs/jbd2/jbd2.ko.xz:
"""


def test_dependencies_load_first_and_once() -> None:
    order = [name for name, _ in resolve_modules(MODULES_DEP, ("virtio_pci", "virtio_blk"))]
    assert sorted(order) == sorted(set(order))
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci")
    assert order.index("virtio_pci_modern_dev") < order.index("virtio_pci")
    assert order[-1] == "virtio_blk"


def test_compressed_module_paths_are_kept() -> None:
    order = dict(resolve_modules(MODULES_DEP, ("ext4",)))
    assert order["ext4"] == "kernel/fs/ext4/ext4.ko.xz"
    assert list(order)[-1] == "ext4"
    assert set(order) == {"ext4", "crc16", "mbcache", "jbd2"}


def test_unknown_module_is_a_lab_error() -> None:
    with pytest.raises(LabError, match="nvme_tcp"):
        resolve_modules(MODULES_DEP, ("nvme_tcp",))


def test_find_kernel_picks_newest_with_modules(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for version, has_modules in (
        ("6.1.0-9-amd64", True),
        ("6.1.0-27-amd64", True),
        ("6.5.0-1-amd64", False),
    ):
        (boot / f"vmlinuz-{version}").write_bytes(b"k")
        if has_modules:
            (modules / version).mkdir(parents=True)
            (modules / version / "modules.dep").write_text("")
    kernel, version = find_kernel(boot, modules)
    assert version == "6.1.0-27-amd64"
    assert kernel == boot / "vmlinuz-6.1.0-27-amd64"


def test_find_kernel_without_any_is_a_lab_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="linux-image-amd64"):
        find_kernel(tmp_path, tmp_path)
