"""The synthetic Sentinel-2 world (``clcplus_ops.synthetic``) on small worlds: its ground truth,
COGs, STAC items shaped like Earth Search's, the clear-observation counts, samples,
determinism, idempotence and the coastline."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from clcplus_ops.config import parse_config
from clcplus_ops.sentinel2.bands import BANDS
from clcplus_ops.store import S3Settings, Store, as_url
from clcplus_ops.synthetic import build_world, noise, phenology, resolve_area, spectra
from clcplus_ops.synthetic.acquisitions import acquisitions, platform_for
from clcplus_ops.synthetic.granules import granules_for
from clcplus_ops.synthetic.grid import WorldGrid
from clcplus_ops.synthetic.landscape import build_landscape
from clcplus_ops.synthetic.render import CALIBRATION_SD, NOISE_ABS, NOISE_REL
from clcplus_ops.locations import synthetic_world

from conftest import shared_path

# pystac warns when it migrates the storage extension of items (Earth Search's real ones too).
# NaNs or overflows in the world's arithmetic are errors.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*migrated:UserWarning"),
    pytest.mark.filterwarnings("error::RuntimeWarning"),
]

YEAR = 2025
INLAND = [390000, 5040000, 390640, 5040640]  # land, one granule (33TUL)
ACROSS = [399680, 5040000, 400320, 5040640]  # land, in both 33TUL and 33TVL (x >= 400000)
COAST = [389000, 5041100, 389640, 5041740]  # Piran peninsula's coast (Natural Earth)
REAL_ITEM = ("reference", "stac_items", "earth_search_v1", "S2B_T24MUV_20250731T130245_L2A.json")


# A 13-month window (Dec Y-1 .. Jan Y+1) for the worlds that need fewer dates.
SHORT_WINDOW = {"window_start_month": 12, "window_end_month": 1, "n_steps": 36}


def _config(root: Path, bounds: list[int], short: bool = False, **synthetic) -> object:
    data = {"synthetic": {"root": as_url(root), "bounds": bounds, "epsg": 32633, **synthetic}}
    if short:
        data["time_series"] = SHORT_WINDOW
    return parse_config(data)


def _path(url: str) -> Path:
    assert url.startswith("file://")
    return Path(url[len("file://"):])


def _read(url_or_path) -> tuple[np.ndarray, rasterio.Affine]:
    path = _path(url_or_path) if isinstance(url_or_path, str) else url_or_path
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform


def _items(base: Path) -> list[pystac.Item]:
    catalog = pystac.Catalog.from_file(str(base / "catalog.json"))
    return sorted(catalog.get_items(recursive=True), key=lambda i: i.id)


def _tree_hashes(base: Path) -> dict[str, str]:
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*")) if p.is_file() and p.name != "world.json"
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A 640 m world (64 x 64 px) over the full window with the default revisit."""
    root = tmp_path_factory.mktemp("synthetic")
    config = _config(root, INLAND, n_samples=300)
    record = build_world(config, YEAR)
    return config, record, root / str(YEAR)


@pytest.fixture(scope="module")
def across(tmp_path_factory: pytest.TempPathFactory):
    """A world on the 33TUL/33TVL overlap, built twice in two roots (30-day revisit)."""
    roots = [tmp_path_factory.mktemp("across_a"), tmp_path_factory.mktemp("across_b")]
    configs = [_config(r, ACROSS, short=True, n_samples=100, revisit_days=30, seed=7) for r in roots]
    records = [build_world(c, YEAR) for c in configs]
    return configs, records, [r / str(YEAR) for r in roots]


# ------------------------------------------------------------------------------ the area


def test_default_area_is_the_demo_tiles_with_halo() -> None:
    grid = resolve_area(parse_config({}))
    assert grid.epsg == 32633
    assert grid.bounds == (387420, 5037420, 402580, 5047580)
    assert [g.square_id for g in granules_for(grid)] == ["33TUL", "33TVL"]
    tvl = granules_for(grid)[1]
    assert tvl.bounds[0] == 400000 and (tvl.bounds[2] - 400000) % 60 == 0


def test_bounds_snap_outward_to_20_m(tmp_path: Path) -> None:
    grid = resolve_area(_config(tmp_path, [390005.5, 5040011, 390630, 5040639]))
    assert grid.bounds == (390000, 5040000, 390640, 5040640)


def test_world_grids_are_grids_aligned_with_the_granules_and_the_tiles() -> None:
    """The world's arrays, windows and COGs are :class:`Grid` grids: the 10 and 20 m grids nest,
    a granule's window is its Grid's window in the arrays, and the demo tiles' grids (with halo)
    lie on the world's 10 m grid."""
    from clcplus_ops.geo.grid import Grid
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.tiles import tiles_for_pu

    config = parse_config({})
    world = resolve_area(config)
    arrays10, arrays20 = world.array_grid(10), world.array_grid(20)
    assert arrays10.shape == world.shape(10) == (2 * arrays20.height, 2 * arrays20.width)
    assert arrays10.bounds == arrays20.bounds == world.inner_bounds
    rows, cols = world.world_window(10)
    assert (rows.stop - rows.start, cols.stop - cols.start) == world.world_grid(10).shape == world.world_shape(10)
    for granule in granules_for(world):
        for res in (10, 20):
            expected = Grid.from_bounds(world.epsg, granule.bounds, res).window_in(world.array_grid(res)).toslices()
            assert world.window(granule.bounds, res) == expected
    grid = config.for_layout("demo").grid
    tiles = [t for pu in load_layout(config.layout_path("demo")).values()
             for t in tiles_for_pu(pu, grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m)]
    for tile in tiles:
        assert world.world_grid(10).contains(tile.grid(grid.halo_px))
    with pytest.raises(ValueError, match="not on the 20 m grid"):
        world.window((390010, 5040000, 390640, 5040640), 20)
    with pytest.raises(ValueError, match="leaves the world"):
        world.window((380000, 5040000, 390640, 5040640), 20)


def test_platforms_alternate_and_s2c_replaces_s2a() -> None:
    acqs = acquisitions(dt.date(2024, 10, 1), dt.date(2026, 4, 1), 5)
    assert 105 <= len(acqs) <= 112
    assert all(b.date - a.date == dt.timedelta(days=5) for a, b in zip(acqs, acqs[1:]))
    assert all(a.platform != b.platform for a, b in zip(acqs, acqs[1:]))
    assert {a.platform for a in acqs if a.date < dt.date(2025, 1, 21)} == {"sentinel-2a", "sentinel-2b"}
    assert {a.platform for a in acqs if a.date >= dt.date(2025, 1, 21)} == {"sentinel-2b", "sentinel-2c"}
    assert all(9 <= a.datetime.hour <= 10 and a.datetime.tzinfo for a in acqs)
    assert platform_for(dt.date(2016, 1, 1) + dt.timedelta(days=5)) in (None, "sentinel-2a")


# ----------------------------------------------------------------------- the ground truth


def test_all_classes_present_with_enough_pixels(world) -> None:
    _, record, base = world
    truth, transform = _read(record["truth_url"])
    assert truth.dtype == np.uint8 and truth.shape == (64, 64)
    assert (transform.c, transform.f, transform.a) == (390000, 5040640, 10)
    counts = np.bincount(truth.ravel(), minlength=12)
    assert counts[0] == 0 and set(np.flatnonzero(counts)) == set(range(1, 12))
    assert counts[1:].min() >= 0.02 * truth.size, counts
    frequencies = json.loads((base / "world.json").read_text())["class_frequencies"]
    assert {int(c): f["pixels"] for c, f in frequencies.items()} == {c: int(counts[c]) for c in range(1, 12)}


def test_coastline_gives_sea(tmp_path: Path) -> None:
    record = build_world(_config(tmp_path, COAST, short=True, n_samples=50, revisit_days=30), YEAR)
    truth, _ = _read(record["truth_url"])
    grid = WorldGrid(tuple(COAST), 32633)
    land = build_landscape(grid, 0)
    land_mask = land.world(land.land)
    assert 0.1 < land_mask.mean() < 0.9  # both land and sea
    assert (truth[~land_mask] == 10).all()
    # Natural Earth's coast runs SW-NE here: the sea is in the north-west corner.
    assert truth[0, 0] == 10 and land_mask[-1, -1]
    # The SCL calls the clear sea water.
    item = next(i for i in _items(tmp_path / str(YEAR)) if i.properties["eo:cloud_cover"] < 1
                and i.properties["s2:cloud_shadow_percentage"] == 0)
    scl, _ = _read(_path(as_url(tmp_path / str(YEAR) / "sentinel-2-c1-l2a" / item.id / "scl.tif")))
    assert scl[0, 0] == 6


# --------------------------------------------------------------------------- the rasters


def test_cogs_validate(world) -> None:
    _, record, base = world
    item = _items(base)[len(_items(base)) // 2]
    item_dir = base / "sentinel-2-c1-l2a" / item.id
    paths = [item_dir / f"{key}.tif" for key in item.assets]
    paths += [_path(record["truth_url"]), _path(record["clear_count_url"])]
    assert len(paths) == 15
    for path in paths:
        valid, errors, _ = cog_validate(str(path), quiet=True)
        assert valid and not errors, (path, errors)


def test_assets_have_native_resolution_and_encoding(world) -> None:
    _, _, base = world
    item = _items(base)[0]
    for key, asset in item.assets.items():
        with rasterio.open(base / "sentinel-2-c1-l2a" / item.id / f"{key}.tif") as ds:
            band = next((b for b in BANDS.values() if b.asset_key == key), None)
            res = band.resolution_m if band else 20
            assert ds.res == (res, res) and ds.crs.to_epsg() == 32633
            assert ds.dtypes[0] == ("uint16" if band else "uint8") and ds.nodata == 0
            assert list(ds.shape) == asset.extra_fields["proj:shape"]
            assert list(ds.transform)[:6] == asset.extra_fields["proj:transform"]
            assert ds.profile["compress"].lower() == "deflate"
            data = ds.read(1)
            assert data.min() >= 1  # no no-data inside the item
        expected = "1220" + hashlib.sha256((base / "sentinel-2-c1-l2a" / item.id / f"{key}.tif").read_bytes()).hexdigest()
        assert asset.extra_fields["file:checksum"] == expected


# ------------------------------------------------------------------------------ the STAC


def test_catalogue_layout_and_links(world) -> None:
    _, record, base = world
    catalog = json.loads((base / "catalog.json").read_text())
    assert catalog["id"] == f"clcplus-synthetic-{YEAR}" and catalog["type"] == "Catalog"
    assert [link["href"] for link in catalog["links"] if link["rel"] == "child"] == ["./sentinel-2-c1-l2a/collection.json"]
    collection = pystac.Collection.from_file(str(base / "sentinel-2-c1-l2a" / "collection.json"))
    assert collection.id == "sentinel-2-c1-l2a"
    raw_collection = json.loads((base / "sentinel-2-c1-l2a" / "collection.json").read_text())
    links = [link["href"] for link in raw_collection["links"] if link["rel"] == "item"]
    items = _items(base)
    assert len(items) == record["items"] == len(links) == 110
    assert sorted(links) == sorted(f"./{i.id}/{i.id}.json" for i in items)
    for item in items[:3]:
        raw = json.loads((base / "sentinel-2-c1-l2a" / item.id / f"{item.id}.json").read_text())
        assert {link["rel"]: link["href"] for link in raw["links"]} == {
            "root": "../../catalog.json", "parent": "../collection.json", "collection": "../collection.json"}
        assert all(a["href"] == f"./{k}.tif" for k, a in raw["assets"].items())
        assert pystac.Item.from_dict(raw).to_dict(include_self_link=False, transform_hrefs=False)["id"] == item.id
        assert item.id.startswith(("S2A_T33TUL_", "S2B_T33TUL_", "S2C_T33TUL_")) and item.id.endswith("_L2A")
    x0, y0, x1, y1 = collection.extent.spatial.bboxes[0]
    assert all(x0 <= i.bbox[0] < i.bbox[2] <= x1 and y0 <= i.bbox[1] < i.bbox[3] <= y1 for i in items)
    start, end = collection.extent.temporal.intervals[0]
    assert start == min(i.datetime for i in items) and end == max(i.datetime for i in items)


def test_items_are_shaped_like_earth_search(world) -> None:
    real = json.loads(shared_path(*REAL_ITEM).read_text())
    _, _, base = world
    raw = json.loads(next((base / "sentinel-2-c1-l2a").glob("*/S2*_L2A.json")).read_text())
    assert set(raw["properties"]) == set(real["properties"])
    assert raw["stac_extensions"] == real["stac_extensions"]
    assert raw["collection"] == real["collection"]
    expected_keys = {b.asset_key for b in BANDS.values()} | {"scl"}
    assert set(raw["assets"]) == expected_keys
    for key, asset in raw["assets"].items():
        model = real["assets"][key]
        assert set(asset) == set(model), key
        for field in ("type", "roles", "gsd", "eo:bands", "raster:bands", "title"):
            assert asset.get(field) == model.get(field), (key, field)
    props = raw["properties"]
    assert props["s2:processing_baseline"] == "05.11" and props["proj:epsg"] == 32633
    assert props["grid:code"] == "MGRS-33TUL" and props["mgrs:grid_square"] == "UL"
    assert props["created"].endswith("Z") and props["created"] > props["datetime"]
    shares = [v for k, v in props.items() if k.startswith("s2:") and k.endswith("_percentage")
              and k not in ("s2:nodata_pixel_percentage", "s2:degraded_msi_data_percentage")]
    assert sum(shares) == pytest.approx(100.0, abs=1e-3)


def test_cloud_cover_is_the_share_of_cloud_scl(world) -> None:
    _, _, base = world
    for item in _items(base)[::10]:
        scl, _ = _read(base / "sentinel-2-c1-l2a" / item.id / "scl.tif")
        share = 100.0 * np.isin(scl, [8, 9, 10]).mean()
        assert item.properties["eo:cloud_cover"] == pytest.approx(share, abs=1e-4)
        assert item.properties["s2:high_proba_clouds_percentage"] == pytest.approx(100.0 * (scl == 9).mean(), abs=1e-4)


# -------------------------------------------------------------------- clear observations


def _recount(config, base: Path, shape: tuple[int, int], bounds: list[int]) -> np.ndarray:
    """Clear observations per 10 m pixel, from the items alone (as the ingestion sees them)."""
    masked = list(config.sentinel2.scl_masked_classes)
    limit = config.sentinel2.max_cloud_cover_percent
    rows, cols = np.indices(shape)
    xs, ys = bounds[0] + 10 * cols + 5, bounds[3] - 10 * rows - 5
    by_date: dict[str, np.ndarray] = {}
    for item in _items(base):
        clear = by_date.setdefault(item.properties["datetime"], np.zeros(shape, bool))
        if not item.properties["eo:cloud_cover"] < limit:
            continue
        scl, t = _read(base / "sentinel-2-c1-l2a" / item.id / "scl.tif")
        r = np.floor((t.f - ys) / 20).astype(int)
        c = np.floor((xs - t.c) / 20).astype(int)
        inside = (r >= 0) & (r < scl.shape[0]) & (c >= 0) & (c < scl.shape[1])
        value = np.zeros(shape, np.uint8)
        value[inside] = scl[r[inside], c[inside]]
        clear |= inside & (value != 0) & ~np.isin(value, masked)
    return sum(by_date.values()).astype(np.uint16)


def test_clear_count_recomputed_from_the_items(world) -> None:
    config, record, base = world
    count, _ = _read(record["clear_count_url"])
    assert count.dtype == np.uint16
    assert np.array_equal(_recount(config, base, count.shape, INLAND), count)
    meta = json.loads((base / "world.json").read_text())
    above = [i for i in meta["items"] if not i["passed_cloud_limit"]]
    assert meta["counts"]["items_above_cloud_limit"] == len(above) > 0
    assert 20 < count.mean() < 110


def test_clear_count_with_two_granules(across) -> None:
    configs, records, bases = across
    count, _ = _read(records[0]["clear_count_url"])
    assert np.array_equal(_recount(configs[0], bases[0], count.shape, ACROSS), count)


# ------------------------------------------------------------------------------ granules


def test_granules_agree_where_they_overlap(across) -> None:
    _, _, bases = across
    items = _items(bases[0])
    by_date: dict[str, dict[str, pystac.Item]] = {}
    for item in items:
        by_date.setdefault(item.properties["datetime"], {})[item.properties["grid:code"]] = item
    assert all(set(v) == {"MGRS-33TUL", "MGRS-33TVL"} for v in by_date.values())
    for pair in list(by_date.values())[:4]:
        for key in ("scl", "red", "nir", "swir16", "rededge1"):
            (a, ta), (b, tb) = (
                _read(bases[0] / "sentinel-2-c1-l2a" / pair[g].id / f"{key}.tif") for g in ("MGRS-33TUL", "MGRS-33TVL"))
            res = ta.a
            x0, x1 = max(ta.c, tb.c), min(ta.c + res * a.shape[1], tb.c + res * b.shape[1])
            y1, y0 = min(ta.f, tb.f), max(ta.f - res * a.shape[0], tb.f - res * b.shape[0])
            assert x1 > x0 and y1 > y0

            def window(arr, t):
                r0, c0 = int((t.f - y1) / res), int((x0 - t.c) / res)
                return arr[r0:r0 + int((y1 - y0) / res), c0:c0 + int((x1 - x0) / res)]

            assert np.array_equal(window(a, ta), window(b, tb)), key
        tvl = pair["MGRS-33TVL"]
        assert tvl.assets["coastal"].extra_fields["proj:transform"][2] == 400000


# ---------------------------------------------------------------------------- the samples


def test_samples(world) -> None:
    config, record, base = world
    rows = list(csv.DictReader((base / "samples" / "samples.csv").open()))
    assert list(rows[0]) == ["sample_id", "x", "y", "epsg", "lon", "lat", "label", "true_label", "mislabelled"]
    assert len(rows) == 300 and len({r["sample_id"] for r in rows}) == 300
    truth, transform = _read(record["truth_url"])
    x = np.array([float(r["x"]) for r in rows])
    y = np.array([float(r["y"]) for r in rows])
    r, c = ((transform.f - y) / 10).astype(int), ((x - transform.c) / 10).astype(int)
    assert np.allclose((x - 5) % 10, 0) and np.allclose((y - 5) % 10, 0)
    true = np.array([int(row["true_label"]) for row in rows])
    label = np.array([int(row["label"]) for row in rows])
    wrong = np.array([row["mislabelled"] == "true" for row in rows])
    assert np.array_equal(truth[r, c], true)
    assert wrong.sum() == round(config.synthetic.mislabelled_fraction * 300)
    assert np.array_equal(label != true, wrong)
    per_class = np.bincount(true, minlength=12)[1:]
    assert per_class.min() >= 10, per_class  # stratified over all 11 classes
    for rr, cc in zip(r, c):  # homogeneous 3x3 neighbourhoods
        assert (truth[max(rr - 1, 0):rr + 2, max(cc - 1, 0):cc + 2] == truth[rr, cc]).all()
    geojson = json.loads((base / "samples" / "samples.geojson").read_text())
    assert len(geojson["features"]) == 300
    lon, lat = geojson["features"][0]["geometry"]["coordinates"]
    assert 13.0 < lon < 14.5 and 45.0 < lat < 46.0


# ------------------------------------------------------------------- the spectral model


def test_reflectance_round_trips_to_the_model(world) -> None:
    """Clear summer pixels: DN * 1e-4 - 0.1 equals the model's surface reflectance within
    the observation noise and the per-date calibration bias."""
    config, _, base = world
    grid = resolve_area(config)
    seed = config.synthetic.seed
    start, end = config.time_series.window(YEAR)
    acqs = acquisitions(start, end, config.synthetic.revisit_days)
    landscape = build_landscape(grid, seed)
    surface = spectra.surface_model(landscape, seed)
    states = phenology.unit_states(landscape, [a.date for a in acqs], seed)
    snow_free = phenology.snow_lines([a.date for a in acqs], seed) >= 1.0
    items = {i.datetime: i for i in _items(base)}
    checked = 0
    for acq in acqs[::2]:
        item = items[acq.datetime]
        scl, _ = _read(base / "sentinel-2-c1-l2a" / item.id / "scl.tif")
        # Surface classes only: no cloud, cirrus, shadow or dark area touches these pixels.
        clear = np.isin(scl, [4, 5, 6, 11])
        if not snow_free[acq.index] or clear.mean() < 0.3:
            continue
        clear10 = np.repeat(np.repeat(clear, 2, 0), 2, 1)
        wr, wc = grid.window(_item_bounds(item), 10)
        g = states[:, acq.index][landscape.unit[wr, wc]]
        for name in ("B03", "B04", "B08"):
            i = list(BANDS).index(name)
            model = surface.s0[i][wr, wc] + g * surface.d[i][wr, wc]
            dn, _ = _read(base / "sentinel-2-c1-l2a" / item.id / f"{BANDS[name].asset_key}.tif")
            observed = dn.astype(np.float64) * 1e-4 - 0.1
            error = (observed - model)[clear10]
            sigma = NOISE_ABS + NOISE_REL * model[clear10]
            assert np.abs(error).max() < 5.5 * sigma.max() + 4 * CALIBRATION_SD * model.max()
            assert abs(np.median(error / model[clear10])) < 4 * CALIBRATION_SD
            assert np.std(error - np.median(error)) < 3 * sigma.mean() + CALIBRATION_SD * model.max()
        checked += 1
    assert checked >= 10


def _item_bounds(item: pystac.Item) -> tuple[int, int, int, int]:
    t = item.assets["scl"].extra_fields["proj:transform"]
    h, w = item.assets["scl"].extra_fields["proj:shape"]
    return (int(t[2]), int(t[5] - 20 * h), int(t[2] + 20 * w), int(t[5]))


def test_noise_streams_are_independent() -> None:
    a = noise.stream(1, noise.CLOUDS, 738000).random(4)
    b = noise.stream(1, noise.CLOUDS, 738001).random(4)
    assert not np.allclose(a, b)
    assert np.array_equal(a, noise.stream(1, noise.CLOUDS, 738000).random(4))


# ------------------------------------------------------------ determinism and idempotence


def test_two_builds_are_byte_identical(across) -> None:
    _, records, bases = across
    first, second = _tree_hashes(bases[0]), _tree_hashes(bases[1])
    assert len(first) > 12 * 2 * 14 and first == second
    worlds = [json.loads((b / "world.json").read_text()) for b in bases]
    for w in worlds:
        w.pop("timings_s")
    assert worlds[0] == worlds[1]
    assert records[0]["fingerprint"] == records[1]["fingerprint"]


def test_rerun_is_skipped_and_force_rebuilds(world, caplog: pytest.LogCaptureFixture) -> None:
    config, record, base = world
    before = (base / "world.json").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="clcplus_ops.synthetic"):
        again = build_world(config, YEAR)
    assert again["skipped"] and again["items"] == record["items"] == 110
    assert again["fingerprint"] == record["fingerprint"]
    assert "synthetic world is current" in caplog.text
    assert (base / "world.json").stat().st_mtime_ns == before


def test_changed_config_rebuilds_and_drops_stale_items(tmp_path: Path) -> None:
    bounds = [390000, 5040000, 390320, 5040320]
    first = build_world(_config(tmp_path, bounds, short=True, n_samples=20, revisit_days=30), YEAR)
    second = build_world(_config(tmp_path, bounds, short=True, n_samples=20, revisit_days=25), YEAR)
    assert not second["skipped"] and second["fingerprint"] != first["fingerprint"]
    on_disk = {p.stem for p in (tmp_path / str(YEAR) / "sentinel-2-c1-l2a").glob("*/*_L2A.json")}
    assert on_disk == {i.id for i in _items(tmp_path / str(YEAR))}
    assert len(on_disk) == second["items"] != first["items"]
    tifs = list((tmp_path / str(YEAR) / "sentinel-2-c1-l2a").glob("*/*.tif"))
    assert len(tifs) == 13 * second["items"]
    # A world with a lost output is rebuilt although world.json is current.
    _path(second["truth_url"]).unlink()
    third = build_world(_config(tmp_path, bounds, short=True, n_samples=20, revisit_days=25), YEAR)
    assert not third["skipped"] and _path(third["truth_url"]).is_file()


def test_build_on_s3(s3_server: str, s3_bucket: str, tmp_path: Path) -> None:
    config = parse_config({
        "synthetic": {"root": s3_bucket, "bounds": [390000, 5040000, 390320, 5040320], "epsg": 32633,
                      "n_samples": 20, "revisit_days": 30},
        "store": {"s3_endpoint_url": s3_server},
        "time_series": SHORT_WINDOW,
    })
    record = build_world(config, YEAR)
    assert record["catalog_url"] == synthetic_world(s3_bucket, YEAR).catalog
    store = Store(S3Settings(endpoint_url=s3_server))
    item_json = [u for u in store.list(f"{s3_bucket}/{YEAR}") if u.endswith("_L2A.json")]
    assert len(item_json) == record["items"] >= 12
    item = store.read_json(item_json[0])
    assert item["properties"]["storage:platform"] == "AWS"
    with store.local_read(record["truth_url"]) as path:
        assert rasterio.open(path).read(1).min() >= 1
    assert build_world(config, YEAR)["skipped"]
