"""Writing the archive: Cloud-Optimized GeoTIFFs and the static STAC catalogue (catalog,
collection ``sentinel-2-c1-l2a``, items) shaped like Earth Search's Collection-1 items.

Assets written per item: the 12 reflectance bands under their Earth Search keys (coastal,
blue, green, red, rededge1-3, nir, nir08, nir09, swir16, swir22) and ``scl``. Omitted: the
true-colour ``visual`` image, ``aot``/``wvp`` (aerosol and water vapour), the ``cloud``/``snow``
probability rasters, ``preview``/``thumbnail`` and the metadata XML/JSON documents; nothing in
the production chain reads them. All hrefs are relative, so a world can be moved or served
from S3 unchanged. COGs carry no overviews (the chain reads full-resolution windows; the
ground-truth and count rasters have them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile

from clcplus_ops.geo.grid import Grid
from clcplus_ops.sentinel2.bands import BANDS, REFLECTANCE_SCALE, SCL_ASSET_KEY, SCL_RESOLUTION_M
from clcplus_ops.locations import WorldPlace
from clcplus_ops.store import Store
from clcplus_ops.synthetic.acquisitions import RELATIVE_ORBIT, Acquisition, earth_sun_factor
from clcplus_ops.synthetic.granules import Granule

COLLECTION_ID = WorldPlace.COLLECTION
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
    "https://stac-extensions.github.io/storage/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
]
COLLECTION_EXTENSIONS = [
    "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
]

# Earth Search Collection-1 asset titles, common names and band widths (µm).
TITLES = {
    "B01": "Coastal - 60m", "B02": "Blue - 10m", "B03": "Green - 10m", "B04": "Red - 10m",
    "B05": "Red Edge 1 - 20m", "B06": "Red Edge 2 - 20m", "B07": "Red Edge 3 - 20m", "B08": "NIR 1 - 10m",
    "B8A": "NIR 2 - 20m", "B09": "NIR 3 - 60m", "B11": "SWIR 1.6\u03bcm - 20m", "B12": "SWIR 2.2\u03bcm - 20m",
}
COMMON_NAMES = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge", "B06": "rededge",
    "B07": "rededge", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
}
FWHM = {
    "B01": 0.027, "B02": 0.098, "B03": 0.045, "B04": 0.038, "B05": 0.019, "B06": 0.018, "B07": 0.028,
    "B08": 0.145, "B8A": 0.033, "B09": 0.026, "B11": 0.143, "B12": 0.242,
}
SCL_TITLE = "Scene classification map (SCL)"
SCL_PERCENTAGES = {
    "s2:saturated_defective_pixel_percentage": (1,),
    "s2:dark_area_pixel_percentage": (2,),
    "s2:cloud_shadow_percentage": (3,),
    "s2:vegetation_percentage": (4,),
    "s2:not_vegetated_percentage": (5,),
    "s2:water_percentage": (6,),
    "s2:unclassified_percentage": (7,),
    "s2:medium_proba_clouds_percentage": (8,),
    "s2:high_proba_clouds_percentage": (9,),
    "s2:thin_cirrus_percentage": (10,),
    "s2:snow_ice_percentage": (11,),
}
CLOUD_CODES = (8, 9, 10)  # eo:cloud_cover as Sen2Cor: medium + high probability + thin cirrus
COG_OPTIONS = {"compress": "DEFLATE", "predictor": "YES", "level": 1, "blocksize": 256, "overviews": "NONE"}


def stac_time(when: dt.datetime) -> str:
    """"2025-07-31T10:05:59.024Z" (UTC, milliseconds) like Earth Search's created/updated."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _compact(when: dt.datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S")


# -------------------------------------------------------------------------------- rasters


def write_cog(store: Store, url: str, array: np.ndarray, grid: Grid, nodata: int | None, overviews: bool = False,
              **extra: Any) -> tuple[int, str]:
    """Write a single-band COG of ``array`` on ``grid``; return (size in bytes, multihash
    sha2-256 as in ``file:checksum``)."""
    if array.shape != grid.shape:
        raise ValueError(f"{url}: array of shape {array.shape} on a grid of {grid.shape}")
    options = dict(COG_OPTIONS)
    if overviews:
        options.update(overviews="AUTO", overview_resampling="nearest")
    if array.dtype == np.uint8:
        options["predictor"] = "NO"
    options.update(extra)
    with store.local_write(url) as path:
        # An in-memory dataset copied by the COG driver: rasterio.shutil.copy releases the GIL
        # (writing through rasterio.open(driver="COG") does not), so writer threads run in
        # parallel with each other and with the rendering.
        with MemoryFile() as memory, memory.open(
            driver="MEM", width=array.shape[1], height=array.shape[0], count=1, dtype=array.dtype.name,
            crs=grid.crs, transform=grid.transform, nodata=nodata,
        ) as source:
            source.write(array, 1)
            rasterio.shutil.copy(source, str(path), driver="COG", **options)
        size, digest = _digest(path)
    return size, "1220" + digest


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


# ------------------------------------------------------------------------------ STAC items


def item_id(acquisition: Acquisition, granule: Granule) -> str:
    return f"{acquisition.mission}_T{granule.square_id}_{_compact(acquisition.datastrip_start)}_L2A"


def band_asset_fields(name: str, offset: float) -> dict[str, Any]:
    band = BANDS[name]
    return {
        "type": COG_TYPE,
        "title": TITLES[name],
        "eo:bands": [{
            "name": name,
            "common_name": COMMON_NAMES[name],
            "center_wavelength": band.central_wavelength_um,
            "full_width_half_max": FWHM[name],
        }],
        "gsd": band.resolution_m,
        "raster:bands": [{
            "nodata": 0,
            "data_type": "uint16",
            "spatial_resolution": band.resolution_m,
            "scale": REFLECTANCE_SCALE,
            "offset": offset,
        }],
        "roles": ["data", "reflectance"],
    }


def scl_asset_fields() -> dict[str, Any]:
    return {
        "type": COG_TYPE,
        "title": SCL_TITLE,
        "gsd": SCL_RESOLUTION_M,
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": SCL_RESOLUTION_M}],
        "roles": ["data"],
    }


def asset_fields(offset: float) -> dict[str, dict[str, Any]]:
    """Static fields of every asset written, by asset key (the collection's item_assets)."""
    fields = {BANDS[name].asset_key: band_asset_fields(name, offset) for name in BANDS}
    fields[SCL_ASSET_KEY] = scl_asset_fields()
    return fields


def scl_statistics(scl: np.ndarray) -> dict[str, float]:
    """eo:cloud_cover and the s2:*_percentage properties of an item's SCL (percent of the
    pixels with data; no-data percent of all pixels), rounded to 6 decimals."""
    counts = np.bincount(scl.ravel(), minlength=12).astype(np.float64)
    total = counts.sum()
    data = total - counts[0]
    pct = (lambda n: round(100.0 * float(n) / float(data), 6)) if data else (lambda n: 0.0)
    stats = {key: pct(counts[list(codes)].sum()) for key, codes in SCL_PERCENTAGES.items()}
    stats["s2:nodata_pixel_percentage"] = round(100.0 * float(counts[0]) / float(total), 6) if total else 100.0
    stats["eo:cloud_cover"] = pct(counts[list(CLOUD_CODES)].sum())
    return stats


def build_item(*, acquisition: Acquisition, granule: Granule, epsg: int, geometry: dict, bbox: list[float],
               centroid: tuple[float, float], stats: dict[str, float], assets: dict[str, dict[str, Any]],
               baseline: str, sun: tuple[float, float], storage: tuple[str, str], year: int,
               version: str) -> pystac.Item:
    """The STAC item of one granule and date; ``assets`` maps asset key -> full asset dict."""
    a, sq = acquisition, granule.square_id
    iid = item_id(a, granule)
    gen = a.generation_time
    mission_code = a.mission[1:]  # "2A", "2B", "2C"
    n_baseline = baseline.replace(".", "").zfill(4)
    created = stac_time(gen + dt.timedelta(minutes=45, seconds=13, milliseconds=710))
    properties: dict[str, Any] = {
        "created": created,
        "platform": a.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": stats["eo:cloud_cover"],
        "proj:epsg": epsg,
        "proj:centroid": {"lat": round(centroid[1], 5), "lon": round(centroid[0], 5)},
        "mgrs:utm_zone": int(sq[:2]),
        "mgrs:latitude_band": sq[2],
        "mgrs:grid_square": sq[3:],
        "grid:code": f"MGRS-{sq}",
        "view:azimuth": round(100.0 + 7.5 * ((a.slot * 37) % 11) / 10.0, 6),
        "view:incidence_angle": round(3.0 + 6.0 * (granule.square.x0 - 100_000) / 700_000, 6),
        "view:sun_azimuth": round(sun[0], 6),
        "view:sun_elevation": round(sun[1], 6),
        "s2:tile_id": f"{a.mission}_OPER_MSI_L2A_TL_{mission_code}PS_{_compact(gen)}_A{a.absolute_orbit:06d}_T{sq}_N{baseline}",
        "s2:degraded_msi_data_percentage": 0,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "s2:product_uri": f"{a.mission}_MSIL2A_{_compact(a.datatake_start)}_N{n_baseline}_R{RELATIVE_ORBIT:03d}_T{sq}_{_compact(gen)}.SAFE",
        "s2:generation_time": gen.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "s2:datatake_id": f"G{a.mission}_{_compact(a.datatake_start)}_{a.absolute_orbit:06d}_N{baseline}",
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": f"{a.mission}_OPER_MSI_L2A_DS_{mission_code}PS_{_compact(gen)}_S{_compact(a.datastrip_start)}_N{baseline}",
        "s2:reflectance_conversion_factor": round(earth_sun_factor(a.date), 12),
        "earthsearch:payload_id": f"clcplus-synthetic/{year}/{iid}",
        "storage:platform": storage[0],
        "storage:region": storage[1],
        "storage:requester_pays": False,
        "processing:software": {"clcplus_ops.synthetic": version},
        "updated": created,
    }
    for key in ("s2:nodata_pixel_percentage", *SCL_PERCENTAGES):
        if key != "s2:dark_area_pixel_percentage":  # not a property of Earth Search's C1 items
            properties[key] = stats[key]
    item = pystac.Item(
        id=iid, geometry=geometry, bbox=bbox, datetime=a.datetime, properties=properties,
        stac_extensions=list(STAC_EXTENSIONS), collection=COLLECTION_ID,
    )
    for key, fields in assets.items():
        extra = {k: v for k, v in fields.items() if k not in ("href", "type", "title", "roles")}
        item.add_asset(key, pystac.Asset(href=fields["href"], media_type=fields["type"], title=fields.get("title"),
                                         roles=fields.get("roles"), extra_fields=extra))
    item.add_link(pystac.Link("root", "../../catalog.json", media_type="application/json"))
    item.add_link(pystac.Link("parent", "../collection.json", media_type="application/json"))
    item.add_link(pystac.Link("collection", "../collection.json", media_type="application/json"))
    return item


def item_to_dict(item: pystac.Item) -> dict[str, Any]:
    return item.to_dict(include_self_link=False, transform_hrefs=False)


# ------------------------------------------------------------------ collection and catalogue


def collection_dict(*, item_ids: list[str], bbox: list[float], interval: tuple[str, str], platforms: list[str],
                    offset: float, year: int) -> dict[str, Any]:
    eo_bands = [
        {"name": BANDS[b].asset_key, "common_name": COMMON_NAMES[b],
         "description": f"{TITLES[b].rsplit(' - ', 1)[0]} (band {b[1:].lstrip('0')})",
         "center_wavelength": BANDS[b].central_wavelength_um, "full_width_half_max": FWHM[b]}
        for b in BANDS
    ]
    links = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
    ] + [
        {"rel": "item", "href": f"./{i}/{i}.json", "type": "application/geo+json"} for i in item_ids
    ]
    return {
        "type": "Collection",
        "id": COLLECTION_ID,
        "stac_version": pystac.get_stac_version(),
        "title": "Sentinel-2 Collection 1 Level-2A (synthetic)",
        "description": (
            f"Synthetic Sentinel-2 Collection 1 Level-2A archive of reference year {year} made by "
            "clcplus_ops.synthetic: a known ground truth, per-class spectral-temporal models, clouds, "
            "shadows and SCL, shaped like Earth Search's sentinel-2-c1-l2a items."
        ),
        "links": links,
        "stac_extensions": list(COLLECTION_EXTENSIONS),
        "item_assets": asset_fields(offset),
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [list(interval)]}},
        "license": "proprietary",
        "keywords": ["sentinel", "earth observation", "esa", "synthetic"],
        "providers": [{"name": "clcplus_ops.synthetic", "roles": ["producer", "processor", "host"]}],
        "summaries": {
            "platform": platforms,
            "constellation": ["sentinel-2"],
            "instruments": ["msi"],
            "gsd": [10, 20, 60],
            "view:off_nadir": [0],
            "eo:bands": eo_bands,
        },
    }


def catalog_dict(year: int) -> dict[str, Any]:
    return {
        "type": "Catalog",
        "id": f"clcplus-synthetic-{year}",
        "stac_version": pystac.get_stac_version(),
        "description": f"Synthetic Sentinel-2 L2A archive for CLCplus Backbone reference year {year}",
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            {"rel": "child", "href": f"./{COLLECTION_ID}/collection.json", "type": "application/json"},
        ],
    }


def item_url(year_url: str, iid: str) -> str:
    return WorldPlace(year_url).item(iid)


def asset_url(year_url: str, iid: str, key: str) -> str:
    return WorldPlace(year_url).asset(iid, key)
