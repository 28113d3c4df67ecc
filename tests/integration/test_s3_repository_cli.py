"""A repository in S3 end to end through the CLI, against the real Ceph RADOS Gateway:
init (creating the bucket), image backup, dedup, restore, and check finding a damaged object."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import run_vmkeep
from tests.s3_server import CephS3Server, shared_ceph_s3

MiB = 1 << 20


@pytest.fixture(scope="module")
def ceph() -> Iterator[CephS3Server]:
    with shared_ceph_s3() as server:
        yield server


@pytest.fixture
def env(ceph: CephS3Server, tmp_path: Path) -> dict[str, str]:
    password = tmp_path / "pw"
    password.write_text("s3 repository\n")
    password.chmod(0o600)
    environment = dict(os.environ)
    environment.update(
        VMKEEP_REPO=f"s3://vmkeep-cli-{uuid.uuid4().hex[:10]}/hosts/one",
        VMKEEP_S3_ENDPOINT=ceph.endpoint,
        AWS_ACCESS_KEY_ID=ceph.access_key,
        AWS_SECRET_ACCESS_KEY=ceph.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        VMKEEP_PASSWORD_FILE=str(password),
        VMKEEP_CONFIG=str(tmp_path / "none.toml"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    (tmp_path / "none.toml").write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    return environment


def test_s3_repository_round_trip_and_check(
    env: dict[str, str], ceph: CephS3Server, tmp_path: Path
) -> None:
    init = json.loads(run_vmkeep(env, "repo", "init", "--json").stdout)
    assert init["repository"].startswith("s3://")
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"], check=True)
    subprocess.run(
        [
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0x42 0 1M",
            "-c",
            "write -P 0x43 8M 1M",
            str(image),
        ],
        check=True,
        capture_output=True,
    )
    first = json.loads(run_vmkeep(env, "backup-image", str(image), "--json").stdout)
    second = json.loads(run_vmkeep(env, "backup-image", str(image), "--json").stdout)
    assert first["disks"][0]["new_bytes"] == 2 * MiB
    assert second["disks"][0]["new_bytes"] == 0
    restored = tmp_path / "restored.qcow2"
    run_vmkeep(env, "restore-image", first["backup_id"], "--to", str(restored))
    assert subprocess.run(["qemu-img", "compare", str(image), str(restored)]).returncode == 0
    assert json.loads(run_vmkeep(env, "repo", "check", "--read-data", "--json").stdout)["ok"]

    bucket, prefix = env["VMKEEP_REPO"][len("s3://") :].split("/", 1)
    s3 = boto3.client(
        "s3",
        endpoint_url=ceph.endpoint,
        aws_access_key_id=ceph.access_key,
        aws_secret_access_key=ceph.secret_key,
        region_name="us-east-1",
    )
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/data/")["Contents"]
    ]
    victim = keys[0]
    body = bytearray(s3.get_object(Bucket=bucket, Key=victim)["Body"].read())
    body[-5] ^= 0xFF
    s3.delete_object(Bucket=bucket, Key=victim)
    s3.put_object(Bucket=bucket, Key=victim, Body=bytes(body))
    done = run_vmkeep(env, "repo", "check", "--read-data", "--json", check=False)
    assert done.returncode == 13
    report = json.loads(done.stdout)
    assert [p["object_name"] for p in report["problems"]] == [victim[len(prefix) + 1 :]]
    assert set(report["damaged_backups"]) == {first["backup_id"], second["backup_id"]}
