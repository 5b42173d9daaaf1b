"""Pytest plugin: a real S3 API (moto's server) on 127.0.0.1, run as a subprocess.

Loaded through ``pytest_plugins = ["s3_server"]`` in ``tests/conftest.py``. The server is started
only when a test asks for it, once per session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import boto3
import pytest

REGION = "eu-central-1"
FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server running for the whole session."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # The server never needs real credentials; scrub any that could leak into its environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with tempfile.TemporaryFile() as server_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=server_log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while not _answers(endpoint + "/moto-api/"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    server_log.seek(0)
                    pytest.fail(f"moto server did not start on {endpoint}:\n"
                                + server_log.read().decode(errors="replace"))
                time.sleep(0.1)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials in the environment for one test only (boto3's chain reads them)."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)  # e.g. AWS_PROFILE or AWS_ENDPOINT_URL from a developer shell
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_bucket(s3_server: str, s3_credentials: None) -> str:
    """``s3://<fresh bucket>/root``: a new, empty, uniquely-named bucket for each test."""
    bucket = f"clcplus-test-{uuid.uuid4().hex[:16]}"
    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_server, region_name=REGION, **FAKE_CREDENTIALS
    )
    client.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    return f"s3://{bucket}/root"
