"""The first and the last stage of a production unit's run, and the tile definition.

* ``plan_tiles`` (PU): the tiles of the PU (those meeting the unit buffered by the PU buffer),
  or the subset ``only_tiles`` for a partial re-run, written as ``plan.json``;
* ``define_tile`` (tile): the tile's grid definition (CRS, bounds, transform, shape) as
  ``tile.json``, which every later tile stage can read;
* ``join_tiles`` (PU): checks that every planned tile finished its stages and writes
  ``tiles_done.json``; its fingerprint is the planned tiles' stage fingerprints, so it reruns
  when a tile was recomputed.
"""

from __future__ import annotations

import logging
from clcplus_ops.config import Config
from clcplus_ops.errors import ClcplusError, InvalidIdError, PermanentError, StageInputError
from clcplus_ops.locations import check_tile
from clcplus_ops.stage import External, Stage, StageIO, Target

log = logging.getLogger(__name__)



class TilesNotFinishedError(PermanentError):
    """The join found planned tiles whose stages have not all run (no retry of the join cures
    that: re-run the tiles)."""


# --------------------------------------------------------------------------------------------
# plan_tiles


def _only_tiles(options) -> list[str]:
    only = options.get("only_tiles") or []
    if isinstance(only, str):
        only = [only]
    return sorted(set(only))


def _plan_prepare(ctx) -> External:
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.tiles import tiles_for_pu

    config, target = ctx.config, ctx.target
    layout_file = config.layout_path(target.layout)
    unit = load_layout(layout_file)[target.pu_id]  # the runner checked the id against the layout
    grid = config.grid
    tiles = tiles_for_pu(unit, grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m)
    if not tiles:
        raise ClcplusError(f"production unit {target.pu_id} meets no Sentinel-2 processing tile")
    only = _only_tiles(ctx.options)
    if only:
        known = {t.tile_id for t in tiles}
        unknown = sorted(set(only) - known)
        if unknown:
            raise InvalidIdError(f"only_tiles names {unknown}, which are not tiles of {target.pu_id}; "
                                 f"its tiles are {sorted(known)}")
        tiles = [t for t in tiles if t.tile_id in set(only)]
    return External(identity={"layout_file": str(layout_file), "tiles": [t.to_dict() for t in tiles]},
                    value={"layout_file": str(layout_file), "tiles": tiles})


def _plan_params(config: Config, target: Target, options) -> dict:
    return {"tile_size_m": config.grid.tile_size_m, "pu_buffer_m": config.grid.pu_buffer_m,
            "pixel_size_m": config.grid.pixel_size_m, "only_tiles": _only_tiles(options)}


def _plan_compute(io: StageIO) -> dict:
    target, grid, tiles = io.target, io.config.grid, io.external["tiles"]
    io.write_json("plan", {
        "pu_id": target.pu_id,
        "reference_year": target.reference_year,
        "layout": target.layout,
        "layout_file": io.external["layout_file"],
        "tile_size_m": grid.tile_size_m,
        "pu_buffer_m": grid.pu_buffer_m,
        "only_tiles": io.params["only_tiles"],
        "tiles": [t.to_dict() for t in tiles],
    })
    io.log.info("%s %d: %d tiles planned", target.pu_id, target.reference_year, len(tiles))
    return {"tiles": len(tiles), "only_tiles": io.params["only_tiles"]}


PLAN_TILES = Stage(
    name="plan_tiles",
    scope="pu",
    outputs={"plan": "plan.json"},
    prepare=_plan_prepare,
    params=_plan_params,
    compute=_plan_compute,
    options=("only_tiles",),
    summary=("tiles",),
    permanent_errors=(InvalidIdError,),
    description="the tiles of the production unit (or the only_tiles subset)",
)


def planned_tiles(config: Config, layout: str, pu_id: str, reference_year: int, store=None) -> list[str]:
    """The tile ids of the PU's committed plan (what the DAG maps its tile tasks over)."""
    from clcplus_ops.locations import Locations
    from clcplus_ops.runner import stage_record, store_for

    config = config.for_layout(layout)
    store = store or store_for(config)
    record = stage_record(config, PLAN_TILES, Target(layout, int(reference_year), pu_id), store)
    if record is None:
        raise StageInputError(f"{pu_id} {reference_year}: the tiles have not been planned (no plan_tiles record)")
    plan = store.read_json(Locations(config).resolve(record.outputs["plan"]))
    return [t["tile_id"] for t in plan["tiles"]]


# --------------------------------------------------------------------------------------------
# define_tile


def _define_params(config: Config, target: Target, options) -> dict:
    return {"tile": check_tile(config, target.tile_id).to_dict()}


def _define_compute(io: StageIO) -> dict:
    io.write_json("tile", {"pu_id": io.target.pu_id, "reference_year": io.target.reference_year,
                           **io.tile.to_dict()})
    return {}


DEFINE_TILE = Stage(
    name="define_tile",
    scope="tile",
    outputs={"tile": "tile.json"},
    params=_define_params,
    compute=_define_compute,
    description="the tile's grid definition (CRS, bounds, transform, shape)",
)


# --------------------------------------------------------------------------------------------
# join_tiles


def _join_prepare(ctx) -> External:
    from clcplus_ops.pipeline import TILE_STAGES  # the catalogue imports this module: read it late
    from clcplus_ops.runner import CorruptRecordError

    target = ctx.target
    plan = ctx.record("plan_tiles")  # the runner verified it (declared input)
    tiles = [t["tile_id"] for t in ctx.store.read_json(ctx.locations.resolve(plan.outputs["plan"]))["tiles"]]
    done, missing = {}, {}
    for tile_id in tiles:
        tile_target = Target(target.layout, target.reference_year, target.pu_id, tile_id)
        fingerprints = {}
        for stage in TILE_STAGES:  # a tile is finished when each has its record (the shared ones too)
            try:
                record = ctx.record(stage.name, target=tile_target, scope=stage.scope)
            except CorruptRecordError:
                record = None
            if record is None:
                missing.setdefault(tile_id, []).append(stage.name)
            else:
                fingerprints[stage.name] = record.fingerprint
        done[tile_id] = fingerprints
    if missing:
        raise TilesNotFinishedError(
            f"{target.pu_id} {target.reference_year}: tiles {sorted(missing)} have not finished; re-run them with "
            f"only_tiles (stages missing per tile: {missing})"
        )
    return External(identity={"tiles": done}, value=tiles)


def _join_compute(io: StageIO) -> dict:
    target, tiles = io.target, io.external
    io.write_json("tiles_done", {"pu_id": target.pu_id, "reference_year": target.reference_year, "tiles": tiles})
    io.log.info("%s %d: all %d planned tiles finished", target.pu_id, target.reference_year, len(tiles))
    return {"tiles": len(tiles)}


JOIN_TILES = Stage(
    name="join_tiles",
    scope="pu",
    inputs=("plan_tiles",),
    outputs={"tiles_done": "tiles_done.json"},
    prepare=_join_prepare,
    compute=_join_compute,
    summary=("tiles",),
    permanent_errors=(TilesNotFinishedError,),
    description="check that every planned tile finished its stages",
)


__all__ = ["DEFINE_TILE", "JOIN_TILES", "PLAN_TILES", "TilesNotFinishedError", "planned_tiles"]
