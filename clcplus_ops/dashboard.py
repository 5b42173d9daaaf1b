"""What the operators' dashboard shows, as plain data: the map of a layout (PU polygons, their
25 km tiles and the 100 km product tiles, in map frames) and the state of a reference year's
production per PU and per tile, aggregated from task-instance rows.

Nothing here imports Airflow: the dashboard plugin (``plugins/clcplus_dashboard``) reads the
metadata database and hands the rows over as dicts; the same functions serve a command line or
a test.

Map frames: the PUs processed in EPSG:3035 share the main frame (EPSG:3035); every other PU CRS
(the French overseas departments' UTM zones) gets an inset frame in its own CRS, as on EEA's
maps. Coordinates are metres of the frame's CRS (x east, y north), rounded to the metre.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

MAIN_CRS = "EPSG:3035"

# Tile states, most urgent first: a tile shared by several PUs is drawn in the most urgent of
# its PUs' states, so a failure is never hidden under a neighbour's success.
FAILED, UP_FOR_RETRY, RUNNING, NOT_STARTED, DONE = "failed", "up_for_retry", "running", "not_started", "done"
TILE_STATES = (FAILED, UP_FOR_RETRY, RUNNING, NOT_STARTED, DONE)
# A PU without a DAG the user may read: nothing is known about its tiles.
NO_DAG = "no_dag"

# Airflow task-instance states (strings, so that this module needs no Airflow).
_ACTIVE = frozenset({"running", "deferred", "up_for_reschedule", "restarting", "awaiting_input"})
_FINISHED_OK = frozenset({"success", "skipped"})


# ------------------------------------------------------------------------------ geometry


def layout_map(config, layout: str) -> dict:
    """The map of a layout: frames, PUs (simplified outer rings), unique processing tiles (four
    corners each) and product tiles, every geometry in its frame's CRS. Cached per layout file
    version and grid (the 138-PU layout takes a few seconds to build)."""
    from clcplus_ops.geo.tile_index import tile_index
    from clcplus_ops.products import tiling

    cfg = config.for_layout(layout)
    path = config.layout_path(layout)
    grid = cfg.grid
    key = (str(path), path.stat().st_mtime_ns, grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m)
    with _MAPS_LOCK:  # concurrent first requests build it once
        if key in _MAPS:
            return _MAPS[key]
        tiles_of_pu = tile_index(path, grid)
        pus_of_product = tiling.tile_index(config, layout)[1]
        if len(_MAPS) >= 4:
            _MAPS.pop(next(iter(_MAPS)))
        _MAPS[key] = _layout_map(path, grid.tile_size_m, grid.pixel_size_m, tiles_of_pu, pus_of_product)
        return _MAPS[key]


_MAPS: dict[tuple, dict] = {}
_MAPS_LOCK = threading.Lock()


def _layout_map(path: Path, tile_size_m: int, pixel_size_m: int, tiles_of_pu: Mapping[str, Sequence[str]],
                pus_of_product: Mapping[str, Sequence[str]]) -> dict:
    import numpy as np
    from pyproj import Transformer

    from clcplus_ops.geo.aoi import DOMS
    from clcplus_ops.geo.eea_grid import cell_bounds
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.tiles import tile_from_id

    units = load_layout(path)
    crs_list = [MAIN_CRS] + sorted({u.crs for u in units.values()} - {MAIN_CRS})
    frames = [{"id": i, "crs": crs, "label": "" if crs == MAIN_CRS else _frame_label(units, crs),
               "pus": [pu for pu, u in units.items() if u.crs == crs]} for i, crs in enumerate(crs_list)]
    frame_of_crs = {f["crs"]: f["id"] for f in frames}
    frames = [f for f in frames if f["pus"]]

    pus = []
    for pu_id, unit in units.items():
        geometry = unit.geometry_in(unit.crs)
        # Simplified to about a pixel of a continental map: the outline, not the PU's area, is drawn.
        geometry = geometry.simplify(max(geometry.length / 2000.0, 50.0), preserve_topology=True)
        rings = [[[round(x), round(y)] for x, y in polygon.exterior.coords]
                 for polygon in getattr(geometry, "geoms", [geometry]) if not polygon.is_empty]
        pus.append({"pu_id": pu_id, "name": unit.name, "crs": unit.crs, "frame": frame_of_crs[unit.crs],
                    "area_km2": unit.area_km2, "rings": rings})

    # Unique processing tiles (a tile is shared by up to three PUs), in each PU's frame.
    index = tiles_of_pu
    tile_ids: list[str] = []
    tile_frame: list[int] = []
    position: dict[tuple[str, int], int] = {}
    pu_tiles: dict[str, list[int]] = {}
    for pu_id, unit in units.items():
        frame = frame_of_crs[unit.crs]
        refs = pu_tiles.setdefault(pu_id, [])
        for tile in index.get(pu_id, ()):
            key = (tile, frame)
            if key not in position:
                position[key] = len(tile_ids)
                tile_ids.append(tile)
                tile_frame.append(frame)
            refs.append(position[key])
    corners = np.zeros((len(tile_ids), 8))
    by_pair: dict[tuple[int, str], list[int]] = {}
    tiles = [tile_from_id(t, tile_size_m, pixel_size_m) for t in tile_ids]
    for i, tile in enumerate(tiles):
        by_pair.setdefault((tile.epsg, crs_list[tile_frame[i]]), []).append(i)
    for (epsg, crs), rows in by_pair.items():
        bounds = np.array([tiles[i].bounds for i in rows], dtype=np.float64)  # xmin, ymin, xmax, ymax
        # Corners NW, NE, SE, SW: a UTM square is a slightly turned quadrilateral in EPSG:3035.
        xs = bounds[:, [0, 2, 2, 0]]
        ys = bounds[:, [3, 3, 1, 1]]
        tx, ty = Transformer.from_crs(f"EPSG:{epsg}", crs, always_xy=True).transform(xs, ys)
        corners[rows] = np.stack([tx, ty], axis=2).reshape(len(rows), 8)

    products = []
    for code, product_pus in sorted(pus_of_product.items()):
        if code in DOMS:
            dom = DOMS[code]
            crs = f"EPSG:{dom.epsg}"
            if crs not in frame_of_crs:
                continue
            x0, y0, x1, y1 = dom.lonlat_box
            tx, ty = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform([x0, x1, x1, x0], [y1, y1, y0, y0])
            quad = [round(v) for pair in zip(tx, ty) for v in pair]
        else:
            crs = MAIN_CRS
            x0, y0, x1, y1 = cell_bounds(code)
            quad = [round(v) for v in (x0, y1, x1, y1, x1, y0, x0, y0)]
        products.append({"code": code, "frame": frame_of_crs[crs], "pus": list(product_pus), "quad": quad})

    for frame in frames:
        members = [p for p in pus if p["frame"] == frame["id"]]
        xs = [x for p in members for ring in p["rings"] for x, _ in ring]
        ys = [y for p in members for ring in p["rings"] for _, y in ring]
        rows = [i for i, f in enumerate(tile_frame) if f == frame["id"]]
        if rows:
            xs += corners[rows][:, 0::2].ravel().tolist()
            ys += corners[rows][:, 1::2].ravel().tolist()
        frame["bounds"] = [round(min(xs)), round(min(ys)), round(max(xs)), round(max(ys))]
    return {
        "frames": frames,
        "pus": pus,
        "tiles": {"ids": tile_ids, "frame": tile_frame, "corners": np.round(corners).astype(int).ravel().tolist()},
        "pu_tiles": pu_tiles,
        "products": products,
        "tile_size_m": tile_size_m,
    }


def _frame_label(units, crs: str) -> str:
    from clcplus_ops.geo.aoi import DOMS

    names = [d.name for d in DOMS.values() if f"EPSG:{d.epsg}" == crs]
    return ", ".join(names) if names else ", ".join(u.name for u in units.values() if u.crs == crs)


def layout_geojson(config, layout: str, lonlat: bool = True, states: Mapping[str, Mapping] | None = None) -> dict:
    """The layout map as a GeoJSON FeatureCollection (PUs, then one feature per PU tile), in
    lon/lat (RFC 7946) or, with ``lonlat=False``, in EPSG:3035 (the main frame's CRS, for GIS
    users; a ``crs`` member names it). ``states``, as returned by :func:`production_state`, adds
    each PU tile's state and each PU's progress."""
    from pyproj import Transformer

    data = layout_map(config, layout)
    target = "EPSG:4326" if lonlat else MAIN_CRS
    crs_of = {f["id"]: f["crs"] for f in data["frames"]}
    transformers = {i: Transformer.from_crs(crs, target, always_xy=True) for i, crs in crs_of.items()}
    states = states or {}

    def point(frame: int, x: float, y: float) -> list[float]:
        tx, ty = transformers[frame].transform(x, y)
        return [round(tx, 6), round(ty, 6)] if lonlat else [round(tx), round(ty)]

    features = []
    for pu in data["pus"]:
        rings = [[point(pu["frame"], x, y) for x, y in ring] for ring in pu["rings"]]
        props = {"kind": "production_unit", "pu_id": pu["pu_id"], "name": pu["name"], "crs": pu["crs"]}
        summary = states.get(pu["pu_id"])
        if summary:
            props.update({k: summary[k] for k in ("run_state", "tiles_total", "tiles_done", "progress", "stage", "eta_s")})
        features.append({"type": "Feature", "properties": props,
                         "geometry": {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}})
    ids, corners, frames = data["tiles"]["ids"], data["tiles"]["corners"], data["tiles"]["frame"]
    for pu in data["pus"]:
        summary = states.get(pu["pu_id"]) or {}
        tile_states = summary.get("tile_states") or []
        for k, i in enumerate(data["pu_tiles"][pu["pu_id"]]):
            quad = corners[8 * i:8 * i + 8]
            ring = [point(frames[i], quad[j], quad[j + 1]) for j in range(0, 8, 2)]
            props = {"kind": "tile", "tile_id": ids[i], "pu_id": pu["pu_id"]}
            if k < len(tile_states):
                props["state"] = tile_states[k]
            features.append({"type": "Feature", "properties": props,
                             "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]}})
    collection = {"type": "FeatureCollection", "features": features}
    if not lonlat:
        collection["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3035"}}
    return collection


# ------------------------------------------------------------------------------- states


def tile_state(states: Sequence[str | None]) -> tuple[str, int]:
    """The state of one tile from its tasks' states (in chain order, ``None`` where a task has
    no instance or no state yet), and the position of the task that decides it (the one an
    operator opens: the failed one, the one up for retry, the one running or next, the last
    when done)."""
    for wanted in ("failed", "upstream_failed"):  # the real failure before its consequences
        if wanted in states:
            return FAILED, states.index(wanted)
    if "up_for_retry" in states:
        return UP_FOR_RETRY, states.index("up_for_retry")
    if states and states[-1] in _FINISHED_OK:
        return DONE, len(states) - 1
    for i, state in enumerate(states):
        if state in _ACTIVE:
            return RUNNING, i
    finished = [i for i, state in enumerate(states) if state in _FINISHED_OK]
    if finished:  # between two tasks of the chain: the tile is under way
        return RUNNING, min(finished[-1] + 1, len(states) - 1)
    return NOT_STARTED, 0


def worst_state(states: Iterable[str]) -> str:
    """The most urgent of several tile states (see ``TILE_STATES``)."""
    ranked = [s for s in states if s in TILE_STATES]
    return min(ranked, key=TILE_STATES.index) if ranked else NO_DAG


def production_state(pu_tiles: Mapping[str, Sequence[str]], runs: Sequence[Mapping], task_instances: Iterable[Mapping],
                     plans: Mapping[tuple[str, str], Sequence[str]], *, tile_tasks: Sequence[str],
                     pu_tasks: Sequence[str], now: dt.datetime, readable: Iterable[str] | None = None) -> dict[str, dict]:
    """Per PU, the state of a reference year's production from Airflow's rows.

    ``pu_tiles``: each PU's tile ids (the layout's tile index). ``runs``: the year's DAG runs, dicts
    with ``pu_id``, ``run_id``, ``state``, ``start_date``, ``end_date`` (aware datetimes or None)
    and ``queued_at``. ``task_instances``: dicts with ``pu_id``, ``run_id``, ``task_id``,
    ``map_index``, ``rendered_map_index``, ``state``, ``try_number``, ``start_date``, ``end_date``.
    ``plans``: the tile ids a run mapped, by (pu_id, run_id) (plan_tiles' return value: map index
    i is its i-th tile, before the instance has rendered its name). ``tile_tasks``: the mapped
    tile chain's task ids in order; ``pu_tasks``: the PU's own tasks in order (a mapped group by
    its group id). ``readable``: the PUs whose DAG exists and the user may read (None: all).

    A tile's state comes from the newest run that mapped it (an ``only_tiles`` re-run leaves the
    other tiles as the earlier run left them). Progress is done tiles / all tiles of the PU; the
    ETA is the time the remaining tiles take at the pace of the newest run so far (its tiles done
    over its elapsed time), given while that run is going and has finished a tile.
    """
    readable = set(pu_tiles) if readable is None else set(readable)
    ordered = sorted(runs, key=lambda r: (r["pu_id"], _sort_time(r)))
    runs_of: dict[str, list[Mapping]] = {}
    for run in ordered:
        runs_of.setdefault(run["pu_id"], []).append(run)
    chain_pos = {task: i for i, task in enumerate(tile_tasks)}
    # (pu, run) -> tile -> [state per chain task], and the instances themselves for links.
    chains: dict[tuple[str, str], dict[str, list]] = {}
    pu_level: dict[tuple[str, str], dict[str, list[Mapping]]] = {}
    for ti in task_instances:
        key = (ti["pu_id"], ti["run_id"])
        if ti["task_id"] in chain_pos:
            if ti["map_index"] is None or ti["map_index"] < 0:
                continue  # the unexpanded placeholder of a mapped task: no tile yet
            plan = plans.get(key) or ()
            tile = ti.get("rendered_map_index") or (plan[ti["map_index"]] if ti["map_index"] < len(plan) else None)
            if tile is None:
                continue
            slot = chains.setdefault(key, {}).setdefault(tile, [None] * len(tile_tasks))
            slot[chain_pos[ti["task_id"]]] = ti
        else:
            group = ti["task_id"].split(".", 1)[0]
            pu_level.setdefault(key, {}).setdefault(group, []).append(ti)

    out = {}
    for pu_id, tiles in pu_tiles.items():
        summary = {"pu_id": pu_id, "readable": pu_id in readable, "tiles_total": len(tiles)}
        if pu_id not in readable:
            out[pu_id] = {**summary, "run": None, "runs": 0, "tile_states": [NO_DAG] * len(tiles), "tile_links": [None] * len(tiles),
                          "counts": {}, "tiles_done": 0, "progress": None, "stage": None, "run_state": None,
                          "elapsed_s": None, "eta_s": None}
            continue
        pu_runs = runs_of.get(pu_id, [])
        states, links = [], []
        for tile in tiles:
            state, link = NOT_STARTED, None
            for run in reversed(pu_runs):  # newest first
                chain = chains.get((pu_id, run["run_id"]), {}).get(tile)
                if chain is None:
                    continue
                state, pos = tile_state([ti["state"] if ti else None for ti in chain])
                ti = chain[pos]
                link = {"run_id": run["run_id"], "task_id": tile_tasks[pos],
                        "map_index": ti["map_index"] if ti else _map_index(plans.get((pu_id, run["run_id"])), tile),
                        "try_number": ti["try_number"] if ti else None}
                break
            states.append(state)
            links.append(link)
        counts = {s: states.count(s) for s in TILE_STATES}
        done = counts[DONE]
        latest = pu_runs[-1] if pu_runs else None
        summary.update(tile_states=states, tile_links=links, counts=counts, tiles_done=done, runs=len(pu_runs),
                       progress=round(done / len(tiles), 4) if tiles else None)
        if latest is None:
            out[pu_id] = {**summary, "run": None, "run_state": None, "stage": None, "elapsed_s": None, "eta_s": None}
            continue
        started = latest.get("start_date")
        ended = latest.get("end_date")
        elapsed = (((ended or now) - started).total_seconds()) if started else None
        key = (pu_id, latest["run_id"])
        done_here = sum(1 for chain in chains.get(key, {}).values()
                        if tile_state([ti["state"] if ti else None for ti in chain])[0] == DONE)
        remaining = len(tiles) - done
        eta = None
        if latest["state"] == "running" and elapsed and done_here and remaining > 0:
            eta = round(elapsed * remaining / done_here)
        stage, stage_link = _current_stage(latest["state"], pu_level.get(key, {}), chains.get(key, {}), pu_tasks,
                                           tile_tasks)
        out[pu_id] = {**summary, "run": {"run_id": latest["run_id"], "state": latest["state"],
                                         "start_date": _iso(started), "end_date": _iso(ended)},
                      "run_state": latest["state"], "stage": stage, "stage_link": stage_link,
                      "elapsed_s": round(elapsed) if elapsed is not None else None, "eta_s": eta,
                      "tiles_done_this_run": done_here}
    return out


def _current_stage(run_state: str, groups: Mapping[str, list[Mapping]], chains: Mapping[str, list],
                   pu_tasks: Sequence[str], tile_tasks: Sequence[str]) -> tuple[str | None, dict | None]:
    """Where a run is: its failed task, else the tasks at work (the tile group counts as one),
    else, while it runs, the first task not finished yet."""
    tile_group = tile_tasks[0].split(".", 1)[0] if tile_tasks else None

    def link(ti: Mapping) -> dict:
        return {"task_id": ti["task_id"], "map_index": ti["map_index"], "try_number": ti["try_number"]}

    def states_of(task: str) -> list[tuple[str | None, Mapping | None]]:
        if task == tile_group:
            return [(ti["state"] if ti else None, ti) for chain in chains.values() for ti in chain]
        return [(ti["state"], ti) for ti in groups.get(task, [])]

    for wanted in (("failed",), ("up_for_retry",), tuple(_ACTIVE)):
        for task in pu_tasks:
            for state, ti in states_of(task):
                if state in wanted and ti is not None:
                    return task, link(ti)
    if run_state != "running":
        return None, None
    for task in pu_tasks:
        found = states_of(task)
        if not found or any(state not in _FINISHED_OK for state, _ in found):
            return task, None
    return None, None


def _map_index(plan: Sequence[str] | None, tile: str) -> int | None:
    return list(plan).index(tile) if plan and tile in plan else None


def _sort_time(run: Mapping) -> dt.datetime:
    for key in ("start_date", "queued_at", "logical_date"):
        if run.get(key) is not None:
            return run[key]
    return dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def product_tasks(codes: Iterable[str], runs: Sequence[Mapping], task_instances: Iterable[Mapping],
                  plans: Mapping[tuple[str, str], Sequence[str]], *, product_tasks: Sequence[str]) -> dict[str, dict]:
    """Per product tile code, the task chain that made (or is making) it: the newest run whose
    product group for that tile did not skip (a tile another PU's run claimed skips in every
    other run). Rows as for :func:`production_state`; ``plans``: ready_product_tiles' return
    value by (pu_id, run_id). Returns {code: {"state", "pu_id", "run_id", "task_id", "map_index",
    "try_number"}} for the codes some run mapped."""
    order = {(r["pu_id"], r["run_id"]): _sort_time(r) for r in runs}
    pos = {task: i for i, task in enumerate(product_tasks)}
    chains: dict[tuple[str, str, str], list] = {}
    for ti in task_instances:
        key = (ti["pu_id"], ti["run_id"])
        if ti["task_id"] not in pos or key not in order or ti["map_index"] is None or ti["map_index"] < 0:
            continue
        plan = plans.get(key) or ()
        code = ti.get("rendered_map_index") or (plan[ti["map_index"]] if ti["map_index"] < len(plan) else None)
        if code is not None:
            chains.setdefault((code, *key), [None] * len(product_tasks))[pos[ti["task_id"]]] = ti
    wanted = set(codes)
    out: dict[str, dict] = {}
    for (code, pu_id, run_id), chain in sorted(chains.items(), key=lambda item: order[item[0][1:]]):
        states = [ti["state"] if ti else None for ti in chain]
        if code not in wanted or (states and all(s == "skipped" for s in states)):
            continue
        state, i = tile_state(states)
        ti = chain[i]
        out[code] = {"state": state, "pu_id": pu_id, "run_id": run_id, "task_id": product_tasks[i],
                     "map_index": ti["map_index"] if ti else _map_index(plans.get((pu_id, run_id)), code),
                     "try_number": ti["try_number"] if ti else None}
    return out
