"""S3 fault drills: a proxy in front of the local S3 server answers a share of requests with
500 InternalError / 503 SlowDown or stalls them past the client's read timeout; transient
errors are retried with backoff (boto3's standard mode, ``store.s3_max_attempts``) and the
delivery is published whole; a permanent refusal fails with a message naming the object and
the error, and nothing is half-published."""

from __future__ import annotations

from pathlib import Path

import pytest

from clcplus_ops.products import publish as publishing
from clcplus_ops.store import S3Settings, Store, StoreError
from s3_fault_proxy import FaultPlan, start_proxy

CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


def _files(folder: Path, n: int = 6) -> list[publishing.Deliverable]:
    out = []
    for i in range(n):
        path = folder / f"f{i}"
        path.write_bytes(bytes([i]) * (50_000 + 1_000 * i))
        out.append(publishing.Deliverable(path, f"2025/E46N24/file{i}.bin"))
    return out


@pytest.fixture
def faulty(s3_server):
    started = []

    def make(plan: FaultPlan, attempts: int = 10) -> Store:
        url, server = start_proxy(s3_server, plan)
        started.append(server)
        return Store(S3Settings(endpoint_url=url, max_attempts=attempts, read_timeout=1.0, **CREDENTIALS))

    yield make
    for server in started:
        server.shutdown()


def test_transient_errors_and_stalls_are_retried_and_the_delivery_is_whole(tmp_path, s3_server, s3_bucket, faulty,
                                                                           figure):
    plan = FaultPlan(seed=7, error_share=0.25, stall_share=0.05, stall_s=2.5)
    store = faulty(plan)
    root = f"{s3_bucket}/delivery"
    files = _files(tmp_path)
    published = publishing.publish(store, files, root)
    assert all(p.new for p in published)
    assert plan.seen["error 500"] + plan.seen["error 503"] >= 3 and plan.seen["stalled"] >= 1, plan.seen
    figure(f"S3 fault drill: {plan.seen['requests']} requests through the proxy, {plan.seen['error 500']} x 500, "
           f"{plan.seen['error 503']} x 503 SlowDown, {plan.seen['stalled']} stalled: all retried, delivery whole")
    direct = Store(S3Settings(endpoint_url=s3_server, **CREDENTIALS))
    for entry, file in zip(published, files):
        assert direct.read_bytes(entry.url) == file.path.read_bytes()
        assert direct.checksum(entry.url) == (file.path.stat().st_size, entry.sha256)
    assert direct.list(f"{root}/_staging") == []
    assert not any(p.new for p in publishing.publish(store, files, root))  # again: a no-op, faults or not


def test_a_permanent_refusal_fails_clearly_and_leaves_nothing_published(tmp_path, s3_server, s3_bucket, faulty):
    store = faulty(FaultPlan(denied=("file3.bin",)))
    root = f"{s3_bucket}/delivery"
    with pytest.raises(StoreError, match=r"AccessDenied .*file3\.bin"):
        publishing.publish(store, _files(tmp_path), root)
    direct = Store(S3Settings(endpoint_url=s3_server, **CREDENTIALS))
    assert direct.list(root) == []


def test_errors_beyond_the_retries_fail_with_the_cause(tmp_path, s3_server, s3_bucket, faulty):
    store = faulty(FaultPlan(seed=1, error_share=1.0), attempts=3)
    root = f"{s3_bucket}/delivery"
    with pytest.raises(StoreError, match=r"S3 error (InternalError|SlowDown|500|503)"):
        publishing.publish(store, _files(tmp_path, 2), root)
    assert Store(S3Settings(endpoint_url=s3_server, **CREDENTIALS)).list(root) == []
