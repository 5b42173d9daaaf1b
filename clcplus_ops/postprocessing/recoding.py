"""The recode stage (ATBD 3.1.6 d): after the calibration, the ordered rules of
``recoding.rules`` (OSM, LPIS/GSAA, expert AOIs; :mod:`clcplus_ops.postprocessing.recoding_rules`) are
applied to the calibrated classes of the PU's own area. The rules file and every source are
validated before any pixel is touched; a bad one fails the stage naming the rule and the
reason. Output: the final classes (``recode/classes.tif``, uint8, 0 = no class); the layers
stage flags in RASPL where they differ from the calibrated classes. Without a rules file the
classes pass through and the record says so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.postprocessing.recoding_rules import RecodingRulesError, load_rules, recode_block
from clcplus_ops.stage import External, Stage, StageIO, Target, blocks_with_progress


def rules_url(config, year: int) -> str | None:
    """The rules file of ``year`` (``{year}`` replaced) as a URL; None when none is configured."""
    rules = config.recoding.rules
    if not rules:
        return None
    rules = rules.replace("{year}", str(year))
    return rules if "://" in rules else Path(rules).resolve().as_uri()


def _params(config, target: Target, options) -> dict:
    from clcplus_ops.postprocessing.mosaic import area_hash, layout_units, product_grid

    unit = layout_units(config, target.layout)[target.pu_id]
    return {"grid": product_grid(config, unit).to_dict(), "area": area_hash(unit),
            "classes": sorted(config.codes.classes), "block_px": config.blending.block_px}


def _prepare(ctx) -> External:
    from clcplus_ops.postprocessing.mosaic import layout_units

    unit = layout_units(ctx.config, ctx.target.layout)[ctx.target.pu_id]
    area = unit.geometry_in(unit.crs)
    url = rules_url(ctx.config, ctx.target.reference_year)
    if url is None:
        return External(identity={"rules": None}, value={"rules": None, "area": area})
    rules = load_rules(url, store=ctx.store, classes=sorted(ctx.config.codes.classes))
    return External(identity={"rules": rules.identity()}, value={"rules": rules, "url": url, "area": area})


def _compute(io: StageIO) -> dict:
    grid = Grid.from_dict(io.params["grid"])
    classes = np.array(io.params["classes"])
    rules = io.external["rules"]
    with contextlib.ExitStack() as cleanup:
        if rules is not None:
            cleanup.callback(rules.close)  # local copies of s3:// sources
        return _recode(io, grid, classes, rules)


def _recode(io: StageIO, grid: Grid, classes: np.ndarray, rules) -> dict:
    from clcplus_ops.geo.masks import inside
    from clcplus_ops.postprocessing.calibration import top_class

    prepared = rules.prepare(grid) if rules is not None else None
    names = list(rules.names) if rules is not None else []
    changed = dict.fromkeys(names, 0)
    totals = {"own_pixels": 0, "recoded": 0}
    with contextlib.ExitStack() as stack:
        calibrated = stack.enter_context(io.input("calibrate", "probabilities").raster())
        if Grid.of_dataset(calibrated) != grid:
            raise StageInputError(f"{io.target.describe()}: the calibrated probabilities are not on the PU's grid; "
                                  f"re-run calibrate")
        out = stack.enter_context(io.raster("classes", grid, 1, "uint8", 0, "probabilities"))
        out.update_tags(classes=",".join(map(str, classes)), no_class="0")
        for _, _, block in blocks_with_progress(grid, io.params["block_px"], io.log, f"{io.target.pu_id} recode"):
            window = block.window_in(grid)
            encoded = calibrated.read(window=window)
            own = inside(io.external["area"], block)
            before = top_class(encoded, classes)
            before[~own] = 0
            after = before
            if prepared is not None and own.any():
                after, counts = recode_block(before, block, prepared, own)
                for name, count in counts.items():
                    changed[name] += int(count)
            totals["own_pixels"] += int(own.sum())
            totals["recoded"] += int((after != before).sum())
            out.write(after[None], window=window)
    if rules is None:
        io.log.info("%s: no recoding rules configured (recoding.rules): the calibrated classes pass through",
                    io.target.describe())
        return {"rules_file": None, "rules": {}, **totals}
    io.log.info("%s: %d px recoded by %s", io.target.describe(), totals["recoded"],
                ", ".join(f"{name} ({n:,} px)" for name, n in changed.items()) or "no rule")
    return {"rules_file": io.external["url"], "rules": changed, **totals,
            "features": prepared.feature_counts(), "warnings": list(rules.warnings)}


RECODE = Stage(
    name="recode",
    scope="pu",
    inputs=("calibrate",),
    outputs={"classes": "recode/classes.tif"},
    prepare=_prepare,
    params=_params,
    compute=_compute,
    summary=("rules_file", "recoded", "rules"),
    permanent_errors=(StageInputError, RecodingRulesError),
    description="fix known misclassifications with the ordered rules of external data (OSM, LPIS, expert AOIs)",
)



