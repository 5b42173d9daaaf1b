"""What has been delivered for a layout and reference year: per product tile, its revision,
who made it, the area per class, the self-check and where it was published (from the records)."""

from __future__ import annotations

from clcplus_ops.stage import Target


def delivery_summary(config, layout: str, year: int, store=None) -> list[dict]:
    """One entry per product tile of the layout, in code order. A tile not made yet says which
    PUs' final layers it waits for."""
    from clcplus_ops.products.stages import PRODUCT_CHECK, PRODUCT_PUBLISH, PRODUCT_TILE
    from clcplus_ops.products.tiling import layers_not_final, tile_index
    from clcplus_ops.runner import stage_record, store_for

    config = config.for_layout(layout)
    store = store or store_for(config)
    out = []
    for code, pus in sorted(tile_index(config, layout)[1].items()):
        target = Target(layout, year, None, code)
        tile = stage_record(config, PRODUCT_TILE, target, store)
        entry = {"tile": code, "pus": list(pus)}
        if tile is None:
            waiting = {pu: reason for pu in pus if (reason := layers_not_final(config, layout, year, pu, store))}
            out.append({**entry, "state": "waiting" if waiting else "ready", "waiting_for": waiting})
            continue
        check = stage_record(config, PRODUCT_CHECK, target, store)
        published = stage_record(config, PRODUCT_PUBLISH, target, store)
        current = check is not None and check.inputs.get("product_tile") == tile.fingerprint
        entry.update(revision=tile.details["revision"], claimed_by=tile.details["claimed_by"],
                     files=tile.details["files"], area_km2=tile.details["area_km2"],
                     pixels_delivered=tile.details["pixels_delivered"])
        if not current:
            out.append({**entry, "state": "made, not checked"})
            continue
        entry.update(check_passed=check.details["passed"], check_failed=check.details["failed"],
                     rules_checked=check.details["rules_checked"], metadata_valid=check.details.get("metadata_valid"),
                     stac_items_valid=check.details.get("stac_items_valid"), files_checked=check.details.get("files"))
        if published is not None and published.inputs.get("product_check") == check.fingerprint:
            out.append({**entry, "state": "published", "root": published.details["root"],
                        "manifest": published.details["manifest"], "files_published": published.details["published"]})
        else:
            out.append({**entry, "state": "checked, not published" if check.details["passed"] else "failed self-check"})
    return out
