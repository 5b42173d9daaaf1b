"""The mosaic stage: a PU's filtered tiles onto the product grid (EPSG:3035, 10 m, aligned with
the 100 km reference tiles), with no seam at tile edges nor at UTM zone boundaries.

The PU here straddles 12°E, the boundary of UTM zones 32 and 33, on the demo's 2.5 km tiles. Its
tiles' filtered probabilities and counts are generated from one smooth field on the ground
(``synthetic.probability_tiles``), written through the runner by stand-ins of the tile stages
(same names and outputs), then the real plan, join and mosaic stages run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.config import parse_config
from clcplus_ops.geo.eea_grid import pu_grid
from clcplus_ops.geo.grid import Grid
from clcplus_ops.geo.layout import load_layout
from clcplus_ops.geo.tiles import home_epsg, home_epsg_array, tile_from_id
from clcplus_ops.locations import Locations
from clcplus_ops.pipeline import DEFINE_TILE, JOIN_TILES, MOSAIC, PLAN_TILES
from clcplus_ops.postprocessing.mosaic import COUNT_NODATA
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.stage import StageIO, Target
from clcplus_ops.synthetic import probability_tiles

YEAR, PU = 2025, "ZONES"
# 2.5 x 3 km around 12°E, 53°N (Mecklenburg): half in zone 32, half in zone 33, and there the
# Sentinel-2 grid has squares of both zones (further south it leaves the zone edge to zone 32).
PU_LONLAT = [[11.981, 52.9865], [12.019, 52.9865], [12.019, 53.0135], [11.981, 53.0135], [11.981, 52.9865]]


def _generated(io: StageIO, name: str) -> None:
    from clcplus_ops.postprocessing.bilateral import BilateralParams

    # What the filter leaves of the halo: the ingestion halo less the filter's reach.
    halo = io.config.grid.halo_px - BilateralParams.from_config(io.config.bilateral).extent
    grid = io.tile.grid(halo)
    probabilities, counts = probability_tiles.tile_arrays(grid)
    kind = "probabilities" if name == "filtered" else "features"
    count, dtype, nodata = (11, probs_io.DTYPE, probs_io.NODATA) if name == "filtered" else (1, "uint16", None)
    with io.raster(name, grid, count, dtype, nodata, kind) as out:
        if name == "filtered":
            probs_io.describe(out, list(range(1, 12)), io.config.codes.classes)
            out.write(probabilities)
        else:
            out.write(counts[None])


# Stand-ins of the tile stages: the same names, scope and outputs the mosaic reads.
STAND_INS = probability_tiles.stand_in_tile_stages(_generated)


@pytest.fixture(scope="module")
def zones_pu(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("zones")
    layout = root / "layout.geojson"
    layout.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"pu_id": PU, "name": "two UTM zones", "crs": "EPSG:3035"},
        "geometry": {"type": "Polygon", "coordinates": [PU_LONLAT]}}]}))
    config = parse_config({
        "store": {name: (root / name).as_uri() for name in ("work", "models", "samples", "products")},
        "demo": {"layout_path": str(layout), "grid": {"tile_size_m": 2500, "pu_buffer_m": 1000, "halo_px": 8}},
        "blending": {"block_px": 256},
    }).for_layout("demo")
    pu_target = Target("demo", YEAR, PU)
    run_stage(PLAN_TILES, config, pu_target)
    plan = json.loads(Path(Locations(config).pu(YEAR, PU).plan[len("file://"):]).read_text())
    tile_ids = [t["tile_id"] for t in plan["tiles"]]
    for tile_id in tile_ids:
        target = Target("demo", YEAR, PU, tile_id)
        run_stage(DEFINE_TILE, config, target)
        for stage in STAND_INS:
            run_stage(stage, config, target)
    run_stage(JOIN_TILES, config, pu_target)
    summary = run_stage(MOSAIC, config, pu_target)
    return {"config": config, "tiles": tile_ids, "summary": summary, "target": pu_target}


def _read(config, name: str) -> tuple[np.ndarray, Grid]:
    record = stage_record(config, MOSAIC, Target("demo", YEAR, PU))
    path = Locations(config).resolve(record.outputs[name])[len("file://"):]
    with rasterio.open(path) as ds:
        return ds.read(), Grid.of_dataset(ds)


def test_pu_grid_is_on_the_product_grid():
    config = parse_config({})
    units = load_layout(config.layout_path("production"))
    grid = pu_grid(units["PU001"], 10, 10_000)
    assert grid.epsg == 3035 and grid.res == 10
    assert grid.transform.c % 10 == 0 and grid.transform.f % 10 == 0  # pixel edges on the 100 km lines
    area = units["PU001"].geometry_in("EPSG:3035").buffer(10_000)
    xmin, ymin, xmax, ymax = grid.bounds
    assert xmin <= area.bounds[0] < xmin + 10 and xmax - 10 < area.bounds[2] <= xmax
    assert ymin <= area.bounds[1] < ymin + 10 and ymax - 10 < area.bounds[3] <= ymax
    doms = [u for u in units.values() if u.crs != "EPSG:3035"]
    assert doms and all(pu_grid(u, 10, 10_000).epsg == int(u.crs[5:]) for u in doms)


def test_home_zone_of_many_points_is_that_of_each_point():
    rng = np.random.default_rng(1)
    lon = np.concatenate([rng.uniform(-30, 45, 3000), [3.5, 8.0, 11.99, 12.0, 5.0, 20.0]])
    lat = np.concatenate([rng.uniform(-25, 83, 3000), [60.0, 58.0, 45.0, 45.0, 78.0, 78.0]])
    assert home_epsg_array(lon, lat).tolist() == [home_epsg(a, b) for a, b in zip(lon, lat)]


def test_grid_intersection():
    a = Grid.from_bounds(3035, (0, 0, 100, 100), 10)
    assert a.intersection(Grid.from_bounds(3035, (50, -20, 200, 30), 10)) == Grid.from_bounds(3035, (50, 0, 100, 30), 10)
    assert a.intersection(Grid.from_bounds(3035, (100, 0, 200, 100), 10)) is None


def test_the_pu_spans_two_zones_and_the_mosaic_covers_its_grid(zones_pu):
    config, summary = zones_pu["config"], zones_pu["summary"]
    epsgs = {tile_from_id(t, 2500).epsg for t in zones_pu["tiles"]}
    assert epsgs == {32632, 32633}
    assert summary["zones"] == [32632, 32633] and summary["tiles"] == len(zones_pu["tiles"]) >= 8
    encoded, grid = _read(config, "probabilities")
    unit = load_layout(config.layout_path("demo"))[PU]
    assert grid == pu_grid(unit, 10, 1000)
    probabilities, valid = probs_io.decode(encoded)
    assert valid.all() and summary["valid_pixels"] == grid.width * grid.height
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=2e-3)  # bilinear keeps probability vectors
    counts, _ = _read(config, "valid_obs")
    assert (counts != COUNT_NODATA).all()


def test_no_seam_at_tile_edges_nor_at_the_zone_boundary(zones_pu, figure):
    """The mosaic against the generating field at the output pixel centres: the error next to
    tile edges and next to the zone boundary is no larger than elsewhere, and small."""
    from pyproj import Transformer

    config = zones_pu["config"]
    encoded, grid = _read(config, "probabilities")
    probabilities, _ = probs_io.decode(encoded)
    t = grid.transform
    x, y = np.meshgrid(t.c + (np.arange(grid.width) + 0.5) * 10, t.f - (np.arange(grid.height) + 0.5) * 10)
    truth = probability_tiles.field(x, y)
    error = np.abs(probabilities - truth).max(axis=0)
    counts, _ = _read(config, "valid_obs")
    assert (counts[0] == probability_tiles.counts(x, y)).mean() > 0.95  # nearest: off only at 1 km steps

    # Distance (in pixels) of each output pixel to the nearest tile edge of its home zone and to the zone boundary.
    lon, lat = Transformer.from_crs(3035, 4326, always_xy=True).transform(x, y)
    home = home_epsg_array(lon, lat)
    near_zone = np.zeros(grid.shape, bool)
    near_zone[:, 1:] |= home[:, 1:] != home[:, :-1]
    near_zone[:, :-1] |= home[:, 1:] != home[:, :-1]
    near_edge = np.zeros(grid.shape, bool)
    for epsg in (32632, 32633):
        ux, uy = Transformer.from_crs(3035, epsg, always_xy=True).transform(x, y)
        d = np.minimum(np.abs((ux + 1250) % 2500 - 1250), np.abs((uy + 1250) % 2500 - 1250))
        near_edge |= (home == epsg) & (d < 15)
    elsewhere = ~near_zone & ~near_edge
    assert near_zone.sum() > 100 and near_edge.sum() > 1000
    typical = np.percentile(error[elsewhere], 99)
    assert typical < 0.05
    figure(f"mosaic of a PU across UTM zones 32/33 vs the generating field, 99th percentile / max of |dp|: "
           f"elsewhere {typical:.5f} / {error[elsewhere].max():.5f}, at tile edges "
           f"{np.percentile(error[near_edge], 99):.5f} / {error[near_edge].max():.5f}, at the zone boundary "
           f"{np.percentile(error[near_zone], 99):.5f} / {error[near_zone].max():.5f}")
    for mask in (near_zone, near_edge):
        assert np.percentile(error[mask], 99) <= 1.5 * typical
        assert error[mask].max() <= 1.5 * error[elsewhere].max()


def test_rerun_skips_and_forced_run_gives_the_same_bytes(zones_pu):
    config, target = zones_pu["config"], zones_pu["target"]
    record = stage_record(config, MOSAIC, target)
    assert run_stage(MOSAIC, config, target)["skipped"]
    assert run_stage(MOSAIC, config, target, force=True)["skipped"] is False
    again = stage_record(config, MOSAIC, target)
    assert {k: v["sha256"] for k, v in again.files.items()} == {k: v["sha256"] for k, v in record.files.items()}


def test_a_damaged_tile_output_fails_the_mosaic_naming_it(zones_pu):
    from clcplus_ops.errors import StageInputError

    config, target = zones_pu["config"], zones_pu["target"]
    tile_id = zones_pu["tiles"][0]
    filtered = Path(Locations(config).tile(YEAR, PU, tile_id).filtered[len("file://"):])
    data = filtered.read_bytes()
    filtered.write_bytes(data[: len(data) // 2])
    with pytest.raises(StageInputError, match=f"filter demo ZONES {tile_id}|{tile_id}.*damaged"):
        run_stage(MOSAIC, config, target, force=True)
    # The tile's stage recomputes its damaged output; the mosaic, untouched by the failure, is current.
    run_stage(STAND_INS[2], config, Target("demo", YEAR, PU, tile_id))
    assert filtered.read_bytes() == data
    assert run_stage(MOSAIC, config, target)["skipped"]
