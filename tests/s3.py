"""A real S3 server on loopback for the tests: moto in server mode, in the test process.

``s3_server`` (one per session) listens on 127.0.0.1 on a free port; ``s3`` hands it to one
test with every bucket gone and the server running, and records the requests it completes,
in order (``s3.requests``). A test can stop the server (the port then refuses connections, as
a server that is down does) and start it again on the same port; the buckets survive, since
moto keeps them in this process. boto3 is used only to make buckets and look inside them.

Import the fixtures into a ``conftest.py`` to use them (see tests/integration/conftest.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REGION = "us-east-1"
ACCESS_KEY = "AKIATESTS3SERVER0000"
SECRET_KEY = "test-secret-not-a-canary"
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours some status lines
_REQUEST_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d+)')


@dataclass(frozen=True)
class Request:
    """One request the server answered: method, bucket, key, query string, status."""

    method: str
    bucket: str
    key: str
    query: str
    status: int

    @property
    def completes_object(self) -> bool:
        """A request after which the object ``key`` exists: a plain PUT, or the POST that
        completes a multipart upload."""
        if self.status >= 300 or not self.key:
            return False
        if self.method == "PUT":
            return "partNumber=" not in self.query and "uploadId=" not in self.query
        return self.method == "POST" and "uploadId=" in self.query


class _RequestLog(logging.Handler):
    """Collects the access lines werkzeug logs for each request moto answers."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.requests: list[Request] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = _REQUEST_RE.search(_ANSI_RE.sub("", record.getMessage()))
        if m is None:
            return
        path, _, query = m["target"].partition("?")
        bucket, _, key = path.lstrip("/").partition("/")
        self.requests.append(Request(m["method"], bucket, key, query, int(m["status"])))


class S3Server:
    """moto's S3 on 127.0.0.1; ``stop()`` and ``start()`` keep the port and the buckets."""

    def __init__(self) -> None:
        self.port = 0
        self._server: Any = None
        self._log = _RequestLog()
        werkzeug = logging.getLogger("werkzeug")
        werkzeug.addHandler(self._log)  # werkzeug adds its own stderr handler only if none
        werkzeug.setLevel(logging.INFO)
        werkzeug.propagate = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def requests(self) -> list[Request]:
        return self._log.requests

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self._server is not None:
            return
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        """Stop serving and close the listening socket: connections are refused until
        :meth:`start`."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # moto's stop() leaves the socket listening (connections would hang, not fail); its
        # werkzeug server has no public handle to close it.
        server._server.server_close()

    def reset(self) -> None:
        """Every bucket gone, the request log empty, credentials accepted."""
        self.start()
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
        self.requests.clear()

    # ----------------------------------------------------------------- looking inside

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys under ``prefix``, sorted."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that uses this server: its endpoint and test keys,
        no other AWS setting of this machine."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL_S3=self.endpoint,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.update(extra)
        return env

    @contextlib.contextmanager
    def denying_credentials(self) -> Iterator[None]:
        """Every request must be signed with keys moto's IAM knows (none are): the test keys
        are denied, as a revoked key would be."""
        from moto import settings

        before = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        try:
            yield
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = before


def lone_zips(keys: set[str]) -> list[str]:
    """The checkpoint zips among ``keys`` (object keys) without both of their companions:
    what a listing of them must never show."""
    alone = []
    for key in sorted(keys):
        base = key.removesuffix(".zip")
        companions = {base + "_vecnormalize.pkl", base + "_metadata.json"}
        if key.endswith(".zip") and not companions <= keys:
            alone.append(key)
    return alone


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The server, running and empty, with this process's AWS environment pointing at it."""
    s3_server.reset()
    for name, value in s3_server.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        if name not in s3_server.env():
            monkeypatch.delenv(name)
    yield s3_server
    s3_server.start()  # a test that stopped it leaves it running for the next
