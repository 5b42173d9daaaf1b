"""What a stage is: a declaration. The runner (:mod:`clcplus_ops.runner`) does the rest.

A stage declares

* ``name`` and ``scope``: what it runs for (a PU's tile, a tile shared by the PUs covering it,
  a PU, a PU's training, a tile's samples, a product tile) and so where its outputs and record
  live (:mod:`clcplus_ops.locations`);
* ``inputs``: earlier stages of the same target whose committed outputs it reads
  (``input_scopes`` names those that run at another scope: a PU's tile reads the shared time
  series);
* ``prepare``: the reading of external sources (scene archive, sample DB, model registry,
  other targets' records); it returns their identity, which enters the fingerprint, and the
  value the computation works on;
* ``outputs``: output names and their file names under the target's folder;
* ``params``: the configuration values that enter its fingerprint;
* ``resources``: where Airflow runs it (pool, queue, memory class);
* ``compute``: the transformation. It sees a :class:`StageIO`: inputs by name (arrays, tables,
  JSON), outputs by name (local files to fill), the parameters and the prepared external
  value; no URL and no record.

Pure array functions (interpolation, TempCNN inference, the bilateral filter, Cleanlab, the
trainer) stay in their modules and take plain arrays; ``compute`` only wires them to the
named inputs and outputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clcplus_ops.errors import StageInputError

if TYPE_CHECKING:
    from clcplus_ops.config import Config
    from clcplus_ops.geo.grid import Grid

Scope = Literal["pu", "training", "tile", "shared_tile", "sample_tile", "product_tile"]
# Scopes whose runs several PUs' runs ask for at once: the runner lets one compute while the
# others wait for its record (a claim in the store, see clcplus_ops.runner).
SHARED_SCOPES = ("shared_tile",)
# Scopes whose runs are for one tile (mapped over tiles in the DAGs).
TILE_SCOPES = ("tile", "shared_tile", "sample_tile", "product_tile")


@dataclass(frozen=True)
class Target:
    """What one run of a stage is for: a layout and reference year, and (by scope) a PU and a
    tile (a processing tile id, or a 100 km product tile's code for ``product_tile`` stages)."""

    layout: str
    reference_year: int
    pu_id: str | None = None
    tile_id: str | None = None

    def describe(self) -> str:
        parts = [p for p in (self.pu_id, self.tile_id) if p]
        return " ".join([*parts, str(self.reference_year)])

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Resources:
    """Where Airflow runs a stage's tasks. ``pool`` and ``queue`` name configuration fields
    (e.g. ``inference.airflow_pool``), so a deployment moves a stage without code changes."""

    pool: str | None = None
    queue: str | None = None
    memory: Literal["small", "medium", "large"] = "small"

    def placement(self, config: Config) -> dict:
        """Airflow's ``pool`` (and ``queue`` where one is set) for this configuration."""
        pool = attrgetter(self.pool)(config) if self.pool else None
        queue = attrgetter(self.queue)(config) if self.queue else None
        return {"pool": pool or config.airflow.default_pool, **({"queue": queue} if queue else {})}


@dataclass(frozen=True)
class External:
    """What ``prepare`` read: ``identity`` (JSON, enters the fingerprint) and ``value`` (any
    object handed to ``compute``)."""

    identity: Mapping[str, Any] = field(default_factory=dict)
    value: Any = None


@dataclass(frozen=True)
class Stage:
    name: str
    scope: Scope
    outputs: Mapping[str, str] | Callable[[Config], Mapping[str, str]]
    compute: Callable[[StageIO], Mapping[str, Any] | None]
    inputs: tuple[str, ...] = ()
    # Inputs made at another scope than this stage's (input name -> its scope).
    input_scopes: Mapping[str, Scope] = field(default_factory=dict)
    prepare: Callable[[Any], External] | None = None
    params: Callable[[Config, Target, Mapping[str, Any]], Mapping[str, Any]] = lambda config, target, options: {}
    resources: Resources = Resources()
    # Keys of the computation's details returned to Airflow with the summary (small values).
    summary: tuple[str, ...] = ()
    # Run options the stage takes (e.g. the model version); they reach prepare and params.
    options: tuple[str, ...] = ()
    # Errors that no retry cures: Airflow fails the task at once.
    permanent_errors: tuple[type[BaseException], ...] = ()
    # Errors that say another run does this work (a product tile claimed by another PU's run):
    # Airflow skips the task and those after it.
    skip_errors: tuple[type[BaseException], ...] = ()
    description: str = ""

    def output_files(self, config: Config) -> dict[str, str]:
        return dict(self.outputs(config) if callable(self.outputs) else self.outputs)


# --------------------------------------------------------------------------------------------
# What compute sees


class Input:
    """One committed output of an earlier stage, verified against that stage's record."""

    def __init__(self, stage: str, name: str, url: str, opener: Callable[[str], Any], reader: Callable[[str], bytes]):
        self.stage, self.name, self._url = stage, name, url
        self._opener, self._reader = opener, reader

    @property
    def label(self) -> str:
        """The file's name for messages (operators need to know which file is damaged)."""
        return self._url

    @contextlib.contextmanager
    def raster(self) -> Iterator[Any]:
        """The input as an open rasterio dataset; a read error names the file."""
        from rasterio.errors import RasterioError

        try:
            dataset = self._opener(self._url)
        except (RasterioError, OSError) as error:
            raise StageInputError(f"input {self.name} of {self.stage} ({self._url}) cannot be opened: {error}") from error
        try:
            yield dataset
        finally:
            dataset.close()

    def read_bytes(self) -> bytes:
        return self._reader(self._url)

    def read_json(self) -> Any:
        try:
            return json.loads(self.read_bytes())
        except ValueError as error:
            raise StageInputError(f"input {self.name} of {self.stage} ({self._url}) is not valid JSON: {error}") from error


class StageIO:
    """The computation's view of one run: named inputs and outputs, parameters, options, the
    prepared external value, and a place for details."""

    def __init__(self, *, stage: Stage, config: Config, target: Target, params: Mapping[str, Any],
                 options: Mapping[str, Any], external: Any, inputs: Mapping[tuple[str, str], Input],
                 upstream_details: Mapping[str, Mapping[str, Any]], staging: Path, output_files: Mapping[str, str]):
        self.stage, self.config, self.target = stage, config, target
        self.params, self.options, self.external = params, options, external
        self._inputs, self._upstream = inputs, upstream_details
        self._staging, self._files = staging, output_files
        self.log = logging.getLogger(f"clcplus_ops.stage.{stage.name}")

    @property
    def tile(self):
        """The processing tile of a tile-scoped run."""
        from clcplus_ops.locations import check_tile

        return check_tile(self.config, self.target.tile_id)

    # ---- inputs ------------------------------------------------------------------------------

    def input(self, stage: str, name: str) -> Input:
        try:
            return self._inputs[(stage, name)]
        except KeyError:
            raise KeyError(f"stage {self.stage.name} has no input {stage}.{name}; declared: "
                           f"{sorted(f'{s}.{n}' for s, n in self._inputs)}") from None

    def upstream(self, stage: str) -> Mapping[str, Any]:
        """The details an earlier stage recorded (e.g. the engine that classified)."""
        return self._upstream[stage]

    # ---- outputs -----------------------------------------------------------------------------

    def output(self, name: str) -> Path:
        """Local path to write output ``name`` to (committed with the others when compute ends)."""
        if name not in self._files:
            raise KeyError(f"stage {self.stage.name} declares no output {name!r}; declared: {sorted(self._files)}")
        path = self._staging / name / Path(self._files[name]).name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_bytes(self, name: str, data: bytes) -> None:
        self.output(name).write_bytes(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> None:
        from clcplus_ops.store import canonical_json

        self.write_text(name, canonical_json(obj))

    def raster(self, name: str, grid: Grid, count: int, dtype: str, nodata, kind: str = "features"):
        """An open rasterio writer for output ``name`` on ``grid`` with the configured profile
        of ``kind`` (``rasters.features`` or ``rasters.probabilities``)."""
        import rasterio

        profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": count, "dtype": dtype,
                   "nodata": nodata, "crs": grid.crs, "transform": grid.transform,
                   **getattr(self.config.rasters, kind).creation_options()}
        return rasterio.open(self.output(name), "w", **profile)


def blocks_with_progress(grid: Grid, size: int, log: logging.Logger, what: str, every: int = 16,
                         strips: bool = False):
    """``grid.blocks(size)`` (or ``grid.strips(size)``) that logs progress and elapsed time
    every ``every`` blocks: the one block loop of the raster stages (read ▸ compute ▸ write per
    block, memory bounded by the block)."""
    blocks = list(grid.strips(size) if strips else grid.blocks(size))
    started = time.perf_counter()
    for i, block in enumerate(blocks, start=1):
        yield block
        if i % every == 0 or i == len(blocks):
            log.info("%s: %d/%d blocks (%.1f s)", what, i, len(blocks), time.perf_counter() - started)
