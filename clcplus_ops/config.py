"""The one configuration of the production system.

Every parameter of the ATBD (``CLCplus_Backbone_2023_ATBD``) lives here with the ATBD value as
its default; a YAML file overrides any subset. A wrong value fails with a message that names
the field and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clcplus_ops import resources

CONFIG_ENV = "CLCPLUS_CONFIG"

Percent = Annotated[float, Field(ge=0, le=100)]


class Section(BaseModel):
    # Unknown keys are errors: a typo in YAML must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Sentinel2Config(Section):
    """Scene selection and the spectral features (ATBD 3.1.3)."""

    # The ATBD lists "B1, B3, B4, B5, B8, B9, B11, B12"; followed literally, configurable.
    bands: tuple[str, ...] = ("B01", "B03", "B04", "B05", "B08", "B09", "B11", "B12")
    indices: tuple[Literal["NDVI", "NDWI", "NDMI", "NBR"], ...] = ("NDVI", "NDWI", "NDMI", "NBR")
    # SCL classes 2 dark features/shadows, 3 cloud shadows, 8/9 cloud medium/high probability.
    scl_masked_classes: tuple[int, ...] = (2, 3, 8, 9)
    max_cloud_cover_percent: Percent = 80.0
    collection: str = "sentinel-2-c1-l2a"
    fallback_collection: str = "sentinel-2-l2a"
    resampling: Literal["nearest"] = "nearest"
    # Where scenes come from: a STAC API (Earth Search by default) unless a static catalogue
    # (URL of its catalog.json, e.g. the synthetic world's) is given.
    stac_api_url: str = "https://earth-search.aws.element84.com/v1"
    static_catalog: str | None = None
    # Transient read errors (network, throttling) are retried this often per asset window.
    read_retries: int = Field(3, ge=0, le=20)

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, bands: tuple[str, ...]) -> tuple[str, ...]:
        known = {"B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"}
        unknown = [b for b in bands if b not in known]
        if unknown:
            raise ValueError(f"unknown band(s) {unknown}; allowed: {sorted(known)}")
        if len(set(bands)) != len(bands) or not bands:
            raise ValueError("bands must be a non-empty list without repeats")
        return bands

    @model_validator(mode="after")
    def _index_bands(self) -> Sentinel2Config:
        from clcplus_ops.sentinel2.bands import INDEX_BANDS

        missing = {i: [b for b in INDEX_BANDS[i] if b not in self.bands] for i in self.indices}
        missing = {i: bands for i, bands in missing.items() if bands}
        if missing:
            raise ValueError(f"indices need bands that are not in sentinel2.bands: {missing}")
        return self

    @field_validator("scl_masked_classes")
    @classmethod
    def _scl_range(cls, classes: tuple[int, ...]) -> tuple[int, ...]:
        bad = [c for c in classes if not 0 <= c <= 11]
        if bad:
            raise ValueError(f"SCL classes are 0..11, got {bad}")
        return classes


@dataclass(frozen=True)
class YearSeries:
    """The effective time series of one reference year: its acquisition window [start, end)
    and its equidistant steps (what :meth:`TimeSeriesConfig.for_year` gives)."""

    reference_year: int
    start: dt.date
    end: dt.date  # exclusive
    step_days: int
    n_steps: int
    window_start_month: int  # of reference_year - 1
    window_end_month: int  # of reference_year + 1 (exclusive, day 1)

    @property
    def window(self) -> tuple[dt.date, dt.date]:
        return self.start, self.end

    @property
    def steps(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i * self.step_days) for i in range(self.n_steps)]

    def input_signature(self) -> dict:
        """What a model trained on this time series expects of it (recorded on model cards and
        compared when a model is chosen for a year)."""
        return {"steps": self.n_steps, "step_days": self.step_days,
                "window_start_month": self.window_start_month, "window_end_month": self.window_end_month}

    def describe(self) -> str:
        return (f"{self.n_steps} steps of {self.step_days} days from {self.start.isoformat()}, "
                f"window {self.start.isoformat()}..{self.end.isoformat()}")


def _window(year: int, start_month: int, end_month: int) -> tuple[dt.date, dt.date]:
    return dt.date(year - 1, start_month, 1), dt.date(year + 1, end_month, 1)


class YearWindow(Section):
    """The acquisition window of a reference year produced with another window than the default
    (2018: reference year +- 6 months, ATBD 3.1.3)."""

    window_start_month: int = Field(ge=1, le=12, description="month of year Y-1 the window opens")
    window_end_month: int = Field(ge=1, le=12, description="month of year Y+1 the window closes (exclusive, day 1)")
    # Left out: as many whole steps as the window holds (its days // step_days).
    n_steps: int | None = Field(None, ge=2, le=366)


class TimeSeriesConfig(Section):
    """The equidistant time series (ATBD 3.1.3): reference year +- 3 months, 10-day steps; the
    years produced with another window (2018: +- 6 months) are listed in ``year_windows``."""

    window_start_month: int = Field(10, ge=1, le=12, description="month of year Y-1 the window opens")
    window_end_month: int = Field(4, ge=1, le=12, description="month of year Y+1 the window closes (exclusive, day 1)")
    step_days: int = Field(10, ge=1, le=31)
    n_steps: int = Field(54, ge=2, le=366)
    # Reference years whose window (and so the number of steps, and the models that fit) is not
    # the default one. ATBD 3.1.3: "the reference year 2018 ... was still produced with reference
    # year +-6 months": 1 July 2017 to 30 June 2019, i.e. [1 Jul Y-1, 1 Jul Y+1), 730 days, 73
    # whole 10-day steps. A YAML file giving this mapping replaces it whole.
    year_windows: dict[int, YearWindow] = Field(
        default_factory=lambda: {2018: YearWindow(window_start_month=7, window_end_month=7, n_steps=73)})
    # Tiles are computed in square blocks of this many pixels per side: it bounds the memory of
    # an ingest task (about 1 GB at 512 px and ~110 acquisition dates), whatever the tile size.
    block_px: int = Field(512, ge=256, le=4096)
    # Reference years the system accepts (a year is checked before it names any location).
    first_reference_year: int = Field(2017, ge=2015, le=2200)
    last_reference_year: int = Field(2100, ge=2015, le=2200)
    # The product's history: these years, then every ``every_years`` from ``first_biennial_year``
    # (the timetable schedules exactly these).
    historical_years: tuple[int, ...] = (2018, 2021)
    first_biennial_year: int = Field(2023, ge=2015, le=2200)
    every_years: int = Field(2, ge=1, le=10)

    def for_year(self, reference_year: int) -> YearSeries:
        """The window and steps of ``reference_year``: its ``year_windows`` entry, else the default."""
        override = self.year_windows.get(reference_year)
        if override is None:
            opens, closes, n_steps = self.window_start_month, self.window_end_month, self.n_steps
        else:
            opens, closes, n_steps = override.window_start_month, override.window_end_month, override.n_steps
        start, end = _window(reference_year, opens, closes)
        if n_steps is None:
            n_steps = (end - start).days // self.step_days
        return YearSeries(reference_year, start, end, self.step_days, n_steps, opens, closes)

    def window(self, reference_year: int) -> tuple[dt.date, dt.date]:
        """[start, end) of the acquisition window of ``reference_year``."""
        return self.for_year(reference_year).window

    def steps(self, reference_year: int) -> list[dt.date]:
        """The dates of the time steps of ``reference_year``."""
        return self.for_year(reference_year).steps

    @model_validator(mode="after")
    def _steps_fit_window(self) -> TimeSeriesConfig:
        # The default window holds 547 or 548 days with the leap years: the steps must fit the
        # shortest, over a whole leap cycle.
        checks = [("time_series", self.n_steps, min((e - s).days for s, e in (
            _window(y, self.window_start_month, self.window_end_month) for y in range(2021, 2025))))]
        for year, override in sorted(self.year_windows.items()):
            series = self.for_year(year)
            checks.append((f"time_series.year_windows.{year}", series.n_steps, (series.end - series.start).days))
        for name, n_steps, days in checks:
            if n_steps < 2 or (n_steps - 1) * self.step_days >= days:
                raise ValueError(f"{name}: n_steps={n_steps} x step_days={self.step_days} overruns the "
                                 f"{days}-day window (or has fewer than 2 steps)")
        return self

    @model_validator(mode="after")
    def _year_range(self) -> TimeSeriesConfig:
        if self.first_reference_year > self.last_reference_year:
            raise ValueError(f"first_reference_year={self.first_reference_year} is after "
                             f"last_reference_year={self.last_reference_year}: no year would be accepted")
        outside = [y for y in self.year_windows if not self.first_reference_year <= y <= self.last_reference_year]
        if outside:
            raise ValueError(f"year_windows names year(s) {sorted(outside)} outside first_reference_year.."
                             f"last_reference_year ({self.first_reference_year}..{self.last_reference_year})")
        return self


class RasterProfile(Section):
    """GeoTIFF creation options of one kind of work raster."""

    compress: Literal["zstd", "deflate", "lzw", "none"] = "zstd"
    level: int = Field(1, ge=1, le=22)
    predictor: Literal[1, 2, 3] = 2
    block_px: int = Field(256, ge=16, le=4096)

    @field_validator("block_px")
    @classmethod
    def _multiple_of_16(cls, size: int) -> int:
        if size % 16:
            raise ValueError(f"GeoTIFF blocks are multiples of 16 px, got {size}")
        return size

    def creation_options(self) -> dict:
        options = {"tiled": True, "blockxsize": self.block_px, "blockysize": self.block_px,
                   "interleave": "pixel", "BIGTIFF": "IF_SAFER"}
        if self.compress != "none":
            options.update(compress=self.compress, predictor=self.predictor)
            # GDAL's names of the level (LZW has none; a DEFLATE_LEVEL would be ignored silently)
            level_option = {"zstd": "zstd_level", "deflate": "zlevel"}.get(self.compress)
            if level_option:
                options[level_option] = self.level
        return options


class RastersConfig(Section):
    """The work rasters' GeoTIFF profiles (not the delivered products: see ``products``)."""

    # Time series: 54 bands per feature, written once and read once; fast zstd.
    features: RasterProfile = RasterProfile(level=1)
    # Probabilities: mostly near 0 or 1, they compress well at a slightly higher level.
    probabilities: RasterProfile = RasterProfile(level=3)


class AirflowConfig(Section):
    """How the DAGs run their tasks (the library itself never imports Airflow)."""

    start_date: dt.date = dt.date(2017, 9, 1)
    retries: int = Field(2, ge=0, le=20)
    retry_delay_minutes: float = Field(2.0, ge=0, le=1440)
    training_retries: int = Field(1, ge=0, le=20)
    # S3 credentials and endpoint come from this Airflow connection (Amazon provider's hook).
    aws_conn_id: str = "aws_default"
    # The pool of tasks whose stage declares no pool of its own.
    default_pool: str = "default_pool"
    # Whether the PU DAGs' timetable makes the scheduler's own run of each reference year once its
    # window has closed; off, runs are triggered (the embedded demo) or backfilled.
    scheduled_runs: bool = True
    # Task instances of one PU run at once (Airflow's default of 16 starves a PU of 120 tiles;
    # pools and the executor's parallelism still bound what really runs).
    max_active_tasks: int = Field(256, ge=1, le=100_000)
    # The layouts whose DAGs the DAG files make: a production deployment may leave the demo out,
    # a demo deployment the 138 production units (each DAG costs the DAG processor and every
    # dag.test() a serialisation).
    layouts: tuple[Literal["production", "demo"], ...] = ("production", "demo")

    @field_validator("layouts")
    @classmethod
    def _some_layouts(cls, layouts: tuple[str, ...]) -> tuple[str, ...]:
        if not layouts or len(set(layouts)) != len(layouts):
            raise ValueError(f"name each layout once, at least one: {list(layouts)}")
        return layouts


class GridConfig(Section):
    """Processing tiles and production-unit overlap (ATBD 3.1.4, 3.1.5 c)."""

    tile_size_m: int = Field(25_000, gt=0, le=100_000)
    pixel_size_m: int = Field(10, gt=0)
    pu_buffer_m: float = Field(10_000.0, ge=0, le=50_000)
    aoi_buffer_m: float = Field(250.0, ge=0, le=10_000)
    product_tile_size_m: int = Field(100_000, gt=0)
    # Pixels read and computed around each tile so that neighbourhood filters (the bilateral
    # filter reaches (win_size - 1) // 2 pixels) give the same result at tile edges as on the
    # whole mosaic.
    halo_px: int = Field(8, ge=0, le=256)

    @model_validator(mode="after")
    def _nested(self) -> GridConfig:
        if 100_000 % self.tile_size_m:
            raise ValueError(
                f"tile_size_m={self.tile_size_m} must divide the 100 km MGRS square "
                "(allowed e.g. 25000, 20000, 12500, 10000, 5000, 2500)"
            )
        if self.tile_size_m % self.pixel_size_m:
            raise ValueError(f"tile_size_m={self.tile_size_m} is not a multiple of pixel_size_m={self.pixel_size_m}")
        return self


class BilateralConfig(Section):
    """Bilateral filter on the class probabilities (ATBD 3.1.6 a)."""

    win_size: int = Field(4, ge=1, le=31)
    sigma_spatial: float = Field(0.8, gt=0, le=100)
    sigma_color: float = Field(0.25, gt=0, le=10)
    # Output rows filtered at a time (full-width strips): bounds the filter task's memory; the
    # result does not depend on it, so it is not in the stage's fingerprint.
    block_px: int = Field(512, ge=16, le=8192)


class InferenceConfig(Section):
    """Tile classification (ATBD 3.1.5 c): where and how the TempCNN runs, and which Airflow
    pool / queue the classify tasks go to (e.g. a "gpu" queue of GPU Celery workers)."""

    # "auto": a CUDA GPU when the worker has one, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": bf16 where the hardware computes it natively (AMX / AVX512-BF16 CPUs, recent GPUs)
    # and it agrees with fp32 on the tile's own pixels (tolerances below); fp32 otherwise.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Pixels per forward pass; None: 1024 on the CPU (cache-sized), 65536 on a GPU.
    batch_px: int | None = Field(None, ge=1, le=1_048_576)
    # Tiles are read in square blocks of this many pixels: it bounds the classify task's memory.
    block_px: int = Field(256, ge=256, le=4096)
    cpu_threads: int | None = Field(None, ge=1, le=512)
    # torch.compile the folded network (autotuned kernels for the batch shape; pays a compilation
    # per classify task, worth it on GPUs: see scripts/bench_gpu_inference.py).
    compile: bool = False
    # The fast path must match torch fp32 eager on this many pixels of each tile, or fall back.
    check_px: int = Field(4096, ge=0, le=1_000_000)
    min_top_class_agreement: float = Field(0.999, ge=0, le=1)
    max_probability_difference: float = Field(0.01, ge=0, le=1)
    # Classify only the PU's area plus its buffer and a margin (what its products and its
    # neighbours' blending read, see clcplus_ops.classification.area); no data elsewhere in
    # the tile. Off: every pixel of every tile (a quarter more classification on the layout).
    pu_area_only: bool = True
    airflow_pool: str = "default_pool"
    airflow_queue: str | None = None  # None: Airflow's [operators] default_queue



class BlendingConfig(Section):
    """Distance-weighted blending in the PU overlap (ATBD 3.1.6 b). The overlap is the two PUs'
    buffers (``grid.pu_buffer_m`` each side of the border, 20 km in all): a PU's weight is 1/2 on
    its border, 1 at one buffer inside, 0 at its buffer's outer edge."""

    # Output pixels per block side of the PU stages on the product grid (mosaic, blending,
    # layers): 1024 x 1024 x 11 float32 is 46 MB, with its source windows a few times that.
    block_px: int = Field(1024, ge=16, le=8192)
    # Distances to the PU borders are computed on a lattice of this cell (aligned with the
    # product grid's origin, so neighbouring PUs compute the same values) and interpolated
    # bilinearly to the pixels: 100 m moves a weight by at most 0.25 % of its 20 km ramp.
    distance_cell_m: float = Field(100.0, gt=0, le=5_000)
    # How long the wait for the neighbours' mosaics lasts before blending with what exists,
    # and how often the store is polled meanwhile (by Airflow's triggerer, no worker slot).
    neighbour_timeout_minutes: float = Field(24 * 60.0, ge=0, le=30 * 24 * 60)
    neighbour_poll_seconds: float = Field(60.0, gt=0, le=3600)


class LayersConfig(Section):
    """The PU's layers RAS, RASCL, RASDL, RASPL on its own area (ATBD 3.1.6 e, 3.2-3.4)."""

    # Land polygons (any vector file pyogrio reads, e.g. EU-Hydro's coastline as polygons):
    # sea inside the delivery area (the AOI boundary buffered by grid.aoi_buffer_m) is coded
    # coastal seawater. None: the packaged Natural Earth countries (the AOI boundary itself).
    coastline_path: str | None = None
    # A pixel without any valid observation takes the class most probable over the observed
    # pixels within this many pixels; none there: RAS no data (codes.nodata) remains.
    nodata_fill_radius_px: int = Field(5, ge=0, le=100)
    # RASDL holds counts 0..max_observations; a larger count is stored as max_observations
    # (read: "this many or more").
    max_observations: int = Field(200, ge=1, le=65534)


class DirectionThreshold(Section):
    """A percentile for the change directions from any of ``from_classes`` to any of
    ``to_classes`` (a class to itself is no change and is ignored)."""

    from_classes: tuple[int, ...] = Field(min_length=1)
    to_classes: tuple[int, ...] = Field(min_length=1)
    percentile: Percent
    reason: str = ""

    @field_validator("from_classes", "to_classes")
    @classmethod
    def _classes(cls, classes: tuple[int, ...]) -> tuple[int, ...]:
        bad = [c for c in classes if not 1 <= c <= 11]
        if bad:
            raise ValueError(f"classes are 1..11, got {bad}")
        return classes


class CalibrationConfig(Section):
    """Interannual calibration against the previous productions (ATBD 3.1.6 c).

    Reading of the ATBD's percentile rule: a change direction is a pair (prior class, current
    class) of distinct classes (110 of them). Its threshold is the ``percentile``-th percentile
    (nearest rank, on M in steps of 1e-4) of the change magnitude M over the PU's pixels that
    change in that direction; a change is kept where its M reaches the threshold, elsewhere the
    prior class stays. So the standard 90th percentile keeps the strongest tenth of each
    direction's changes: between two productions of ~90 % accuracy most class changes are
    classification noise (two such maps disagree on 10-15 % of the land, real change is a few
    tenths of a percent per two years), and only a direction where real change is common gets a
    lower percentile.
    """

    # How many of the reference years before the current one are its previous productions
    # (ATBD: 2018 and 2021 for 2023). Their combined prior: folding from the oldest, a year's
    # probabilities are kept while the next year has the same class, else the next year's.
    previous_productions: int = Field(2, ge=0, le=10)
    percentile: Percent = 90.0
    # Direction-specific percentiles; a later entry overrides an earlier one. Where real change
    # is common it can be most of a direction's changes, so "lower" must sit low in the
    # direction's distribution: the 5th percentile drops only its weakest twentieth. Water (10)
    # is added to the ATBD's examples (1, 9): reservoirs, flooded gravel pits, restored wetlands.
    directions: tuple[DirectionThreshold, ...] = (
        DirectionThreshold(from_classes=(2, 3, 4), to_classes=(2, 3, 4), percentile=99.0,
                           reason="changes between tree leaf types are unreasonable"),
        DirectionThreshold(from_classes=(2, 3, 4, 5, 6, 7), to_classes=(1, 9, 10), percentile=5.0,
                           reason="land conversion: construction, clear-cuts, reservoirs"),
    )
    # QC layer calibrate/change_magnitude.tif: M scaled to 0-100 (100 = sqrt 2), 255 no data.
    change_magnitude_layer: bool = True

    def percentiles(self, classes) -> dict[tuple[int, int], float]:
        """The percentile of every change direction between ``classes``."""
        out = {(a, b): self.percentile for a in classes for b in classes if a != b}
        for rule in self.directions:
            for a in rule.from_classes:
                for b in rule.to_classes:
                    if a != b and (a, b) in out:
                        out[(a, b)] = rule.percentile
        return out


class RecodingConfig(Section):
    """Rule-based recoding with external data after the calibration (ATBD 3.1.6 d, 3.4)."""

    # The ordered rules file (YAML; clcplus_ops/postprocessing/recoding.py): a path or a store
    # URL, "{year}" replaced by the reference year. None: no recoding (RASPL all 0).
    rules: str | None = None


CLASS_NAMES: dict[int, str] = {
    1: "Sealed",
    2: "Woody needle leaved trees",
    3: "Woody broadleaved deciduous trees",
    4: "Woody broadleaved evergreen trees",
    5: "Low-growing woody plants",
    6: "Permanent herbaceous",
    7: "Periodically herbaceous",
    8: "Lichens and mosses",
    9: "Non and sparsely vegetated",
    10: "Water",
    11: "Snow and ice",
}


class CodesConfig(Section):
    """Raster coding of the products (ATBD 3.1.1, 3.2.1, 3.3.1, 3.4.1)."""

    classes: dict[int, str] = Field(default_factory=lambda: dict(CLASS_NAMES))
    coastal_seawater: int = Field(253, ge=0, le=255)
    outside: int = Field(254, ge=0, le=255)
    nodata: int = Field(255, ge=0, le=255)
    confidence_outside: int = Field(254, ge=101, le=255)
    data_score_outside: int = Field(65535, ge=201, le=65535)
    post_processing_outside: int = Field(254, ge=2, le=255)

    @model_validator(mode="after")
    def _distinct(self) -> CodesConfig:
        if sorted(self.classes) != list(range(1, 12)):
            raise ValueError(f"classes must be exactly codes 1..11, got {sorted(self.classes)}")
        special = {self.coastal_seawater, self.outside, self.nodata}
        if len(special) != 3 or special & set(self.classes):
            raise ValueError("coastal_seawater, outside and nodata must be distinct and outside 1..11")
        return self


class ProductsConfig(Section):
    """Delivery format (ATBD 3.1.1; EEA product definition clms_clcplus_ras_s2023_r10m)."""

    product_family: str = "clms_clcplus"
    # V in the file names. The revision (R00, R01, ...) is not configured: each new content of a
    # tile is its next revision (clcplus_ops.products.revisions).
    version: int = Field(1, ge=0, le=99)
    ras_dtype: Literal["uint8"] = "uint8"
    rascl_dtype: Literal["uint8"] = "uint8"
    rasdl_dtype: Literal["uint16"] = "uint16"
    raspl_dtype: Literal["uint8"] = "uint8"
    compression: Literal["LZW"] = "LZW"
    blocksize: int = Field(1024, ge=16, le=1024)
    # Where deliveries are published (s3://bucket/prefix in production); by default the
    # "delivery" folder of the products root (the embedded demo's local store).
    publish_url: str | None = None
    # The responsible party and the metadata point of contact of the INSPIRE records.
    producer_organisation: str = "European Environment Agency"
    producer_email: str = "copernicus@eea.europa.eu"
    producer_url: str | None = "https://land.copernicus.eu"
    metadata_organisation: str = "European Environment Agency"
    metadata_email: str = "copernicus@eea.europa.eu"
    # Pixels per side of the styled quicklook PNGs.
    quicklook_px: int = Field(1000, ge=64, le=10_000)

    @field_validator("publish_url")
    @classmethod
    def _publish_url(cls, url: str | None) -> str | None:
        if url is not None and not (url.startswith("file:///") or url.startswith("s3://")):
            raise ValueError(f"{url!r} is not a file:///absolute/path or s3://bucket/prefix URL")
        return url.rstrip("/") if url else url

    @field_validator("blocksize")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if size & (size - 1):
            raise ValueError(f"blocksize must be a power of two, got {size}")
        return size


class TrainingConfig(Section):
    """Model training and its accuracy targets (ATBD 3.1.1, 3.1.5 b)."""

    target_overall_accuracy: float = Field(0.90, gt=0, le=1)
    max_omission: float = Field(0.15, ge=0, le=1)
    max_commission: float = Field(0.15, ge=0, le=1)
    label_audit_rounds: int = Field(15, ge=1, le=100)
    # Each audit round is a k-fold cross-prediction, so every sample gets out-of-sample
    # probabilities in every round.
    label_audit_folds: int = Field(3, ge=2, le=20)
    # The audit trains rounds x folds models that only rank samples; a smaller epoch budget for
    # them (None: ``epochs``) keeps 15 rounds affordable. Hold-out and final models use ``epochs``.
    label_audit_epochs: int | None = Field(None, ge=1, le=10_000)
    # Cleanlab's filter per round. "low_self_confidence" flags the number of issues confident
    # learning estimates, taking the samples least confident in their given label; its ranking
    # is stable from round to round, so "flagged in every round" keeps the real errors
    # (prune_by_noise_rate's per-class-pair quotas shift between rounds and lose them).
    label_audit_filter: Literal[
        "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
        "low_self_confidence", "low_normalized_margin",
    ] = "low_self_confidence"
    holdout_fraction: float = Field(0.20, gt=0, lt=1)
    epochs: int = Field(60, ge=1, le=10_000)
    seed: int = 0
    # TempCNN (Pelletier et al. 2019): conv blocks of Conv1d + batch norm + ReLU + dropout,
    # one dense layer, softmax over the 11 classes.
    conv_layers: int = Field(3, ge=1, le=10)
    conv_filters: int = Field(64, ge=1, le=1024)
    kernel_size: int = Field(5, ge=1, le=25)
    dense_units: int = Field(256, ge=1, le=8192)
    dropout: float = Field(0.2, ge=0, lt=1)
    batch_size: int = Field(128, ge=1, le=65_536)
    weight_decay: float = Field(1e-4, ge=0)
    # Cyclic learning rate: the "triangular2" policy of Smith (2017), the rate rising from
    # min_lr to max_lr and back over each cycle, the peak halved every cycle.
    min_lr: float = Field(1e-4, gt=0)
    max_lr: float = Field(5e-3, gt=0)
    lr_cycle_epochs: int = Field(4, ge=2, le=1000)
    # Early stopping on a stratified validation share of the training samples.
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    patience_epochs: int = Field(8, ge=1, le=10_000)
    # Who may answer the expert review of the label audit: Airflow user ids as the auth manager
    # gives them (the username with the simple auth manager; FAB's numeric id). Empty: nobody,
    # until the deployment names its reviewers; a review answered by anyone else is refused.
    reviewers: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _learning_rates(self) -> TrainingConfig:
        if self.min_lr >= self.max_lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be below max_lr ({self.max_lr})")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the time axis length, got {self.kernel_size}")
        blank = [r for r in self.reviewers if not r.strip() or r != r.strip()]
        if blank:
            raise ValueError(f"reviewers must be user ids without surrounding blanks, got {blank}")
        return self


class SyntheticConfig(Section):
    """The synthetic Sentinel-2 world (``clcplus_ops.synthetic``): stands in for the archive on
    machines that cannot reach one. The area defaults to the demo layout's tiles with halo."""

    root: str = "file:///tmp/clcplus/synthetic"
    seed: int = 0
    # (xmin, ymin, xmax, ymax) in metres of ``epsg``; None = the demo layout's tiles + halo.
    bounds: tuple[float, float, float, float] | None = None
    epsg: int | None = None
    n_samples: int = Field(6000, ge=0, le=10_000_000)
    mislabelled_fraction: float = Field(0.05, ge=0, lt=1)
    revisit_days: int = Field(5, ge=1, le=30)
    processing_baseline: str = "05.11"

    @field_validator("root")
    @classmethod
    def _url(cls, url: str) -> str:
        return StoreConfig._url(url)

    @model_validator(mode="after")
    def _bounds_with_crs(self) -> SyntheticConfig:
        if (self.bounds is None) != (self.epsg is None):
            raise ValueError("bounds and epsg are given together (or neither)")
        if self.bounds is not None:
            xmin, ymin, xmax, ymax = self.bounds
            if not (xmin < xmax and ymin < ymax):
                raise ValueError(f"bounds must be (xmin, ymin, xmax, ymax) with min < max, got {self.bounds}")
        return self


class StoreConfig(Section):
    """Roots (URLs) of everything persisted; ``file://`` by default, ``s3://`` in production."""

    work: str = "file:///tmp/clcplus/work"
    models: str = "file:///tmp/clcplus/models"
    samples: str = "file:///tmp/clcplus/samples"
    products: str = "file:///tmp/clcplus/products"
    s3_endpoint_url: str | None = None
    s3_region: str = "eu-central-1"
    # Attempts per S3 request (boto3's standard retry mode: throttling, 5xx, lost connections).
    s3_max_attempts: int = Field(5, ge=1, le=20)
    # A claim on a shared stage (a tile's time series) goes stale when its holder has not renewed
    # it for this long (renewed every quarter of it); a holder gone from this host at once.
    claim_seconds: float = Field(60.0, ge=5, le=3600)

    @field_validator("work", "models", "samples", "products")
    @classmethod
    def _url(cls, url: str) -> str:
        if not (url.startswith("file:///") or url.startswith("s3://")):
            raise ValueError(f"{url!r} is not a file:///absolute/path or s3://bucket/prefix URL")
        return url.rstrip("/")


class LayoutConfig(Section):
    """The production-unit layout: the packaged generated one unless an official file is given."""

    path: str | None = None

    def resolve(self) -> Path:
        return Path(self.path).expanduser() if self.path else resources.DEFAULT_LAYOUT


class InjectedFault(Section):
    """One fault of a drill: the stage ``stage`` fails for the targets matching ``pu_id`` and
    ``tile_id`` (unset: any), before it computes anything."""

    stage: str
    pu_id: str | None = None
    tile_id: str | None = None


class DrillsConfig(Section):
    """Fault injection for the operations drills (repair, retries). Empty in production."""

    faults: tuple[InjectedFault, ...] = ()
    # Soaks and the scheduler benchmark: Airflow schedules the production DAGs as they are, but
    # every stage task except plan_tiles (the fan-out) returns at once without reading or writing
    # anything, and select_model selects no model. Off in production.
    noop_stages: bool = False


class DemoConfig(Section):
    """The demo production: the same code on a two-PU layout of a few km, with smaller tiles
    and buffer (DESIGN: the demo shrinks only configuration)."""

    layout_path: str | None = None
    grid: GridConfig = GridConfig(tile_size_m=2_500, pu_buffer_m=1_000.0)
    label_audit_epochs: int = Field(12, ge=1, le=10_000)

    def resolve_layout(self) -> Path:
        return Path(self.layout_path).expanduser() if self.layout_path else resources.DEMO_LAYOUT


class Config(Section):
    sentinel2: Sentinel2Config = Sentinel2Config()
    time_series: TimeSeriesConfig = TimeSeriesConfig()
    grid: GridConfig = GridConfig()
    inference: InferenceConfig = InferenceConfig()
    bilateral: BilateralConfig = BilateralConfig()
    blending: BlendingConfig = BlendingConfig()
    layers: LayersConfig = LayersConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    recoding: RecodingConfig = RecodingConfig()
    codes: CodesConfig = CodesConfig()
    products: ProductsConfig = ProductsConfig()
    training: TrainingConfig = TrainingConfig()
    store: StoreConfig = StoreConfig()
    rasters: RastersConfig = RastersConfig()
    airflow: AirflowConfig = AirflowConfig()
    layout: LayoutConfig = LayoutConfig()
    demo: DemoConfig = DemoConfig()
    drills: DrillsConfig = DrillsConfig()
    synthetic: SyntheticConfig = SyntheticConfig()

    LAYOUTS: ClassVar[tuple[str, ...]] = ("production", "demo")

    @model_validator(mode="after")
    def _halo_covers_the_filter(self) -> Config:
        reach = (self.bilateral.win_size - 1) // 2
        for name, grid in (("grid", self.grid), ("demo.grid", self.demo.grid)):
            if grid.halo_px < reach:
                raise ValueError(f"{name}.halo_px={grid.halo_px} is smaller than the bilateral filter's reach "
                                 f"(win_size - 1) // 2 = {reach}: filtered tiles would not match at their edges")
        return self

    @model_validator(mode="after")
    def _whole_raster_blocks(self) -> Config:
        # Processing blocks are whole GeoTIFF blocks, so no block of a work raster is written twice.
        for name, size, raster in (("time_series.block_px", self.time_series.block_px, self.rasters.features),
                                   ("inference.block_px", self.inference.block_px, self.rasters.probabilities),
                                   ("blending.block_px", self.blending.block_px, self.rasters.probabilities)):
            if size % raster.block_px:
                raise ValueError(f"{name}={size} must be a multiple of the GeoTIFF block size "
                                 f"rasters.*.block_px={raster.block_px}")
        return self

    def layout_path(self, layout: str) -> Path:
        """Layout file of the "production" or the "demo" layout."""
        self._check_layout(layout)
        return self.layout.resolve() if layout == "production" else self.demo.resolve_layout()

    def for_layout(self, layout: str) -> Config:
        """The configuration a stage of ``layout`` runs with (the demo swaps in its grid)."""
        self._check_layout(layout)
        if layout == "production":
            return self
        training = self.training.model_copy(update={"label_audit_epochs": self.demo.label_audit_epochs})
        return self.model_copy(update={"grid": self.demo.grid, "training": training})

    def _check_layout(self, layout: str) -> None:
        if layout not in self.LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {self.LAYOUTS}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending field."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {field}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the configuration from ``path``, else from ``$CLCPLUS_CONFIG``, else defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return Config()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"configuration file {path} is not valid YAML: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping, not {type(data).__name__}")
    return parse_config(data, str(path))
