"""Where every artefact lives: the one module that assembles artefact URLs.

Roots come from the configuration (``store.work``, ``models``, ``samples``, ``products``)::

    {work}/{year}/{pu}/plan.json, tiles_done.json         a PU's run
    {work}/{year}/tiles/{tile}/features/, valid_obs.tif   a tile's time series, shared by the PUs covering it
    {work}/{year}/{pu}/tiles/{tile}/...                    a PU's tile (definition, probabilities, filtered)
    {work}/{year}/{pu}/training/...                        a PU's training (audit, evaluation, final model)
    .../_claims/{stage}.{n}.json                           who computes a shared stage now (runner)
    {samples}/sample_db/                                   the sample DB
    {samples}/series/{year}/{tile}/series.parquet          sample time series of a tile
    {models}/{pu}/{version}/                               registered models
    {products}/{year}/{code}/                              a 100 km product tile (layers, metadata, STAC, check)
    {products}/{year}/{code}/revisions/R{nn}.json          its revisions and who makes each
    {products}/delivery/                                   published deliveries (products.publish_url)
    {synthetic}/{year}/catalog.json, truth/, samples/...   the synthetic Sentinel-2 world of a year
    .../_records/{stage}.json                              the record of a stage run at that place

Every id is checked before it touches a location: PU ids against the layout, tile ids against
the grid, versions against ``v0001``..., years against the supported range. Records keep
locations relative to the roots (``work:2025/DEMO1/...``), so a copied or moved store still
judges its stages by its own files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from clcplus_ops.config import Config
from clcplus_ops.errors import InvalidIdError
from clcplus_ops.store import join

ROOTS = ("work", "models", "samples", "products")
RECORDS = "_records"
# ASCII digits and \Z: "v0001\n" or other scripts' digits are not versions (versions make paths).
_VERSION = re.compile(r"\Av[0-9]{4,}\Z")


# --------------------------------------------------------------------------------------------
# Ids


def check_year(config: Config, year) -> int:
    """The reference year as an int, or InvalidIdError naming the supported range."""
    lo, hi = config.time_series.first_reference_year, config.time_series.last_reference_year
    try:
        value = int(year)
    except (TypeError, ValueError):
        raise InvalidIdError(f"reference year {year!r} is not a year") from None
    if str(value) != str(year).strip() or not lo <= value <= hi:
        raise InvalidIdError(f"reference year {year!r} is outside the supported range {lo}..{hi}")
    return value


def check_pu(config: Config, layout: str, pu_id: str) -> str:
    """``pu_id`` if the layout has that production unit, else InvalidIdError."""
    from clcplus_ops.geo.layout import layout_index

    try:
        path = config.layout_path(layout)
    except ValueError as error:
        raise InvalidIdError(str(error)) from None
    ids = [u["pu_id"] for u in layout_index(path)]
    if pu_id not in ids:
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        raise InvalidIdError(f"production unit {pu_id!r} is not in the {layout} layout ({shown})")
    return pu_id


def check_tile(config: Config, tile_id: str):
    """The processing tile of ``tile_id`` on the configured grid, or InvalidIdError."""
    from clcplus_ops.geo.tiles import tile_from_id

    try:
        return tile_from_id(tile_id, config.grid.tile_size_m, config.grid.pixel_size_m)
    except ValueError as error:
        raise InvalidIdError(str(error)) from None


def check_product_tile(code: str) -> str:
    """``code`` if it names a 100 km product tile (``e44n36``) or an overseas department (``gf``)."""
    from clcplus_ops.geo.eea_grid import product_tile

    if not isinstance(code, str):
        raise InvalidIdError(f"product tile {code!r} is not a tile code like e44n36")
    try:
        product_tile(code)
    except ValueError as error:
        raise InvalidIdError(str(error)) from None
    return code


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise InvalidIdError(f"model version {version!r} is not like v0001")
    return version


# --------------------------------------------------------------------------------------------
# The model registry's layout (its API takes the models root, so these take it too)


def model_pu_url(models_root: str, pu_id: str) -> str:
    """``{models}/{pu}``: the folder of a PU's model versions."""
    return join(models_root, pu_id)


def model_version_url(models_root: str, pu_id: str, version: str) -> str:
    """``{models}/{pu}/{version}``: one registered model version."""
    return join(models_root, pu_id, check_version(version))


def sample_db_batches(db_root: str) -> str:
    """``{sample_db}/batches``: the sample DB's append-only batches."""
    return join(db_root, "batches")


def sample_db_batch(db_root: str, batch_id: str) -> str:
    return join(sample_db_batches(db_root), f"{batch_id}.parquet")


# --------------------------------------------------------------------------------------------
# Places


@dataclass(frozen=True)
class Place:
    """A folder holding artefacts, with the records of the stages that write them."""

    base: str

    def file(self, *parts: str) -> str:
        return join(self.base, *parts)

    def record(self, stage: str) -> str:
        return join(self.base, RECORDS, f"{stage}.json")


@dataclass(frozen=True)
class TileSeriesPlace(Place):
    """A tile's Sentinel-2 time series of one reference year: made once, read by every PU whose
    area (with its buffer) covers the tile."""

    def feature(self, name: str) -> str:
        return self.file("features", f"{name}.tif")

    @property
    def valid_obs(self) -> str:
        return self.file("valid_obs.tif")

    @property
    def provenance(self) -> str:
        return self.file("ingest.json")


@dataclass(frozen=True)
class TilePlace(Place):
    """A PU's tile: its definition and what the PU's model makes of the shared time series."""

    @property
    def probabilities(self) -> str:
        return self.file("probabilities.tif")

    @property
    def filtered(self) -> str:
        return self.file("probabilities_filtered.tif")

    @property
    def definition(self) -> str:
        return self.file("tile.json")


@dataclass(frozen=True)
class PUPlace(Place):
    @property
    def plan(self) -> str:
        return self.file("plan.json")

    @property
    def tiles_done(self) -> str:
        return self.file("tiles_done.json")

    @property
    def training(self) -> Place:
        return Place(self.file("training"))


@dataclass(frozen=True)
class WorldPlace(Place):
    """The synthetic Sentinel-2 world of one reference year (a static STAC catalogue)."""

    COLLECTION = "sentinel-2-c1-l2a"

    @property
    def catalog(self) -> str:
        return self.file("catalog.json")

    @property
    def collection_folder(self) -> str:
        return self.file(self.COLLECTION)

    @property
    def collection(self) -> str:
        return self.file(self.COLLECTION, "collection.json")

    def item(self, item_id: str) -> str:
        return self.file(self.COLLECTION, item_id, f"{item_id}.json")

    def asset(self, item_id: str, key: str) -> str:
        return self.file(self.COLLECTION, item_id, f"{key}.tif")

    @property
    def truth(self) -> str:
        return self.file("truth", "ground_truth.tif")

    @property
    def clear_count(self) -> str:
        return self.file("truth", "clear_count.tif")

    @property
    def samples_geojson(self) -> str:
        return self.file("samples", "samples.geojson")

    @property
    def samples_csv(self) -> str:
        return self.file("samples", "samples.csv")

    @property
    def world(self) -> str:
        return self.file("world.json")


def synthetic_world(synthetic_root: str, year: int) -> WorldPlace:
    return WorldPlace(join(synthetic_root, str(int(year))))


def static_catalog_template(synthetic_root: str) -> str:
    """The ``sentinel2.static_catalog`` value that reads a synthetic world (``{year}`` stays)."""
    return join(synthetic_root, "{year}", "catalog.json")


def synthetic_rules_template(synthetic_root: str) -> str:
    """The ``recoding.rules`` value that reads a synthetic world's recoding rules (``{year}`` stays)."""
    return join(synthetic_root, "{year}", "recoding", "rules.yaml")


class Locations:
    """The artefact locations of one configuration."""

    def __init__(self, config: Config):
        self.config = config
        self.roots = {name: getattr(config.store, name) for name in ROOTS}

    # ---- places ----------------------------------------------------------------------------

    def pu(self, year: int, pu_id: str) -> PUPlace:
        return PUPlace(join(self.roots["work"], str(int(year)), pu_id))

    def tile(self, year: int, pu_id: str, tile_id: str) -> TilePlace:
        return TilePlace(join(self.pu(year, pu_id).base, "tiles", tile_id))

    def tile_series(self, year: int, tile_id: str) -> TileSeriesPlace:
        return TileSeriesPlace(join(self.roots["work"], str(int(year)), "tiles", tile_id))

    def training(self, year: int, pu_id: str) -> Place:
        return self.pu(year, pu_id).training

    @cached_property
    def sample_db(self) -> str:
        return join(self.roots["samples"], "sample_db")

    def sample_series(self, year: int, tile_id: str) -> Place:
        return Place(join(self.roots["samples"], "series", str(int(year)), tile_id))

    @property
    def models(self) -> str:
        return self.roots["models"]

    def model(self, pu_id: str, version: str) -> str:
        return model_version_url(self.roots["models"], pu_id, version)

    def synthetic_world(self, year: int) -> WorldPlace:
        return synthetic_world(self.config.synthetic.root, year)

    def product_tile(self, year: int, code: str) -> Place:
        return Place(join(self.roots["products"], str(int(year)), check_product_tile(code)))

    @property
    def delivery(self) -> str:
        """Where deliveries are published: ``products.publish_url``, else ``{products}/delivery``."""
        return self.config.products.publish_url or join(self.roots["products"], "delivery")

    # ---- relative form (in records) ---------------------------------------------------------

    def relative(self, url: str) -> str:
        """``url`` as ``root:path`` (e.g. ``work:2025/DEMO1/plan.json``)."""
        for name in sorted(ROOTS, key=lambda n: -len(self.roots[n])):
            root = self.roots[name]
            if url == root or url.startswith(root + "/"):
                return f"{name}:{url[len(root) + 1:]}"
        raise ValueError(f"{url} is under none of the store roots {self.roots}")

    def resolve(self, location: str) -> str:
        """The URL of a ``root:path`` location under this configuration's roots."""
        name, sep, path = location.partition(":")
        if not sep or name not in self.roots:
            raise ValueError(f"{location!r} is not a root:path location (roots: {', '.join(ROOTS)})")
        return join(self.roots[name], path)
