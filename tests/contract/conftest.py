"""Fixtures for the contract suites: a real S3 server (Ceph RGW on loopback), started once per
session and only if an S3 test runs, and a fresh, isolated S3Store per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.s3_server import CephS3Server, shared_ceph_s3
from vmkeep.backends.s3 import S3Store


@pytest.fixture(scope="session")
def ceph_s3() -> Iterator[CephS3Server]:
    """The session's Ceph cluster (about 11 s to start), shared with other test directories."""
    with shared_ceph_s3() as server:
        yield server


@pytest.fixture
def s3_store_factory(ceph_s3: CephS3Server) -> Callable[[], S3Store]:
    """A callable giving, per call, an S3Store on a new bucket of its own.

    The store works under a prefix and a stray object sits beside it at the bucket's root,
    so the contract also checks that a store sees nothing outside its prefix. Keys go to the
    store directly; os.environ is left alone.
    """

    def store(url: str, create_bucket: bool = False) -> S3Store:
        return S3Store(
            url,
            endpoint_url=ceph_s3.endpoint,
            access_key=ceph_s3.access_key,
            secret_key=ceph_s3.secret_key,
            create_bucket=create_bucket,
        )

    def factory() -> S3Store:
        bucket = f"vmkeep-test-{uuid.uuid4().hex[:12]}"
        store(f"s3://{bucket}", create_bucket=True).put("stray", b"not in the repository")
        return store(f"s3://{bucket}/repos/one")

    return factory
