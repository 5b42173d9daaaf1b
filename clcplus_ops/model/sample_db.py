"""Sample database: labelled training points with their full revision history, in the store.

Layout under a DB root URL (callers pass ``Locations(config).sample_db``)::

    {root}/batches/{batch_id}.parquet    one immutable GeoParquet file per batch of revisions

``batch_id`` is ``{created:%Y%m%dT%H%M%SZ}-{kind}-{sha8}``: ``kind`` is ``import`` or ``review``,
``sha8`` the first 8 hex digits of the sha256 of the batch's rows (a canonical encoding,
independent of the Parquet writer). Files are only ever added, never rewritten or deleted, so
any number of writers (one Airflow task per production unit) may add batches concurrently;
writing a batch whose file already exists is a no-op. The files sort chronologically (then by
kind and hash), which is the order in which they are folded.

A batch row is one revision of one sample:

=============  ==============================================================================
sample_id      str
label          int 1..11; null in a review row that does not change the label
status         "active" | "excluded"; null in a row that does not change the status
source         str: the imported file's name (or per-row ``source``), "expert review"...
polygon_id     str or null (import rows)
reason         str: "import", "re-import", or the reviewer's reason
author         str
created        UTC timestamp (the batch's)
geometry       Point in EPSG:4326 in import rows; null in review rows
=============  ==============================================================================

A review row records only what the decision changes, so two reviews of the same sample written
concurrently from the same snapshot (one relabels, the other excludes) both take effect instead
of the later one silently reverting the other; in :attr:`SampleDB.revisions` every row shows the
resolved label and status.

The current state folds all batches in order: a sample's ``revision`` is its number of
revisions so far, its location, ``source`` and ``polygon_id`` come from its latest import row,
its label and status from its latest revision (``updated`` is that revision's time).

Importing a file again is safe: a sample whose label in the file is its current label, or the
label its latest import gave (an expert may have changed it since), gets no revision; only a
label the source changed becomes a "re-import" revision. A sample never moves.

A new batch must not sort before the newest batch already in the DB (:class:`SampleDBError`):
with that rule a review can never be folded before the import of the samples it revises.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pyogrio
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from clcplus_ops.config import CLASS_NAMES
from clcplus_ops.errors import ClcplusError
from clcplus_ops.locations import sample_db_batch, sample_db_batches
from clcplus_ops.store import Store

log = logging.getLogger("clcplus_ops.model.sample_db")

STATUSES = ("active", "excluded")
KINDS = ("import", "review")
BATCHES = "batches"
# Two locations closer than this (in both lon and lat) are the same place (~1 cm).
SAME_PLACE_DEG = 1e-7
# Where a CSV gives both x/y/epsg and lon/lat, they must agree to about one 10 m pixel.
XY_LONLAT_TOLERANCE_DEG = 1e-4
MAX_LISTED = 20  # problems shown in an error message

BATCH_COLUMNS = ("sample_id", "label", "status", "source", "polygon_id", "reason", "author", "created")
REVISION_COLUMNS = (
    "batch_id", "sample_id", "revision", "label", "status", "source", "polygon_id", "reason",
    "author", "created", "lon", "lat",
)
_KNOWN_COLUMNS = ("sample_id", "label", "lon", "lat", "x", "y", "epsg", "source", "polygon_id")
_BATCH_FILE = re.compile(r"^(\d{8}T\d{6}Z)-(import|review)-([0-9a-f]{8})\.parquet$")
_HASH_TAG = b"clcplus-sample-db/v1\n"
_READ_THREADS = 8
_CLASSES = np.array(sorted(CLASS_NAMES), dtype=np.int64)


class SampleDBError(ClcplusError, ValueError):
    """A sample DB request that cannot be carried out; the message says why."""


class SampleImportError(SampleDBError):
    """A file with bad rows; ``errors`` lists every problem as "{file} line {n}: {problem}"
    (CSV, the header is line 1) or "{file} feature {fid}: {problem}" (GeoPackage)."""

    def __init__(self, file: str, errors: list[str]) -> None:
        self.file = file
        self.errors = list(errors)
        super().__init__(_listing(f"cannot import {file}: {len(self.errors)} problem(s), nothing was imported", self.errors))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, e.g. across processes
        return (type(self), (self.file, self.errors))


def _listing(head: str, problems: list[str]) -> str:
    lines = [head + ":", *(f"  {p}" for p in problems[:MAX_LISTED])]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class ImportSummary:
    batch_id: str | None  # None when the file changed nothing
    rows: int  # data rows in the file
    added: int
    relabelled: int
    unchanged: int
    url: str | None  # the batch file


@dataclass(frozen=True)
class ReviseSummary:
    batch_id: str | None  # None when no decision changed anything
    revised: int
    url: str | None


# --------------------------------------------------------------------------------------------
# The database


class SampleDB:
    """The current state of a sample DB (an immutable snapshot, from :func:`load_sample_db`).

    ``points``: GeoDataFrame (EPSG:4326), one row per sample sorted by sample_id, columns
    sample_id, label, status, source, polygon_id, revision, updated, geometry.
    ``revisions``: DataFrame of every revision in fold order, columns batch_id, sample_id,
    revision, label, status (both resolved), source, polygon_id, reason, author, created, lon,
    lat (NaN in review rows).
    Treat both as read-only: they are shared, not copied.
    """

    def __init__(self, root_url: str, batch_ids: list[str], points: gpd.GeoDataFrame,
                 revisions: pd.DataFrame, imported_label: np.ndarray | None = None) -> None:
        self.root_url = root_url
        self.batch_ids = tuple(batch_ids)
        self.points = points
        self.revisions = revisions
        xy = shapely.get_coordinates(np.asarray(points.geometry.array))
        self._lon = np.ascontiguousarray(xy[:, 0]) if len(points) else np.zeros(0)
        self._lat = np.ascontiguousarray(xy[:, 1]) if len(points) else np.zeros(0)
        self._active = (points["status"] == "active").to_numpy(dtype=bool)
        # The label of each point's latest import row (what its source last said).
        self._imported_label = (points["label"].to_numpy(np.int64) if imported_label is None
                                else np.asarray(imported_label, np.int64))

    def __len__(self) -> int:
        return len(self.points)

    def __repr__(self) -> str:
        return (f"SampleDB({self.root_url!r}: {len(self)} samples, {int(self._active.sum())} active, "
                f"{len(self.revisions)} revisions in {len(self.batch_ids)} batches)")

    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.points["sample_id"])

    def active(self) -> gpd.GeoDataFrame:
        """The points with status "active"."""
        return self.points[self._active]

    def history(self, sample_id: str) -> pd.DataFrame:
        """The revisions of ``sample_id``, oldest first; KeyError for an unknown id."""
        rows = self.revisions[self.revisions["sample_id"] == sample_id]
        if rows.empty:
            raise KeyError(f"sample_id {sample_id!r} is not in the sample DB at {self.root_url}")
        return rows

    def positions(self, sample_ids: Iterable[str]) -> np.ndarray:
        """Row positions in :attr:`points` of ``sample_ids`` (KeyError naming unknown ones)."""
        ids = [sample_ids] if isinstance(sample_ids, str) else list(sample_ids)
        pos = self._index.get_indexer(pd.Index(ids, dtype=object)) if ids else np.zeros(0, np.intp)
        unknown = [ids[i] for i in np.flatnonzero(pos < 0)]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:MAX_LISTED])
            more = f" ... and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
            raise KeyError(f"{len(unknown)} sample_id(s) not in the sample DB at {self.root_url}: {shown}{more}")
        return pos

    def within(self, polygon_lonlat: shapely.Polygon | shapely.MultiPolygon) -> gpd.GeoDataFrame:
        """Active points inside (or on the boundary of) a polygon given in lon/lat degrees."""
        polygon = polygon_lonlat
        if not isinstance(polygon, (shapely.Polygon, shapely.MultiPolygon)):
            raise TypeError(f"within() takes a shapely Polygon or MultiPolygon in lon/lat, got {type(polygon).__name__}")
        if polygon.is_empty:
            return self.points.iloc[:0]
        xmin, ymin, xmax, ymax = polygon.bounds
        if xmin < -180 or xmax > 180 or ymin < -90 or ymax > 90:
            raise SampleDBError(f"polygon bounds {polygon.bounds} are not lon/lat degrees; reproject it to EPSG:4326")
        if not polygon.is_valid:
            raise SampleDBError(f"polygon is not valid: {shapely.is_valid_reason(polygon)}")
        lon, lat = self._lon, self._lat
        candidates = np.flatnonzero(self._active & (lon >= xmin) & (lon <= xmax) & (lat >= ymin) & (lat <= ymax))
        shapely.prepare(polygon)  # in place (harmless): later calls with it are faster too
        inside = shapely.intersects_xy(polygon, lon[candidates], lat[candidates])
        return self.points.iloc[candidates[inside]]

    def content_hash(self, ids: Iterable[str] | None = None) -> str:
        """sha256 hex of the current (sample_id, label, status, lon, lat) of ``ids`` (all active
        samples if None), whatever their order: the "hash of the training data" of a model."""
        rows = np.flatnonzero(self._active) if ids is None else np.unique(self.positions(ids))
        points = self.points
        digest = hashlib.sha256(_HASH_TAG + b"content\n")
        digest.update(np.int64(len(rows)).tobytes())
        _hash_strings(digest, points["sample_id"].take(rows))
        digest.update(points["label"].to_numpy(np.int64)[rows].tobytes())
        _hash_strings(digest, points["status"].take(rows))
        digest.update(self._lon[rows].tobytes())
        digest.update(self._lat[rows].tobytes())
        return digest.hexdigest()


def load_sample_db(store: Store, root_url: str) -> SampleDB:
    """The current state of the DB at ``root_url`` (an empty DB when nothing is there)."""
    named = []
    for url in store.list(sample_db_batches(root_url)):
        name = url.rsplit("/", 1)[-1]
        if _BATCH_FILE.match(name):
            named.append((name[: -len(".parquet")], url))
        else:
            log.warning("sample DB %s: ignoring %s (not a batch file name)", root_url, url)
    named.sort()
    if len(named) > 1:
        with ThreadPoolExecutor(min(_READ_THREADS, len(named))) as pool:
            frames = list(pool.map(lambda item: _read_batch(store, item[1], item[0]), named))
    else:
        frames = [_read_batch(store, url, batch_id) for batch_id, url in named]
    return _fold(root_url, [batch_id for batch_id, _ in named], frames)


def _read_batch(store: Store, url: str, batch_id: str) -> pd.DataFrame:
    """One batch file as a DataFrame of its rows with lon/lat (NaN in review rows)."""
    try:
        with store.local_read(url) as path:
            table = pq.read_table(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pyarrow errors: the file is not a readable Parquet file
        raise SampleDBError(f"sample DB batch {url} cannot be read: {exc}") from exc
    try:
        geo = json.loads((table.schema.metadata or {})[b"geo"])
        column = geo["primary_column"]
        info = geo["columns"][column]
    except (KeyError, TypeError, ValueError) as exc:
        raise SampleDBError(f"sample DB batch {url} is not GeoParquet (no valid 'geo' metadata: {exc!r})") from exc
    missing = [c for c in (*BATCH_COLUMNS, column) if c not in table.column_names]
    if missing or info.get("encoding") != "WKB":
        raise SampleDBError(f"sample DB batch {url} lacks column(s) {', '.join(missing)}" if missing else
                            f"sample DB batch {url}: geometry encoding {info.get('encoding')!r}, expected WKB")
    lon, lat = _wkb_points(table.column(column), url)
    crs = info.get("crs", "OGC:CRS84")  # an absent crs means lon/lat (GeoParquet spec)
    if crs is not None and not _is_lonlat(crs):
        lon, lat = Transformer.from_crs(CRS.from_user_input(crs), 4326, always_xy=True).transform(lon, lat)
    frame = table.select(list(BATCH_COLUMNS)).to_pandas()
    frame["label"] = pd.to_numeric(frame["label"]).astype(np.float64)
    frame["created"] = pd.to_datetime(frame["created"], utc=True).dt.as_unit("us")
    frame["lon"] = np.asarray(lon, np.float64)
    frame["lat"] = np.asarray(lat, np.float64)
    frame.insert(0, "batch_id", batch_id)
    return frame


def _is_lonlat(crs: Any) -> bool:
    if crs == "OGC:CRS84":
        return True
    ident = crs.get("id") if isinstance(crs, Mapping) else None
    return ident in ({"authority": "EPSG", "code": 4326}, {"authority": "OGC", "code": "CRS84"})


def _wkb_points(column: pa.ChunkedArray, url: str) -> tuple[np.ndarray, np.ndarray]:
    """x and y (NaN for null) of a WKB column of 2D points: decoded directly in the usual case
    (all 21-byte little-endian ISO points, or all null), else through shapely."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(arr, pa.ExtensionArray):  # geoarrow.wkb, where that extension is registered
        arr = arr.storage
    n = len(arr)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if not valid.any():
        return np.full(n, np.nan), np.full(n, np.nan)
    if valid.all() and (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
        offsets = np.frombuffer(arr.buffers()[1], dtype=width, count=n + 1, offset=arr.offset * np.dtype(width).itemsize)
        if (np.diff(offsets) == 21).all():
            data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
            block = data[offsets[0]: offsets[0] + 21 * n].reshape(n, 21)
            if (block[:, :5] == np.array([1, 1, 0, 0, 0], np.uint8)).all():
                xy = block[:, 5:].copy().view("<f8")
                return xy[:, 0].copy(), xy[:, 1].copy()
    geoms = shapely.from_wkb(arr.to_numpy(zero_copy_only=False))
    kind = shapely.get_type_id(geoms)
    if ((kind != shapely.GeometryType.POINT) & (kind != shapely.GeometryType.MISSING)).any():
        raise SampleDBError(f"sample DB batch {url} holds geometries that are not points")
    return shapely.get_x(geoms), shapely.get_y(geoms)


def _fold(root_url: str, batch_ids: list[str], frames: list[pd.DataFrame]) -> SampleDB:
    if not frames:
        return SampleDB(root_url, [], _empty_points(), _empty_revisions())
    rev = pd.concat(frames, ignore_index=True)
    del frames
    n = len(rev)
    codes, uniques = pd.factorize(rev["sample_id"], sort=True)
    order = np.argsort(codes, kind="stable")  # grouped by sample, fold order within a sample
    grouped = codes[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    ends = np.r_[starts[1:], n] - 1
    sizes = ends - starts + 1
    pos = np.arange(n)
    rank = pos - np.repeat(starts, sizes)
    revision = np.empty(n, np.int64)
    revision[order] = rank + 1

    def latest(valid: np.ndarray) -> np.ndarray:
        """For each position in grouped order: the position of the latest row at or before it
        (same sample) where ``valid`` (in row order) holds, else the sample's first position."""
        idx = np.where(valid[order], pos, -1)
        idx[starts] = starts
        return np.maximum.accumulate(idx)

    label = rev["label"].to_numpy(np.float64)
    status = rev["status"].to_numpy(object, na_value=None)
    label_at = order[latest(~np.isnan(label))]
    status_at = order[latest(pd.notna(status))]
    resolved_label = np.empty(n, np.float64)
    resolved_label[order] = label[label_at]
    resolved_status = np.empty(n, object)
    resolved_status[order] = status[status_at]
    orphan = np.isnan(resolved_label) | pd.isna(resolved_status)

    lon, lat = rev["lon"].to_numpy(np.float64), rev["lat"].to_numpy(np.float64)
    has_place = ~np.isnan(lon)
    place_at = order[latest(has_place)[ends]]  # the latest import row of each sample
    last = order[ends]
    keep = has_place[place_at] & ~orphan[last]
    if not keep.all():
        lost = np.asarray(uniques)[~keep]
        log.warning("sample DB %s: %d sample(s) have a revision folded before their import (batches written "
                    "out of time order?) and are left out of the points: %s", root_url, len(lost),
                    ", ".join(map(str, lost[:MAX_LISTED])))
    _warn_moved(root_url, codes, lon, lat, has_place, uniques)

    revisions = pd.DataFrame({
        "batch_id": rev["batch_id"],
        "sample_id": rev["sample_id"],
        "revision": revision,
        "label": np.nan_to_num(resolved_label, nan=0).astype(np.int64),
        "status": pd.array(resolved_status, dtype="str"),
        "source": rev["source"],
        "polygon_id": rev["polygon_id"],
        "reason": rev["reason"],
        "author": rev["author"],
        "created": rev["created"],
        "lon": lon,
        "lat": lat,
    })
    last, place_at = last[keep], place_at[keep]
    points = gpd.GeoDataFrame(
        {
            "sample_id": pd.array(np.asarray(uniques, dtype=object)[keep], dtype="str"),
            "label": resolved_label[last].astype(np.int64),
            "status": pd.array(resolved_status[last], dtype="str"),
            "source": rev["source"].take(place_at).reset_index(drop=True),
            "polygon_id": rev["polygon_id"].take(place_at).reset_index(drop=True),
            "revision": revision[last],
            "updated": rev["created"].take(last).reset_index(drop=True),
        },
        geometry=gpd.points_from_xy(lon[place_at], lat[place_at]),
        crs="EPSG:4326",
    )
    return SampleDB(root_url, batch_ids, points, revisions, imported_label=label[place_at].astype(np.int64))


def _warn_moved(root_url: str, codes: np.ndarray, lon: np.ndarray, lat: np.ndarray, has_place: np.ndarray,
                uniques: Any) -> None:
    """Concurrent imports may add the same new id at two places; the latest import wins."""
    placed = pd.DataFrame({"code": codes[has_place], "lon": lon[has_place], "lat": lat[has_place]})
    spread = placed.groupby("code").agg(["min", "max"])
    if len(spread) == len(placed):
        return
    moved = ((spread[("lon", "max")] - spread[("lon", "min")] > SAME_PLACE_DEG)
             | (spread[("lat", "max")] - spread[("lat", "min")] > SAME_PLACE_DEG))
    if moved.any():
        ids = np.asarray(uniques, dtype=object)[spread.index[moved.to_numpy()]]
        log.warning("sample DB %s: %d sample(s) were imported at different places (concurrent imports?); "
                    "their latest import is used: %s", root_url, len(ids), ", ".join(map(str, ids[:MAX_LISTED])))


def _empty_points() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "sample_id": pd.Series([], dtype="str"), "label": pd.Series([], dtype=np.int64),
            "status": pd.Series([], dtype="str"), "source": pd.Series([], dtype="str"),
            "polygon_id": pd.Series([], dtype="str"), "revision": pd.Series([], dtype=np.int64),
            "updated": pd.Series([], dtype="datetime64[us, UTC]"),
        },
        geometry=gpd.GeoSeries([], crs="EPSG:4326"),
        crs="EPSG:4326",
    )


def _empty_revisions() -> pd.DataFrame:
    dtypes = {"revision": np.int64, "label": np.int64, "created": "datetime64[us, UTC]", "lon": np.float64,
              "lat": np.float64}
    return pd.DataFrame({c: pd.Series([], dtype=dtypes.get(c, "str")) for c in REVISION_COLUMNS})


# --------------------------------------------------------------------------------------------
# Writing batches


def _created(created: datetime | None) -> pd.Timestamp:
    if created is None:
        created = datetime.now(timezone.utc).replace(microsecond=0)
    if not isinstance(created, datetime):
        raise TypeError(f"created must be a datetime, got {type(created).__name__}")
    if created.tzinfo is None:  # naive times are UTC, like everything in the store
        created = created.replace(tzinfo=timezone.utc)
    return pd.Timestamp(created).tz_convert("UTC").as_unit("us")


def _check_time_order(db: SampleDB, created: pd.Timestamp) -> None:
    stamp = f"{created:%Y%m%dT%H%M%SZ}"
    if db.batch_ids and stamp < db.batch_ids[-1][:16]:
        raise SampleDBError(
            f"created={created.isoformat()} is earlier than the newest batch {db.batch_ids[-1]} of the sample DB "
            f"at {db.root_url}; revisions are added in time order (leave created unset for now)"
        )


def _text_arg(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SampleDBError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def _write_batch(store: Store, root_url: str, kind: str, created: pd.Timestamp, rows: pd.DataFrame,
                 lon: np.ndarray | None, lat: np.ndarray | None) -> tuple[str, str]:
    """Write one batch (rows sorted by sample_id, one per sample) unless it exists; its id and URL."""
    assert kind in KINDS
    n = len(rows)
    frame = pd.DataFrame({
        "sample_id": pd.array(rows["sample_id"], dtype="str"),
        "label": pd.array(rows["label"], dtype="Int64"),
        "status": pd.array(rows["status"], dtype="str"),
        "source": pd.array(rows["source"], dtype="str"),
        "polygon_id": pd.array(rows["polygon_id"], dtype="str"),
        "reason": pd.array(rows["reason"], dtype="str"),
        "author": pd.array(rows["author"], dtype="str"),
        "created": pd.DatetimeIndex(np.full(n, created.tz_convert(None).to_datetime64(), "datetime64[us]")).tz_localize("UTC"),
    })
    digest = hashlib.sha256(_HASH_TAG + f"batch {kind} {created.isoformat()}\n".encode())
    digest.update(np.int64(n).tobytes())
    for column in ("sample_id", "status", "source", "polygon_id", "reason", "author"):
        _hash_strings(digest, frame[column])
    labels = frame["label"]
    digest.update(labels.isna().to_numpy().tobytes())
    digest.update(labels.to_numpy(np.int64, na_value=0).tobytes())
    if lon is not None:
        digest.update(np.ascontiguousarray(lon, np.float64).tobytes())
        digest.update(np.ascontiguousarray(lat, np.float64).tobytes())
        geometry = gpd.points_from_xy(lon, lat, crs="EPSG:4326")
    else:
        geometry = gpd.GeoSeries(np.full(n, None, dtype=object), crs="EPSG:4326")
    batch_id = f"{created:%Y%m%dT%H%M%SZ}-{kind}-{digest.hexdigest()[:8]}"
    url = sample_db_batch(root_url, batch_id)
    if store.exists(url):
        log.info("sample DB batch %s already stored: not written again", url)
        return batch_id, url
    gdf = gpd.GeoDataFrame(frame, geometry=geometry, crs="EPSG:4326")
    with store.local_write(url) as tmp:
        gdf.to_parquet(tmp, index=False, compression="zstd")
    log.info("sample DB: wrote %s (%d revisions)", url, n)
    return batch_id, url


def _hash_strings(digest: Any, values: Any) -> None:
    """Feed a column of strings (nulls allowed) to ``digest`` in an unambiguous encoding."""
    arr = values.array if isinstance(values, pd.Series) else values
    arr = pa.array(arr, from_pandas=True) if not isinstance(arr, (pa.Array, pa.ChunkedArray)) else arr
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type == pa.null():
        arr = pa.nulls(len(arr), pa.large_string())
    arr = arr.cast(pa.large_string())
    digest.update(np.int64(len(arr)).tobytes())
    if not len(arr):
        return
    digest.update(np.packbits(arr.is_null().to_numpy(zero_copy_only=False)).tobytes())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    digest.update((offsets - offsets[0]).tobytes())
    data = arr.buffers()[2]
    if data is not None and offsets[-1] > offsets[0]:
        digest.update(memoryview(data)[offsets[0]:offsets[-1]])


# --------------------------------------------------------------------------------------------
# Import


@dataclass
class _Rows:
    """Rows read from a file, checked row by row; problems are (row position, message)."""

    file: str
    where: Callable[[int], str]  # row position -> "line 7" / "feature 3"
    sample_id: np.ndarray  # object: stripped str, "" when missing
    label: np.ndarray  # float64, NaN when bad
    lon: np.ndarray  # float64, NaN when bad
    lat: np.ndarray
    source: np.ndarray  # object: str
    polygon_id: np.ndarray  # object: str or None
    problems: list[tuple[int, str]]

    def __len__(self) -> int:
        return len(self.sample_id)

    def messages(self) -> list[str]:
        ordered = sorted(self.problems, key=lambda p: p[0])  # stable: check order within a row
        return [f"{self.file} {self.where(i)}: {msg}" for i, msg in ordered]


def import_samples(store: Store, root_url: str, path_or_url: str | os.PathLike[str], *, author: str = "import",
                   created: datetime | None = None, source: str | None = None,
                   layer: str | None = None) -> ImportSummary:
    """Import the samples of a CSV or GeoPackage (local path or store URL) as one batch.

    New ids are added (status active). An id already in the DB at the same place is unchanged
    when its label is the current one or the one its latest import gave (so re-running an
    import after expert reviews keeps their decisions); with another label it gets a revision
    (reason "re-import", status kept). An id at another place, and any bad row, fails the whole
    import (:class:`SampleImportError`).
    """
    author = _text_arg("author", author)
    stamp = _created(created)
    name = _file_name(path_or_url)
    default_source = _text_arg("source", source) if source is not None else name
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    if suffix not in ("csv", "gpkg"):
        raise SampleDBError(f"cannot import {name}: unsupported file type; expected a .csv or .gpkg file")
    with _local_file(store, path_or_url) as path:  # open till the end: error messages may read it
        if suffix == "csv":
            rows = _read_csv(path, name, default_source)
        else:
            rows = _read_gpkg(path, name, default_source, layer)
        return _import_rows(store, root_url, rows, author, stamp)


def _import_rows(store: Store, root_url: str, rows: _Rows, author: str, stamp: pd.Timestamp) -> ImportSummary:
    name = rows.file
    db = load_sample_db(store, root_url)

    ok = np.ones(len(rows), bool)
    if rows.problems:
        ok[[i for i, _ in rows.problems]] = False
    pos = db._index.get_indexer(pd.Index(rows.sample_id, dtype=object)) if len(db) else np.full(len(rows), -1)
    existing = pos >= 0
    here = np.flatnonzero(existing)
    cur_lon, cur_lat = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    cur_lon[here], cur_lat[here] = db._lon[pos[here]], db._lat[pos[here]]
    moved = existing & ok & ((np.abs(rows.lon - cur_lon) > SAME_PLACE_DEG) | (np.abs(rows.lat - cur_lat) > SAME_PLACE_DEG))
    for i in np.flatnonzero(moved):
        rows.problems.append((int(i), (
            f"sample_id {rows.sample_id[i]!r} already exists at lon/lat ({cur_lon[i]:.8f}, {cur_lat[i]:.8f}); "
            f"a sample does not move (this row: {rows.lon[i]:.8f}, {rows.lat[i]:.8f})")))
    if rows.problems:
        raise SampleImportError(name, rows.messages())

    cur_label, imported_label = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
    cur_label[here] = db.points["label"].to_numpy(np.int64)[pos[here]]
    imported_label[here] = db._imported_label[pos[here]]
    label = rows.label.astype(np.int64)
    new = ~existing
    # A revision only where the source's label changed (so a re-run of an import, even after
    # expert reviews, is a no-op that keeps their decisions) and differs from the current one.
    relabel = existing & (label != imported_label) & (label != cur_label)
    take = np.flatnonzero(new | relabel)
    kept = int((existing & (label == imported_label) & (label != cur_label)).sum())
    if kept:
        log.info("import %s: %d row(s) repeat the label of their import that a review has changed since; "
                 "the review stands (import a file with the new label to change it)", name, kept)
    summary = dict(rows=len(rows), added=int(new.sum()), relabelled=int(relabel.sum()),
                   unchanged=int(len(rows) - len(take)))
    if not len(take):
        log.info("import %s into %s: nothing new (%d unchanged rows)", name, root_url, len(rows))
        return ImportSummary(batch_id=None, url=None, **summary)
    _check_time_order(db, stamp)
    take = take[np.argsort(rows.sample_id[take].astype(str), kind="stable")]
    is_new = new[take]
    batch = pd.DataFrame({
        "sample_id": rows.sample_id[take],
        "label": label[take],
        "status": np.where(is_new, "active", None),  # a re-import keeps an exclusion
        "source": rows.source[take],
        "polygon_id": rows.polygon_id[take],
        "reason": np.where(is_new, "import", "re-import"),
        "author": author,
    })
    # Relabelled samples keep their stored place exactly (the file's may differ by < 1 cm).
    lon = np.where(is_new, rows.lon[take], cur_lon[take])
    lat = np.where(is_new, rows.lat[take], cur_lat[take])
    batch_id, url = _write_batch(store, root_url, "import", stamp, batch, lon, lat)
    log.info("import %s into %s: %d rows, %d added, %d relabelled, %d unchanged -> %s", name, root_url,
             summary["rows"], summary["added"], summary["relabelled"], summary["unchanged"], batch_id)
    return ImportSummary(batch_id=batch_id, url=url, **summary)


def _file_name(path_or_url: str | os.PathLike[str]) -> str:
    if isinstance(path_or_url, str) and "://" in path_or_url:
        return path_or_url.rstrip("/").rsplit("/", 1)[-1]
    return Path(path_or_url).name


@contextlib.contextmanager
def _local_file(store: Store, path_or_url: str | os.PathLike[str]) -> Iterator[Path]:
    if isinstance(path_or_url, str) and "://" in path_or_url:
        with store.local_read(path_or_url) as path:
            yield path
        return
    path = Path(path_or_url)
    if not path.is_file():
        raise FileNotFoundError(f"sample file {path} does not exist")
    yield path


def _read_csv(path: Path, file: str, default_source: str) -> _Rows:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise SampleDBError(f"cannot import {file}: it is not UTF-8 text ({exc})") from None
    if not header:
        raise SampleImportError(file, [f"{file} line 1: the file is empty (no header line)"])
    try:  # every field as text (checked below, row by row); empty lines are skipped
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=[f"c{i}" for i in range(len(header))], skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={f"c{i}": pa.string() for i in range(len(header))},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc):
            raise SampleDBError(f"cannot import {file}: it is not UTF-8 text ({exc})") from None
        raise SampleImportError(file, _field_count_problems(path, file, exc)) from None
    columns = [c.strip() for c in header]
    projected = all(c in columns for c in ("x", "y", "epsg"))
    geographic = all(c in columns for c in ("lon", "lat"))
    missing = [c for c in ("sample_id", "label") if c not in columns]
    if not (projected or geographic):
        partial = [c for c in ("x", "y", "epsg") if c in columns]
        missing += [c for c in ("x", "y", "epsg") if c not in columns] if partial else ["lon, lat (or x, y, epsg)"]
    if missing:
        raise SampleImportError(file, [f"{file} line 1: missing required column(s) {', '.join(missing)}; "
                                       f"found columns: {', '.join(columns) or '(none)'}"])
    extra = [c for c in columns if c not in _KNOWN_COLUMNS]
    if extra:
        log.info("import %s: ignoring column(s) %s", file, ", ".join(extra))

    trimmed = [pc.utf8_trim_whitespace(table.column(i)) for i in range(len(header))]
    filled = np.zeros(table.num_rows, bool)
    for values in trimmed:
        filled |= pc.not_equal(values, "").to_numpy(zero_copy_only=False)
    kept = np.flatnonzero(filled)  # records with only empty fields (",,,") are not rows
    text = {}
    for name, values in zip(columns, trimmed, strict=True):
        if name in _KNOWN_COLUMNS and name not in text:  # the first of repeated names
            values = values.to_numpy(zero_copy_only=False)
            text[name] = values if len(kept) == len(values) else values[kept]
    problems: list[tuple[int, str]] = []
    n = len(kept)
    if projected:
        x = _numbers(text["x"], "x", problems)
        y = _numbers(text["y"], "y", problems)
        epsg = _epsg_codes(text["epsg"], problems)
        lon, lat = _to_lonlat(x, y, epsg, problems)
        if geographic:
            _check_lonlat_agrees(text, x, y, epsg, lon, lat, problems)
    else:
        lon = _numbers(text["lon"], "lon", problems)
        lat = _numbers(text["lat"], "lat", problems)
    lines = _RecordLines(path, table.num_rows, kept)
    return _finish_rows(file, lines.where, text["sample_id"], text["label"], lon, lat, text.get("source"),
                        text.get("polygon_id"), default_source, problems)


class _RecordLines:
    """Line numbers of CSV rows (the header is line 1), found by reading the file again the
    first time one is needed (in a good file never): empty lines do not make rows."""

    def __init__(self, path: Path, n_records: int, kept: np.ndarray) -> None:
        self.path, self.n_records, self.kept = path, n_records, kept
        self._lines: np.ndarray | None = None

    def where(self, row: int) -> str:
        if self._lines is None:
            starts = []
            with open(self.path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                next(reader, None)
                previous = reader.line_num
                for record in reader:
                    if record:
                        starts.append(previous + 1)
                    previous = reader.line_num
            if len(starts) != self.n_records:  # the two parsers disagree: count records instead
                log.warning("%s: cannot tell line numbers, counting records instead", self.path)
                starts = list(range(2, self.n_records + 2))
            self._lines = np.asarray(starts, np.int64)[self.kept]
        return f"line {self._lines[row]}"


def _field_count_problems(path: Path, file: str, exc: Exception) -> list[str]:
    problems = []
    with contextlib.suppress(UnicodeDecodeError, csv.Error), open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        width = len(next(reader, []))
        previous = reader.line_num
        for record in reader:
            if record and len(record) != width:
                problems.append(f"{file} line {previous + 1}: {len(record)} field(s), the header has {width}")
            previous = reader.line_num
    return problems or [f"{file}: the CSV cannot be parsed: {exc}"]


def _read_gpkg(path: Path, file: str, default_source: str, layer: str | None) -> _Rows:
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio.errors.DataSourceError and friends
        raise SampleDBError(f"cannot import {file}: not a readable GeoPackage ({exc})") from exc
    if not layers:
        raise SampleDBError(f"cannot import {file}: the GeoPackage has no layer")
    if layer is not None and layer not in layers:
        raise SampleDBError(f"cannot import {file}: no layer {layer!r}; layers: {', '.join(layers)}")
    name = layer or layers[0]
    gdf = pyogrio.read_dataframe(path, layer=name, fid_as_index=True)
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise SampleDBError(f"cannot import {file}: layer {name!r} has no geometry")
    if gdf.crs is None:
        raise SampleDBError(f"cannot import {file}: layer {name!r} has no CRS")
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    missing = [c for c in ("sample_id", "label") if c not in columns]
    if missing:
        raise SampleImportError(file, [f"{file} layer {name!r}: missing required column(s) {', '.join(missing)}; "
                                       f"found columns: {', '.join(map(str, columns)) or '(none)'}"])
    extra = [c for c in columns if c not in ("sample_id", "label", "source", "polygon_id")]
    if extra:
        log.info("import %s: ignoring column(s) %s", file, ", ".join(map(str, extra)))
    fids = gdf.index.to_numpy()
    geoms = np.asarray(gdf.geometry.array)
    problems: list[tuple[int, str]] = []
    none = pd.isna(geoms)
    empty = ~none & shapely.is_empty(geoms)
    kind = shapely.get_type_id(geoms)
    for i in np.flatnonzero(none):
        problems.append((int(i), "no geometry"))
    for i in np.flatnonzero(empty):
        problems.append((int(i), "empty geometry"))
    for i in np.flatnonzero(~none & ~empty & (kind != shapely.GeometryType.POINT)):
        problems.append((int(i), f"geometry is a {geoms[i].geom_type}, not a Point"))
    point = ~none & ~empty & (kind == shapely.GeometryType.POINT)
    lon, lat = np.full(len(gdf), np.nan), np.full(len(gdf), np.nan)
    idx = np.flatnonzero(point)
    if len(idx):
        x, y = shapely.get_x(geoms[idx]), shapely.get_y(geoms[idx])
        lon[idx], lat[idx] = Transformer.from_crs(gdf.crs, 4326, always_xy=True).transform(x, y)
        for j in np.flatnonzero(~(np.isfinite(lon[idx]) & np.isfinite(lat[idx]))):
            problems.append((int(idx[j]), f"point ({x[j]}, {y[j]}) cannot be transformed from {gdf.crs.to_string()} "
                                          "to lon/lat"))
            lon[idx[j]] = lat[idx[j]] = np.nan
    return _finish_rows(file, lambda i: f"feature {fids[i]}", _text(gdf["sample_id"]), _text(gdf["label"]),
                        lon, lat, _text(gdf["source"]) if "source" in columns else None,
                        _text(gdf["polygon_id"]) if "polygon_id" in columns else None, default_source, problems)


def _finish_rows(file: str, where: Callable[[int], str], sample_id: np.ndarray, label_text: np.ndarray,
                 lon: np.ndarray, lat: np.ndarray, source: np.ndarray | None, polygon_id: np.ndarray | None,
                 default_source: str, problems: list[tuple[int, str]]) -> _Rows:
    """Checks common to all formats: ids, labels, lon/lat range; defaults of optional columns."""
    n = len(sample_id)
    empty_id = sample_id == ""
    for i in np.flatnonzero(empty_id):
        problems.append((int(i), "empty sample_id"))
    named = np.flatnonzero(~empty_id)
    if len(named):
        codes, _ = pd.factorize(pd.Series(sample_id[named], dtype=object))
        _, first = np.unique(codes, return_index=True)
        for j in np.flatnonzero(first[codes] != np.arange(len(named))):
            i, earlier = int(named[j]), int(named[first[codes[j]]])
            problems.append((i, f"duplicate sample_id {sample_id[i]!r} (first at {where(earlier)})"))
    label = _numbers(label_text, "label", problems, integer=True)
    outside = np.isfinite(label) & ~np.isin(label, _CLASSES)
    for i in np.flatnonzero(outside):
        problems.append((int(i), f"label {int(label[i]) if abs(label[i]) < 1e18 else label[i]} is not a class code "
                                 f"{_CLASSES[0]}..{_CLASSES[-1]}"))
    label[outside] = np.nan
    bad_place = np.isfinite(lon) & np.isfinite(lat) & ((np.abs(lon) > 180) | (np.abs(lat) > 90))
    for i in np.flatnonzero(bad_place):
        problems.append((int(i), f"lon/lat ({lon[i]}, {lat[i]}) out of range (-180..180, -90..90)"))
    lon, lat = lon.copy(), lat.copy()
    lon[bad_place] = lat[bad_place] = np.nan
    src = np.full(n, default_source, dtype=object)
    if source is not None:
        given = source != ""
        src[given] = source[given]
    pid = np.full(n, None, dtype=object)
    if polygon_id is not None:
        given = polygon_id != ""
        pid[given] = polygon_id[given]
    return _Rows(file, where, sample_id, label, lon, lat, src, pid, problems)


def _numbers(text: np.ndarray, name: str, problems: list[tuple[int, str]], *, integer: bool = False) -> np.ndarray:
    """float64 of the texts; NaN, with a problem, where one is not a finite (integer) number."""
    values = _parse_floats(text)
    bad = ~np.isfinite(values)
    if integer:
        bad |= ~bad & (values != np.round(values))
    what = "an integer" if integer else "a finite number"
    for i in np.flatnonzero(bad):
        problems.append((int(i), f"{name} is empty" if text[i] == "" else f"{name} {text[i]!r} is not {what}"))
    values[bad] = np.nan
    return values


def _parse_floats(text: np.ndarray) -> np.ndarray:
    """float64 of an object array of strings, NaN where one is not a number (a writable copy)."""
    with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError):
        # Fast path (one vectorised cast) when every text is a number, as in a good file.
        return pa.array(text, type=pa.string()).cast(pa.float64()).to_numpy(zero_copy_only=False).copy()
    return pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(np.float64, na_value=np.nan,
                                                                                   copy=True)


def _epsg_codes(text: np.ndarray, problems: list[tuple[int, str]]) -> np.ndarray:
    values = _parse_floats(text)
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values <= 0)
    for i in np.flatnonzero(bad):
        problems.append((int(i), "epsg is empty" if text[i] == "" else f"epsg {text[i]!r} is not an EPSG code"))
    values[bad] = np.nan
    return values


def _to_lonlat(x: np.ndarray, y: np.ndarray, epsg: np.ndarray, problems: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat of projected coordinates, one transformation per EPSG code."""
    lon, lat = np.full(len(x), np.nan), np.full(len(x), np.nan)
    usable = np.isfinite(x) & np.isfinite(y) & np.isfinite(epsg)
    for code in np.unique(epsg[usable]):
        rows = np.flatnonzero(usable & (epsg == code))
        try:
            crs = CRS.from_epsg(int(code))
        except CRSError:
            problems.extend((int(i), f"unknown EPSG code {int(code)}") for i in rows)
            continue
        lon[rows], lat[rows] = Transformer.from_crs(crs, 4326, always_xy=True).transform(x[rows], y[rows])
        failed = rows[~(np.isfinite(lon[rows]) & np.isfinite(lat[rows]))]
        for i in failed:
            problems.append((int(i), f"x/y ({x[i]}, {y[i]}) cannot be transformed from EPSG:{int(code)} to lon/lat"))
        lon[failed] = lat[failed] = np.nan
    return lon, lat


def _check_lonlat_agrees(text: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, epsg: np.ndarray,
                         lon: np.ndarray, lat: np.ndarray, problems: list[tuple[int, str]]) -> None:
    """Where a CSV has both x/y/epsg (used) and lon/lat, they must describe the same place."""
    given_lon, given_lat = _parse_floats(text["lon"]), _parse_floats(text["lat"])
    with np.errstate(invalid="ignore"):
        off = (np.abs(given_lon - lon) > XY_LONLAT_TOLERANCE_DEG) | (np.abs(given_lat - lat) > XY_LONLAT_TOLERANCE_DEG)
    for i in np.flatnonzero(off):
        problems.append((int(i), f"lon/lat ({text['lon'][i]}, {text['lat'][i]}) disagree with x/y ({x[i]}, {y[i]}) in "
                                 f"EPSG:{int(epsg[i])}, which is lon/lat ({lon[i]:.7f}, {lat[i]:.7f})"))


def _text(values: Any) -> np.ndarray:
    """Object array of stripped strings ("" for missing); whole floats are written as integers."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(series.dtype, pd.StringDtype):
        return series.fillna("").str.strip().to_numpy(object)
    out = np.empty(len(series), dtype=object)
    for i, value in enumerate(series.to_numpy(object)):
        out[i] = _one_text(value)
    return out


def _one_text(value: Any) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return ""
        return str(int(value)) if float(value).is_integer() and abs(value) < 1e18 else repr(float(value))
    return str(value).strip()


# --------------------------------------------------------------------------------------------
# Review decisions


def add_revisions(store: Store, root_url: str, decisions: pd.DataFrame | Iterable[Mapping[str, Any]], *,
                  author: str, created: datetime | None = None, source: str = "expert review") -> ReviseSummary:
    """Add the expert decisions (relabel, keep, exclude) that change something as one review batch.

    ``decisions``: sample_id, reason (non-empty) and label (1..11) and/or status ("active" |
    "excluded"); a missing/null label or status keeps the current one. Unknown sample ids, bad
    labels or statuses fail the whole batch (:class:`SampleDBError` listing them).
    """
    author = _text_arg("author", author)
    source = _text_arg("source", source)
    stamp = _created(created)
    frame = decisions if isinstance(decisions, pd.DataFrame) else pd.DataFrame.from_records(list(decisions))
    if frame.empty:
        return ReviseSummary(batch_id=None, revised=0, url=None)
    missing = [c for c in ("sample_id", "reason") if c not in frame.columns]
    if missing:
        raise SampleDBError(f"decisions lack column(s) {', '.join(missing)}; found columns: "
                            f"{', '.join(map(str, frame.columns))}")
    db = load_sample_db(store, root_url)
    n = len(frame)
    problems: list[tuple[int, str]] = []
    ids = _text(frame["sample_id"])
    for i in np.flatnonzero(ids == ""):
        problems.append((int(i), "missing sample_id"))
    codes, _ = pd.factorize(pd.Series(ids, dtype=object))
    _, first = np.unique(codes, return_index=True)
    for i in np.flatnonzero((first[codes] != np.arange(n)) & (ids != "")):
        problems.append((int(i), f"duplicate sample_id {ids[i]!r} (first in decision {first[codes[i]] + 1})"))
    pos = db._index.get_indexer(pd.Index(ids, dtype=object)) if len(db) else np.full(n, -1)
    for i in np.flatnonzero((pos < 0) & (ids != "")):
        problems.append((int(i), f"unknown sample_id {ids[i]!r}"))
    label_text = _text(frame["label"]) if "label" in frame.columns else np.full(n, "", dtype=object)
    has_label = label_text != ""
    label = np.full(n, np.nan)
    if has_label.any():
        label_problems: list[tuple[int, str]] = []
        label[has_label] = _numbers(label_text[has_label], "label", label_problems, integer=True)
        where = np.flatnonzero(has_label)
        problems += [(int(where[j]), msg) for j, msg in label_problems]
        outside = has_label & np.isfinite(label) & ~np.isin(label, _CLASSES)
        for i in np.flatnonzero(outside):
            problems.append((int(i), f"label {label_text[i]} is not a class code {_CLASSES[0]}..{_CLASSES[-1]}"))
    status = _text(frame["status"]) if "status" in frame.columns else np.full(n, "", dtype=object)
    has_status = status != ""
    for i in np.flatnonzero(has_status & ~np.isin(status, STATUSES)):
        problems.append((int(i), f"status {status[i]!r} is not one of {', '.join(STATUSES)}"))
    reason = _text(frame["reason"])
    for i in np.flatnonzero(reason == ""):
        problems.append((int(i), "missing reason"))
    if problems:
        problems.sort(key=lambda p: p[0])
        messages = [f"decision {i + 1}" + (f" ({ids[i]!r})" if ids[i] else "") + f": {msg}" for i, msg in problems]
        raise SampleDBError(_listing(f"{len(messages)} problem(s) in the decisions for {root_url}; nothing was revised",
                                     messages))

    cur_label = db.points["label"].to_numpy(np.int64)[pos]
    cur_status = db.points["status"].to_numpy(object)[pos]
    new_label = has_label & (np.nan_to_num(label, nan=0).astype(np.int64) != cur_label)
    new_status = has_status & (status != cur_status)
    take = np.flatnonzero(new_label | new_status)
    if not len(take):
        log.info("review for %s: %d decision(s), none changes anything", root_url, n)
        return ReviseSummary(batch_id=None, revised=0, url=None)
    _check_time_order(db, stamp)
    take = take[np.argsort(ids[take].astype(str), kind="stable")]
    batch = pd.DataFrame({
        "sample_id": ids[take],
        "label": pd.array(np.where(new_label[take], label[take], np.nan), dtype="Float64").astype("Int64"),
        "status": np.where(new_status[take], status[take], None),
        "source": source,
        "polygon_id": None,
        "reason": reason[take],
        "author": author,
    })
    batch_id, url = _write_batch(store, root_url, "review", stamp, batch, None, None)
    log.info("review for %s: %d decision(s), %d revision(s) -> %s", root_url, n, len(take), batch_id)
    return ReviseSummary(batch_id=batch_id, revised=len(take), url=url)
