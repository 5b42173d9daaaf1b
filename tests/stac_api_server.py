"""A real STAC API on 127.0.0.1 for the scene-source tests.

The API is rustac's server (``rustac serve``, in-memory backend) run as a subprocess and loaded
with items derived from the real Earth Search items in ``../shared/reference/stac_items``: copies
whose ids, datetimes, footprints and cloud cover are varied deterministically, in the two
collections ``sentinel-2-c1-l2a`` and ``sentinel-2-l2a``.

In front of it runs a small stdlib proxy (:class:`ApiProxy`) that the tests talk to. It records
the requests, can answer the next N of them with an error status (transient-failure tests), and
can add the STAC API query extension (``eo:cloud_cover`` comparisons), which rustac does not
implement, so that both kinds of API are exercised. Everything else is rustac's own behaviour:
item search with collections, intersects, datetime intervals and ``next``-link paging.

Tests import the fixtures: ``from stac_api_server import stac_world, stac_api  # noqa: F401``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from s3_server import _answers, _free_port

C1 = "sentinel-2-c1-l2a"
L2A = "sentinel-2-l2a"
QUERY_CONFORMANCE = "https://api.stacspec.org/v1.0.0/item-search#query"

# Real Earth Search items (../shared/reference/stac_items/earth_search_v1), per MGRS square.
BASE_ITEMS = {
    "24MUV": {C1: "S2B_T24MUV_20250731T130245_L2A.json", L2A: "S2B_24MUV_20250731_0_L2A.json"},
    "20EPT": {C1: "S2B_T20EPT_20250731T131905_L2A.json", L2A: "S2B_20EPT_20250731_0_L2A.json"},
    "13TDE": {L2A: "S2A_13TDE_20231008_0_L2A.json"},
}
COLLECTION_FILES = {C1: "collection_sentinel-2-c1-l2a.json", L2A: "collection_sentinel-2-l2a.json"}


# --------------------------------------------------------------------------------------------
# Items


def derive_item(
    base: dict[str, Any],
    *,
    collection: str,
    when: dt.datetime,
    cloud_cover: float | None,
    footprint: BaseGeometry | None = None,
    baseline: str | None = None,
    drop_assets: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A copy of a real item for another acquisition: id, datetime, footprint, cloud cover (None
    removes it), processing baseline and asset hrefs changed consistently."""
    item = copy.deepcopy(base)
    props = item["properties"]
    square = props["grid:code"].removeprefix("MGRS-")
    platform = props["platform"][-2:].upper()  # "sentinel-2b" -> "2B"
    if collection == C1:
        new_id = f"S{platform}_T{square}_{when:%Y%m%dT%H%M%S}_L2A"
    else:
        new_id = f"S{platform}_{square}_{when:%Y%m%d}_0_L2A"
    old_id = item["id"]
    item["id"] = new_id
    item["collection"] = collection
    stamp = when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    props["datetime"] = stamp
    props["created"] = props["updated"] = stamp
    if cloud_cover is None:
        props.pop("eo:cloud_cover", None)
    else:
        props["eo:cloud_cover"] = cloud_cover
    if baseline is not None:
        props["s2:processing_baseline"] = baseline
    if footprint is not None:
        item["geometry"] = mapping(footprint)
        item["bbox"] = list(footprint.bounds)
    for key in drop_assets:
        item["assets"].pop(key, None)
    for asset in item["assets"].values():
        asset["href"] = asset["href"].replace(old_id, new_id)
    item["links"] = []  # the server writes its own
    return item


@dataclass
class StacWorld:
    """The items served, with what the tests need to know about them."""

    items: dict[str, list[dict[str, Any]]]  # collection -> items
    unusable: set[str]  # ids of items that are not valid scenes (no SCL asset)
    west_aoi: BaseGeometry  # inside 24MUV, west of the partial footprints
    url: str = ""  # rustac's own address (tests use the proxy)
    footprints: dict[str, BaseGeometry] = field(default_factory=dict)

    def all_items(self) -> list[dict[str, Any]]:
        return [item for items in self.items.values() for item in items]


def build_world(reference_dir: Path) -> StacWorld:
    """The deterministic item set.

    Squares 24MUV and 20EPT: one acquisition every 10 days over an acquisition window
    (Oct 2022 - Mar 2023) in ``sentinel-2-l2a``; ``sentinel-2-c1-l2a`` has them only from
    January 2023 (as the ATBD describes for Oct-Dec 2022), minus one gap date, and one of its
    items lacks the SCL. Every third acquisition covers only the east half of the square (a
    partial swath); cloud cover cycles through 0-97 %; one C1 item has no cloud cover. Square
    13TDE (Colorado) exists only in ``sentinel-2-l2a``, far from every search footprint used.
    """
    base = {sq: {c: json.loads((reference_dir / f).read_text()) for c, f in files.items()}
            for sq, files in BASE_ITEMS.items()}
    items: dict[str, list[dict[str, Any]]] = {C1: [], L2A: []}
    unusable: set[str] = set()
    footprints: dict[str, BaseGeometry] = {}
    for s, square in enumerate(("24MUV", "20EPT")):
        full = shape(base[square][C1]["geometry"])
        xmin, ymin, xmax, ymax = full.bounds
        east = full.intersection(box(xmin + 0.5 * (xmax - xmin), ymin, xmax, ymax))
        t0 = dt.datetime.fromisoformat(base[square][C1]["properties"]["datetime"].replace("Z", "+00:00"))
        first = dt.datetime(2022, 10, 3 + 5 * s, t0.hour, t0.minute, t0.second, tzinfo=dt.timezone.utc)
        for i in range(18):
            when = first + dt.timedelta(days=10 * i)
            cloud = round((i * 37 + s * 11) % 97 + 0.25, 2)
            partial = i % 3 == 2
            geometry = east if partial else full
            # Pre-Collection-1 reprocessing of the same acquisition: baseline 04.00 in 2022.
            l2a_baseline = "04.00" if when.year == 2022 else "05.09"
            l2a = derive_item(base[square][L2A], collection=L2A, when=when + dt.timedelta(seconds=1),
                              cloud_cover=cloud, footprint=geometry, baseline=l2a_baseline)
            items[L2A].append(l2a)
            footprints[l2a["id"]] = geometry
            if when < dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc):
                continue  # Collection-1 lacks Oct-Dec 2022
            if i == 13:
                continue  # a further gap in Collection-1
            c1 = derive_item(
                base[square][C1], collection=C1, when=when,
                cloud_cover=None if (square, i) == ("24MUV", 16) else cloud,
                footprint=geometry,
                drop_assets=("scl",) if (square, i) == ("24MUV", 10) else (),
            )
            if (square, i) == ("24MUV", 10):
                unusable.add(c1["id"])
            items[C1].append(c1)
            footprints[c1["id"]] = geometry
    colorado = base["13TDE"][L2A]
    for i in range(4):
        when = dt.datetime(2022, 10, 8, 18, 2, 55, tzinfo=dt.timezone.utc) + dt.timedelta(days=15 * i)
        item = derive_item(colorado, collection=L2A, when=when, cloud_cover=5.0 * i)
        items[L2A].append(item)
        footprints[item["id"]] = shape(item["geometry"])

    full = shape(base["24MUV"][C1]["geometry"])
    xmin, ymin, xmax, ymax = full.bounds
    west_strip = full.intersection(box(xmin, ymin, xmin + 0.3 * (xmax - xmin), ymax))
    west_aoi = west_strip.representative_point().buffer(0.005)
    return StacWorld(items=items, unusable=unusable, west_aoi=west_aoi, footprints=footprints)


# --------------------------------------------------------------------------------------------
# rustac serve


# The port and readiness helpers of the S3 server fixture serve here too.
free_port = _free_port


class RustacServer:
    """``rustac serve`` (in-memory backend) on a free 127.0.0.1 port, loaded from JSON files."""

    def __init__(self, files: list[Path], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.files = files
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        # The console script of the rustac package (its CLI parses the process arguments, so
        # ``python -c`` cannot stand in for it).
        script = shutil.which("rustac", path=str(Path(sys.executable).parent)) or shutil.which("rustac")
        if script is None:
            raise RuntimeError("the rustac command is not installed (pip install rustac)")
        cmd = [script, "serve", "--addr", f"127.0.0.1:{self.port}", *[str(f) for f in self.files]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while not _answers(self.url + "/"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rustac serve did not start on {self.url}:\n"
                                   + self.log_path.read_text(errors="replace"))
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# --------------------------------------------------------------------------------------------
# The proxy


def _matches(value: Any, ops: dict[str, Any]) -> bool:
    if value is None:
        return False  # like stac-server: a missing property never matches a comparison
    tests = {"lt": lambda a, b: a < b, "lte": lambda a, b: a <= b, "gt": lambda a, b: a > b,
             "gte": lambda a, b: a >= b, "eq": lambda a, b: a == b, "neq": lambda a, b: a != b}
    return all(tests[op](value, ref) for op, ref in ops.items())


class ApiProxy:
    """A stdlib HTTP proxy in a thread in front of ``upstream``.

    - ``requests``: (method, path, JSON body or None) of every request received;
    - ``fail_next(n, status)``: the next ``n`` requests are answered ``status`` at once;
    - ``query_extension``: when True, the landing page and /conformance advertise the query
      extension and POST /search implements it (upstream gets the search without ``query``, the
      features are filtered here and ``next`` bodies carry the query on).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[str, str, Any]] = []
        self.query_extension = False
        self._failures: list[int] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                proxy._handle(self, "GET")

            def do_POST(self) -> None:
                proxy._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ApiProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._failures.clear()
            self.query_extension = False

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * n)

    def searches(self) -> list[tuple[str, str, Any]]:
        return [r for r in self.requests if r[1].split("?")[0].rstrip("/").endswith("/search")]

    # ---- request handling --------------------------------------------------------------------

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes,
              content_type: str = "application/json") -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append((method, handler.path, copy.deepcopy(body)))
            status = self._failures.pop(0) if self._failures else None
            query_extension = self.query_extension
        if status is not None:
            error = {"code": "Injected", "description": f"injected HTTP {status}"}
            self._send(handler, status, json.dumps(error).encode())
            return
        path = handler.path.split("?")[0].rstrip("/") or "/"
        query = None
        if query_extension and method == "POST" and path == "/search" and isinstance(body, dict):
            query = body.pop("query", None)
            raw = json.dumps(body).encode()
        request = urllib.request.Request(self.upstream + handler.path, data=raw or None,
                                         method=method)
        if raw:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, content_type = response.status, response.headers.get("Content-Type", "")
                payload = response.read()
        except urllib.error.HTTPError as exc:
            status, content_type, payload = exc.code, exc.headers.get("Content-Type", ""), exc.read()
        if "json" in content_type:
            payload = payload.replace(self.upstream.encode(), self.url.encode())
            if status == 200 and (query_extension or query is not None):
                payload = self._rewrite(path, json.loads(payload), query)
        self._send(handler, status, payload, content_type or "application/octet-stream")

    def _rewrite(self, path: str, doc: dict[str, Any], query: dict[str, Any] | None) -> bytes:
        if path in ("/", "/conformance") and "conformsTo" in doc:
            doc["conformsTo"] = [*doc["conformsTo"], QUERY_CONFORMANCE]
        if query is not None and path == "/search":
            doc["features"] = [
                f for f in doc.get("features", [])
                if all(_matches(f.get("properties", {}).get(name), ops) for name, ops in query.items())
            ]
            for link in doc.get("links", []):
                if link.get("rel") == "next" and isinstance(link.get("body"), dict):
                    link["body"]["query"] = query
        return json.dumps(doc).encode()


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def stac_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StacWorld]:
    """The item set served by rustac for the whole session (skips without ../shared or rustac)."""
    from conftest import shared_path

    reference = shared_path("reference", "stac_items", "earth_search_v1")
    pytest.importorskip("rustac", reason="rustac (the STAC API server of these tests) is not installed")
    world = build_world(reference)
    workdir = tmp_path_factory.mktemp("stac-api")
    files = []
    for collection, name in COLLECTION_FILES.items():
        doc = json.loads((reference / name).read_text())
        doc["links"] = []
        path = workdir / f"{collection}.collection.json"
        path.write_text(json.dumps(doc))
        files.append(path)
    for collection, items in world.items.items():
        path = workdir / f"{collection}.items.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
        files.append(path)
    server = RustacServer(files, workdir / "rustac.log")
    server.start()
    world.url = server.url
    try:
        yield world
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _stac_proxy(stac_world: StacWorld) -> Iterator[ApiProxy]:
    proxy = ApiProxy(stac_world.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def stac_api(_stac_proxy: ApiProxy) -> ApiProxy:
    """The proxy in front of the session's rustac server, reset for this test."""
    _stac_proxy.reset()
    return _stac_proxy


__all__ = ["stac_world", "_stac_proxy", "stac_api", "ApiProxy", "StacWorld", "derive_item",
           "build_world", "free_port", "C1", "L2A"]
