"""Known change between reference years and the recoding sources of the synthetic world
(``clcplus_ops.synthetic.changes``, ``planted``, ``recoding_sources``) on small worlds."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from rasterio import features

from clcplus_ops.calendar import scheduled_years
from clcplus_ops.config import parse_config
from clcplus_ops.store import as_url
from clcplus_ops.synthetic import build_world, changes_url, phenology, recoding_urls, resolve_area, spectra
from clcplus_ops.synthetic.acquisitions import acquisitions
from clcplus_ops.synthetic.changes import KINDS, change_events, landscape_for_year
from clcplus_ops.synthetic.grid import WorldGrid
from clcplus_ops.synthetic.landscape import (
    PARCEL, RIVER, ROAD, SEA, Landscape, build_landscape, unit_neighbours, unit_stats,
)
from clcplus_ops.synthetic.planted import EXPERT_AOI, GRASS_AS_ARABLE, SEALED_MISSED, planted_errors

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*migrated:UserWarning"),
    pytest.mark.filterwarnings("error::RuntimeWarning"),
]

SEED = 0
BOUNDS = [390000, 5040000, 391200, 5041200]  # 1.2 km inland: big enough for change events
YEARS = [2018, 2021, 2023, 2025]
SHORT_WINDOW = {"window_start_month": 12, "window_end_month": 1, "n_steps": 36}
FROM_TO = {"clear_cut": ({2, 3}, 9), "construction": ({7}, 1), "reservoir": ({6, 7}, 10)}


@pytest.fixture(scope="module")
def base() -> Landscape:
    return build_landscape(WorldGrid(tuple(BOUNDS), 32633), SEED)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory):
    """The worlds of 2023 and 2025 in one root (13-month windows, 30-day revisit)."""
    root = tmp_path_factory.mktemp("changes")
    config = parse_config({"synthetic": {"root": as_url(root), "bounds": BOUNDS, "epsg": 32633, "n_samples": 50,
                                         "revisit_days": 30}, "time_series": SHORT_WINDOW})
    records = {year: build_world(config, year) for year in (2023, 2025)}
    return config, records, root


def _read(url: str) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(url[len("file://"):]) as ds:
        return ds.read(1), ds.transform


def _burn(frame: gpd.GeoDataFrame, values, crs: str, transform, shape) -> np.ndarray:
    """The polygons back in the world CRS, rasterised by pixel centre with ``values``."""
    geoms = frame.to_crs(crs).geometry
    return features.rasterize(list(zip(geoms, values)), out_shape=shape, transform=transform, fill=0,
                              all_touched=False, dtype="int32")


# ------------------------------------------------------------------------ change events


def test_events_are_whole_parcels_and_years_are_consistent(base: Landscape) -> None:
    stats = unit_stats(base)
    final, events = landscape_for_year(base, 2025, SEED, scheduled_years())  # an infinite iterator is fine
    assert {e.year for e in events} == {2021, 2023, 2025}
    assert len({e.unit for e in events}) == len(events)  # a parcel changes at most once
    planted = set(planted_errors(base, SEED).units.tolist())
    for e in events:
        assert base.unit_kind[e.unit] == PARCEL and stats.inside[e.unit] and e.unit not in planted
        sources, target = FROM_TO[e.kind]
        assert e.from_class in sources and e.to_class == target
    # Each year is the previous one with exactly its own events applied.
    previous = base
    for year in YEARS[1:]:
        landscape, so_far = landscape_for_year(base, year, SEED, YEARS)
        assert so_far == [e for e in events if e.year <= year]
        mine = [e for e in events if e.year == year]
        assert {k for k in KINDS} == {e.kind for e in mine}  # every kind in every interval here
        differ = np.flatnonzero(landscape.unit_class != previous.unit_class)
        assert sorted(differ.tolist()) == sorted(e.unit for e in mine)
        assert all(previous.unit_class[e.unit] == e.from_class for e in mine)
        changed_px = landscape.classes != previous.classes
        assert np.array_equal(changed_px, np.isin(base.unit, [e.unit for e in mine]))
        for kind in (ROAD, RIVER, SEA):
            assert np.array_equal(landscape.unit_class[base.unit_kind == kind], base.unit_class[base.unit_kind == kind])
        previous = landscape
    assert landscape_for_year(base, 2018, SEED, YEARS)[0] is base
    assert landscape_for_year(base, 2019, SEED, YEARS)[1] == []  # off-schedule years keep the last state


def test_reservoir_is_one_connected_cluster(base: Landscape) -> None:
    indptr, neighbours = unit_neighbours(base)
    for year in YEARS[1:]:
        cluster = {e.unit for e in change_events(base, SEED, YEARS) if e.kind == "reservoir" and e.year == year}
        reached, todo = set(), [min(cluster)]
        while todo:
            u = todo.pop()
            reached.add(u)
            todo += [int(v) for v in neighbours[indptr[u]:indptr[u + 1]] if v in cluster and v not in reached]
        assert reached == cluster


def test_change_share_of_the_demo_world() -> None:
    grid = resolve_area(parse_config({}))
    base = build_landscape(grid, SEED)
    landscape, events = landscape_for_year(base, 2025, SEED, YEARS)
    px = unit_stats(base).pixels_world
    land = base.world(base.land).sum()
    for year in YEARS[1:]:
        mine = [e for e in events if e.year == year]
        share = sum(px[e.unit] for e in mine) / land
        assert 0.003 <= share <= 0.006, (year, share)
        by_kind = {k: sum(px[e.unit] for e in mine if e.kind == k) for k in KINDS}
        assert by_kind["clear_cut"] == max(by_kind.values())
        assert 3e4 <= by_kind["reservoir"] * 100 <= 2e5  # 3..20 ha


def test_tiny_worlds_do_not_change() -> None:
    base = build_landscape(WorldGrid((390000, 5040000, 390640, 5040640), 32633), SEED)
    assert change_events(base, SEED, YEARS) == []


# ---------------------------------------------------------------------- spectral stability


def test_unchanged_parcels_keep_their_parameters(base: Landscape) -> None:
    landscape, events = landscape_for_year(base, 2025, SEED, YEARS)
    changed = np.zeros(base.n_units, bool)
    changed[[e.unit for e in events]] = True
    s0_base, s1_base = spectra.unit_states(base, SEED)
    s0, s1 = spectra.unit_states(landscape, SEED, base=base)
    assert np.array_equal(s0[~changed], s0_base[~changed]) and np.array_equal(s1[~changed], s1_base[~changed])
    dates = [a.date for a in acquisitions(dt.date(2024, 10, 1), dt.date(2026, 4, 1), 20)]
    g_base = phenology.unit_states(base, dates, SEED)
    g = phenology.unit_states(landscape, dates, SEED, base=base)
    assert np.array_equal(g[~changed], g_base[~changed])
    # Per pixel too: only the changed parcels' pixels differ.
    a, b = spectra.surface_model(base, SEED), spectra.surface_model(landscape, SEED, base=base)
    moved = np.isin(base.unit, np.flatnonzero(changed))
    assert np.array_equal(a.s0[:, ~moved], b.s0[:, ~moved]) and np.array_equal(a.d[:, ~moved], b.d[:, ~moved])
    # A changed parcel looks like its new class: reservoirs are dark in the NIR and SWIR, new
    # buildings have no red edge in summer, clear-cuts are bright in the SWIR.
    nir, swir = spectra.BAND_NAMES.index("B08"), spectra.BAND_NAMES.index("B11")
    for e in events:
        if e.kind == "reservoir":
            assert s0[e.unit, nir] < 0.03 and s1[e.unit, swir] < 0.01
        elif e.kind == "clear_cut":
            assert s0[e.unit, swir] > 0.2
        else:
            assert s1[e.unit, nir] < 0.3


def test_planted_errors_look_like_their_partner_class(base: Landscape) -> None:
    planted = planted_errors(base, SEED)
    assert {p.kind for p in planted.plants} == {SEALED_MISSED, GRASS_AS_ARABLE, EXPERT_AOI}
    s0, s1 = spectra.unit_states(base, SEED)
    cls = base.unit_class
    typical = (base.unit_kind == PARCEL) & ~np.isin(np.arange(base.n_units), planted.units)
    for p in planted.plants:
        assert cls[p.unit] == p.true_class and cls[p.donor] == p.looks_like
        state = np.concatenate([s0[p.unit], s1[p.unit]])

        def distance(c: int) -> float:
            mean = np.concatenate([s0[typical & (cls == c)].mean(0), s1[typical & (cls == c)].mean(0)])
            return float(np.abs(state - mean).sum())

        assert distance(p.looks_like) < distance(p.true_class), p


# ------------------------------------------------------------------ the worlds and sources


def test_truth_of_two_years_differs_exactly_on_the_changes(worlds) -> None:
    config, records, root = worlds
    t23, transform = _read(records[2023]["truth_url"])
    t25, _ = _read(records[2025]["truth_url"])
    assert records[2025]["changes_url"] == changes_url(config, 2025)
    frame = gpd.read_file(records[2025]["changes_url"][len("file://"):])
    assert frame.crs.to_epsg() == 32633 and set(frame["year"]) == {2025}
    burnt = _burn(frame, range(1, len(frame) + 1), "EPSG:32633", transform, t25.shape)
    assert np.array_equal(burnt > 0, t23 != t25)
    for i, row in frame.iterrows():
        where = burnt == i + 1
        assert (t23[where] == row["from_class"]).all() and (t25[where] == row["to_class"]).all()
        assert where.sum() == row["pixels"]
    meta = json.loads((root / "2025" / "world.json").read_text())
    section = meta["changes"]
    assert section["previous_year"] == 2023 and section["pixels"] == int((t23 != t25).sum())
    for kind, entry in section["since_previous_year"].items():
        assert entry["parcels"] == int((frame["kind"] == kind).sum())
        assert entry["pixels"] == int(frame.loc[frame["kind"] == kind, "pixels"].sum())


def test_rules_file_has_the_agreed_shape(worlds) -> None:
    config, records, _ = worlds
    urls = recoding_urls(config, 2025)
    assert records[2025]["recoding_rules_url"] == urls["rules"]
    rules = yaml.safe_load(Path(urls["rules"][len("file://"):]).read_text())
    assert rules["version"] == 1
    assert [r["name"] for r in rules["rules"]] == ["osm_buildings", "lpis_grassland", "expert_aois"]
    allowed = {"name", "source", "layer", "where", "to_class", "from_classes", "within", "within_layer",
               "all_touched", "buffer_m", "comment"}
    folder = Path(urls["rules"][len("file://"):]).parent
    for rule in rules["rules"]:
        assert set(rule) <= allowed and {"name", "source", "to_class"} <= set(rule)
        assert (folder / rule["source"]).is_file()
        if rule.get("within"):
            assert (folder / rule["within"]).is_file()
        to_class = rule["to_class"]
        assert isinstance(to_class, int) or "attribute" in to_class
        if isinstance(to_class, dict) and "lookup" in to_class:
            assert (folder / to_class["lookup"]).is_file()
    for key, url in urls.items():
        path = Path(url[len("file://"):])
        assert path.is_file(), key
        if path.suffix in (".shp", ".gpkg"):
            assert len(gpd.read_file(path)) >= 1, key
    for suffix in (".shx", ".dbf", ".prj", ".cpg"):
        assert (folder / "osm" / f"gis_osm_buildings_a_free_1{suffix}").is_file()


def test_source_polygons_are_exactly_the_truth_pixels(worlds, base: Landscape) -> None:
    config, records, _ = worlds
    urls = {k: u[len("file://"):] for k, u in recoding_urls(config, 2025).items()}
    truth, transform = _read(records[2025]["truth_url"])
    landscape, _ = landscape_for_year(base, 2025, SEED, YEARS)
    unit = landscape.world(landscape.unit)
    kind = landscape.unit_kind[unit]
    planted = planted_errors(base, SEED)

    def expected(units) -> np.ndarray:
        lookup = np.zeros(landscape.n_units, np.int32)
        lookup[np.asarray(units)] = np.asarray(units) + 1
        return lookup[unit]

    # OSM buildings: every sealed parcel, never a road.
    osm = gpd.read_file(urls["osm_buildings"])
    assert osm.crs.to_epsg() == 4326 and set(osm["fclass"]) == {"building"} and set(osm["code"]) == {1500}
    units = (osm["osm_id"].astype(int) - 200_000_000) // 7
    burnt = _burn(osm, units + 1, "EPSG:32633", transform, truth.shape)
    assert np.array_equal(burnt, expected(units))
    assert np.array_equal(burnt > 0, (truth == 1) & (kind == PARCEL))
    assert {p.unit for p in planted.of_kind(SEALED_MISSED)} <= set(units)

    # LPIS: most grassland and crop parcels; their codes give their truth class.
    lpis = gpd.read_file(urls["lpis_parcels"], layer="parcels")
    assert lpis.crs.to_epsg() == 3035
    units = lpis["parcel_id"].str.split("-").str[1].astype(int) - 1_000_000
    burnt = _burn(lpis, units + 1, "EPSG:32633", transform, truth.shape)
    assert np.array_equal(burnt, expected(units))
    with open(urls["lpis_crop_codes"]) as fh:
        lookup = {r["crop_code"]: int(r["clcplus_class"]) for r in csv.DictReader(fh)}
    assert [lookup[c] for c in lpis["crop_code"]] == landscape.unit_class[units].tolist()
    farmland = np.isin(truth, (6, 7)) & (kind == PARCEL)
    assert 0.8 < (burnt > 0).sum() / farmland.sum() < 1.0  # some parcels undeclared

    # The review area holds every grassland parcel that looks like arable land.
    area = gpd.read_file(urls["lpis_review_area"])
    inside = _burn(area, [1], "EPSG:32633", transform, truth.shape) > 0
    grass_as_arable = np.isin(unit, [p.unit for p in planted.of_kind(GRASS_AS_ARABLE)])
    assert grass_as_arable.any() and inside[grass_as_arable].all()
    assert set(units) >= {p.unit for p in planted.of_kind(GRASS_AS_ARABLE)}

    # Expert AOIs: exactly around the parcels of class X made to look like Y.
    aois = gpd.read_file(urls["expert_aois"], layer="aois")
    assert aois.crs.to_epsg() == 3035 and len(aois) == len(planted.aois)
    burnt = _burn(aois, aois["aoi_id"], "EPSG:32633", transform, truth.shape)
    for _, row in aois.iterrows():
        members = [p for p in planted.of_kind(EXPERT_AOI) if p.group == row["aoi_id"]]
        assert np.array_equal(burnt == row["aoi_id"], np.isin(unit, [p.unit for p in members]))
        assert (truth[burnt == row["aoi_id"]] == row["to_class"]).all()
        assert {p.looks_like for p in members} <= {int(c) for c in row["from_classes"].split(",")}

    # Planted pixels in world.json.
    meta = json.loads((Path(urls["rules"]).parent.parent / "world.json").read_text())["recoding"]
    assert meta["planted_errors"][GRASS_AS_ARABLE]["pixels"] == int(grass_as_arable.sum())
    assert meta["sources"]["osm_buildings"]["features"] == len(osm)


def test_osm_roads_follow_the_roads(worlds, base: Landscape) -> None:
    config, records, _ = worlds
    roads = gpd.read_file(recoding_urls(config, 2025)["osm_roads"][len("file://"):])
    assert roads.crs.to_epsg() == 4326 and len(roads) >= 1
    assert set(roads["fclass"]) <= {"motorway", "primary", "secondary", "tertiary", "residential"}
    assert set(roads["bridge"]) <= {"T", "F"} and roads["osm_id"].is_unique
    truth, transform = _read(records[2025]["truth_url"])
    unit = base.world(base.unit)
    on_road = np.isin(base.unit_kind[unit], (ROAD, RIVER))
    points = roads.to_crs("EPSG:32633").geometry.segmentize(5.0).get_coordinates()
    r = ((transform.f - points.y) / 10).astype(int).clip(0, truth.shape[0] - 1)
    c = ((points.x - transform.c) / 10).astype(int).clip(0, truth.shape[1] - 1)
    assert on_road[r, c].mean() > 0.9
