"""Tile ids per production unit, cached on local disk.

DAG files need every PU's tile ids at parse time (the ``only_tiles`` choices), and computing
them for 138 PUs takes seconds, so the result is cached under a key made of everything it
depends on: the layout file's bytes, the grid parameters and the packaged MGRS table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from clcplus_ops.config import GridConfig
from clcplus_ops.geo.layout import load_layout
from clcplus_ops.geo.tiles import tiles_for_pu
from clcplus_ops.resources import S2_SQUARES_CSV

log = logging.getLogger(__name__)
CACHE_ENV = "CLCPLUS_CACHE_DIR"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clcplus"
    return Path(os.environ.get(CACHE_ENV, default))


def index_key(layout_path: Path, grid: GridConfig) -> str:
    digest = hashlib.sha256()
    digest.update(Path(layout_path).read_bytes())
    digest.update(S2_SQUARES_CSV.read_bytes())
    digest.update(json.dumps([grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m]).encode())
    return digest.hexdigest()[:20]


def compute_tile_index(layout_path: Path, grid: GridConfig) -> dict[str, list[str]]:
    units = load_layout(layout_path)
    return {
        pu_id: [t.tile_id for t in tiles_for_pu(pu, grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m)]
        for pu_id, pu in units.items()
    }


def tile_index(layout_path: Path, grid: GridConfig) -> dict[str, list[str]]:
    """``{pu_id: [tile ids]}`` for a layout and grid, from the cache or computed once."""
    path = cache_dir() / f"tile_index_{index_key(layout_path, grid)}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    log.info("computing the tile index of %s (tile %d m, buffer %g m)", layout_path, grid.tile_size_m, grid.pu_buffer_m)
    index = compute_tile_index(layout_path, grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(index, tmp, indent=1, sort_keys=True)
    os.replace(tmp.name, path)
    return index
