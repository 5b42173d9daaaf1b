"""The Sentinel-2 L2A bands: ESA band names, Earth Search asset keys and native resolutions.

Reflectance from a digital number is ``DN * scale + offset``. From processing baseline 04.00
(25 January 2022, and all of Collection-1) ESA adds ``BOA_ADD_OFFSET = -1000`` to the L2A
digital numbers, so ``scale = 1e-4`` and ``offset = -0.1``; before it, ``offset = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    name: str  # ESA band name, "B01".."B12", "B8A"
    asset_key: str  # Earth Search v1 / Collection-1 asset key
    resolution_m: int  # native pixel size of the L2A product
    central_wavelength_um: float


BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", "coastal", 60, 0.443),
        Band("B02", "blue", 10, 0.490),
        Band("B03", "green", 10, 0.560),
        Band("B04", "red", 10, 0.665),
        Band("B05", "rededge1", 20, 0.704),
        Band("B06", "rededge2", 20, 0.740),
        Band("B07", "rededge3", 20, 0.783),
        Band("B08", "nir", 10, 0.842),
        Band("B8A", "nir08", 20, 0.865),
        Band("B09", "nir09", 60, 0.945),
        Band("B11", "swir16", 20, 1.610),
        Band("B12", "swir22", 20, 2.190),
    )
}
BY_ASSET_KEY: dict[str, Band] = {b.asset_key: b for b in BANDS.values()}

# The Scene Classification Layer: one uint8 raster at 20 m, 0 = no data.
SCL = "SCL"
SCL_ASSET_KEY = "scl"
SCL_RESOLUTION_M = 20
SCL_CLASSES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow",
}

# The two bands (a, b) of each normalised-difference index (a - b) / (a + b); formulas and
# references in ``timeseries``.
INDEX_BANDS: dict[str, tuple[str, str]] = {
    "NDVI": ("B08", "B04"),
    "NDWI": ("B03", "B08"),
    "NDMI": ("B08", "B11"),
    "NBR": ("B08", "B12"),
}

REFLECTANCE_SCALE = 1e-4
BOA_OFFSET_BASELINE = (4, 0)  # baselines from 04.00 carry the -1000 DN offset


def parse_baseline(text: str | None) -> tuple[int, int] | None:
    """"05.11" -> (5, 11); None or garbage -> None."""
    if not text:
        return None
    major, _, minor = str(text).strip().partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return None


def reflectance_offset(processing_baseline: str | None) -> float:
    """The additive offset of L2A reflectance for a processing baseline (see module doc).
    An unknown baseline is treated as pre-04.00 (offset 0)."""
    parsed = parse_baseline(processing_baseline)
    return -0.1 if parsed is not None and parsed >= BOA_OFFSET_BASELINE else 0.0
