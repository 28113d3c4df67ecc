#!/usr/bin/env bash
# Idempotent host setup for vmkeep: Debian packages, the .venv, and the libvirt daemons.
# Safe to run again and again; a second run with nothing to do takes a few seconds.
# Used by `make demo`, `make setup` and .ci/run, so a fresh Debian 12 machine and this one
# take exactly the same steps.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

say() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages ------------------------------------------------------------------------
# The hypervisor, the Python bindings that exist only as Debian packages (libnbd), and what the
# lab guest is built from (kernel, busybox, qemu-ga, cpio, mkfs.ext4).
apt_packages=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
  python3-libvirt python3-libnbd python3-venv python3-pip
  qemu-guest-agent linux-image-amd64 busybox-static cpio e2fsprogs
  nbdkit procps ovmf
  # the TPM emulator libvirt runs for VMs with an emulated TPM (its state is backed up)
  swtpm swtpm-tools
  # a single-node Ceph with its RADOS Gateway: the real S3 server tests/s3_server.py starts
  ceph-mon ceph-osd ceph-mgr radosgw ceph-common
)
missing=()
for pkg in "${apt_packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages already installed"
fi

# --- Python virtual environment -------------------------------------------------------------
# libnbd has no PyPI package, so the venv is made from Debian's python3 and sees its
# site-packages (python3-libvirt, python3-libnbd) beside what pip installs.
venv="$repo_root/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import libvirt, nbd' 2>/dev/null; then
  say "creating $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.vmkeep-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$venv/bin/python" -c 'import vmkeep' 2>/dev/null; then
  say "installing vmkeep and its development tools into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
else
  say "venv up to date"
fi
# An editable install leaves vmkeep's own modules uncompiled, and with PYTHONDONTWRITEBYTECODE
# set every command would compile them again (0.15 s of each command's start-up). Byte-code
# that is out of date is ignored by Python, so this is only ever a speed-up.
"$venv/bin/python" -m compileall -q src >/dev/null

# --- libvirt daemons ------------------------------------------------------------------------
# A fresh machine has no init system running them. virtlogd must come first: without it every
# domain start fails with "Failed to connect socket to '/run/libvirt/virtlogd-sock'".
if ! pgrep -x virtlogd >/dev/null; then
  say "starting virtlogd"
  virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  say "starting libvirtd"
  # Under a subreaper: where pid 1 is no init system, QEMU processes would linger unreaped
  # and every VM stop would wait for them (see scripts/subreaper.py).
  setsid nohup /usr/bin/python3 "$repo_root/scripts/subreaper.py" libvirtd -d \
    >/dev/null 2>&1 < /dev/null &
fi
for _ in $(seq 1 60); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    say "libvirtd answers at qemu:///system"
    exit 0
  fi
  sleep 0.5
done
say "libvirtd did not answer at qemu:///system within 30 s"
exit 1
