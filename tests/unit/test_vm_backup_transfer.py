"""What a VM backup stores besides its disks: the UEFI variables and the emulated TPM's
state are read at the consistency point, before the disks, not after them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from tests.fakes import FakeImageIO, MemoryImage
from tests.unit.test_image_engine import CHUNK, disk, session  # noqa: F401 - a fixture
from vmkeep.domain.chain import ChainPlan, DiskFacts
from vmkeep.domain.inventory import DiskDevice, DiskInfo, SourceType, VmInfo, VmState
from vmkeep.engine.image_backup import RepoSession
from vmkeep.engine.vm_backup_model import Prepared, VmBackupDeps
from vmkeep.engine.vm_backup_transfer import transfer_or_fall_back


class GuestChangingFiles(MemoryImage):
    """A disk whose first read stands for the time the disks take: meanwhile the guest
    writes new UEFI variables and TPM state."""

    def __init__(self, data: bytes, changed: list[Path]) -> None:
        super().__init__(data)
        self._changed = changed

    def pread(self, offset: int, length: int) -> bytes:
        for path in self._changed:
            path.write_bytes(b"changed during the disk transfer")
        return super().pread(offset, length)


def stored(opened: RepoSession, index_id: str) -> bytes:
    index = opened.repo.load_index(index_id)
    return b"".join(opened.repo.load_chunk(cid) for cid in index.chunk_ids)


def test_nvram_and_tpm_state_are_those_of_the_consistency_point(
    session: RepoSession,  # noqa: F811
    tmp_path: Path,
) -> None:
    nvram = tmp_path / "vm_VARS.fd"
    nvram.write_bytes(b"variables at the checkpoint")
    tpm_dir = tmp_path / "tpm2"
    tpm_dir.mkdir()
    (tpm_dir / "tpm2-00.permall").write_bytes(b"tpm state at the checkpoint")
    (tpm_dir / ".lock").write_bytes(b"")
    image = tmp_path / "vda.qcow2"
    cast(FakeImageIO, session.images).images[image] = GuestChangingFiles(
        disk((0, b"data")), [nvram, tpm_dir / "tpm2-00.permall"]
    )
    vm = VmInfo(
        name="vm",
        uuid="u-1",
        state=VmState.SHUTOFF,
        persistent=True,
        vcpus=1,
        memory=1,
        max_memory=1,
        disks=(DiskInfo("vda", DiskDevice.DISK, SourceType.FILE, str(image), "qcow2"),),
        nvram=str(nvram),
        tpm_state=str(tpm_dir),
    )
    item = Prepared(vm, [DiskFacts("vda", 16 * CHUNK, "qcow2")], ChainPlan(None, "first"), "b", "p")
    deps = VmBackupDeps(session, cast(Any, None), cast(Any, None), cast(Any, None), tmp_path)

    results = transfer_or_fall_back(deps, item)

    assert sorted(results) == ["nvram", "tpm/tpm2-00.permall", "vda"]
    assert stored(session, results["nvram"].record.index_id) == b"variables at the checkpoint"
    tpm = results["tpm/tpm2-00.permall"].record.index_id
    assert stored(session, tpm) == b"tpm state at the checkpoint"
    assert nvram.read_bytes() == b"changed during the disk transfer"  # the guest did change it
