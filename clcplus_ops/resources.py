"""Paths of the runtime data shipped inside the package (each folder carries its licence and
a SOURCES.md with provenance)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DATA_DIR = Path(str(files("clcplus_ops") / "data"))
GEOGRAPHY_DIR = DATA_DIR / "geography"
LAYOUTS_DIR = DATA_DIR / "layouts"

COUNTRIES_GEOJSON = GEOGRAPHY_DIR / "ne_50m_admin_0_countries_EEA38_UK.geojson"
LAND_BEYOND_AOI_GEOJSON = GEOGRAPHY_DIR / "ne_50m_land_beyond_aoi.geojson"
S2_SQUARES_CSV = GEOGRAPHY_DIR / "s2_mgrs_squares.csv"
CONVENTIONS_DIR = DATA_DIR / "conventions"
PRODUCT_DEFINITION_JSON = CONVENTIONS_DIR / "clms_clcplus_ras_s2023_r10m.json"

DEFAULT_LAYOUT = LAYOUTS_DIR / "pu_layout_138.geojson"
DEMO_LAYOUT = LAYOUTS_DIR / "pu_layout_demo.geojson"
