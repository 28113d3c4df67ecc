"""S3Store against a real Ceph RADOS Gateway, with faults injected in between.

A small HTTP proxy sits between the store and the gateway and spoils the first N requests: it
answers 503 SlowDown, or holds the request past the client's read timeout (before or after
passing it on). The tests show that the store turns each fault into StoreTransientError, that
RetryingStore rides over them, and that the proxy really saw the failures. Beside them: the
gateway's own refusals (existing key, missing bucket, wrong key, quota) and URL parsing.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import boto3
import botocore.exceptions
import pytest

from tests.s3_server import CephS3Server, free_port, shared_ceph_s3
from vmkeep.backends.s3 import S3Store, parse_s3_url
from vmkeep.backends.wrappers import RetryingStore
from vmkeep.domain.errors import StoreError, StoreFullError, StoreTransientError, UsageError

Fault = Literal["slowdown", "stall", "stall-after-forward"]

READ_TIMEOUT = 0.5  # seconds; stalls last four times as long
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)
# Headers that describe one hop, not the message: the proxy sets its own.
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "expect", "content-length", "server", "date"}
)


class FaultProxy:
    """Forwards HTTP requests to ``upstream``, spoiling the first ``failures`` of them.

    ``outcomes`` records, per request in arrival order, what the proxy did with it:
    ``"slowdown"``, ``"stall"``, ``"stall-after-forward"`` or ``"forwarded"``.
    """

    def __init__(self, upstream: str, fault: Fault, failures: int) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.fault = fault
        self.failures_left = failures
        self.outcomes: list[str] = []
        self.released = threading.Event()  # ends every stall at once on stop()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def next_fault(self) -> Fault | None:
        """The fault to inflict on the request just received, or None to pass it on."""
        with self._lock:
            if self.failures_left > 0:
                self.failures_left -= 1
                self.outcomes.append(self.fault)
                return self.fault
            self.outcomes.append("forwarded")
            return None


class _ProxyHandler(BaseHTTPRequestHandler):
    """One request: read it whole, then fail it or replay it upstream.

    The Host header goes upstream unchanged: it is part of the SigV4 signature the gateway
    checks, so the gateway must see the proxy's address as the client did.
    """

    # HTTP/1.1 so that the stdlib answers "Expect: 100-continue" (botocore sends it with every
    # PUT body); under HTTP/1.0 botocore waits a second for that answer before sending.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows failures, not access logs."""

    # The stdlib dispatches on do_<METHOD>; S3Store uses these five.
    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    @property
    def proxy(self) -> FaultProxy:
        return self.server.proxy  # type: ignore[attr-defined,no-any-return]

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.proxy.next_fault()
        if fault == "slowdown":
            self._reply(503, [("Content-Type", "application/xml")], SLOWDOWN_BODY)
            return
        if fault == "stall":
            self._stall()  # the client gives up long before
            return
        status, headers, payload = self._forward(body)
        if fault == "stall-after-forward":
            self._stall()  # the gateway did the work, but the client never hears of it
            return
        self._reply(status, headers, payload)

    def _stall(self) -> None:
        """Hold the request past the client's read timeout, then drop the connection."""
        self.proxy.released.wait(READ_TIMEOUT * 4)
        self.close_connection = True

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.proxy.upstream, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            length = response.getheader("Content-Length")
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
            if self.command == "HEAD" and length is not None:
                kept.append(("Content-Length", length))  # the object's size, not a body's
            return response.status, kept, payload
        finally:
            connection.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ceph_s3() -> Iterator[CephS3Server]:
    """The session's Ceph cluster, shared with the contract suite if it runs too."""
    with shared_ceph_s3() as server:
        yield server


@pytest.fixture
def bucket_url(ceph_s3: CephS3Server) -> str:
    """A new, empty bucket on the gateway."""
    url = f"s3://vmkeep-faults-{uuid.uuid4().hex[:12]}"
    # Default timeouts, and an object written and removed: the gateway's first bucket and
    # first object take seconds (they create its index and data pools), far longer than the
    # short timeouts the tests use.
    store = S3Store(
        url,
        endpoint_url=ceph_s3.endpoint,
        access_key=ceph_s3.access_key,
        secret_key=ceph_s3.secret_key,
        create_bucket=True,
    )
    store.put("warm-up", b"")
    store.delete("warm-up")
    return url


def store_at(
    server: CephS3Server,
    url: str,
    endpoint: str,
    *,
    retries: int = 0,
    secret_key: str | None = None,
) -> S3Store:
    """An S3Store with short timeouts and, by default, no retries of botocore's own."""
    return S3Store(
        url,
        endpoint_url=endpoint,
        access_key=server.access_key,
        secret_key=secret_key or server.secret_key,
        connect_timeout=READ_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries=retries,
    )


def retrying(store: S3Store) -> RetryingStore:
    return RetryingStore(store, attempts=5, base_delay=0.01)


# --- URLs (no server needed) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bkt", ("bkt", "")),
        ("s3://bkt/", ("bkt", "")),
        ("s3://my.bucket-1/a/b/", ("my.bucket-1", "a/b")),
    ],
)
def test_parse_s3_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["bkt/x", "http://bkt", "s3://", "s3://ab", "s3://Bucket", "s3://bkt/a//b", "s3://bkt/../x"],
)
def test_bad_s3_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        parse_s3_url(url)


# --- the real server -----------------------------------------------------------------------


def test_conditional_put_on_existing_key_returns_false(
    ceph_s3: CephS3Server, bucket_url: str
) -> None:
    store = store_at(ceph_s3, bucket_url, ceph_s3.endpoint)
    assert store.put("config", b"first") is True
    assert store.put("config", b"second") is False
    assert store.get("config") == b"first"


def test_gateway_answers_if_none_match_with_412(ceph_s3: CephS3Server, bucket_url: str) -> None:
    """The server itself refuses the overwrite: S3Store is on its atomic path, not on the
    look-then-write fallback for servers without conditional writes."""
    client = boto3.client(
        "s3",
        endpoint_url=ceph_s3.endpoint,
        aws_access_key_id=ceph_s3.access_key,
        aws_secret_access_key=ceph_s3.secret_key,
        region_name="us-east-1",
    )
    bucket = bucket_url.removeprefix("s3://")
    client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"


def test_missing_bucket_is_a_permanent_error_that_says_so(
    ceph_s3: CephS3Server, bucket_url: str
) -> None:
    store = store_at(ceph_s3, bucket_url + "-missing", ceph_s3.endpoint)
    with pytest.raises(StoreError, match="does not exist") as caught:
        store.put("x", b"x")
    assert not isinstance(caught.value, StoreTransientError)


def test_wrong_secret_is_access_denied_and_not_echoed(
    ceph_s3: CephS3Server, bucket_url: str
) -> None:
    wrong = "not-the-secret-" + uuid.uuid4().hex
    store = store_at(ceph_s3, bucket_url, ceph_s3.endpoint, secret_key=wrong)
    with pytest.raises(StoreError, match="access denied") as caught:
        store.get("x")
    assert not isinstance(caught.value, StoreTransientError)
    assert wrong not in str(caught.value)


def test_exceeded_quota_is_store_full(ceph_s3: CephS3Server, bucket_url: str) -> None:
    """RGW refuses with 403 QuotaExceeded, which must not read as "access denied"."""
    bucket = bucket_url.removeprefix("s3://")
    ceph_s3.radosgw_admin(
        "quota", "set", "--quota-scope=bucket", f"--bucket={bucket}", "--max-size=1024"
    )
    ceph_s3.radosgw_admin("quota", "enable", "--quota-scope=bucket", f"--bucket={bucket}")
    store = store_at(ceph_s3, bucket_url, ceph_s3.endpoint)
    with pytest.raises(StoreFullError):
        store.put("data/ff/ffff", bytes(4096))


def test_refused_connection_is_transient(ceph_s3: CephS3Server) -> None:
    store = store_at(ceph_s3, "s3://nowhere", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreTransientError):
        store.get("x")


# --- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "failures"), [("slowdown", 3), ("stall", 2)], ids=["503-slowdown", "read-timeout"]
)
def test_retrying_store_rides_over_transient_faults(
    ceph_s3: CephS3Server, bucket_url: str, fault: Fault, failures: int
) -> None:
    with FaultProxy(ceph_s3.endpoint, fault, failures) as proxy:
        store = retrying(store_at(ceph_s3, bucket_url, proxy.url))
        assert store.put("data/ab/abcd", b"payload") is True
        assert store.get("data/ab/abcd") == b"payload"
    assert proxy.outcomes == [fault] * failures + ["forwarded", "forwarded"]


def test_retried_put_whose_first_answer_was_lost_returns_false(
    ceph_s3: CephS3Server, bucket_url: str
) -> None:
    """The first PUT reaches the gateway but its answer never comes back: the retry finds the
    object there and says False, which callers take as "stored" (names are content-derived)."""
    with FaultProxy(ceph_s3.endpoint, "stall-after-forward", 1) as proxy:
        store = retrying(store_at(ceph_s3, bucket_url, proxy.url))
        assert store.put("data/cd/cdef", b"payload") is False
        assert store.get("data/cd/cdef") == b"payload"
    assert proxy.outcomes == ["stall-after-forward", "forwarded", "forwarded"]


@pytest.mark.parametrize(
    ("fault", "operation"),
    [
        ("slowdown", lambda s: s.put("x", b"x")),
        ("slowdown", lambda s: s.get("x")),
        ("stall", lambda s: s.put("x", b"x")),
        ("stall", lambda s: s.exists("x")),
        ("stall", lambda s: list(s.list(""))),
    ],
    ids=["503-put", "503-get", "timeout-put", "timeout-exists", "timeout-list"],
)
def test_without_retries_faults_raise_store_transient_error(
    ceph_s3: CephS3Server,
    bucket_url: str,
    fault: Fault,
    operation: Callable[[S3Store], object],
) -> None:
    with FaultProxy(ceph_s3.endpoint, fault, 1) as proxy:
        store = store_at(ceph_s3, bucket_url, proxy.url, retries=0)
        with pytest.raises(StoreTransientError):
            operation(store)
    assert proxy.outcomes == [fault]  # exactly one attempt: nothing retried behind our back


def test_botocore_retries_absorb_a_short_outage(ceph_s3: CephS3Server, bucket_url: str) -> None:
    with FaultProxy(ceph_s3.endpoint, "slowdown", 2) as proxy:
        store = store_at(ceph_s3, bucket_url, proxy.url, retries=2)
        assert store.put("obj", b"1") is True
    assert proxy.outcomes == ["slowdown", "slowdown", "forwarded"]
