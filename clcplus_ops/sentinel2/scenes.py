"""Where Sentinel-2 L2A scenes come from: a STAC API (Earth Search by default) or a static STAC
catalogue in the store (the synthetic world's).

A :class:`Scene` is what the ingestion needs of one L2A product: when, where (footprint, MGRS
square, UTM EPSG), how cloudy, and for each of the 12 spectral bands and the SCL the URL of its
raster with ``reflectance = DN * scale + offset``. :func:`scene_from_item` builds one from the
STAC items of the catalogues met in practice (``../shared/reference/stac_items``):

- Earth Search v1 ``sentinel-2-c1-l2a`` and ``sentinel-2-l2a`` (asset keys ``coastal``, ``blue``,
  ..., ``scl``; the latter also with ``*-jp2`` duplicates, which are ignored),
- Earth Search v0 and Microsoft Planetary Computer (ESA band names ``B01``...``B12``, ``SCL``),
- stactools-sentinel2 items (relative hrefs, extra ``*_20m``/``*_60m`` resamplings, ignored),
- or any asset whose single ``eo:bands`` entry names the band.

Scale and offset come from ``raster:bands`` when the asset has them, else from the processing
baseline (:func:`bands.reflectance_offset`). One exception, from the Earth Search maintainers:
items of the pre-Collection-1 ``sentinel-2-l2a`` collection flagged
``earthsearch:boa_offset_applied: true`` carry COGs whose digital numbers were already shifted by
``BOA_ADD_OFFSET`` (harmonised to the pre-04.00 scale) while their ``raster:bands`` still say
``offset: -0.1``; "boa_offset_applied is the truth" (github.com/Element84/earth-search/issues/9),
so those scenes get offset 0.

Both sources return the scenes intersecting a footprint in a half-open time window, below a
cloud-cover limit, sorted by ``(datetime, scene_id)``.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urljoin

import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from clcplus_ops.sentinel2 import bands as s2bands

if TYPE_CHECKING:
    import pystac

    from clcplus_ops.config import Config
    from clcplus_ops.store import Store

log = logging.getLogger("clcplus_ops.sentinel2.scenes")

SCENE_KEYS: tuple[str, ...] = (*s2bands.BANDS, s2bands.SCL)
_TRANSIENT_STATUS = (429, 500, 502, 503, 504)


class SceneError(ValueError):
    """A STAC item that cannot be used as a scene; the message names the item and the reason."""


class SceneSourceError(RuntimeError):
    """A scene source that cannot be read (API unreachable or failing, catalogue missing...);
    the message names the API or catalogue URL."""


# --------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Asset:
    href: str  # absolute URL: file:///..., s3://..., https://...
    scale: float  # reflectance = DN * scale + offset (SCL: scale 1, offset 0)
    offset: float
    nodata: int | None
    resolution_m: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "href": self.href,
            "scale": self.scale,
            "offset": self.offset,
            "nodata": self.nodata,
            "resolution_m": self.resolution_m,
        }


@dataclass(frozen=True)
class Scene:
    scene_id: str
    collection: str
    datetime: dt.datetime  # timezone-aware UTC
    platform: str | None
    mgrs_square: str | None  # "33TVL"
    epsg: int
    cloud_cover: float | None
    processing_baseline: str | None
    footprint: BaseGeometry  # EPSG:4326
    assets: Mapping[str, Asset]  # "B01".."B12", "B8A", "SCL"

    def __hash__(self) -> int:  # the geometry and the asset dict are not hashable
        return hash((self.collection, self.scene_id, self.datetime))

    @property
    def acquisition_date(self) -> dt.date:
        """The UTC date of acquisition."""
        return self.datetime.astimezone(dt.timezone.utc).date()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary for provenance records (the footprint as its bounding box)."""
        return {
            "scene_id": self.scene_id,
            "collection": self.collection,
            "datetime": _iso(self.datetime),
            "acquisition_date": self.acquisition_date.isoformat(),
            "platform": self.platform,
            "mgrs_square": self.mgrs_square,
            "epsg": self.epsg,
            "cloud_cover": self.cloud_cover,
            "processing_baseline": self.processing_baseline,
            "bbox": [round(v, 6) for v in self.footprint.bounds],
            "assets": {name: self.assets[name].to_dict() for name in sorted(self.assets)},
        }


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------
# URLs


def resolve_href(base_url: str, href: str) -> str:
    """``href`` made absolute against the document at ``base_url`` (file://, s3://, http(s)://).

    ``urllib.parse.urljoin`` does not resolve relative references for ``s3://``, hence this.
    """
    if "://" in href:
        return href
    scheme, sep, rest = base_url.partition("://")
    if not sep:
        raise ValueError(f"base URL {base_url!r} is not absolute")
    if scheme in ("http", "https"):
        return urljoin(base_url, href)
    if scheme == "file":
        if href.startswith("/"):
            return "file://" + posixpath.normpath(href)
        directory = posixpath.dirname(rest)
        return "file://" + posixpath.normpath(posixpath.join(directory, href))
    # s3:// and other bucket-style URLs: the first segment is the bucket, never climbed above.
    bucket, _, key = rest.partition("/")
    if href.startswith("/"):
        joined = href
    else:
        joined = posixpath.join("/", posixpath.dirname(key), href)
    path = posixpath.normpath(joined).lstrip("/")
    return f"{scheme}://{bucket}/{path}"


def _as_base_url(href: str | None) -> str | None:
    if not href:
        return None
    if "://" in href:
        return href
    if href.startswith("/"):  # pystac keeps plain absolute paths as self hrefs
        return "file://" + href
    return None


# --------------------------------------------------------------------------------------------
# Item -> Scene

# An MGRS square: UTM zone 1-60, latitude band C..X (no I, O), 100 km square letters.
_MGRS = re.compile(r"(?<![0-9A-Z])T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V])(?![0-9A-Z])")
_BASELINE_IN_NAME = re.compile(r"_N(\d{2})\.?(\d{2})(?:_|\.SAFE|$)")


def _mgrs(zone: Any, band: Any, square: Any) -> str | None:
    try:
        zone_n = int(zone)
    except (TypeError, ValueError):
        return None
    if not (1 <= zone_n <= 60) or not band or not square:
        return None
    return f"{zone_n:02d}{str(band).upper()}{str(square).upper()}"


def _normalise_square(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    match = _MGRS.search(text.upper())
    if not match:
        return None
    code = match.group(1)
    return code.zfill(5)


def _zone_from_epsg(epsg: int | None) -> int | None:
    if epsg is not None and (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        return epsg % 100
    return None


def _mgrs_square(item_id: str, props: Mapping[str, Any], epsg: int | None) -> str | None:
    grid = props.get("grid:code")
    if isinstance(grid, str) and grid.upper().startswith("MGRS-"):
        square = _normalise_square(grid[5:])
        if square:
            return square
    square = _mgrs(props.get("mgrs:utm_zone"), props.get("mgrs:latitude_band"),
                   props.get("mgrs:grid_square"))
    if square:
        return square
    square = _normalise_square(props.get("s2:mgrs_tile"))
    if square:
        return square
    zone = props.get("sentinel:utm_zone", _zone_from_epsg(epsg))
    square = _mgrs(zone, props.get("sentinel:latitude_band"), props.get("sentinel:grid_square"))
    if square:
        return square
    for key in ("s2:product_uri", "sentinel:product_id", "s2:tile_id", "s2:granule_id"):
        square = _normalise_square(props.get(key))
        if square:
            return square
    return _normalise_square(item_id)


def _epsg_value(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*EPSG:(\d+)\s*", value, flags=re.IGNORECASE)
        if match:
            return int(match.group(1))
        if value.strip().isdigit():
            return int(value)
    return None


def _epsg(props: Mapping[str, Any], assets: Mapping[str, Any]) -> int | None:
    for source in (props, *assets.values()):
        if not isinstance(source, Mapping):
            continue
        for key in ("proj:epsg", "proj:code"):
            epsg = _epsg_value(source.get(key))
            if epsg:
                return epsg
    for zone_key, band_key in (("mgrs:utm_zone", "mgrs:latitude_band"),
                               ("sentinel:utm_zone", "sentinel:latitude_band")):
        zone, band = props.get(zone_key), props.get(band_key)
        if zone is not None and isinstance(band, str) and band:
            try:
                zone_n = int(zone)
            except (TypeError, ValueError):
                continue
            return (32600 if band.upper() >= "N" else 32700) + zone_n
    return None


def _baseline(item_id: str, props: Mapping[str, Any]) -> str | None:
    for key in ("s2:processing_baseline", "sentinel:processing_baseline"):
        value = props.get(key)
        if value not in (None, ""):
            parsed = s2bands.parse_baseline(str(value))
            return f"{parsed[0]:02d}.{parsed[1]:02d}" if parsed else str(value)
    for key in ("s2:product_uri", "sentinel:product_id", "s2:product_id", "s2:tile_id",
                "s2:granule_id", "s2:datastrip_id", "s2:datatake_id"):
        value = props.get(key)
        if isinstance(value, str):
            match = _BASELINE_IN_NAME.search(value)
            if match:
                return f"{match.group(1)}.{match.group(2)}"
    match = _BASELINE_IN_NAME.search(item_id)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _boa_offset_already_applied(props: Mapping[str, Any]) -> bool:
    """Earth Search pre-Collection-1: DNs already shifted by BOA_ADD_OFFSET (see module doc)."""
    return any(props.get(k) is True for k in ("earthsearch:boa_offset_applied",
                                             "sentinel:boa_offset_applied"))


def _datetime(item_id: str, props: Mapping[str, Any]) -> dt.datetime:
    value = props.get("datetime")
    if not value:
        raise SceneError(f"STAC item {item_id!r}: no datetime (properties.datetime is {value!r})")
    try:
        text = str(value).strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SceneError(f"STAC item {item_id!r}: unreadable datetime {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def _is_jp2_duplicate(key: str) -> bool:
    return key.lower().endswith("-jp2")


def _is_jp2(asset: Mapping[str, Any]) -> bool:
    return "jp2" in str(asset.get("type", "")).lower() or str(asset.get("href", "")).lower().endswith(".jp2")


def _band_entries(asset: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The per-band metadata objects of an asset: raster:bands, else STAC 1.1 ``bands``."""
    for key in ("raster:bands", "bands"):
        entries = asset.get(key)
        if isinstance(entries, list) and entries and all(isinstance(e, Mapping) for e in entries):
            return entries
    return []


def _eo_names(asset: Mapping[str, Any]) -> list[str]:
    names = []
    for key in ("eo:bands", "bands"):
        entries = asset.get(key)
        if isinstance(entries, list):
            names += [str(e["name"]) for e in entries if isinstance(e, Mapping) and e.get("name")]
            if names:
                return names
    return names


def _find_assets(assets: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """ESA band name -> (asset key, asset) for the 12 bands and the SCL."""
    usable = {k: a for k, a in assets.items() if isinstance(a, Mapping) and a.get("href")
              and not _is_jp2_duplicate(k)}
    lower = {k.lower(): k for k in usable}
    found: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for name in SCENE_KEYS:
        asset_key = s2bands.SCL_ASSET_KEY if name == s2bands.SCL else s2bands.BANDS[name].asset_key
        for candidate in (asset_key, name.lower()):  # Earth Search v1 key, then ESA name
            if candidate in lower:
                key = lower[candidate]
                found[name] = (key, usable[key])
                break
    # Anything else: an asset whose only eo:bands entry is the band (COG and native pixel size
    # preferred over JP2 or resampled variants such as stactools' "blue_20m").
    for name in SCENE_KEYS:
        if name in found or name == s2bands.SCL:
            continue
        native = s2bands.BANDS[name].resolution_m
        aliases = {name.lower(), s2bands.BANDS[name].asset_key}
        candidates = []
        for key, asset in usable.items():
            names = [n.lower() for n in _eo_names(asset)]
            if len(names) == 1 and names[0] in aliases:
                candidates.append((_is_jp2(asset), _resolution(asset) != native, key, asset))
        if candidates:
            _, _, key, asset = min(candidates, key=lambda c: c[:3])
            found[name] = (key, asset)
    return found


def _resolution(asset: Mapping[str, Any]) -> int | None:
    for entry in _band_entries(asset):
        res = entry.get("spatial_resolution")
        if isinstance(res, (int, float)) and res > 0:
            return int(round(res))
    gsd = asset.get("gsd")
    if isinstance(gsd, (int, float)) and gsd > 0:
        return int(round(gsd))
    transform = asset.get("proj:transform")
    if isinstance(transform, list) and transform and isinstance(transform[0], (int, float)):
        if transform[0]:
            return int(round(abs(transform[0])))
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _make_asset(
    item_id: str, name: str, key: str, asset: Mapping[str, Any], base_url: str | None,
    baseline: str | None, offset_applied: bool,
) -> Asset:
    href = str(asset["href"])
    if "://" not in href:
        if base_url is None:
            raise SceneError(
                f"STAC item {item_id!r}: asset {key!r} has the relative href {href!r} and no "
                "base URL is known to resolve it"
            )
        href = resolve_href(base_url, href)
    entries = _band_entries(asset)
    entry: Mapping[str, Any] = entries[0] if entries else {}
    nodata_value = entry.get("nodata", asset.get("nodata", 0))
    nodata = int(nodata_value) if _number(nodata_value) is not None else None
    if name == s2bands.SCL:
        scale, offset = 1.0, 0.0
        native = s2bands.SCL_RESOLUTION_M
    else:
        native = s2bands.BANDS[name].resolution_m
        scale = _number(entry.get("scale"))
        offset = _number(entry.get("offset"))
        if scale is None and offset is None:
            scale, offset = s2bands.REFLECTANCE_SCALE, s2bands.reflectance_offset(baseline)
        else:  # raster extension defaults: scale 1, offset 0
            scale = scale if scale is not None else 1.0
            offset = offset if offset is not None else 0.0
        if offset_applied:
            offset = 0.0
    return Asset(href=href, scale=scale, offset=offset, nodata=nodata,
                 resolution_m=_resolution(asset) or native)


def scene_from_item(item: pystac.Item | Mapping[str, Any], base_url: str | None = None) -> Scene:
    """The :class:`Scene` of a Sentinel-2 L2A STAC item (a ``pystac.Item`` or its dict).

    ``base_url`` resolves relative asset hrefs (static catalogues: the URL of the item JSON);
    without it the item's ``self`` link is used when it has one. Raises :class:`SceneError`
    naming the item when it lacks something a scene needs (a band, the SCL, a datetime, a
    footprint, a CRS).
    """
    if not isinstance(item, Mapping):  # pystac.Item
        if base_url is None:
            base_url = _as_base_url(item.get_self_href())
        item = item.to_dict(include_self_link=True, transform_hrefs=False)
    item_id = str(item.get("id") or "<no id>")
    props = item.get("properties") or {}
    assets = item.get("assets") or {}
    if base_url is None:
        self_link = next((link.get("href") for link in item.get("links") or []
                          if isinstance(link, Mapping) and link.get("rel") == "self"), None)
        base_url = _as_base_url(self_link)

    when = _datetime(item_id, props)
    geometry = item.get("geometry")
    if not geometry:
        raise SceneError(f"STAC item {item_id!r}: no geometry (footprint)")
    try:
        footprint = shape(geometry)
    except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
        raise SceneError(f"STAC item {item_id!r}: unreadable geometry: {exc}") from None
    if footprint.is_empty:
        raise SceneError(f"STAC item {item_id!r}: empty geometry (footprint)")

    found = _find_assets(assets)
    missing = [name for name in SCENE_KEYS if name not in found]
    if missing:
        raise SceneError(
            f"STAC item {item_id!r}: no asset for {', '.join(missing)} "
            f"(asset keys: {', '.join(sorted(assets)) or 'none'})"
        )
    epsg = _epsg(props, {k: a for k, a in found.values()})
    square = _mgrs_square(item_id, props, epsg)
    if epsg is None and square:
        band = square[2]
        epsg = (32600 if band >= "N" else 32700) + int(square[:2])
    if epsg is None:
        raise SceneError(f"STAC item {item_id!r}: no CRS (proj:epsg, proj:code or MGRS zone)")

    baseline = _baseline(item_id, props)
    offset_applied = _boa_offset_already_applied(props)
    scene_assets = {
        name: _make_asset(item_id, name, key, asset, base_url, baseline, offset_applied)
        for name, (key, asset) in found.items()
    }
    cloud = _number(props.get("eo:cloud_cover"))
    platform = props.get("platform")
    return Scene(
        scene_id=item_id,
        collection=str(item.get("collection") or ""),
        datetime=when,
        platform=str(platform).lower() if platform else None,
        mgrs_square=square,
        epsg=epsg,
        cloud_cover=cloud,
        processing_baseline=baseline,
        footprint=footprint,
        assets={name: scene_assets[name] for name in SCENE_KEYS},
    )


# --------------------------------------------------------------------------------------------
# Selection shared by the sources


def _utc(value: dt.datetime | dt.date, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:  # naive: taken as UTC
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _check_window(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start_u, end_u = _utc(start, "start"), _utc(end, "end")
    if end_u <= start_u:
        raise ValueError(f"empty time window [{_iso(start_u)}, {_iso(end_u)})")
    return start_u, end_u


def _check_footprint(footprint: BaseGeometry) -> None:
    if not isinstance(footprint, BaseGeometry) or footprint.is_empty:
        raise ValueError(f"footprint must be a non-empty shapely geometry, got {footprint!r}")
    xmin, ymin, xmax, ymax = footprint.bounds
    if not (-180.0 <= xmin <= xmax <= 180.0 and -90.0 <= ymin <= ymax <= 90.0):
        raise ValueError(
            f"footprint must be in EPSG:4326 (lon/lat degrees); its bounds are "
            f"{footprint.bounds}"
        )


def select_scenes(
    scenes: Iterable[Scene], footprint: BaseGeometry, start: dt.datetime, end: dt.datetime,
    max_cloud_cover: float, *, source: str = "",
) -> list[Scene]:
    """The scenes that intersect ``footprint``, lie in ``[start, end)`` and whose cloud cover is
    below ``max_cloud_cover`` (those without one are kept, with a warning); one per scene id,
    sorted by ``(datetime, scene_id)``."""
    start_u, end_u = _check_window(start, end)
    _check_footprint(footprint)
    shapely.prepare(footprint)
    chosen: dict[str, Scene] = {}
    for scene in scenes:
        if not (start_u <= scene.datetime < end_u):
            continue
        if not footprint.intersects(scene.footprint):
            continue
        if scene.cloud_cover is None:
            log.warning("%sscene %s has no cloud cover (eo:cloud_cover); kept",
                        f"{source}: " if source else "", scene.scene_id)
        elif not scene.cloud_cover < max_cloud_cover:
            continue
        chosen.setdefault(scene.scene_id, scene)
    return sorted(chosen.values(), key=lambda s: (s.datetime, s.scene_id))


def _parse_items(items: Iterable[tuple[Mapping[str, Any], str | None]], source: str) -> list[Scene]:
    scenes = []
    for item, base_url in items:
        try:
            scenes.append(scene_from_item(item, base_url))
        except SceneError as exc:
            log.warning("%s: item skipped: %s", source, exc)
    return scenes


# --------------------------------------------------------------------------------------------
# Sources


@runtime_checkable
class SceneSource(Protocol):
    def search(
        self, footprint: BaseGeometry, start: dt.datetime, end: dt.datetime,
        max_cloud_cover: float,
    ) -> list[Scene]:
        """Scenes intersecting ``footprint`` (EPSG:4326) in ``[start, end)`` with cloud cover
        below ``max_cloud_cover``, sorted by ``(datetime, scene_id)``."""
        ...

    def describe(self) -> str:
        """What the source is, for messages."""
        ...


_MAX_INTERSECTS_VERTICES = 500


class StacApiSource:
    """Scenes from a STAC API (pystac-client), Collection-1 first, then the fallback collection
    for the (MGRS square, acquisition date) pairs Collection-1 lacks.

    Cloud cover is filtered on the server with the query extension when the API conforms to it
    (note: servers then drop items without ``eo:cloud_cover``), and always on the client too.
    Connection errors, timeouts, 429 and 5xx answers are retried ``retries`` times with
    exponential backoff starting at ``backoff_s``; any other failure raises
    :class:`SceneSourceError` naming the API URL. Items that are not usable scenes are skipped
    with a warning.
    """

    def __init__(
        self,
        url: str,
        collection: str = "sentinel-2-c1-l2a",
        fallback_collection: str | None = "sentinel-2-l2a",
        page_size: int = 100,
        *,
        retries: int = 4,
        backoff_s: float = 1.0,
        timeout_s: float = 60.0,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.url = url.rstrip("/") or url
        self.collection = collection
        self.fallback_collection = (
            fallback_collection if fallback_collection and fallback_collection != collection else None
        )
        self.page_size = page_size
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        text = f"STAC API {self.url} collection {self.collection}"
        if self.fallback_collection:
            text += f" (fallback {self.fallback_collection})"
        return text

    def __repr__(self) -> str:
        return f"StacApiSource({self.describe()})"

    # ---- pystac-client -------------------------------------------------------------------

    def _open(self) -> Any:
        from pystac_client import Client
        from pystac_client.stac_api_io import StacApiIO
        from urllib3 import Retry

        retry = Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            other=0,
            backoff_factor=self.backoff_s,
            backoff_max=60.0,
            status_forcelist=_TRANSIENT_STATUS,
            allowed_methods=None,  # POST searches are idempotent
            raise_on_status=False,  # the last answer's status and body make the error message
            respect_retry_after_header=True,
        )
        stac_io = StacApiIO(timeout=self.timeout_s, max_retries=retry)
        return Client.open(self.url, stac_io=stac_io)

    def _error(self, what: str, exc: Exception) -> SceneSourceError:
        return SceneSourceError(f"STAC API {self.url}: {what} failed: {exc}")

    def _client_or_open(self) -> Any:
        if self._client is None:
            try:
                self._client = self._open()
            except Exception as exc:  # APIError, pystac errors, JSON errors
                raise self._error("opening the landing page", exc) from exc
        return self._client

    def _search_collection(
        self, collection: str, footprint: BaseGeometry, start: dt.datetime, end: dt.datetime,
        max_cloud_cover: float,
    ) -> list[Scene]:
        from pystac_client.conformance import ConformanceClasses

        client = self._client_or_open()
        geometry = footprint
        if shapely.get_num_coordinates(geometry) > _MAX_INTERSECTS_VERTICES:
            geometry = footprint.convex_hull  # a superset; the exact test is done here
        params: dict[str, Any] = {
            "collections": [collection],
            "intersects": mapping(geometry),
            # STAC intervals are closed: the end is excluded by select_scenes.
            "datetime": f"{_iso(start)}/{_iso(end)}",
            "limit": self.page_size,
            "method": "POST",
        }
        if max_cloud_cover < 100 and client.conforms_to(ConformanceClasses.QUERY):
            params["query"] = {"eo:cloud_cover": {"lt": max_cloud_cover}}
        source = f"{self.describe()} [{collection}]"
        try:
            items = list(client.search(**params).items_as_dicts())
        except Exception as exc:
            raise self._error(f"searching collection {collection}", exc) from exc
        scenes = _parse_items(((item, None) for item in items), source)
        scenes = [s if s.collection else replace(s, collection=collection) for s in scenes]
        log.info("%s: %d item(s), %d usable", source, len(items), len(scenes))
        return select_scenes(scenes, footprint, start, end, max_cloud_cover, source=source)

    def search(
        self, footprint: BaseGeometry, start: dt.datetime, end: dt.datetime,
        max_cloud_cover: float,
    ) -> list[Scene]:
        start_u, end_u = _check_window(start, end)
        _check_footprint(footprint)
        with self._lock:
            primary = self._search_collection(
                self.collection, footprint, start_u, end_u, max_cloud_cover)
            if not self.fallback_collection:
                return primary
            fallback = self._search_collection(
                self.fallback_collection, footprint, start_u, end_u, max_cloud_cover)
        covered = {(s.mgrs_square, s.acquisition_date) for s in primary if s.mgrs_square}
        ids = {s.scene_id for s in primary}
        added = [
            s for s in fallback
            if s.scene_id not in ids
            and (s.mgrs_square is None or (s.mgrs_square, s.acquisition_date) not in covered)
        ]
        if added:
            log.info("%s: %d scene(s) from %s where %s has none for the square and date",
                     self.url, len(added), self.fallback_collection, self.collection)
        return sorted(primary + added, key=lambda s: (s.datetime, s.scene_id))


class StaticCatalogSource:
    """Scenes from a static STAC catalogue in the store (``file://`` or ``s3://``).

    ``catalog.json`` -> ``child`` links (catalogues or collections, recursively) -> ``item``
    links -> item JSONs; relative hrefs resolve against the document that holds them. Items are
    read once (in parallel) and kept for the life of the instance.
    """

    def __init__(self, catalog_url: str, store: Store, *, max_workers: int = 16) -> None:
        self.catalog_url = catalog_url
        self.store = store
        self.max_workers = max_workers
        self._scenes: list[Scene] | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"static catalogue {self.catalog_url}"

    def __repr__(self) -> str:
        return f"StaticCatalogSource({self.catalog_url})"

    def _read(self, url: str, what: str) -> Mapping[str, Any]:
        try:
            doc = self.store.read_json(url)
        except FileNotFoundError:
            raise SceneSourceError(f"{self.describe()}: {what} {url} does not exist") from None
        except ValueError as exc:
            raise SceneSourceError(f"{self.describe()}: {what} {url} is not JSON: {exc}") from exc
        except Exception as exc:  # StoreError and friends
            raise SceneSourceError(f"{self.describe()}: reading {what} {url} failed: {exc}") from exc
        if not isinstance(doc, Mapping):
            raise SceneSourceError(f"{self.describe()}: {what} {url} is not a JSON object")
        return doc

    def _item_urls(self) -> list[tuple[str, str | None]]:
        """(item URL, collection id of the parent) for every item below the catalogue."""
        found: list[tuple[str, str | None]] = []
        seen: set[str] = set()
        pending: list[tuple[str, str]] = [(self.catalog_url, "catalogue")]
        while pending:
            url, what = pending.pop(0)
            if url in seen:
                continue
            seen.add(url)
            doc = self._read(url, what)
            collection = doc.get("id") if doc.get("type") == "Collection" else None
            for link in doc.get("links") or []:
                if not isinstance(link, Mapping) or not link.get("href"):
                    continue
                href = resolve_href(url, str(link["href"]))
                if link.get("rel") == "child":
                    pending.append((href, "child catalogue"))
                elif link.get("rel") == "item":
                    found.append((href, collection))
        return found

    def _load(self) -> list[Scene]:
        started = time.monotonic()
        urls = self._item_urls()

        def read_item(entry: tuple[str, str | None]) -> tuple[Mapping[str, Any], str]:
            url, collection = entry
            item = dict(self._read(url, "item"))
            if collection and not item.get("collection"):
                item["collection"] = collection
            return item, url

        with ThreadPoolExecutor(max_workers=max(1, self.max_workers)) as pool:
            items = list(pool.map(read_item, urls))
        scenes = _parse_items(items, self.describe())
        log.info("%s: %d item(s), %d usable, read in %.1f s", self.describe(), len(items),
                 len(scenes), time.monotonic() - started)
        return scenes

    def scenes(self) -> list[Scene]:
        """Every usable scene of the catalogue (read on first use)."""
        with self._lock:
            if self._scenes is None:
                self._scenes = self._load()
            return list(self._scenes)

    def search(
        self, footprint: BaseGeometry, start: dt.datetime, end: dt.datetime,
        max_cloud_cover: float,
    ) -> list[Scene]:
        return select_scenes(self.scenes(), footprint, start, end, max_cloud_cover,
                             source=self.describe())


def scene_source(config: Config, reference_year: int, store: Store) -> SceneSource:
    """The configured source: the static catalogue (``{year}`` replaced by ``reference_year``)
    when ``sentinel2.static_catalog`` is set, else the STAC API."""
    s2 = config.sentinel2
    if s2.static_catalog:
        return StaticCatalogSource(s2.static_catalog.replace("{year}", str(reference_year)), store)
    return StacApiSource(s2.stac_api_url, s2.collection, s2.fallback_collection)


__all__: Sequence[str] = (
    "Asset",
    "Scene",
    "SceneError",
    "SceneSource",
    "SceneSourceError",
    "StacApiSource",
    "StaticCatalogSource",
    "resolve_href",
    "scene_from_item",
    "scene_source",
    "select_scenes",
)
