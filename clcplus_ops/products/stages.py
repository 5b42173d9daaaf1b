"""The delivery of a 100 km product tile, as declared stages (scope ``product_tile``, target
``(layout, year, code)``), in the order a PU's run ends with once the tile's PUs all have layers:

* ``product_tile``: the tile's four layers assembled from its PUs' layers as COGs, each with its
  attribute table (``.tif.aux.xml``); the revision is claimed here (:mod:`.revisions`);
* ``product_metadata``: one INSPIRE ISO 19139 record per layer file (:mod:`.metadata`);
* ``product_stac``: quicklooks, STAC items and collections, the delivery zips EEA's QC tool
  takes, and the manifest of every delivered file (:mod:`.catalogue`, :mod:`.quicklook`,
  :mod:`.package`);
* ``product_check``: the self-check equal to EEA's delivery checks on each zip, the STAC items
  validated offline, the manifest verified (:mod:`.selfcheck`); the record names every failed rule;
* ``product_publish``: a tile that passed is published (:mod:`.publish`), never overwriting.

The store holds a tile's files under fixed names (``layers/ras.tif``...); the delivered names
(``CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00.tif``...) carry the revision and are given
in the zips, the STAC items, the manifest and at the published keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import logging
import tempfile
import uuid
from pathlib import Path


import clcplus_ops
from clcplus_ops.errors import PermanentError, StageInputError
from clcplus_ops.geo.eea_grid import LAYERS, product_name, product_tile
from clcplus_ops.geo.grid import Grid
from clcplus_ops.products import revisions, tiling
from clcplus_ops.stage import External, Resources, Stage, StageIO, Target
from clcplus_ops.store import canonical_json

log = logging.getLogger(__name__)

LAYER_TYPES = {"ras": "uint8", "rascl": "uint8", "rasdl": "uint16", "raspl": "uint8"}


class SelfCheckFailed(PermanentError):
    """A product tile failed the self-check: it is not published."""


# --------------------------------------------------------------------------------------------
# Shared parts


def _grid(config, code: str) -> Grid:
    return tiling.tile_grid(config, code)


def _names(config, year: int, code: str, revision: int) -> dict[str, object]:
    epsg = product_tile(code).epsg
    return {layer: product_name(layer, year, code, epsg, config.products.version, revision) for layer in LAYERS}


def _window(config, year: int) -> tuple[dt.date, dt.date]:
    """First and last day of the acquisition window."""
    start, end = config.time_series.window(year)
    return start, end - dt.timedelta(days=1)


def _local(io_input, folder: Path, name: str) -> Path:
    """An input's bytes in a local file called ``name`` (delivered names for zips and publishing)."""
    path = folder / name
    path.write_bytes(io_input.read_bytes())
    return path


# --------------------------------------------------------------------------------------------
# product_tile


def _tile_params(config, target: Target, options) -> dict:
    return {"grid": _grid(config, target.tile_id).to_dict(), "codes": config.codes.model_dump(mode="json"),
            "max_observations": config.layers.max_observations,
            "products": config.products.model_dump(mode="json", include={"version", "blocksize", "product_family"})}


def _tile_prepare(ctx) -> External:
    target = ctx.target
    pus = tiling.pus_of_tile(ctx.config, target.layout, target.tile_id)
    inputs, fingerprints, missing = {}, {}, []
    for pu in pus:
        pu_target = Target(target.layout, target.reference_year, pu)
        reason = tiling.layers_not_final(ctx.config, target.layout, target.reference_year, pu, ctx.store)
        if reason:
            missing.append(f"{pu} ({reason})")
            continue
        record, first = ctx.input_of("layers", "ras", pu_target, "pu")
        inputs[pu] = {"ras": first, **{name: ctx.input_of("layers", name, pu_target, "pu")[1] for name in LAYERS[1:]}}
        fingerprints[pu] = record.fingerprint
    if missing:
        raise tiling.ProductTileNotReady(
            f"product tile {target.tile_id} {target.reference_year} waits for the final layers of "
            f"{'; '.join(missing)} (its PUs: {', '.join(pus)}); it is made by whichever PU finishes last")
    # The content key: what the tile is made of (its PUs' layers), how (the product parameters)
    # and by which code. A new key is a new revision.
    key = hashlib.sha256(canonical_json({"layers": fingerprints, "params": _tile_params(ctx.config, target, {}),
                                         "version": clcplus_ops.__version__}).encode()).hexdigest()
    claimant = ctx.options.get("made_by") or "command line"
    place = ctx.place()
    revision = revisions.claim(ctx.store, place.base, key, claimant)
    if revision.claimed_by != claimant:
        current = ctx.record("product_tile")
        if current is None or current.details.get("revision") != revision.number or current.details.get("key") != key:
            raise revisions.ClaimedElsewhere(
                f"product tile {target.tile_id} {target.reference_year} R{revision.number:02d} is being made by "
                f"{revision.claimed_by}'s run (claimed {revision.date}); this run leaves it to that one")
    return External(identity={"layers": fingerprints, "revision": revision.to_dict()},
                    value={"inputs": inputs, "revision": revision, "key": key, "pus": list(pus)})


def _tile_compute(io: StageIO) -> dict:
    from rasterio.windows import Window

    from clcplus_ops.products import attributes
    from clcplus_ops.products.cog import layer_spec, write_layer_cog

    code, year = io.target.tile_id, io.target.reference_year
    grid = Grid.from_dict(io.params["grid"])
    codes = io.config.codes
    revision: revisions.Revision = io.external["revision"]
    tile = tiling.empty_tile(grid.shape, codes)
    clashes, contributed = 0, {}
    for pu, inputs in sorted(io.external["inputs"].items()):
        with contextlib.ExitStack() as stack:
            datasets = {name: stack.enter_context(inputs[name].raster()) for name in LAYERS}
            windows = tiling.pu_window(grid, Grid.of_dataset(datasets["ras"]))
            if windows is None:
                contributed[pu] = 0
                continue
            into, source = windows
            window = Window.from_slices(*source)
            layers = {name: ds.read(1, window=window) for name, ds in datasets.items()}
        clashes += tiling.paste(tile, into, layers, codes)
        contributed[pu] = int((layers["ras"] != codes.outside).sum())
    if clashes:
        io.log.warning("%s %d: %d px delivered by more than one PU (the PU areas overlap); the later PU's kept",
                       code, year, clashes)
    names = _names(io.config, year, code, revision.number)
    pixel_area = grid.res ** 2
    counts = {}
    for layer in LAYERS:
        spec = layer_spec(layer, codes)
        write_layer_cog(io.output(layer), tile[layer], grid, spec, io.config.products.blocksize)
        counts[layer] = attributes.histogram(tile[layer])
        table = attributes.attribute_table(layer, counts[layer], pixel_area_m2=pixel_area, class_names=codes.classes,
                                           codes=codes, max_observations=io.config.layers.max_observations)
        io.write_bytes(f"{layer}_attributes", attributes.aux_xml_bytes(table))
        io.write_bytes(f"{layer}_colours", attributes.clr_bytes(spec.colours))
    ras = counts["ras"]
    delivered = sum(n for value, n in ras.items() if value != codes.outside)
    area_km2 = {str(value): round(n * pixel_area / 1e6, 4) for value, n in sorted(ras.items()) if value != codes.outside}
    io.log.info("%s %d R%02d: %d px delivered by %s (%s)", code, year, revision.number, delivered,
                ", ".join(io.external["pus"]), ", ".join(f"{pu} {n}" for pu, n in contributed.items()))
    return {"revision": revision.number, "key": io.external["key"], "revision_date": revision.date.isoformat(),
            "claimed_by": revision.claimed_by, "pus": io.external["pus"], "pixels_by_pu": contributed,
            "files": {layer: name.file() for layer, name in names.items()}, "pixels_delivered": delivered,
            "area_km2": area_km2, "overlapping_px": clashes}


def _tile_outputs(config) -> dict[str, str]:
    out = {}
    for layer in LAYERS:
        out[layer] = f"layers/{layer}.tif"
        out[f"{layer}_attributes"] = f"layers/{layer}.tif.aux.xml"
        out[f"{layer}_colours"] = f"layers/{layer}.tif.clr"
    return out


PRODUCT_TILE = Stage(
    name="product_tile",
    scope="product_tile",
    outputs=_tile_outputs,
    prepare=_tile_prepare,
    params=_tile_params,
    compute=_tile_compute,
    options=("made_by",),
    summary=("revision", "pixels_delivered", "claimed_by"),
    permanent_errors=(StageInputError, revisions.RevisionsExhausted),
    skip_errors=(revisions.ClaimedElsewhere,),
    resources=Resources(memory="medium"),
    description="the 100 km tile's RAS, RASCL, RASDL and RASPL from its PUs' layers, as COGs with attribute tables",
)


# --------------------------------------------------------------------------------------------
# product_metadata


def _metadata_of(config, code: str, year: int, details: dict, layer: str):
    from clcplus_ops.products.metadata import Contact, ProductMetadata

    grid = _grid(config, code)
    west, south, east, north = grid.footprint_lonlat().bounds
    start, end = _window(config, year)
    settings = config.products
    names = ", ".join(details["pus"])
    lineage = (
        f"Classified from the Sentinel-2 Level-2A time series of the acquisition window {start} to {end} "
        f"(10-day composites of the cloud-free observations) with a temporal convolutional network (TempCNN) "
        f"trained per production unit; filtered with an edge-preserving bilateral filter, blended across the "
        f"overlaps of neighbouring production units, calibrated against the previous reference years' "
        f"productions to suppress spurious changes, recoded by rules from ancillary data (OpenStreetMap, "
        f"LPIS/GSAA, expert areas) and assembled into the 100 km tile {code.upper()} from the production "
        f"units {names} by clcplus_ops {clcplus_ops.__version__}.")
    return ProductMetadata(
        file_name=details["files"][layer], layer=layer, reference_year=year, tile=code, epsg=grid.epsg,
        bounds_wgs84=(west, south, east, north), width=grid.width, height=grid.height,
        acquisition_start=start, acquisition_end=end,
        revision_date=dt.date.fromisoformat(details["revision_date"]), version=settings.version,
        revision=details["revision"], lineage=lineage,
        producer=Contact(settings.producer_organisation, settings.producer_email, settings.producer_url),
        metadata_contact=Contact(settings.metadata_organisation, settings.metadata_email))


def _metadata_params(config, target: Target, options) -> dict:
    from clcplus_ops.products.metadata import template_identity

    settings = config.products
    return {"window": [d.isoformat() for d in _window(config, target.reference_year)], "templates": template_identity(),
            "contacts": settings.model_dump(mode="json", include={"producer_organisation", "producer_email",
                                                                  "producer_url", "metadata_organisation",
                                                                  "metadata_email", "version"})}


def _metadata_compute(io: StageIO) -> dict:
    from clcplus_ops.products.metadata import metadata_problems, render_metadata

    details = io.upstream("product_tile")
    code, year = io.target.tile_id, io.target.reference_year
    problems = {}
    for layer in LAYERS:
        xml = render_metadata(_metadata_of(io.config, code, year, details, layer))
        io.write_bytes(layer, xml)
        found = metadata_problems(xml, details["files"][layer])
        if found:  # the self-check stops the tile; say it here too, where the record is made
            io.log.error("%s %d %s metadata: %s", code, year, layer, "; ".join(found))
            problems[layer] = found
    return {"problems": problems}


PRODUCT_METADATA = Stage(
    name="product_metadata",
    scope="product_tile",
    inputs=("product_tile",),
    outputs={layer: f"metadata/{layer}.xml" for layer in LAYERS},
    params=_metadata_params,
    compute=_metadata_compute,
    permanent_errors=(StageInputError,),
    description="one INSPIRE ISO 19139 metadata record per layer file of the tile",
)


# --------------------------------------------------------------------------------------------
# product_stac: quicklooks, STAC, zips, manifest

STAC_ROOT = "stac"


def delivery_keys(year: int, code: str, name) -> dict[str, str]:
    """Published keys (under the delivery root) of one layer file and its companions."""
    from clcplus_ops.products.catalogue import collection_id

    folder = f"{year}/{code.upper()}"
    stem = name.stem
    return {"data": f"{folder}/{stem}.tif", "attributes": f"{folder}/{stem}.tif.aux.xml",
            "colours": f"{folder}/{stem}.tif.clr",
            "metadata": f"{folder}/{stem}.xml", "thumbnail": f"{folder}/{stem}.png", "zip": f"{folder}/{stem}.zip",
            "item": f"{STAC_ROOT}/{collection_id(name.layer, year)}/{stem}.json",
            "collection": f"{STAC_ROOT}/{collection_id(name.layer, year)}/collection.json"}


def manifest_key(year: int, code: str, ras_name) -> str:
    stem = ras_name.stem.replace("_RAS_", "_", 1)
    return f"{year}/{code.upper()}/{stem}_manifest.json"


def _relative(from_key: str, to_key: str) -> str:
    import posixpath

    return posixpath.relpath(to_key, posixpath.dirname(from_key))


def _layout_bbox(config, layout: str) -> tuple[float, float, float, float]:
    from clcplus_ops.postprocessing.mosaic import layout_units

    import shapely

    return tuple(round(v, 6) for v in shapely.union_all([u.geometry for u in layout_units(config, layout).values()]).bounds)


def _stac_params(config, target: Target, options) -> dict:
    return {"quicklook_px": config.products.quicklook_px, "bbox": _layout_bbox(config, target.layout),
            "window": [d.isoformat() for d in _window(config, target.reference_year)],
            "producer": config.products.producer_organisation}


def _stac_compute(io: StageIO) -> dict:
    from shapely.geometry import mapping

    from clcplus_ops.products import catalogue, package
    from clcplus_ops.products.cog import layer_spec
    from clcplus_ops.products.quicklook import write_quicklook

    details = io.upstream("product_tile")
    code, year = io.target.tile_id, io.target.reference_year
    grid = _grid(io.config, code)
    names = _names(io.config, year, code, details["revision"])
    start, end = _window(io.config, year)
    revision_date = dt.date.fromisoformat(details["revision_date"])
    codes = io.config.codes
    footprint = grid.footprint_lonlat()
    entries = []
    with tempfile.TemporaryDirectory(prefix="clcplus-stac-") as scratch:
        folder = Path(scratch)
        for layer in LAYERS:
            name, keys = names[layer], delivery_keys(year, code, names[layer])
            tif = _local(io.input("product_tile", layer), folder, Path(keys["data"]).name)
            aux = _local(io.input("product_tile", f"{layer}_attributes"), folder, Path(keys["attributes"]).name)
            clr = _local(io.input("product_tile", f"{layer}_colours"), folder, Path(keys["colours"]).name)
            xml = _local(io.input("product_metadata", layer), folder, Path(keys["metadata"]).name)
            png = write_quicklook(tif, io.output(f"{layer}_quicklook"), io.params["quicklook_px"])
            zipped = package.delivery_zip(io.output(f"{layer}_zip"), [tif, aux, xml, clr])
            spec = layer_spec(layer, codes)
            assets = {role: catalogue.TileAsset(_relative(keys["item"], keys[role]), path)
                      for role, path in (("data", tif), ("metadata", xml), ("attributes", aux), ("thumbnail", png))}
            item = catalogue.tile_item(
                file_stem=name.stem, layer=layer, reference_year=year, tile=code, epsg=grid.epsg, shape=grid.shape,
                transform=tuple(grid.transform)[:6], bbox_native=grid.bounds, bbox_wgs84=footprint.bounds,
                footprint_wgs84=mapping(footprint), acquisition_start=start, acquisition_end=end,
                revision_date=revision_date, nodata=spec.nodata, dtype=spec.dtype, assets=assets,
                collection_href=_relative(keys["item"], keys["collection"]),
                class_names=catalogue.ras_class_names() if layer == "ras" else None,
                colours=spec.colours if layer == "ras" else None)
            catalogue.validate_offline(item)
            io.write_bytes(f"{layer}_item", catalogue.to_json_bytes(item))
            collection = catalogue.layer_collection(layer, year, io.params["bbox"], start, end, io.params["producer"])
            catalogue.validate_offline(collection)
            io.write_bytes(f"{layer}_collection", catalogue.to_json_bytes(collection))
            for key, path in ((keys["data"], tif), (keys["attributes"], aux), (keys["colours"], clr), (keys["metadata"], xml),
                              (keys["thumbnail"], png), (keys["zip"], zipped), (keys["item"], io.output(f"{layer}_item"))):
                entries.append(package.file_entry(path, key))
    manifest = package.manifest(entries, tile=code, reference_year=year, version=io.config.products.version,
                                revision=details["revision"], producer=io.params["producer"])
    io.write_bytes("manifest", package.manifest_bytes(manifest))
    return {"files": len(entries), "manifest": manifest_key(year, code, names["ras"])}


def _stac_outputs(config) -> dict[str, str]:
    out = {"manifest": "delivery/manifest.json"}
    for layer in LAYERS:
        out.update({f"{layer}_quicklook": f"delivery/{layer}.png", f"{layer}_zip": f"delivery/{layer}.zip",
                    f"{layer}_item": f"stac/{layer}.item.json", f"{layer}_collection": f"stac/{layer}.collection.json"})
    return out


PRODUCT_STAC = Stage(
    name="product_stac",
    scope="product_tile",
    inputs=("product_tile", "product_metadata"),
    outputs=_stac_outputs,
    params=_stac_params,
    compute=_stac_compute,
    permanent_errors=(StageInputError,),
    description="quicklooks, STAC items and collections, the delivery zips and the manifest of the tile",
)


# --------------------------------------------------------------------------------------------
# product_check


def _check_params(config, target: Target, options) -> dict:
    from clcplus_ops.postprocessing.mosaic import area_hash, layout_units

    units = layout_units(config, target.layout)
    pus = tiling.pus_of_tile(config, target.layout, target.tile_id)
    return {"pus": {pu: area_hash(units[pu]) for pu in pus}, "aoi_buffer_m": config.grid.aoi_buffer_m,
            "codes": config.codes.model_dump(mode="json"), "max_observations": config.layers.max_observations}


def _check_compute(io: StageIO) -> dict:
    import json

    import pystac

    from clcplus_ops.postprocessing.mosaic import layout_units
    from clcplus_ops.products import catalogue
    from clcplus_ops.products.metadata import metadata_problems
    from clcplus_ops.products.selfcheck import RuleResult, check_delivery_zip

    code, year = io.target.tile_id, io.target.reference_year
    grid = _grid(io.config, code)
    units = layout_units(io.config, io.target.layout)
    required = tiling.delivered_mask(grid, [units[pu] for pu in io.params["pus"]], io.params["aoi_buffer_m"])
    report: dict[str, list[dict]] = {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="clcplus-check-") as scratch:
        folder = Path(scratch)
        manifest = io.input("product_stac", "manifest").read_json()
        listed = {entry["name"]: entry for entry in manifest["files"]}
        details = io.upstream("product_tile")
        for layer in LAYERS:
            stem = Path(details["files"][layer]).stem
            zipped = _local(io.input("product_stac", f"{layer}_zip"), folder, f"{stem}.zip")
            results = check_delivery_zip(zipped, metadata_check=metadata_problems, required=required, grid=grid,
                                         codes=io.config.codes, max_observations=io.params["max_observations"],
                                         reference_year=year)
            item_bytes = io.input("product_stac", f"{layer}_item").read_bytes()
            try:
                catalogue.validate_offline(pystac.Item.from_dict(json.loads(item_bytes)))
                results.append(RuleResult("clcplus.stac.item", True, "the STAC item validates (core, projection, "
                                          "file and raster schemas, offline)"))
            except Exception as error:  # noqa: BLE001 - any validation failure is the rule's failure
                results.append(RuleResult("clcplus.stac.item", False, f"the STAC item does not validate: {error}"))
            zip_entry = next((e for name, e in listed.items() if name.endswith(f"/{stem}.zip")), None)
            zip_sha = hashlib.sha256(zipped.read_bytes()).hexdigest()
            ok = zip_entry is not None and zip_entry["sha256"] == zip_sha and zip_entry["size"] == zipped.stat().st_size
            results.append(RuleResult("clcplus.manifest", ok, "the manifest lists the zip with its size and SHA-256"
                                      if ok else f"the manifest does not list {stem}.zip with its size and SHA-256"))
            report[layer] = [{"rule": r.rule, "passed": r.passed, "message": r.message} for r in results]
            failed += [f"{stem}: {r.rule}: {r.message}" for r in results if not r.passed]
    io.write_bytes("report", (json.dumps({"tile": code, "reference_year": year, "passed": not failed,
                                          "rules": report}, indent=2, sort_keys=True) + "\n").encode())
    for line in failed:
        io.log.error("self-check failed: %s", line)
    rules = sum(len(v) for v in report.values())
    passed = [r["rule"] for results in report.values() for r in results if r["passed"]]
    metadata_valid = sum(rule.endswith(".inspire") for rule in passed)
    stac_valid = sum(rule == "clcplus.stac.item" for rule in passed)
    io.log.info("%s %d: self-check %s (%d rules on %d files, %d failed; %d metadata records and %d STAC items valid)",
                code, year, "passed" if not failed else "FAILED", rules, len(LAYERS), len(failed), metadata_valid,
                stac_valid)
    return {"passed": not failed, "failed": failed, "rules_checked": rules, "metadata_valid": metadata_valid,
            "stac_items_valid": stac_valid, "files": len(LAYERS)}


PRODUCT_CHECK = Stage(
    name="product_check",
    scope="product_tile",
    inputs=("product_tile", "product_metadata", "product_stac"),
    outputs={"report": "check/report.json"},
    params=_check_params,
    compute=_check_compute,
    summary=("passed", "failed"),
    permanent_errors=(StageInputError,),
    description="the self-check equal to EEA's delivery checks, on each delivery zip",
)


# --------------------------------------------------------------------------------------------
# product_publish


def _publish_prepare(ctx) -> External:
    from clcplus_ops.locations import Locations

    record = ctx.record("product_check")
    if record is not None and not record.details.get("passed"):
        raise SelfCheckFailed(f"product tile {ctx.target.tile_id} {ctx.target.reference_year} failed the self-check "
                              f"and is not published: " + "; ".join(record.details.get("failed", [])))
    root = Locations(ctx.config).delivery
    return External(identity={"root": root}, value={"store": ctx.store, "root": root})


def _publish_compute(io: StageIO) -> dict:
    from clcplus_ops.products.publish import Deliverable, publish

    details = io.upstream("product_tile")
    code, year = io.target.tile_id, io.target.reference_year
    names = _names(io.config, year, code, details["revision"])
    with tempfile.TemporaryDirectory(prefix="clcplus-publish-") as scratch:
        folder = Path(scratch)
        files, counter = [], itertools.count()

        def local(stage: str, name: str) -> Path:
            return _local(io.input(stage, name), folder, f"{next(counter):03d}")

        for layer in LAYERS:
            keys = delivery_keys(year, code, names[layer])
            files += [Deliverable(local("product_tile", layer), keys["data"]),
                      Deliverable(local("product_tile", f"{layer}_attributes"), keys["attributes"]),
                      Deliverable(local("product_tile", f"{layer}_colours"), keys["colours"]),
                      Deliverable(local("product_metadata", layer), keys["metadata"]),
                      Deliverable(local("product_stac", f"{layer}_quicklook"), keys["thumbnail"]),
                      Deliverable(local("product_stac", f"{layer}_zip"), keys["zip"]),
                      Deliverable(local("product_stac", f"{layer}_collection"), keys["collection"]),
                      Deliverable(local("product_stac", f"{layer}_item"), keys["item"])]
        files.append(Deliverable(local("product_stac", "manifest"), manifest_key(year, code, names["ras"])))
        attempt = f"{year}-{code}-R{details['revision']:02d}-"  # this tile revision's publication
        published = publish(io.external["store"], files, io.external["root"],
                            token=f"{attempt}{uuid.uuid4().hex[:12]}", stale=attempt)
    # The receipt lists what the publication is (keys under the root, sizes, SHA-256), not how
    # this attempt went: a retry after a kill mid-upload, or a publication into another root,
    # writes the same bytes. The root and the count of new objects are in the record's summary.
    io.write_json("receipt", {"files": [{"key": p.key, "size": p.size, "sha256": p.sha256} for p in published]})
    new = sum(p.new for p in published)
    io.log.info("%s %d R%02d: %d files published under %s (%d new, %d already there)", code, year,
                details["revision"], len(published), io.external["root"], new, len(published) - new)
    return {"root": io.external["root"], "published": len(published), "new": new,
            "manifest": f"{io.external['root']}/{manifest_key(year, code, names['ras'])}"}


PRODUCT_PUBLISH = Stage(
    name="product_publish",
    scope="product_tile",
    inputs=("product_tile", "product_metadata", "product_stac", "product_check"),
    outputs={"receipt": "publish/receipt.json"},
    prepare=_publish_prepare,
    compute=_publish_compute,
    summary=("published", "new", "manifest"),
    permanent_errors=(StageInputError, SelfCheckFailed),
    description="the tile's delivery published: staged, verified, promoted; never overwriting",
)

PRODUCT_STAGES = (PRODUCT_TILE, PRODUCT_METADATA, PRODUCT_STAC, PRODUCT_CHECK, PRODUCT_PUBLISH)
