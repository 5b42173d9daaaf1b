"""Generate ``clcplus_ops/data/geography/ne_50m_land_beyond_aoi.geojson``: the land of the
countries outside EEA38 + UK near the production area (Natural Earth 1:50m admin-0, clipped to
the AOI's lon/lat box widened by 1°), so that the coastal seawater mask tells the 250 m ring of
the delivery area that lies on a neighbouring country's land (it stays land) from the ring on
the sea (coastal seawater).

    .venv/bin/python scripts/make_neighbour_land.py [--source ../shared/data/geography/natural_earth/ne_50m_admin_0_countries.geojson]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import shapely
from shapely.geometry import box

from clcplus_ops.geo import aoi
from clcplus_ops.resources import GEOGRAPHY_DIR

SOURCE = Path(__file__).resolve().parents[2] / "shared/data/geography/natural_earth/ne_50m_admin_0_countries.geojson"
OUT = GEOGRAPHY_DIR / "ne_50m_land_beyond_aoi.geojson"
MARGIN_DEG = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    args = parser.parse_args()
    world = gpd.read_file(args.source)
    others = world[~world["ADM0_A3"].isin(aoi.EEA38_UK)]
    # Each part of the AOI with its own box (mainland Europe, each DOM): neighbours near any.
    parts = [aoi.land_lonlat()] + [box(*d.lonlat_box) for d in aoi.DOMS.values()]
    area = shapely.union_all([box(*p.bounds).buffer(MARGIN_DEG, join_style="mitre") for p in parts])
    clipped = shapely.intersection(others.geometry.values, area)
    keep = ~shapely.is_empty(clipped)
    out = gpd.GeoDataFrame({"ADM0_A3": others["ADM0_A3"].values[keep], "NAME": others["NAME"].values[keep]},
                           geometry=shapely.set_precision(clipped[keep], 1e-6), crs="EPSG:4326")
    out = out.sort_values("ADM0_A3").reset_index(drop=True)
    out.to_file(OUT, driver="GeoJSON", COORDINATE_PRECISION=6)
    print(f"{OUT}: {len(out)} countries ({', '.join(out['ADM0_A3'])}), {OUT.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
