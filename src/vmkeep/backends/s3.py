"""ObjectStore in an S3 bucket (AWS, Ceph RGW, MinIO...), through boto3.

The only module of vmkeep that imports boto3 or botocore. Each object is one S3 object at
``PREFIX/NAME``. Creation never overwrites: ``put`` is a conditional PUT (``If-None-Match:
*``), which the server applies atomically, so concurrent writers of one name have exactly one
winner. Every botocore failure is translated here into the vmkeep exception tree.
"""

from __future__ import annotations

import hashlib
import logging
import re
from base64 import b64encode
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from vmkeep.domain.errors import (
    ObjectNotFoundError,
    StoreError,
    StoreFullError,
    StoreTransientError,
    UsageError,
)
from vmkeep.domain.objects import ObjectInfo, validate_object_name

log = logging.getLogger(__name__)

# S3's rule for new bucket names (3-63 of a-z 0-9 . -, starting and ending alnum).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Error codes worth retrying although their status is not 5xx. BadDigest means the body was
# damaged on the way (Content-MD5 mismatch); RequestTimeout means the server gave up waiting
# for a slow upload. 409 ConditionalRequestConflict is AWS saying "a concurrent conditional
# write was in flight, retry": answering False would claim an object that may never exist.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "BadDigest",
        "ConditionalRequestConflict",
        "InternalError",
        "ServiceUnavailable",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
)
# Out of room: a bucket or user quota (Ceph RGW answers 403 QuotaExceeded), a full MinIO.
_FULL_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull"})
_INSUFFICIENT_STORAGE = 507
_FORBIDDEN = 403
_PRECONDITION_FAILED = 412
_NOT_IMPLEMENTED = 501


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket[/prefix]`` into the bucket and the prefix (no outer slashes, may
    be ``""``). Raises UsageError for anything else, naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if scheme != "s3" or not sep:
        raise UsageError(f"{url!r} is not an S3 URL (expected s3://bucket/prefix)")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise UsageError(
            f"{url!r}: invalid bucket name {bucket!r} (3 to 63 characters of a-z, 0-9, '.'"
            " and '-', starting and ending with a letter or digit)"
        )
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_object_name(prefix)
        except UsageError:
            raise UsageError(f"{url!r}: invalid prefix {prefix!r}") from None
    return bucket, prefix


class S3Store:
    """Write-once objects under ``s3://bucket/prefix``. Safe to share between threads.

    Credentials come from ``access_key``/``secret_key`` when given, else from boto3's usual
    chain (``AWS_ACCESS_KEY_ID``..., ``~/.aws``, instance roles). They are handed to boto3 and
    never kept or logged here. ``retries`` is how many times botocore itself retries a failed
    request (throttling, 5xx, timeouts) before a StoreTransientError reaches the caller; wrap
    the store in ``RetryingStore`` for longer, backed-off retries.

    The constructor raises UsageError for a bad URL, and StoreError if ``create_bucket`` is set
    and the bucket can neither be created nor found.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        create_bucket: bool = False,
        access_key: str | None = None,
        secret_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retries: int = 3,
        max_connections: int = 32,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url
        self.region = region
        config = botocore.config.Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": retries, "mode": "standard"},
            # One connection per concurrent upload thread, with room to spare.
            max_pool_connections=max_connections,
            # Other S3 servers are reached by IP or a single host name, without the wildcard
            # DNS that virtual-hosted buckets need.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # boto3 >= 1.36 adds a CRC32 checksum to every upload, over HTTPS as a trailer of
            # an aws-chunked body, which S3 servers older than that change may refuse (it is
            # widely reported against Ceph RGW and MinIO). Content-MD5, which put sends
            # itself, has been understood everywhere for years.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A private session: boto3's default session is shared global state and not
        # thread-safe, whereas the client made here is, so it is made once and shared.
        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
        )
        self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        # Flipped (once, never back) when the server says it cannot do conditional PUTs.
        self._conditional_put = True
        if create_bucket:
            self._create_bucket()

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, name: str) -> str:
        validate_object_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _create_bucket(self) -> None:
        """Create the bucket; one that exists already and is ours is fine."""
        args: dict[str, Any] = {"Bucket": self.bucket}
        # us-east-1 is the one region that refuses an explicit location constraint.
        if self.region and self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**args)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) == "BucketAlreadyOwnedByYou":
                return
            if _error_code(exc) == "BucketAlreadyExists":
                raise StoreError(
                    f"bucket {self.bucket!r} already exists and belongs to another account"
                ) from exc
            raise self._translate(exc, f"creating bucket {self.bucket}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._translate(exc, f"creating bucket {self.bucket}") from exc

    # --- ObjectStore -------------------------------------------------------------------

    def put(self, name: str, data: bytes | bytearray) -> bool:
        """Create ``name`` with one PUT (so objects are limited to S3's 5 GiB single PUT).

        Returns False if it exists. Content-MD5 makes the server reject a body damaged in
        transit (BadDigest, retried as transient).
        """
        key = self._key(name)
        # One immutable copy for botocore, which may rewind and resend the body on retries;
        # next to the network transfer the copy costs nothing.
        data = bytes(data)
        try:
            if self._conditional_put:
                try:
                    return self._put_if_absent(key, data)
                except botocore.exceptions.ClientError as exc:
                    if not _is_not_implemented(exc):
                        raise
                    log.warning(
                        "%s does not support conditional writes (If-None-Match); creating"
                        " objects by look-then-write, which is not atomic",
                        self.endpoint_url or "the S3 server",
                    )
                    self._conditional_put = False
            return self._put_after_head(key, data)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._translate(exc, f"writing {name}") from exc

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        """The atomic path: the server refuses (412) if ``key`` exists."""
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentMD5=_md5(data), IfNoneMatch="*"
            )
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == _PRECONDITION_FAILED or _error_code(exc) == "PreconditionFailed":
                return False
            raise
        return True

    def _put_after_head(self, key: str, data: bytes) -> bool:
        """For servers without conditional PUT (501 NotImplemented): look, then write.

        Racy: two writers may both see no object and both write, the second silently
        replacing the first. That is tolerable only because vmkeep objects are
        content-addressed (both writers hold the same bytes) or uniquely named; repository
        locks must not rely on this path.
        """
        if self._head(key):
            return False
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=_md5(data))
        return True

    def get(self, name: str) -> bytes:
        key = self._key(name)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            # botocore checks the length read against Content-Length (IncompleteReadError).
            body: bytes = response["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFoundError(f"{name} not found in {self.location}") from exc
            raise self._translate(exc, f"reading {name}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._translate(exc, f"reading {name}") from exc
        return body

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists. A missing bucket also reads as False: HEAD answers carry
        no error body, so S3 cannot tell the two apart here (``get``/``put``/``list`` can)."""
        key = self._key(name)
        try:
            return self._head(key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._translate(exc, f"checking {name}") from exc

    def _head(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                return False
            raise
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose name starts with ``prefix``, a page (1000 objects) at a time."""
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"][len(base) :], int(item["Size"]))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._translate(exc, f"listing {prefix or 'all objects'}") from exc

    def delete(self, name: str) -> None:
        """Remove ``name``; S3 answers 204 for a missing key too, so this is idempotent."""
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._translate(exc, f"deleting {name}") from exc

    def sync(self) -> None:
        """Nothing to do: S3 answers a PUT only once the object is stored durably."""

    # --- errors ------------------------------------------------------------------------

    def _translate(self, exc: Exception, action: str) -> StoreError:
        """The vmkeep error for a botocore failure while doing ``action``. Messages name the
        bucket and endpoint but never credentials."""
        where = f"{action} in {self.location}"
        if self.endpoint_url:
            where += f" at {self.endpoint_url}"
        if isinstance(exc, botocore.exceptions.ClientError):
            return self._translate_client_error(exc, where)
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StoreError(
                f"{where}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        if isinstance(
            exc,
            botocore.exceptions.ConnectionError
            | botocore.exceptions.HTTPClientError
            | botocore.exceptions.IncompleteReadError,
        ):
            # Timeouts, refused or dropped connections, bodies cut short.
            return StoreTransientError(f"{where}: {exc}")
        return StoreError(f"{where}: {exc}")

    def _translate_client_error(
        self, exc: botocore.exceptions.ClientError, where: str
    ) -> StoreError:
        code, status = _error_code(exc), _status(exc)
        if code == "NoSuchBucket":
            return StoreError(
                f"{where}: bucket {self.bucket!r} does not exist; create it first"
                " (S3Store(..., create_bucket=True) does)"
            )
        if code in _FULL_CODES or status == _INSUFFICIENT_STORAGE:
            return StoreFullError(f"{where}: the store is full ({code}, HTTP {status})")
        if code in _DENIED_CODES or status == _FORBIDDEN:
            return StoreError(f"{where}: access denied ({code}); check the S3 credentials")
        if status >= 500 or code in _TRANSIENT_CODES:
            return StoreTransientError(f"{where}: {code} (HTTP {status})")
        return StoreError(f"{where}: {code} (HTTP {status}): {_error_message(exc)}")


def _md5(data: bytes) -> str:
    """Content-MD5 header value: an integrity check of the body, not a security measure."""
    return b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error_message(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or "no message"


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_not_implemented(exc: botocore.exceptions.ClientError) -> bool:
    """The server does not know conditional writes (it answers 501 NotImplemented)."""
    return _error_code(exc) == "NotImplemented" or _status(exc) == _NOT_IMPLEMENTED
