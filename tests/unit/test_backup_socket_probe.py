"""``_listening`` decides whether a failed backup waits for libvirt to see its domain stop
before ending the job (drivers/libvirt_backup.py): only a certain absence counts."""

from __future__ import annotations

import socket
from pathlib import Path

from vmkeep.drivers.libvirt_backup import _listening


def test_a_listening_socket_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "nbd.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        assert _listening(path)
    finally:
        server.close()


def test_a_socket_nobody_listens_on_any_more_is_not(tmp_path: Path) -> None:
    path = tmp_path / "nbd.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.close()  # as when QEMU exits: the file stays, nothing accepts
    assert path.exists()
    assert not _listening(path)


def test_a_missing_socket_is_not(tmp_path: Path) -> None:
    assert not _listening(tmp_path / "gone.sock")
