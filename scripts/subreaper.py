"""Run a daemonising command as a child subreaper, and reap every orphan below it at once.

Usage: subreaper.py COMMAND [ARGS...]   (setup.sh: ``subreaper.py libvirtd -d``)

On machines whose pid 1 is not an init system (containers, micro-VMs) orphaned processes are
reaped late or never. libvirt double-forks QEMU, so QEMU is such an orphan, and libvirt waits
until the QEMU process is really gone before a destroy returns: on the development machine
that wait cost about 1.4 s per stop of a VM (reverts, lab destroy, tests). As a subreaper
(prctl PR_SET_CHILD_SUBREAPER) this process adopts the daemon and its orphans and reaps them
as they exit. It ends when nothing is left below it. Standard library only, by design: it
runs before the venv exists.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    subprocess.Popen(argv)  # reaped by the loop below, like every adopted orphan
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
