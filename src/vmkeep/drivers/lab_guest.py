"""Builds the lab guest: the host's Debian kernel and a busybox initramfs running qemu-ga.

The guest is tiny on purpose: it boots in about ten seconds under TCG, answers the guest
agent (ping, fsfreeze, exec) and lets tests write into its virtio disks with sh and dd.
Built once per input set and cached under a content key, so a changed kernel, busybox,
qemu-ga or init script gives a new build and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmkeep.domain.errors import LabError
from vmkeep.domain.vmspec import GuestBoot
from vmkeep.drivers.process import run_tool

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")
QEMU_GA = Path("/usr/sbin/qemu-ga")
BOOT_DIR = Path("/boot")
MODULES_DIR = Path("/lib/modules")

# Modules the guest loads, dependencies first (resolved from modules.dep). crc32c is a soft
# dependency of ext4 that modules.dep does not list; ext4 lets tests mount filled disks.
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "crc32c_generic", "ext4")

KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1 mitigations=off"
READY_MARKER = "vmkeep-lab-guest: ready"

_INIT_SCRIPT = """#!/bin/busybox sh
# init of the vmkeep lab guest (generated; see vmkeep/drivers/lab_guest.py)
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for module in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$module.ko" || echo "vmkeep-lab-guest: cannot load $module"
done
# The agent's port appears a moment after virtio_console loads.
tries=0
while [ -z "$(ls /sys/class/virtio-ports 2>/dev/null)" ] && [ $tries -lt 100 ]; do
  sleep 0.1; tries=$((tries + 1))
done
mkdir -p /dev/virtio-ports
for port in /sys/class/virtio-ports/*; do
  [ -e "$port/name" ] || continue
  ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$(cat "$port/name")"
done
tries=0
while [ ! -e /dev/vda ] && [ $tries -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
qemu-ga -d -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0
# With vmkeep.heartbeat on the command line: the guest's uptime on ttyS1 every 10 ms, for
# measuring from the host how long snapshots pause the guest (bench/snapshot_bench.py).
if grep -q vmkeep.heartbeat /proc/cmdline; then
  (while true; do read up rest < /proc/uptime; echo "$up"; usleep 10000; done) \
    > /dev/ttyS1 2>/dev/null &
fi
echo "READY_MARKER"
while true; do sleep 3600; done
""".replace("READY_MARKER", READY_MARKER)


@dataclass(frozen=True, slots=True)
class _Module:
    name: str
    path: Path


def find_kernel(boot_dir: Path = BOOT_DIR, modules_dir: Path = MODULES_DIR) -> tuple[Path, str]:
    """The newest ``vmlinuz-VERSION`` that has a matching modules directory."""
    candidates = []
    for kernel in boot_dir.glob("vmlinuz-*"):
        version = kernel.name.removeprefix("vmlinuz-")
        if (modules_dir / version / "modules.dep").is_file():
            candidates.append((kernel, version))
    if not candidates:
        raise LabError(
            f"no kernel with modules in {boot_dir}: install linux-image-amd64 (run `make setup`)"
        )
    return max(candidates, key=lambda kv: [int(n) for n in re.findall(r"\d+", kv[1])])


def resolve_modules(modules_dep: str, wanted: tuple[str, ...]) -> list[tuple[str, str]]:
    """Order ``wanted`` and their dependencies so each loads after what it needs.

    ``modules_dep`` is the text of modules.dep. Returns ``(name, relative path)`` pairs.
    Raises LabError for a module the kernel does not have as a loadable module.
    """
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[_module_name(path)] = (path, [_module_name(dep) for dep in rest.split()])
    ordered: list[tuple[str, str]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        if name not in deps:
            raise LabError(f"kernel module {name} is not available as a loadable module")
        seen.add(name)
        path, needs = deps[name]
        for need in reversed(needs):  # modules.dep lists the deepest dependency last
            visit(need)
        ordered.append((name, path))

    for name in wanted:
        visit(name)
    return ordered


def _module_name(path: str) -> str:
    base = path.strip().rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def _shared_libraries(binary: Path) -> list[Path]:
    """Absolute paths of the shared objects ``binary`` loads, the dynamic loader included."""
    found = []
    for line in run_tool(["ldd", str(binary)]).splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            found.append(Path(match.group(1)))
    return found


class BusyboxGuestBuilder:
    """GuestBuilder from the host's kernel, busybox-static and qemu-guest-agent."""

    def ensure_guest(self, cache_dir: Path) -> GuestBoot:
        kernel, version = find_kernel()
        for needed, package in ((BUSYBOX, "busybox-static"), (QEMU_GA, "qemu-guest-agent")):
            if not needed.exists():
                raise LabError(f"{needed} is missing: install {package} (run `make setup`)")
        key = self._cache_key(kernel)
        target = cache_dir / key
        boot = GuestBoot(
            kernel=str(target / "vmlinuz"),
            initrd=str(target / "initrd.img"),
            cmdline=KERNEL_CMDLINE,
        )
        if (target / "initrd.img").is_file() and (target / "vmlinuz").is_file():
            return boot
        log.info("building the lab guest (kernel %s) into %s", version, target)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_dir.chmod(0o755)  # QEMU runs as libvirt-qemu and must read the files
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
        try:
            self._build(staging, kernel, version)
            staging.chmod(0o755)
            try:
                staging.rename(target)
            except OSError:
                if not (target / "initrd.img").is_file():  # not a concurrent build: real error
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return boot

    def _cache_key(self, kernel: Path) -> str:
        digest = hashlib.sha256(_INIT_SCRIPT.encode())
        digest.update(repr(GUEST_MODULES).encode())
        for path in (kernel, BUSYBOX, QEMU_GA):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def _build(self, out: Path, kernel: Path, version: str) -> None:
        root = out / "root"
        for directory in (
            "bin",
            "sbin",
            "dev",
            "proc",
            "sys",
            "run",
            "tmp",
            "mnt",
            "etc",
            "var",
            "lib/modules",
            "usr/sbin",
        ):
            (root / directory).mkdir(parents=True, exist_ok=True)
        (root / "var" / "run").symlink_to("/run")
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        init = root / "init"
        init.write_text(_INIT_SCRIPT)
        init.chmod(0o755)
        self._add_modules(root, version)
        shutil.copy(QEMU_GA, root / "usr" / "sbin" / "qemu-ga")
        for library in _shared_libraries(QEMU_GA):
            dest = root / library.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(library.resolve(), dest)
        self._pack(root, out / "initrd.img")
        shutil.rmtree(root)
        shutil.copy(kernel, out / "vmlinuz")
        for built in ("vmlinuz", "initrd.img"):
            (out / built).chmod(0o644)

    def _add_modules(self, root: Path, version: str) -> None:
        modules_dir = MODULES_DIR / version
        order = resolve_modules((modules_dir / "modules.dep").read_text(), GUEST_MODULES)
        for name, relative in order:
            source = modules_dir / relative
            data = source.read_bytes()
            if source.suffix == ".xz":  # busybox insmod wants plain ELF objects
                data = lzma.decompress(data)
            elif source.suffix == ".zst":
                raise LabError(f"{source}: zstd-compressed modules are not supported")
            (root / "lib" / "modules" / f"{name}.ko").write_bytes(data)
        (root / "lib" / "modules" / "load-order").write_text(
            "".join(f"{name}\n" for name, _ in order)
        )

    def _pack(self, root: Path, archive: Path) -> None:
        """Write ``root`` as a newc cpio archive, the format the kernel unpacks."""
        names = sorted(str(path.relative_to(root)) for path in root.rglob("*"))
        if shutil.which("cpio") is None:
            raise LabError("cpio is not installed (run `make setup`)")
        with archive.open("wb") as out:
            done = subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                input="\n".join(names).encode() + b"\n",
                stdout=out,
                stderr=subprocess.PIPE,
                cwd=root,
                check=False,
            )
        if done.returncode != 0:
            raise LabError(f"cpio failed: {done.stderr.decode(errors='replace').strip()}")
