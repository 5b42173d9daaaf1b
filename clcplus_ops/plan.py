"""The first stage of a production unit's run: plan its tiles and write each tile's grid
definition, which every later per-tile stage reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import clcplus_ops
from clcplus_ops.config import Config
from clcplus_ops.geo.layout import load_layout
from clcplus_ops.geo.tiles import ProcessingTile, tiles_for_pu
from clcplus_ops.store import Store, S3Settings, fingerprint, join

log = logging.getLogger(__name__)


def store_for(config: Config) -> Store:
    return Store(S3Settings(endpoint_url=config.store.s3_endpoint_url, region=config.store.s3_region))


def pu_url(config: Config, reference_year: int, pu_id: str) -> str:
    return join(config.store.work, str(reference_year), pu_id)


def tile_url(config: Config, reference_year: int, pu_id: str, tile_id: str) -> str:
    return join(pu_url(config, reference_year, pu_id), "tiles", tile_id)


def stage_record_url(tile_base_url: str, stage: str) -> str:
    """Where a per-tile stage records that it finished (and from what)."""
    return join(tile_base_url, "_records", f"{stage}.json")


def previous_stage(store: Store, tile_base_url: str, stage: str, error: type[Exception], what: str):
    """The record of the tile stage this one reads from; ``error`` naming what is missing and
    where it looked if that stage has not run."""
    record = store.read_record(stage_record_url(tile_base_url, stage))
    if record is None:
        raise error(f"{what}: no {stage} record at {stage_record_url(tile_base_url, stage)}; run {stage} first")
    return record


@dataclass(frozen=True)
class TilePlan:
    pu_id: str
    reference_year: int
    layout: str
    tiles: tuple[ProcessingTile, ...]
    plan_url: str

    def for_tasks(self) -> list[dict]:
        """What crosses XCom to the mapped tile tasks: the tile id (tasks rebuild the tile)."""
        return [{"tile_id": t.tile_id} for t in self.tiles]


def plan_tiles(
    config: Config,
    layout: str,
    pu_id: str,
    reference_year: int,
    only_tiles: Sequence[str] | None = None,
    store: Store | None = None,
) -> TilePlan:
    """The tiles of ``pu_id`` (those meeting the unit buffered by the PU buffer), or the subset
    ``only_tiles`` for a partial re-run. Writes ``plan.json`` under the PU's work folder."""
    store = store or store_for(config)
    layout_file = config.layout_path(layout)
    units = load_layout(layout_file)
    if pu_id not in units:
        raise ValueError(f"production unit {pu_id!r} is not in the {layout} layout {layout_file}")
    grid = config.for_layout(layout).grid
    tiles = tiles_for_pu(units[pu_id], grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m)
    if not tiles:
        raise ValueError(f"production unit {pu_id} meets no Sentinel-2 processing tile")
    if only_tiles:
        known, wanted = {t.tile_id for t in tiles}, set(only_tiles)
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(
                f"only_tiles names {unknown}, which are not tiles of {pu_id}; its tiles are {sorted(known)}"
            )
        tiles = [t for t in tiles if t.tile_id in wanted]
    plan_url = join(pu_url(config, reference_year, pu_id), "plan.json")
    store.write_json(
        plan_url,
        {
            "pu_id": pu_id,
            "reference_year": reference_year,
            "layout": layout,
            "layout_file": str(layout_file),
            "tile_size_m": grid.tile_size_m,
            "pu_buffer_m": grid.pu_buffer_m,
            "only_tiles": sorted(only_tiles or []),
            "tiles": [t.to_dict() for t in tiles],
        },
    )
    log.info("%s %d: %d tiles planned (%s)", pu_id, reference_year, len(tiles), plan_url)
    return TilePlan(pu_id, reference_year, layout, tuple(tiles), plan_url)


def define_tile(
    config: Config, pu_id: str, reference_year: int, tile: ProcessingTile, force: bool = False,
    store: Store | None = None,
) -> dict:
    """Write the tile's grid definition (CRS, bounds, transform, shape) as ``tile.json``;
    skipped when it is already there for the same tile and code version."""
    store = store or store_for(config)
    base = tile_url(config, reference_year, pu_id, tile.tile_id)
    definition_url, record_url = join(base, "tile.json"), stage_record_url(base, "define_tile")
    key = fingerprint(stage="define_tile", inputs={"tile": tile.to_dict()}, params={}, version=clcplus_ops.__version__)
    if not force and store.is_current(record_url, key):
        log.info("%s: tile definition is current, skipped", tile.tile_id)
        return {"tile_id": tile.tile_id, "url": definition_url, "skipped": True}
    store.write_json(definition_url, {"pu_id": pu_id, "reference_year": reference_year, **tile.to_dict()})
    store.write_record(record_url, stage="define_tile", fingerprint=key, outputs={"tile": definition_url})
    return {"tile_id": tile.tile_id, "url": definition_url, "skipped": False}


# The per-tile stages, in order; a tile is finished when each has its record.
TILE_STAGES = ("define_tile", "ingest", "classify", "filter")


def join_tiles(config: Config, pu_id: str, reference_year: int, store: Store | None = None) -> dict:
    """Check that every planned tile finished its stages and write the PU's tile summary."""
    store = store or store_for(config)
    base = pu_url(config, reference_year, pu_id)
    planned = store.read_json(join(base, "plan.json"))
    missing = {}
    for t in planned["tiles"]:
        tile_base = tile_url(config, reference_year, pu_id, t["tile_id"])
        stages = [s for s in TILE_STAGES if store.read_record(stage_record_url(tile_base, s)) is None]
        if stages:
            missing[t["tile_id"]] = stages
    if missing:
        raise RuntimeError(
            f"{pu_id} {reference_year}: tiles {sorted(missing)} have not finished; re-run them with only_tiles "
            f"(stages missing per tile: {missing})"
        )
    summary = {"pu_id": pu_id, "reference_year": reference_year, "tiles": [t["tile_id"] for t in planned["tiles"]]}
    store.write_json(join(base, "tiles_done.json"), summary)
    log.info("%s %d: all %d planned tiles finished", pu_id, reference_year, len(summary["tiles"]))
    return {"pu_id": pu_id, "tiles": len(summary["tiles"])}
