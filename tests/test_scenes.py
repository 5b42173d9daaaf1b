"""The scene source: STAC items -> scenes on every real item in ../shared/reference/stac_items,
StacApiSource against a real STAC API on 127.0.0.1 (rustac, see stac_api_server.py), and
StaticCatalogSource on a file:// and an s3:// (moto) catalogue."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import Any

import pystac
import pytest
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from clcplus_ops.config import parse_config
from clcplus_ops.sentinel2 import bands as s2bands
from clcplus_ops.sentinel2.scenes import (
    SceneError,
    SceneSource,
    SceneSourceError,
    StacApiSource,
    StaticCatalogSource,
    resolve_href,
    scene_from_item,
    scene_source,
)
from clcplus_ops.store import S3Settings, Store, as_url, join
from conftest import SHARED, shared_path
from stac_api_server import (  # noqa: F401  (fixtures)
    C1,
    L2A,
    ApiProxy,
    StacWorld,
    _stac_proxy,
    derive_item,
    free_port,
    stac_api,
    stac_world,
)

REFERENCE = SHARED / "reference" / "stac_items"
UTC = dt.timezone.utc
RESOLUTION = {"B01": 60, "B09": 60, "B02": 10, "B03": 10, "B04": 10, "B08": 10,
              "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20, "B12": 20, "SCL": 20}
ALL_KEYS = (*s2bands.BANDS, "SCL")

# ---- every real item -----------------------------------------------------------------------

# file -> what the scene must say. "offset": the reflectance offset of the 12 bands; "source"
# says where it comes from: the item's raster:bands, the processing baseline (no raster:bands),
# or Earth Search's earthsearch:boa_offset_applied flag (raster:bands say -0.1, the COGs were
# already shifted: github.com/Element84/earth-search/issues/9; the collection's item_assets say 0).
REAL_ITEMS: dict[str, dict[str, Any]] = {
    "earth_search_v1/S2B_T24MUV_20250731T130245_L2A.json": dict(
        id="S2B_T24MUV_20250731T130245_L2A", collection=C1, square="24MUV", epsg=32724,
        cloud=56.813848, when="2025-07-31T13:03:27.058+00:00", baseline="05.11",
        platform="sentinel-2b", offset=-0.1, source="raster:bands"),
    "earth_search_v1/S2B_T20EPT_20250731T131905_L2A.json": dict(
        id="S2B_T20EPT_20250731T131905_L2A", collection=C1, square="20EPT", epsg=32720,
        cloud=26.02542, when="2025-07-31T13:19:22.930+00:00", baseline="05.11",
        platform="sentinel-2b", offset=-0.1, source="raster:bands"),
    "earth_search_v1/S2B_24MUV_20250731_0_L2A.json": dict(
        id="S2B_24MUV_20250731_0_L2A", collection=L2A, square="24MUV", epsg=32724,
        cloud=56.813848, when="2025-07-31T13:03:27.058+00:00", baseline="05.11",
        platform="sentinel-2b", offset=0.0, source="boa_offset_applied"),
    "earth_search_v1/S2B_20EPT_20250731_0_L2A.json": dict(
        id="S2B_20EPT_20250731_0_L2A", collection=L2A, square="20EPT", epsg=32720,
        cloud=26.02542, when="2025-07-31T13:19:22.930+00:00", baseline="05.11",
        platform="sentinel-2b", offset=0.0, source="boa_offset_applied"),
    "earth_search_v1/S2A_13TDE_20231008_0_L2A.json": dict(
        id="S2A_13TDE_20231008_0_L2A", collection=L2A, square="13TDE", epsg=32613,
        cloud=0.000299, when="2023-10-08T18:02:55.276+00:00", baseline="05.09",
        platform="sentinel-2a", offset=0.0, source="boa_offset_applied"),
    "odc_stac/S2A_28QCH_20200714_0_L2A.json": dict(  # Earth Search v0: B01.. keys, no gsd
        id="S2A_28QCH_20200714_0_L2A", collection="sentinel-s2-l2a-cogs", square="28QCH",
        epsg=32628, cloud=2.36, when="2020-07-14T11:55:52+00:00", baseline="02.14",
        platform="sentinel-2a", offset=0.0, source="baseline"),
    "odc_stac/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json": dict(  # Planetary C.
        id="S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531", collection=L2A,
        square="06VVN", epsg=32606, cloud=0.314306, when="2019-06-29T21:25:29.024+00:00",
        baseline="02.12", platform="sentinel-2b", offset=0.0, source="baseline"),
    "stactools_sentinel2/S2A_OPER_MSI_L2A_TL_2APS_20240108T121951_A044635_T34VEL/expected_output.json": dict(
        id="S2A_OPER_MSI_L2A_TL_2APS_20240108T121951_A044635_T34VEL", collection="",
        square="34VEL", epsg=32634, cloud=74.49823, when="2024-01-08T10:14:07.485+00:00",
        baseline="05.10", platform="sentinel-2a", offset=-0.1, source="raster:bands"),
    "stactools_sentinel2/S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE/expected_output.json": dict(
        id="S2B_T33XWJ_20220413T150756_L2A", collection="", square="33XWJ", epsg=32633,
        cloud=98.944211, when="2022-04-13T15:07:59.024+00:00", baseline="04.00",
        platform="sentinel-2b", offset=-0.1, source="raster:bands"),
    "stactools_sentinel2/S2A_MSIL2A_20230625T234621_N0509_R073_T01WCP_20230626T022157.SAFE/expected_output.json": dict(
        id="S2A_T01WCP_20230625T234624_L2A", collection="", square="01WCP", epsg=32601,
        cloud=15.047897, when="2023-06-25T23:46:21.024+00:00", baseline="05.09",
        platform="sentinel-2a", offset=-0.1, source="raster:bands"),
}


def _load(relative: str) -> dict[str, Any]:
    return json.loads(shared_path("reference", "stac_items", *relative.split("/")).read_text())


def test_every_real_item_is_listed() -> None:
    root = shared_path("reference", "stac_items")
    found = {p.relative_to(root).as_posix() for p in root.glob("earth_search_v1/*.json")
             if not p.name.startswith("collection")}
    found |= {p.relative_to(root).as_posix() for p in root.glob("odc_stac/*.json")
              if "collection" not in p.name}
    found |= {p.relative_to(root).as_posix() for p in root.glob("stactools_sentinel2/*/expected_output.json")}
    assert found == set(REAL_ITEMS)


def _band_entry(asset: dict[str, Any]) -> dict[str, Any] | None:
    entries = asset.get("raster:bands")
    return entries[0] if entries else None


@pytest.mark.parametrize("relative", sorted(REAL_ITEMS))
def test_real_item(relative: str) -> None:
    item = _load(relative)
    want = REAL_ITEMS[relative]
    item_url = as_url(REFERENCE / relative)
    scene = scene_from_item(item, base_url=item_url)

    assert scene.scene_id == want["id"]
    assert scene.collection == want["collection"]
    assert scene.mgrs_square == want["square"]
    assert scene.epsg == want["epsg"]
    assert scene.cloud_cover == pytest.approx(want["cloud"])
    assert scene.datetime == dt.datetime.fromisoformat(want["when"])
    assert scene.datetime.tzinfo is not None and scene.datetime.utcoffset() == dt.timedelta(0)
    assert scene.acquisition_date == dt.datetime.fromisoformat(want["when"]).date()
    assert scene.processing_baseline == want["baseline"]
    assert scene.platform == want["platform"]
    assert scene.footprint.equals(shape(item["geometry"]))

    assert set(scene.assets) == set(ALL_KEYS)
    for name, asset in scene.assets.items():
        assert asset.resolution_m == RESOLUTION[name], name
        assert asset.nodata == 0, name
        assert "://" in asset.href and not asset.href.endswith(("-jp2", "TCI.tif")), asset.href
        if name == "SCL":
            assert (asset.scale, asset.offset) == (1.0, 0.0)
            assert "SCL" in asset.href and "_60m" not in asset.href
            continue
        assert asset.scale == pytest.approx(1e-4), name
        assert asset.offset == pytest.approx(want["offset"]), name
        # where the offset comes from, checked against the item itself
        source_key = next(k for k, a in item["assets"].items() if a["href"].endswith(
            asset.href.rsplit("/", 1)[-1]) and not k.endswith("-jp2"))
        entry = _band_entry(item["assets"][source_key])
        if want["source"] == "raster:bands":
            assert entry is not None
            assert (asset.scale, asset.offset) == (entry["scale"], entry["offset"])
        elif want["source"] == "baseline":
            assert entry is None or "scale" not in entry
            assert asset.offset == s2bands.reflectance_offset(want["baseline"])
        else:
            assert item["properties"]["earthsearch:boa_offset_applied"] is True
            assert entry is not None and entry["offset"] == -0.1

    if "stactools" in relative:  # relative hrefs resolved against the item's URL
        folder = item_url.rsplit("/", 1)[0]
        assert all(a.href.startswith(folder + "/") for a in scene.assets.values())
        assert all("_20m." not in a.href or RESOLUTION[n] == 20 for n, a in scene.assets.items())
    summary = scene.to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["assets"]["B02"]["href"] == scene.assets["B02"].href


def test_pystac_item_with_relative_hrefs_uses_its_self_href() -> None:
    relative = "stactools_sentinel2/S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE/expected_output.json"
    path = shared_path("reference", "stac_items", *relative.split("/"))
    scene = scene_from_item(pystac.Item.from_file(str(path)))
    assert scene.assets["B02"].href == as_url(
        path.parent / "GRANULE/L2A_T33XWJ_A026649_20220413T150756/IMG_DATA/R10m/T33XWJ_20220413T150759_B02_10m.tif")


@pytest.fixture
def c1_item() -> dict[str, Any]:
    return _load("earth_search_v1/S2B_T24MUV_20250731T130245_L2A.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: i["assets"].pop("scl"), r"'S2B_T24MUV_20250731T130245_L2A'.*SCL"),
        (lambda i: i["assets"].pop("nir08"), r"'S2B_T24MUV_20250731T130245_L2A'.*B8A"),
        (lambda i: [i["assets"].pop(k) for k in ("coastal", "swir22")],
         r"'S2B_T24MUV_20250731T130245_L2A'.*B01, B12"),
        (lambda i: i["properties"].update(datetime=None), r"'S2B_T24MUV_20250731T130245_L2A'.*datetime"),
        (lambda i: i["properties"].pop("datetime"), r"'S2B_T24MUV_20250731T130245_L2A'.*datetime"),
        (lambda i: i["properties"].update(datetime="last tuesday"), r"T130245_L2A'.*datetime"),
        (lambda i: i.update(geometry=None), r"'S2B_T24MUV_20250731T130245_L2A'.*geometry"),
        (lambda i: (i["assets"]["blue"].update(href="./B02.tif"), i.update(links=[])),
         r"T130245_L2A'.*'blue'.*relative"),
    ],
    ids=["no-scl", "no-b8a", "no-b01-b12", "null-datetime", "no-datetime", "bad-datetime",
         "no-geometry", "relative-href-without-base"],
)
def test_bad_items_raise_scene_error(c1_item: dict[str, Any], change: Any, message: str) -> None:
    change(c1_item)
    with pytest.raises(SceneError, match=message):
        scene_from_item(c1_item)


def test_jp2_duplicates_are_ignored_and_cogs_preferred() -> None:
    item = _load("earth_search_v1/S2B_24MUV_20250731_0_L2A.json")
    scene = scene_from_item(item)
    assert all(a.href.endswith(".tif") for a in scene.assets.values())
    # With only the JP2 copy of a band left, the band is missing: "-jp2" keys are never used.
    del item["assets"]["red"]
    with pytest.raises(SceneError, match="B04"):
        scene_from_item(item)


def test_bands_found_by_eo_bands_name(c1_item: dict[str, Any]) -> None:
    renamed = {f"band_{k}": v for k, v in c1_item["assets"].items() if k != "scl"}
    renamed["SCL"] = c1_item["assets"]["scl"]
    c1_item["assets"] = renamed
    scene = scene_from_item(c1_item)
    assert scene.assets["B8A"].href.endswith("/B8A.tif")
    assert scene.assets["B02"].href.endswith("/B02.tif")  # not the 3-band "visual"


def test_scale_and_offset_by_baseline_without_raster_bands(c1_item: dict[str, Any]) -> None:
    for asset in c1_item["assets"].values():
        asset.pop("raster:bands", None)
    del c1_item["properties"]["s2:processing_baseline"]  # parsed from s2:product_uri (_N0511_)
    scene = scene_from_item(c1_item)
    assert scene.processing_baseline == "05.11"
    assert {(a.scale, a.offset) for n, a in scene.assets.items() if n != "SCL"} == {(1e-4, -0.1)}
    assert scene.assets["SCL"].resolution_m == 20  # from gsd

    c1_item["properties"]["s2:product_uri"] = "S2B_MSIL2A_20211231T130249_N0301_R095_T24MUV_20211231T132745.SAFE"
    for key in ("s2:tile_id", "s2:datatake_id", "s2:datastrip_id"):
        c1_item["properties"].pop(key)
    scene = scene_from_item(c1_item)
    assert scene.processing_baseline == "03.01"
    assert {a.offset for a in scene.assets.values()} == {0.0}

    c1_item["properties"]["s2:product_uri"] = "S2B_MSIL2A_20220131T130249_N0400_R095_T24MUV_20220131T132745.SAFE"
    assert scene_from_item(c1_item).processing_baseline == "04.00"
    c1_item["properties"].pop("s2:product_uri")
    c1_item["id"] = "S2B_MSIL2A_20220131T130249_N0400_R095_T24MUV_20220131T132745"
    scene = scene_from_item(c1_item)
    assert scene.processing_baseline == "04.00"
    assert scene.assets["B01"].offset == -0.1


def test_crs_and_square_fallbacks(c1_item: dict[str, Any]) -> None:
    props = c1_item["properties"]
    props["proj:code"] = f"EPSG:{props.pop('proj:epsg')}"
    assert scene_from_item(c1_item).epsg == 32724
    del props["proj:code"]  # from mgrs:utm_zone + latitude band M (south)
    assert scene_from_item(c1_item).epsg == 32724
    del props["grid:code"]
    assert scene_from_item(c1_item).mgrs_square == "24MUV"  # from mgrs:*
    for key in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"):
        del props[key]
    scene = scene_from_item(c1_item)  # from s2:product_uri / the id
    assert (scene.mgrs_square, scene.epsg) == ("24MUV", 32724)


def test_resolve_href() -> None:
    assert resolve_href("file:///data/cat/c1/x/x.json", "./blue.tif") == "file:///data/cat/c1/x/blue.tif"
    assert resolve_href("file:///data/cat/catalog.json", "./c1/collection.json") == "file:///data/cat/c1/collection.json"
    assert resolve_href("file:///data/cat/c1/collection.json", "../catalog.json") == "file:///data/cat/catalog.json"
    assert resolve_href("s3://bucket/root/c1/x/x.json", "./blue.tif") == "s3://bucket/root/c1/x/blue.tif"
    assert resolve_href("s3://bucket/root/c1/collection.json", "../../../catalog.json") == "s3://bucket/catalog.json"
    assert resolve_href("https://host/a/b/item.json", "../B02.tif") == "https://host/a/B02.tif"
    assert resolve_href("s3://bucket/a.json", "https://x/y.tif") == "https://x/y.tif"


# ---- StacApiSource on a real STAC API --------------------------------------------------------

WINDOW = (dt.datetime(2022, 10, 1, tzinfo=UTC), dt.datetime(2023, 4, 1, tzinfo=UTC))


def _when(item: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))


def _square(item: dict[str, Any]) -> str:
    return item["properties"]["grid:code"].removeprefix("MGRS-")


def expected(world: StacWorld, footprint: BaseGeometry, start: dt.datetime, end: dt.datetime,
             max_cloud: float, *, server_query: bool = False) -> list[str]:
    """What the ATBD asks for, computed from the served items: Collection-1 scenes, plus
    sentinel-2-l2a scenes for (square, date) pairs Collection-1 lacks."""
    def keep(item: dict[str, Any]) -> bool:
        cloud = item["properties"].get("eo:cloud_cover")
        if server_query and cloud is None:
            return False
        return (start <= _when(item) < end and item["id"] not in world.unusable
                and footprint.intersects(shape(item["geometry"]))
                and (cloud is None or cloud < max_cloud))

    c1 = [i for i in world.items[C1] if keep(i)]
    pairs = {(_square(i), _when(i).date()) for i in c1}
    fallback = [i for i in world.items[L2A] if keep(i) and (_square(i), _when(i).date()) not in pairs]
    return [i["id"] for i in sorted(c1 + fallback, key=lambda i: (_when(i), i["id"]))]


def _both_squares(world: StacWorld) -> BaseGeometry:
    return unary_union([shape(i["geometry"]) for i in world.items[C1]])


def _source(api: ApiProxy, **kwargs: Any) -> StacApiSource:
    kwargs.setdefault("backoff_s", 0.01)
    return StacApiSource(api.url, C1, L2A, **kwargs)


def test_fallback_adds_exactly_the_pairs_collection1_lacks(stac_world: StacWorld, stac_api: ApiProxy) -> None:
    aoi = _both_squares(stac_world)
    scenes = _source(stac_api).search(aoi, *WINDOW, 100.0)
    ids = [s.scene_id for s in scenes]
    assert ids == expected(stac_world, aoi, *WINDOW, 100.0)
    assert ids == sorted(ids, key=lambda i: next((s.datetime, s.scene_id) for s in scenes if s.scene_id == i))

    by_collection = {C1: [s for s in scenes if s.collection == C1], L2A: [s for s in scenes if s.collection == L2A]}
    assert len(by_collection[C1]) == len(stac_world.items[C1]) - len(stac_world.unusable)
    # one scene per (square, date): the duplicates in sentinel-2-l2a were not added
    pairs = [(s.mgrs_square, s.acquisition_date) for s in scenes]
    assert len(pairs) == len(set(pairs))
    c1_pairs = {(s.mgrs_square, s.acquisition_date) for s in by_collection[C1]}
    assert not {(s.mgrs_square, s.acquisition_date) for s in by_collection[L2A]} & c1_pairs
    # the fallback filled: Oct-Dec 2022 (both squares), the C1 gap (i=13) and the unusable C1 item
    added = {(s.mgrs_square, s.acquisition_date.isoformat()) for s in by_collection[L2A]}
    oct_dec = {p for p in added if p[1] < "2023-01-01"}
    assert len(oct_dec) == 2 * 9  # 10-day revisit from 3 Oct / 8 Oct
    assert added - oct_dec == {("24MUV", "2023-02-10"), ("20EPT", "2023-02-15"),  # C1 gaps
                               ("24MUV", "2023-01-11")}  # the C1 item without SCL
    assert all(s.processing_baseline == "04.00" for s in by_collection[L2A] if s.datetime.year == 2022)
    assert {s.mgrs_square for s in scenes} == {"24MUV", "20EPT"}


def test_paging(stac_world: StacWorld, stac_api: ApiProxy) -> None:
    aoi = _both_squares(stac_world)
    reference = [s.scene_id for s in _source(stac_api, page_size=100).search(aoi, *WINDOW, 100.0)]
    assert len(stac_api.searches()) == 2  # one page per collection
    stac_api.reset()
    paged = _source(stac_api, page_size=4).search(aoi, *WINDOW, 100.0)
    assert [s.scene_id for s in paged] == reference
    n_c1 = sum(1 for i in stac_world.items[C1])
    n_l2a = sum(1 for i in stac_world.items[L2A] if WINDOW[0] <= _when(i) < WINDOW[1]
                and aoi.intersects(shape(i["geometry"])))
    assert len(stac_api.searches()) >= math.ceil(n_c1 / 4) + math.ceil(n_l2a / 4)
    bodies = [body for method, _, body in stac_api.searches()]
    assert all(method == "POST" for method, _, _ in stac_api.searches())
    assert all(b["limit"] == 4 and b["collections"] in ([C1], [L2A]) and "intersects" in b for b in bodies)


def test_cloud_cover_filter_client_side(stac_world: StacWorld, stac_api: ApiProxy,
                                        caplog: pytest.LogCaptureFixture) -> None:
    aoi = _both_squares(stac_world)
    threshold = 37.25  # exactly the cloud cover of some scenes: those are excluded (<, not <=)
    assert any(i["properties"].get("eo:cloud_cover") == threshold for i in stac_world.all_items())
    with caplog.at_level(logging.WARNING, logger="clcplus_ops.sentinel2.scenes"):
        scenes = _source(stac_api).search(aoi, *WINDOW, threshold)
    assert [s.scene_id for s in scenes] == expected(stac_world, aoi, *WINDOW, threshold)
    assert all(s.cloud_cover is None or s.cloud_cover < threshold for s in scenes)
    no_cloud = [s for s in scenes if s.cloud_cover is None]
    assert len(no_cloud) == 1
    assert any(no_cloud[0].scene_id in r.message and "no cloud cover" in r.message for r in caplog.records)
    # the unusable C1 item (no SCL) was skipped with a warning naming it
    (bad,) = stac_world.unusable
    assert any(bad in r.message and "SCL" in r.message for r in caplog.records)
    # rustac does not implement the query extension: no query was sent
    assert all("query" not in body for _, _, body in stac_api.searches())


def test_cloud_cover_filter_server_side_with_query_extension(stac_world: StacWorld, stac_api: ApiProxy) -> None:
    stac_api.query_extension = True
    aoi = _both_squares(stac_world)
    scenes = _source(stac_api, page_size=5).search(aoi, *WINDOW, 50.0)
    bodies = [body for _, _, body in stac_api.searches()]
    assert bodies and all(b["query"] == {"eo:cloud_cover": {"lt": 50.0}} for b in bodies)
    # the server drops the item without cloud cover, as stac-server does
    assert [s.scene_id for s in scenes] == expected(stac_world, aoi, *WINDOW, 50.0, server_query=True)
    stac_api.reset()
    stac_api.query_extension = True
    _source(stac_api).search(aoi, *WINDOW, 100.0)  # no limit, no query
    assert all("query" not in body for _, _, body in stac_api.searches())


def test_window_end_is_exclusive(stac_world: StacWorld, stac_api: ApiProxy) -> None:
    aoi = _both_squares(stac_world)
    item = sorted(stac_world.items[C1], key=_when)[5]
    t = _when(item)
    source = _source(stac_api)
    before = source.search(aoi, WINDOW[0], t, 100.0)
    assert item["id"] not in [s.scene_id for s in before]
    assert [s.scene_id for s in before] == expected(stac_world, aoi, WINDOW[0], t, 100.0)
    until = source.search(aoi, WINDOW[0], t + dt.timedelta(milliseconds=1), 100.0)
    assert until[-1].scene_id == item["id"]
    from_t = source.search(aoi, t, WINDOW[1], 100.0)
    assert from_t[0].scene_id == item["id"]
    # naive datetimes are UTC
    naive = source.search(aoi, WINDOW[0].replace(tzinfo=None), t.replace(tzinfo=None), 100.0)
    assert [s.scene_id for s in naive] == [s.scene_id for s in before]


def test_footprint_filter(stac_world: StacWorld, stac_api: ApiProxy) -> None:
    aoi = stac_world.west_aoi
    scenes = _source(stac_api).search(aoi, *WINDOW, 100.0)
    assert [s.scene_id for s in scenes] == expected(stac_world, aoi, *WINDOW, 100.0)
    assert scenes and {s.mgrs_square for s in scenes} == {"24MUV"}
    partial = {i["id"] for i in stac_world.all_items() if not aoi.intersects(shape(i["geometry"]))
               and _square(i) == "24MUV"}
    assert partial and not partial & {s.scene_id for s in scenes}
    assert all(s.footprint.intersects(aoi) for s in scenes)
    # nowhere near any item
    assert _source(stac_api).search(box(10, 45, 10.1, 45.1), *WINDOW, 100.0) == []
    with pytest.raises(ValueError, match="EPSG:4326"):
        _source(stac_api).search(box(4_000_000, 3_000_000, 4_010_000, 3_010_000), *WINDOW, 100.0)


def test_search_is_deterministic(stac_world: StacWorld, stac_api: ApiProxy) -> None:
    aoi = _both_squares(stac_world)
    source = _source(stac_api, page_size=7)
    first = source.search(aoi, *WINDOW, 80.0)
    assert source.search(aoi, *WINDOW, 80.0) == first
    assert [s.to_dict() for s in _source(stac_api).search(aoi, *WINDOW, 80.0)] == [s.to_dict() for s in first]


@pytest.mark.parametrize("status", [503, 429, 502])
def test_transient_errors_are_retried(stac_world: StacWorld, stac_api: ApiProxy, status: int) -> None:
    aoi = stac_world.west_aoi
    reference = [s.scene_id for s in _source(stac_api).search(aoi, *WINDOW, 100.0)]
    stac_api.reset()
    stac_api.fail_next(2, status)  # the landing page fails twice, then works
    source = _source(stac_api, retries=3)
    assert [s.scene_id for s in source.search(aoi, *WINDOW, 100.0)] == reference
    assert stac_api.requests[0][1] == stac_api.requests[2][1] == "/"
    stac_api.fail_next(1, status)  # a search page fails once
    assert [s.scene_id for s in source.search(aoi, *WINDOW, 100.0)] == reference


def test_persistent_and_non_transient_errors_name_the_api(stac_world: StacWorld, stac_api: ApiProxy) -> None:
    aoi = stac_world.west_aoi
    stac_api.fail_next(10, 503)
    with pytest.raises(SceneSourceError, match=rf"STAC API {stac_api.url}.*503"):
        _source(stac_api, retries=2).search(aoi, *WINDOW, 100.0)
    assert len(stac_api.requests) == 3  # the first try and 2 retries
    stac_api.reset()

    source = _source(stac_api, retries=3)
    source.search(aoi, *WINDOW, 100.0)  # opened
    stac_api.reset()
    stac_api.fail_next(1, 400)
    with pytest.raises(SceneSourceError, match=rf"STAC API {stac_api.url}.*{C1}.*400"):
        source.search(aoi, *WINDOW, 100.0)
    assert len(stac_api.requests) == 1  # not retried

    with pytest.raises(SceneSourceError, match=rf"STAC API {stac_api.url}/nowhere.*landing page"):
        StacApiSource(stac_api.url + "/nowhere", retries=1, backoff_s=0.01).search(aoi, *WINDOW, 100.0)


def test_unreachable_api_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    source = StacApiSource(url, retries=2, backoff_s=0.01, timeout_s=2)
    with pytest.raises(SceneSourceError, match=rf"STAC API {url}\b"):
        source.search(box(10, 45, 11, 46), *WINDOW, 80.0)


def test_api_describe() -> None:
    source = StacApiSource("https://earth-search.aws.element84.com/v1")
    assert isinstance(source, SceneSource)
    assert source.describe() == (
        "STAC API https://earth-search.aws.element84.com/v1 collection sentinel-2-c1-l2a "
        "(fallback sentinel-2-l2a)")
    assert StacApiSource("https://x/v1", "c", None).describe() == "STAC API https://x/v1 collection c"


# ---- StaticCatalogSource ---------------------------------------------------------------------


def write_catalog(store: Store, root: str, items: list[dict[str, Any]]) -> str:
    """The synthetic world's layout: catalog.json -> collection.json -> {id}/{id}.json, with
    asset hrefs "./{asset_key}.tif"; returns the catalog URL."""
    catalog = {
        "type": "Catalog", "stac_version": "1.0.0", "id": "test-world", "description": "test",
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                  {"rel": "child", "href": f"./{C1}/collection.json", "type": "application/json"}],
    }
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": C1, "description": "test",
        "license": "proprietary",
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                   "temporal": {"interval": [["2022-10-01T00:00:00Z", None]]}},
        "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
                 + [{"rel": "item", "href": f"./{i['id']}/{i['id']}.json"} for i in items],
    }
    store.write_json(join(root, "catalog.json"), catalog)
    store.write_json(join(root, C1, "collection.json"), collection)
    for item in items:
        item = copy.deepcopy(item)
        for key, asset in item["assets"].items():
            asset["href"] = f"./{key}.tif"
        item["links"] = [{"rel": "collection", "href": "../collection.json"},
                         {"rel": "parent", "href": "../collection.json"},
                         {"rel": "root", "href": "../../catalog.json"}]
        store.write_json(join(root, C1, item["id"], f"{item['id']}.json"), item)
    return join(root, "catalog.json")


@pytest.fixture
def catalog_items() -> list[dict[str, Any]]:
    base = _load("earth_search_v1/S2B_T24MUV_20250731T130245_L2A.json")
    full = shape(base["geometry"])
    xmin, ymin, xmax, ymax = full.bounds
    east = full.intersection(box((xmin + xmax) / 2, ymin, xmax, ymax))
    items = []
    for i in range(8):
        when = dt.datetime(2023, 1, 3, 13, 3, 27, tzinfo=UTC) + dt.timedelta(days=5 * i)
        item = derive_item(base, collection=C1, when=when, cloud_cover=None if i == 6 else 12.5 * i,
                           footprint=east if i % 4 == 3 else full,
                           drop_assets=("scl",) if i == 5 else ())
        if i == 2:
            del item["collection"]  # taken from the parent collection
        items.append(item)
    return items


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, str]:
    if request.param == "file":
        return Store(), as_url(tmp_path / "world")
    endpoint = request.getfixturevalue("s3_server")
    return Store(S3Settings(endpoint_url=endpoint)), request.getfixturevalue("s3_bucket")


def test_static_catalog(backend: tuple[Store, str], catalog_items: list[dict[str, Any]],
                        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    store, root = backend
    url = write_catalog(store, root, catalog_items)
    source = StaticCatalogSource(url, store)
    assert isinstance(source, SceneSource)
    assert source.describe() == f"static catalogue {url}"
    full = shape(catalog_items[0]["geometry"])
    xmin, ymin, xmax, ymax = full.bounds
    west = full.intersection(box(xmin, ymin, xmin + 0.3 * (xmax - xmin), ymax)).representative_point().buffer(0.005)
    start, end = dt.datetime(2023, 1, 1, tzinfo=UTC), dt.datetime(2023, 2, 15, tzinfo=UTC)
    ids = [i["id"] for i in catalog_items]

    with caplog.at_level(logging.WARNING, logger="clcplus_ops.sentinel2.scenes"):
        scenes = source.search(full, start, end, 100.0)
    # item 5 has no SCL (skipped, with a warning naming it); everything else in time order
    assert [s.scene_id for s in scenes] == [ids[i] for i in (0, 1, 2, 3, 4, 6, 7)]
    assert any(ids[5] in r.message and "SCL" in r.message for r in caplog.records)
    assert {s.collection for s in scenes} == {C1}
    first = scenes[0]
    item_url = join(root, C1, ids[0], f"{ids[0]}.json")
    assert first.assets["B02"].href == join(root, C1, ids[0], "blue.tif")
    assert first.assets["SCL"].href == join(root, C1, ids[0], "scl.tif")
    assert first.assets["B02"].href == resolve_href(item_url, "./blue.tif")
    assert (first.assets["B02"].scale, first.assets["B02"].offset) == (1e-4, -0.1)

    # read once: later searches do not touch the store
    monkeypatch.setattr(store, "read_json", lambda url: pytest.fail(f"read again: {url}"))
    assert [s.scene_id for s in source.search(west, start, end, 100.0)] == [ids[i] for i in (0, 1, 2, 4, 6)]
    cloudy = source.search(full, start, end, 37.5)  # 0, 12.5, 25 and the one without cloud cover
    assert [s.scene_id for s in cloudy] == [ids[i] for i in (0, 1, 2, 6)]
    end_exclusive = source.search(full, start, scenes[3].datetime, 100.0)
    assert [s.scene_id for s in end_exclusive] == [ids[i] for i in (0, 1, 2)]
    assert source.search(box(10, 45, 11, 46), start, end, 100.0) == []


def test_static_catalog_missing(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "nothing", "catalog.json")
    with pytest.raises(SceneSourceError, match=rf"static catalogue {url}.*does not exist"):
        StaticCatalogSource(url, store).search(box(10, 45, 11, 46), *WINDOW, 80.0)


def test_scene_source_from_config() -> None:
    store = Store()
    config = parse_config({"sentinel2": {"static_catalog": "s3://bucket/world/{year}/catalog.json"}})
    source = scene_source(config, 2023, store)
    assert isinstance(source, StaticCatalogSource)
    assert source.catalog_url == "s3://bucket/world/2023/catalog.json"
    assert source.store is store
    api = scene_source(parse_config({}), 2023, store)
    assert isinstance(api, StacApiSource)
    assert (api.url, api.collection, api.fallback_collection) == (
        "https://earth-search.aws.element84.com/v1", "sentinel-2-c1-l2a", "sentinel-2-l2a")
