"""A delivered product layer of one 100 km tile as a Cloud-Optimized GeoTIFF (ATBD 3.1.1,
3.2.1-3.4.1; EEA's delivery checks for ``clms_clcplus_ras_s2023_r10m``).

Written by GDAL's own COG driver (so the layout is GDAL's: IFDs first, overviews after the
full-resolution image, tiles in order), with the delivery's options: LZW, 1024 px internal
tiles (EEA's check allows at most 1024), overviews down to one tile, and an embedded colour
table. Overviews are resampled with **nearest**: every layer is codes (classes, confidence
values, counts, flags) and the outside / no-data codes must not mix into averages; nearest
keeps every overview pixel a value that exists in the layer. (``mode`` would also keep codes
but is several times slower and changes no class share noticeably at 20 m and coarser.)

RAS declares no NoData value (EEA's check: only 1-11, 253 and 254 occur in it). The other
layers declare their outside code. Every layer embeds a colour map (ATBD 3.1.1-3.4.1): EEA's for
RAS, ramps for RASCL and RASDL, two colours for RASPL. The output depends only on the array and the grid, so a
rerun gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clcplus_ops.geo.grid import Grid

BLOCK_PX = 1024


@dataclass(frozen=True)
class LayerSpec:
    name: str  # ras, rascl, rasdl, raspl
    dtype: str
    nodata: int | None
    colours: dict[int, tuple[int, int, int]]  # value -> RGB (byte layers only)


def ras_colours() -> dict[int, tuple[int, int, int]]:
    """EEA's RAS colours, as its delivery check requires them (the QC tool's product definition)."""
    from clcplus_ops.geo.eea_grid import product_definition

    step = next(s for s in product_definition()["steps"] if s["check_ident"] == "qc_tool.raster.color")
    return {int(code): tuple(rgb) for code, rgb in step["parameters"]["colors"].items()}


def confidence_colours() -> dict[int, tuple[int, int, int]]:
    """RASCL 0-100 from red (no confidence) through yellow to green, outside (254) light grey."""
    out = {}
    for v in range(101):
        t = v / 100
        out[v] = (255, round(510 * t), 0) if t < 0.5 else (round(510 * (1 - t)), 255, 0)
    out[254] = (230, 230, 230)
    return out


def data_score_colours(outside: int, max_observations: int = 200) -> dict[int, tuple[int, int, int]]:
    """RASDL: valid observations 0 (dark red) through 100 (pale yellow) to ``max_observations``
    (dark blue), the quicklooks' ramp; outside light grey. (A uint16 colour table has 65,536
    entries in the file, about 400 kB; values not listed are black.)"""
    from clcplus_ops.products.quicklook import count_ramp

    ramp = count_ramp(max_observations)
    out = {v: tuple(int(c) for c in ramp[v][:3]) for v in range(max_observations + 1)}
    out[outside] = (230, 230, 230)
    return out


def post_processing_colours() -> dict[int, tuple[int, int, int]]:
    """RASPL: unchanged white, recoded magenta, outside light grey."""
    return {0: (255, 255, 255), 1: (230, 0, 169), 254: (230, 230, 230)}


def layer_spec(name: str, codes) -> LayerSpec:
    """The delivery spec of layer ``name`` with the configured outside codes."""
    if name == "ras":
        return LayerSpec("ras", "uint8", None, ras_colours())
    if name == "rascl":
        return LayerSpec("rascl", "uint8", codes.confidence_outside, confidence_colours())
    if name == "rasdl":
        return LayerSpec("rasdl", "uint16", codes.data_score_outside, data_score_colours(codes.data_score_outside))
    if name == "raspl":
        return LayerSpec("raspl", "uint8", codes.post_processing_outside, post_processing_colours())
    raise ValueError(f"unknown layer {name!r}; layers are ras, rascl, rasdl, raspl")


def creation_options(block_px: int = BLOCK_PX) -> dict[str, str]:
    """GDAL COG driver options of every delivered layer."""
    return {"COMPRESS": "LZW", "BLOCKSIZE": str(block_px), "OVERVIEW_RESAMPLING": "NEAREST",
            "RESAMPLING": "NEAREST", "BIGTIFF": "NO", "NUM_THREADS": "1"}


def write_layer_cog(path: str | Path, array: np.ndarray, grid: Grid, spec: LayerSpec,
                    block_px: int = BLOCK_PX) -> Path:
    """Write ``array`` (rows, cols) on ``grid`` as the COG of layer ``spec`` at ``path``."""
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    if array.shape != grid.shape:
        raise ValueError(f"array of shape {array.shape} is not on the grid's {grid.shape}")
    if array.dtype != np.dtype(spec.dtype):
        raise ValueError(f"layer {spec.name} is {spec.dtype}, got {array.dtype}")
    path = Path(path)
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1, "dtype": spec.dtype,
               "crs": grid.crs, "transform": grid.transform, "tiled": True, "blockxsize": block_px,
               "blockysize": block_px}
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    # The source (an uncompressed in-memory GeoTIFF with the colour table) is copied by the COG
    # driver, which writes overviews and the cloud-optimised layout in one pass.
    with MemoryFile() as memory:
        with memory.open(**profile) as source:
            source.write(array, 1)
            if spec.colours:
                source.write_colormap(1, {v: (*rgb, 255) for v, rgb in spec.colours.items()})
        with memory.open() as source:
            copy(source, path, driver="COG", **creation_options(block_px))
    return path
