"""Building a synthetic world: the entry point :func:`build_world`.

Layout under ``{synthetic.root}/{year}/``::

    catalog.json                                 STAC catalog -> ./sentinel-2-c1-l2a/collection.json
    sentinel-2-c1-l2a/collection.json            STAC collection, one "item" link per item
    sentinel-2-c1-l2a/{item_id}/{item_id}.json   STAC items (relative asset hrefs)
    sentinel-2-c1-l2a/{item_id}/{asset}.tif      COGs at native resolution
    truth/ground_truth.tif                       uint8 classes 1..11, 10 m, world bounds
    truth/clear_count.tif                        uint16 clear observations per pixel, same grid
    truth/changes.geojson                        parcels changed since the previous reference year
    samples/samples.geojson, samples/samples.csv labelled points
    recoding/                                    recoding sources and rules (``recoding_sources``)
    world.json                                   written last: spec, fingerprint, items, counts

The landscape is that of the first scheduled reference year with the change events of every
scheduled year up to this one applied (``changes``).

A pixel's observation on a date is *clear* if some granule of that date with
``eo:cloud_cover < sentinel2.max_cloud_cover_percent`` covers it and the SCL of its 20 m
pixel is neither 0 nor one of ``sentinel2.scl_masked_classes``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pystac
import shapely
from pyproj import Transformer

import clcplus_ops
from clcplus_ops.calendar import scheduled_years
from clcplus_ops.config import CLASS_NAMES, Config
from clcplus_ops.geo.grid import Grid
from clcplus_ops.sentinel2.bands import BANDS, SCL_ASSET_KEY, reflectance_offset
from clcplus_ops.locations import WorldPlace, synthetic_world
from clcplus_ops.store import Store, fingerprint
from clcplus_ops.synthetic import catalogue, changes, clouds, noise, phenology, recoding_sources, spectra
from clcplus_ops.synthetic.acquisitions import Acquisition, acquisitions, sun_position
from clcplus_ops.synthetic.granules import Granule, granules_for
from clcplus_ops.synthetic.grid import PIXEL_M, WorldGrid, default_area, snap_bounds
from clcplus_ops.synthetic.landscape import build_landscape
from clcplus_ops.synthetic.planted import planted_errors
from clcplus_ops.synthetic.render import Renderer, Scene, finish_60m, mean2x2
from clcplus_ops.synthetic.samples import draw_samples

log = logging.getLogger("clcplus_ops.synthetic")

# Bump when the generated world changes for the same configuration.
GENERATOR_VERSION = "3"
VERSION = f"{clcplus_ops.__version__}+synthetic.{GENERATOR_VERSION}"
STAGE = "synthetic_world"


def world_url(config: Config, reference_year: int) -> str:
    return synthetic_world(config.synthetic.root, reference_year).base


def changes_url(config: Config, reference_year: int) -> str:
    """truth/changes.geojson: the parcels changed since the previous reference year."""
    return synthetic_world(config.synthetic.root, reference_year).file("truth", "changes.geojson")


def reference_years(config: Config, reference_year: int) -> list[int]:
    """The scheduled reference years up to ``reference_year``: the first is the base landscape's."""
    return list(itertools.takewhile(lambda y: y <= reference_year, scheduled_years(series=config.time_series)))


def resolve_area(config: Config) -> WorldGrid:
    """The world's grid: configured bounds, or the demo layout's tiles plus halo; snapped to 20 m."""
    syn = config.synthetic
    if syn.bounds is not None:
        bounds, epsg = syn.bounds, int(syn.epsg)
    else:
        bounds, epsg = default_area(config)
    return WorldGrid(snap_bounds(bounds), epsg)


def _storage(root: str, config: Config) -> tuple[str, str]:
    """storage:platform and storage:region of the items (v1.0.0 of the extension)."""
    return ("AWS", config.store.s3_region) if root.startswith("s3://") else ("OTHER", "local")


def world_spec(config: Config, reference_year: int, grid: WorldGrid) -> dict[str, Any]:
    """Everything the world's content depends on (the fingerprint's parameters); not the root."""
    start, end = config.time_series.window(reference_year)
    synthetic = config.synthetic.model_dump(mode="json")
    synthetic.pop("root")
    return {
        "reference_year": reference_year,
        "synthetic": synthetic,
        "bounds": list(grid.bounds),
        "epsg": grid.epsg,
        "window": [start.isoformat(), end.isoformat()],
        "reference_years": reference_years(config, reference_year),
        "scl_masked_classes": sorted(config.sentinel2.scl_masked_classes),
        "max_cloud_cover_percent": config.sentinel2.max_cloud_cover_percent,
        "storage": list(_storage(config.synthetic.root, config)),
    }


def build_world(config: Config, reference_year: int, store: Store | None = None, force: bool = False) -> dict:
    """Build (or find current) the synthetic Sentinel-2 world of ``reference_year``.

    Returns ``catalog_url``, ``truth_url``, ``clear_count_url``, ``samples_url`` (GeoJSON),
    ``samples_csv_url``, ``world_url`` (world.json), ``items`` (count), ``skipped``,
    ``fingerprint``."""
    if store is None:
        from clcplus_ops.runner import store_for

        store = store_for(config)
    started = time.perf_counter()
    grid = resolve_area(config)
    spec = world_spec(config, reference_year, grid)
    fp = fingerprint(stage=STAGE, inputs={}, params=spec, version=VERSION)
    place = synthetic_world(config.synthetic.root, reference_year)
    base = place.base
    urls = {
        "catalog_url": place.catalog,
        "truth_url": place.truth,
        "clear_count_url": place.clear_count,
        "samples_url": place.samples_geojson,
        "samples_csv_url": place.samples_csv,
        "changes_url": changes_url(config, reference_year),
        "recoding_rules_url": recoding_sources.recoding_urls(config, reference_year)["rules"],
        "world_url": place.world,
    }
    existing = _read_world(store, urls["world_url"])
    if (existing is not None and existing.get("fingerprint") == fp and not force
            and all(store.exists(u) for k, u in urls.items() if k != "world_url")):
        log.info("synthetic world is current: %s", urls["world_url"])
        return {**urls, "items": int(existing.get("counts", {}).get("items", 0)), "skipped": True, "fingerprint": fp}
    store.delete(urls["world_url"])  # a half-rebuilt world must not look current
    world = _Builder(config, reference_year, grid, store, base, urls, spec, fp).build()
    world["timings_s"]["total"] = round(time.perf_counter() - started, 3)
    store.write_json(urls["world_url"], world)
    log.info("synthetic world %s: %d items (%d above the cloud limit), %d samples, %.1f s",
             base, world["counts"]["items"], world["counts"]["items_above_cloud_limit"],
             world["counts"]["samples"], world["timings_s"]["total"])
    return {**urls, "items": world["counts"]["items"], "skipped": False, "fingerprint": fp}


def _read_world(store: Store, url: str) -> dict | None:
    try:
        data = store.read_json(url)
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("unreadable %s; rebuilding the synthetic world", url)
        return None
    return data if isinstance(data, dict) else None


class _Builder:
    def __init__(self, config: Config, year: int, grid: WorldGrid, store: Store, base: str,
                 urls: dict[str, str], spec: dict, fp: str) -> None:
        self.config, self.year, self.grid, self.store, self.base = config, year, grid, store, base
        self.urls, self.spec, self.fp = urls, spec, fp
        syn = config.synthetic
        self.seed = syn.seed
        self.baseline = syn.processing_baseline
        self.offset = reflectance_offset(syn.processing_baseline)
        self.limit = config.sentinel2.max_cloud_cover_percent
        self.masked = np.array(sorted(config.sentinel2.scl_masked_classes), np.uint8)
        self.storage = _storage(syn.root, config)
        self.workers = max(2, min(4, os.cpu_count() or 2))
        self.timings: dict[str, float] = {}
        to_lonlat = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
        self.to_lonlat = to_lonlat
        cx, cy = (grid.bounds[0] + grid.bounds[2]) / 2, (grid.bounds[1] + grid.bounds[3]) / 2
        self.centre_lonlat = to_lonlat.transform(cx, cy)

    def _focus(self) -> np.ndarray | None:
        """The demo PUs' own areas on the internal grid when the world is the demo layout's
        (synthetic.bounds unset), so the planted errors lie where the demo delivers a product."""
        if self.config.synthetic.bounds is not None:
            return None
        from rasterio import features

        from clcplus_ops.geo.layout import load_layout

        shapes = [u.geometry_in(self.grid.crs) for u in load_layout(self.config.layout_path("demo")).values()]
        array = self.grid.array_grid(PIXEL_M)
        return features.rasterize([(g, 1) for g in shapes], out_shape=array.shape, transform=array.transform,
                                  fill=0, dtype="uint8").astype(bool)

    def _lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - since, 3)
        return now

    # ------------------------------------------------------------------------------ build

    def build(self) -> dict:
        t = time.perf_counter()
        grid = self.grid
        start, end = self.config.time_series.window(self.year)
        acqs = acquisitions(start, end, self.config.synthetic.revisit_days)
        if not acqs:
            raise ValueError(f"no acquisition in the window {start}..{end}")
        granules = granules_for(grid)
        base = build_landscape(grid, self.seed)
        planted = planted_errors(base, self.seed, self._focus())
        years = reference_years(self.config, self.year)
        landscape, events = changes.landscape_for_year(base, self.year, self.seed, years, planted)
        t = self._lap("landscape", t)
        # Unchanged parcels keep their base parameters; changed ones look like their new class.
        surface = spectra.surface_model(landscape, self.seed, base=base, planted=planted)
        dates = [a.date for a in acqs]
        states = phenology.unit_states(landscape, dates, self.seed, base=base, planted=planted)
        snow_lines = phenology.snow_lines(dates, self.seed)
        elevation20 = mean2x2(landscape.elevation)
        land20 = mean2x2(landscape.land.astype(np.float32)) >= 0.5
        terrain = clouds.Terrain.from_elevation(elevation20, land20, grid.world_window(20))
        renderer = Renderer(landscape, surface, states, snow_lines, terrain, self.seed, self.offset,
                            workers=self.workers)
        self.bank = renderer.bank
        t = self._lap("models", t)
        log.info("synthetic world %s: %d x %d px at 10 m, %d dates x %d granule(s) %s",
                 self.base, *grid.world_shape(PIXEL_M), len(acqs), len(granules),
                 [g.square_id for g in granules])

        footprints = {g.square_id: self._footprint(g) for g in granules}
        world_rows20, world_cols20 = grid.world_window(20)
        coverage = {g.square_id: self._coverage20(g) for g in granules}
        clear20 = np.zeros(grid.world_shape(20), np.uint16)
        writer = ThreadPoolExecutor(max_workers=2 * self.workers, thread_name_prefix="synthetic-write")
        pending: deque[list[Future]] = deque()
        summaries: list[Future] = []
        written: set[str] = set()
        try:
            for acq in acqs:
                t_render = time.perf_counter()
                sun = sun_position(acq.datetime, *self.centre_lonlat)
                scene = renderer.render(acq, sun)
                scl_world = scene.scl[world_rows20, world_cols20]
                usable = (scl_world != 0) & ~np.isin(scl_world, self.masked)
                covered = np.zeros(usable.shape, bool)
                futures = []
                for granule in granules:
                    rows20, cols20 = grid.window(granule.bounds, 20)
                    stats = catalogue.scl_statistics(scene.scl[rows20, cols20])
                    if stats["eo:cloud_cover"] < self.limit:
                        covered |= coverage[granule.square_id]
                    iid = catalogue.item_id(acq, granule)
                    written.add(catalogue.item_url(self.base, iid))
                    written.update(catalogue.asset_url(self.base, iid, BANDS[b].asset_key) for b in BANDS)
                    written.add(catalogue.asset_url(self.base, iid, SCL_ASSET_KEY))
                    futures.append(writer.submit(self._write_item, scene, granule, stats, footprints[granule.square_id]))
                clear20 += usable & covered
                summaries += futures
                pending.append(futures)
                t_wait = self._lap("render", t_render)
                while len(pending) > 3:
                    for f in pending.popleft():
                        f.result()
                self._lap("write_wait", t_wait)
                if (acq.index + 1) % 10 == 0 or acq.index + 1 == len(acqs):
                    log.info("synthetic world %s: %d/%d dates rendered (%s)", self.base, acq.index + 1,
                             len(acqs), acq.date.isoformat())
            t = time.perf_counter()
            items = [f.result() for f in summaries]
            t = self._lap("write_wait", t)
        finally:
            writer.shutdown(wait=True, cancel_futures=True)
            renderer.close()

        truth = landscape.world(landscape.classes)
        clear = np.repeat(np.repeat(clear20, 2, axis=0), 2, axis=1)
        catalogue.write_cog(self.store, self.urls["truth_url"], np.ascontiguousarray(truth), grid.world_grid(PIXEL_M),
                            nodata=0, overviews=True)
        catalogue.write_cog(self.store, self.urls["clear_count_url"], clear, grid.world_grid(PIXEL_M),
                            nodata=None, overviews=True)
        syn = self.config.synthetic
        samples = draw_samples(truth, grid.bounds, grid.epsg, syn.n_samples, syn.mislabelled_fraction, self.seed,
                               self.year)
        self.store.write_json(self.urls["samples_url"], samples.to_geojson(self.year))
        self.store.write_text(self.urls["samples_csv_url"], samples.to_csv())
        t = self._lap("truth_and_samples", t)
        self.store.write_json(self.urls["changes_url"], changes.changes_geojson(events, landscape, self.year))
        change_record = changes.summary(events, landscape, self.year, years)
        recoding = recoding_sources.write_recoding_sources(self.store, self.base, landscape, planted, self.year,
                                                           self.seed, as_of=end)
        t = self._lap("changes_and_recoding", t)

        bbox = self._lonlat_bbox(grid.bounds)
        boxes = [f["bbox"] for f in footprints.values()]
        extent = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                  max(b[3] for b in boxes)]
        interval = (catalogue.stac_time(acqs[0].datetime), catalogue.stac_time(acqs[-1].datetime))
        platforms = sorted({a.platform for a in acqs})
        collection = catalogue.collection_dict(item_ids=[i["id"] for i in items], bbox=extent, interval=interval,
                                               platforms=platforms, offset=self.offset, year=self.year)
        collection_url = WorldPlace(self.base).collection
        self.store.write_json(collection_url, collection)
        self.store.write_json(self.urls["catalog_url"], catalogue.catalog_dict(self.year))
        written.add(collection_url)
        self._remove_stale(written)
        self._lap("catalogue", t)

        land = landscape.world(landscape.land)
        world = self._record(acqs, granules, items, truth, land, clear, samples, bbox)
        world["changes"] = change_record
        world["recoding"] = recoding
        return world

    # ------------------------------------------------------------------------ per item

    def _write_item(self, scene: Scene, granule: Granule, stats: dict, footprint: dict) -> dict:
        acq = scene.acquisition
        grid, store = self.grid, self.store
        iid = catalogue.item_id(acq, granule)
        assets: dict[str, dict] = {}
        for i, name in enumerate(BANDS):
            band = BANDS[name]
            res = band.resolution_m
            if res == 60:
                rows, cols = grid.window(granule.bounds, 20)
                rng = noise.stream(self.seed, noise.NOISE, acq.date.toordinal(), granule.square.x0 // 1000,
                                   granule.square.y0 // 1000, i)
                array = finish_60m(scene.reflectance_60m[name][rows, cols], self.bank, rng, self.offset)
            else:
                rows, cols = grid.window(granule.bounds, res)
                array = scene.dn[name][rows, cols]
            assets[band.asset_key] = self._write_asset(iid, band.asset_key, array, granule, res, 0,
                                                       catalogue.band_asset_fields(name, self.offset))
        rows, cols = grid.window(granule.bounds, 20)
        assets[SCL_ASSET_KEY] = self._write_asset(iid, SCL_ASSET_KEY, scene.scl[rows, cols], granule, 20, 0,
                                                  catalogue.scl_asset_fields())
        item = catalogue.build_item(
            acquisition=acq, granule=granule, epsg=grid.epsg, geometry=footprint["geometry"],
            bbox=footprint["bbox"], centroid=footprint["centroid"], stats=stats, assets=assets,
            baseline=self.baseline, sun=(scene.sun_azimuth, scene.sun_elevation), storage=self.storage,
            year=self.year, version=VERSION,
        )
        store.write_json(catalogue.item_url(self.base, iid), catalogue.item_to_dict(item))
        return {
            "id": iid,
            "datetime": pystac.utils.datetime_to_str(acq.datetime),
            "platform": acq.platform,
            "square": granule.square_id,
            "cloud_cover": stats["eo:cloud_cover"],
            "passed_cloud_limit": bool(stats["eo:cloud_cover"] < self.limit),
            "drawn_cloud_fraction": round(scene.cloud_fraction, 6),
        }

    def _write_asset(self, iid: str, key: str, array: np.ndarray, granule: Granule, res: int, nodata: int,
                     fields: dict) -> dict:
        url = catalogue.asset_url(self.base, iid, key)
        size, checksum = catalogue.write_cog(self.store, url, np.ascontiguousarray(array),
                                             Grid.from_bounds(self.grid.epsg, granule.bounds, res), nodata)
        xmin, _, _, ymax = granule.bounds
        h, w = array.shape
        return {
            "href": f"./{key}.tif",
            **fields,
            "proj:shape": [h, w],
            "proj:transform": [res, 0, xmin, 0, -res, ymax],
            "file:checksum": checksum,
            "file:size": size,
        }

    # ------------------------------------------------------------------------ geometry

    def _footprint(self, granule: Granule) -> dict:
        polygon = shapely.segmentize(shapely.box(*granule.bounds), 5_000.0)
        xs, ys = np.asarray(polygon.exterior.coords).T
        lon, lat = self.to_lonlat.transform(xs, ys)
        ring = [[round(float(a), 9), round(float(b), 9)] for a, b in zip(lon, lat)]
        lonlat = shapely.Polygon(ring)
        if not lonlat.exterior.is_ccw:
            ring = ring[::-1]
        bbox = [round(float(v), 6) for v in shapely.Polygon(ring).bounds]
        cx, cy = self.to_lonlat.transform((granule.bounds[0] + granule.bounds[2]) / 2,
                                          (granule.bounds[1] + granule.bounds[3]) / 2)
        return {"geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": bbox, "centroid": (cx, cy)}

    def _lonlat_bbox(self, bounds: tuple[int, int, int, int]) -> list[float]:
        polygon = shapely.segmentize(shapely.box(*bounds), 5_000.0)
        xs, ys = np.asarray(polygon.exterior.coords).T
        lon, lat = self.to_lonlat.transform(xs, ys)
        return [round(float(min(lon)), 6), round(float(min(lat)), 6), round(float(max(lon)), 6),
                round(float(max(lat)), 6)]

    def _coverage20(self, granule: Granule) -> np.ndarray:
        """The world's 20 m pixels the granule's item covers."""
        world = self.grid.world_grid(20)
        mask = np.zeros(world.shape, bool)
        part = Grid.from_bounds(self.grid.epsg, granule.world_part(self.grid), 20)
        mask[part.window_in(world).toslices()] = True
        return mask

    # ---------------------------------------------------------------------- bookkeeping

    def _remove_stale(self, written: set[str]) -> None:
        """Delete items of an earlier build (other dates or granules) under the collection."""
        prefix = WorldPlace(self.base).collection_folder
        stale = [u for u in self.store.list(prefix) if u not in written]
        for url in stale:
            self.store.delete(url)
        if stale:
            log.info("synthetic world %s: removed %d stale file(s) of an earlier build", self.base, len(stale))

    def _record(self, acqs: list[Acquisition], granules: list[Granule], items: list[dict], truth: np.ndarray,
                land: np.ndarray, clear: np.ndarray, samples, bbox: list[float]) -> dict:
        counts = np.bincount(truth.ravel(), minlength=12)
        land_counts = np.bincount(truth[land].ravel(), minlength=12)
        total, total_land = int(counts.sum()), int(land_counts.sum())
        frequencies = {
            str(c): {
                "name": CLASS_NAMES[c],
                "pixels": int(counts[c]),
                "share": round(counts[c] / total, 6) if total else 0.0,
                "share_of_land": round(land_counts[c] / total_land, 6) if total_land else 0.0,
            }
            for c in CLASS_NAMES
        }
        above = [i for i in items if not i["passed_cloud_limit"]]
        dates_usable = len({i["datetime"] for i in items if i["passed_cloud_limit"]})
        xmin, ymin, xmax, ymax = self.grid.bounds
        return {
            "generator": {"name": "clcplus_ops.synthetic", "version": VERSION},
            "fingerprint": self.fp,
            "reference_year": self.year,
            "seed": self.seed,
            "spec": self.spec,
            "bounds": [xmin, ymin, xmax, ymax],
            "epsg": self.grid.epsg,
            "bounds_lonlat": bbox,
            "shape_10m": list(self.grid.world_shape(PIXEL_M)),
            "land_share": round(float(land.mean()), 6),
            "paths": {
                "catalog": "catalog.json",
                "collection": f"{catalogue.COLLECTION_ID}/collection.json",
                "ground_truth": "truth/ground_truth.tif",
                "clear_count": "truth/clear_count.tif",
                "samples_geojson": "samples/samples.geojson",
                "samples_csv": "samples/samples.csv",
                "changes": "truth/changes.geojson",
                "recoding_rules": f"{recoding_sources.FOLDER}/{recoding_sources.FILES['rules']}",
            },
            "granules": [
                {"square": g.square_id, "bounds": list(g.bounds), "shape_10m": list(g.shape(10))} for g in granules
            ],
            "items": items,
            "counts": {
                "dates": len(acqs),
                "granules": len(granules),
                "items": len(items),
                "items_above_cloud_limit": len(above),
                "dates_with_an_item_below_cloud_limit": dates_usable,
                "samples": len(samples),
                "mislabelled": int(samples.mislabelled.sum()),
                "clear_observations": {
                    "min": int(clear.min()), "mean": round(float(clear.mean()), 3), "max": int(clear.max()),
                },
            },
            "class_frequencies": frequencies,
            "timings_s": dict(self.timings),
        }
