#!/usr/bin/env bash
# The main job of vmkeep on a lab VM, end to end. Run through `make demo`, which installs
# everything first. A second run reuses the lab VM and the repository and is quick.
#
# The story: a lab VM with real files on its first disk; a full backup while it runs; new data
# written inside the guest; an incremental backup that reads only the changes; a restore of
# the latest backup as a new VM that boots; the data compared inside both guests; a check of
# the repository; a summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

name=${1:-vmkeep-demo}
copy="$name-restored"
vmkeep=.venv/bin/vmkeep
fill=${DEMO_FILL:-/usr/share/doc}
state=/var/lib/vmkeep/demo
export VMKEEP_REPO=${VMKEEP_REPO:-$state/repository}
export VMKEEP_PASSWORD_FILE=${VMKEEP_PASSWORD_FILE:-$state/password}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
in_guest() { "$vmkeep" lab exec "$1" -- sh -c "$2"; }

mkdir -p "$state"
chmod 700 "$state"
if [ ! -f "$VMKEEP_PASSWORD_FILE" ]; then
  head -c 24 /dev/urandom | base64 > "$VMKEEP_PASSWORD_FILE"
  chmod 600 "$VMKEEP_PASSWORD_FILE"
fi

step "1. lab VM '$name' (created once, reused afterwards; vda filled from $fill)"
"$vmkeep" lab create "$name" --reuse --disks 2 --disk-size 8G --fill "$fill" --json \
  | json '"created" if d["created"] else "reused"'

step "2. encrypted repository $VMKEEP_REPO"
if [ -f "$VMKEEP_REPO/config" ]; then echo "reused"; else "$vmkeep" repo init; fi

step "3. full backup while the VM runs (quiesced through the guest agent)"
"$vmkeep" backup "$name" --full --json > "$state/full.json"
json '"%s: %s, %.1f MiB read" % (d[0]["backup_id"], d[0]["kind"], sum(x["read_bytes"] for x in d[0]["disks"])/2**20)' < "$state/full.json"

offset=$((RANDOM % 512 * 8))
step "4. change data inside the guest: 16 MiB of new random data on vdb at ${offset} MiB"
in_guest "$name" "dd if=/dev/urandom of=/dev/vdb bs=1M count=16 seek=$offset conv=fsync 2>&1 | tail -1"

step "5. incremental backup: only the changed blocks are read"
"$vmkeep" backup "$name" --json > "$state/inc.json"
json '"%s: %s, %.1f MiB read" % (d[0]["backup_id"], d[0]["kind"], sum(x["read_bytes"] for x in d[0]["disks"])/2**20)' < "$state/inc.json"
latest=$(json 'd[0]["backup_id"]' < "$state/inc.json")

step "6. restore the incremental as a new VM '$copy' and boot it"
virsh -q destroy "$copy" >/dev/null 2>&1 || true
virsh -q undefine "$copy" >/dev/null 2>&1 || true
"$vmkeep" restore "$latest" --as "$copy" --force --start
for _ in $(seq 1 180); do
  virsh qemu-agent-command "$copy" '{"execute":"guest-ping"}' >/dev/null 2>&1 && break
  sleep 1
done

step "7. compare the data inside both guests: the new vdb region and the files on vda"
probe="dd if=/dev/vdb bs=1M skip=$offset count=16 2>/dev/null | md5sum | cut -c1-32;
mount -o ro /dev/vda /mnt && find /mnt -type f | sort | head -200 | xargs md5sum | md5sum | cut -c1-32; umount /mnt"
original=$(in_guest "$name" "$probe" | xargs)
pid=$(virsh qemu-agent-command "$copy" "$(python3 -c 'import json,sys; print(json.dumps({"execute":"guest-exec","arguments":{"path":"sh","arg":["-c",sys.argv[1]],"capture-output":True}}))' "$probe")" | json 'd["return"]["pid"]')
restored=""
for _ in $(seq 1 120); do
  status=$(virsh qemu-agent-command "$copy" "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}")
  if echo "$status" | json 'd["return"]["exited"]' | grep -q True; then
    restored=$(echo "$status" | python3 -c 'import json,sys,base64; print(base64.b64decode(json.load(sys.stdin)["return"]["out-data"]).decode())' | xargs)
    break
  fi
  sleep 1
done
echo "original: $original"
echo "restored: $restored"
[ -n "$original" ] && [ "$original" = "$restored" ] && verdict="identical" || verdict="DIFFERENT"

step "8. verify the repository (decrypt and hash every chunk)"
"$vmkeep" repo check --read-data

step "summary"
"$vmkeep" list
"$vmkeep" repo stats
cat <<EOT
lab VM:       $name (running), restored copy: $copy (running)
full:         $(json '"%s, disks read in %.1f s" % (d[0]["backup_id"], sum(x["seconds"] for x in d[0]["disks"]))' < "$state/full.json")
incremental:  $(json '"%s, disks read in %.1f s" % (d[0]["backup_id"], sum(x["seconds"] for x in d[0]["disks"]))' < "$state/inc.json")
data check:   new data on vdb and 200 files on vda: $verdict in the original and the restored VM
clean up:     virsh destroy '$copy'; virsh undefine '$copy'; $vmkeep lab destroy '$name'; rm -rf $state
EOT
[ "$verdict" = "identical" ]
