#!/usr/bin/env bash
# The main job of vmkeep on a lab VM, end to end. Run through `make demo`, which installs
# everything first. A second run reuses the lab VM and is quick.
#
# Today the story is: create (or reuse) a lab VM whose first disk holds real files, write into
# its second disk from inside the guest, and show the VM as vmkeep's inventory sees it.
# Later steps (snapshot, backup, incremental, restore, verify) join as they land.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

name=${1:-vmkeep-demo}
vmkeep=.venv/bin/vmkeep
fill=${DEMO_FILL:-/usr/share/doc}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. lab VM '$name' (created once, reused afterwards; disk vda filled from $fill)"
start=$(date +%s)
"$vmkeep" lab create "$name" --reuse --disks 2 --disk-size 8G --fill "$fill" --json > /tmp/vmkeep-demo-lab.json
created=$(python3 -c 'import json,sys; print("created" if json.load(open(sys.argv[1]))["created"] else "reused")' /tmp/vmkeep-demo-lab.json)
rm -f /tmp/vmkeep-demo-lab.json
echo "lab VM $created in $(( $(date +%s) - start )) s"

step "2. write 4 MiB of fresh data into vdb from inside the guest (guest agent exec)"
"$vmkeep" lab exec "$name" -- sh -c \
  'dd if=/dev/urandom of=/dev/vdb bs=1M count=4 conv=fsync 2>&1 | tail -1; ls /sys/block | grep vd | tr "\n" " "; echo'

step "3. the VM as vmkeep sees it"
"$vmkeep" vm show "$name"

step "4. every VM on this host"
"$vmkeep" vm list

step "summary"
cat <<EOT
lab VM '$name' is $created and running; its guest agent answers.
try:   $vmkeep lab exec '$name' -- sh -c 'mount /dev/vda /mnt && ls /mnt'
       $vmkeep vm show '$name' --json
clean: $vmkeep lab destroy '$name'
EOT
