"""Backup manifests as JSON, and backup ids."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import datetime

from vmkeep.domain.backup import BackupId, BackupManifest, DiskBackup
from vmkeep.domain.errors import IntegrityError, UsageError

# Ids made before milliseconds were added (``20261123T163500Z-1a2b3c4d``) stay valid.
_ID_RE = re.compile(r"^\d{8}T\d{6}(\d{3})?Z-[0-9a-f]{8}$")


def new_backup_id(now: datetime, random_hex: str) -> BackupId:
    """``20261123T163500123Z-1a2b3c4d``: UTC to the millisecond, so that ids sort in the order
    the backups were made (with whole seconds, two backups of a VM in one second sorted by
    their random part, and "the latest" could be the older one); the random part keeps ids
    made at once on several hosts, or for the VMs of one group, apart."""
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z-{random_hex}"


def validate_backup_id(text: str) -> BackupId:
    if not _ID_RE.match(text):
        raise UsageError(f"{text!r} is not a backup id (like 20261123T163500123Z-1a2b3c4d)")
    return text


def encode_manifest(manifest: BackupManifest) -> bytes:
    return json.dumps(asdict(manifest), sort_keys=True, ensure_ascii=False).encode()


def decode_manifest(data: bytes, backup_id: BackupId) -> BackupManifest:
    """Raises IntegrityError if the JSON does not describe a backup named ``backup_id``."""
    try:
        document = json.loads(data)
        disks = tuple(DiskBackup(**disk) for disk in document.pop("disks"))
        document["tags"] = tuple(document.get("tags", ()))
        document["warnings"] = tuple(document.get("warnings", ()))
        manifest = BackupManifest(disks=disks, **document)
    except (ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(f"manifest {backup_id}: malformed ({exc})") from exc
    if manifest.backup_id != backup_id:
        raise IntegrityError(f"manifest {backup_id}: names another backup ({manifest.backup_id})")
    return manifest
