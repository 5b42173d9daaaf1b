"""Rule-based recoding (ATBD 3.1.6 d, 3.4): known remaining misclassifications of the calibrated
classes are fixed with external vector data (OSM, LPIS/GSAA parcels, expert AOIs), every recoded
pixel is flagged in RASPL.

The parts, each testable on its own:

* :func:`load_rules` reads the YAML rules file (shape below) and checks it and *every* file it
  names (sources, ``within`` polygons, lookup CSVs) before anything is applied; all problems are
  raised together as one :class:`RecodingRulesError`, one line per problem naming the rule.
* :meth:`RuleSet.identity` is what enters the stage fingerprint: the rules file's sha256 and a
  cheap stamp (size + mtime / ETag) of every referenced file, all parts of a shapefile included.
* :meth:`RuleSet.prepare` reads, for one product grid, each rule's features (``where``-filtered,
  bbox-limited read, reprojected, buffered, clipped to ``within`` and to the grid) with their
  target class and allowed from-classes, and an STRtree for block queries.
* :func:`recode_block` applies the prepared rules to one block of class codes (pure);
  :func:`raspl` makes the RASPL flags.

Rules apply in file order, and a later rule sees the classes written by earlier ones. Within one
rule, where features overlap, **the later feature of the source wins** (features are burnt in
source order with their index as burn value; the highest index covers the pixel).

Which pixels a feature covers (``all_touched``), by kind of source unless a rule sets it:

* **polygons** (buildings, parcels, expert AOIs): by pixel centre, so a polygon recodes the
  pixels whose centre it holds. A parcel polygon derived from 10 m pixels is reproduced exactly;
  ``all_touched`` would spill one ring of pixels into the neighbouring parcels.
* **lines** (roads, railways): ``all_touched``, since a centre rule leaves gaps along thin
  diagonal lines.
* a buffered line or point (``buffer_m > 0``) is a polygon, hence by pixel centre. Points are
  accepted only with a buffer.

The default is decided per feature (after buffering), so a source mixing polygons and lines
gets each kind right.

Class codes: 0 is "no class". A rule without ``from_classes`` may recode 0 and every class code;
with ``from_classes`` only the listed codes. Other codes (coastal seawater, outside, no data)
are never recoded.

Sources on ``s3://`` are copied once per :class:`RuleSet` into the local scratch folder (a
shapefile with its sidecar files) and read from there, so any driver works and a grid's bbox
read costs a local read; ``file://`` sources are read in place. GeoParquet is read with pyarrow
(GeoPandas), every other format with pyogrio (GDAL).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import shutil
import tempfile
import weakref
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import pandas as pd
import shapely
import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictFloat, StrictInt,
                      StrictStr, StringConstraints, Tag, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from clcplus_ops.config import CLASS_NAMES
from clcplus_ops.errors import ClcplusError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.store import FileStamp, Store, as_url, scratch_root

log = logging.getLogger("clcplus_ops.recoding")

DEFAULT_CLASSES: tuple[int, ...] = tuple(sorted(CLASS_NAMES))
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
_SHAPEFILE_REQUIRED = (".shp", ".shx", ".dbf")
_PARQUET_SUFFIXES = (".parquet", ".geoparquet")
# shapely type ids -> kind of geometry
_KIND = {0: "point", 4: "point", 1: "line", 2: "line", 5: "line", 3: "polygon", 6: "polygon", 7: "collection"}
_MAX_LISTED = 8  # bad values listed in one message


class RecodingRulesError(ClcplusError):
    """A rules file, or a file it names, that cannot be applied; ``problems`` lists every one
    (each names its rule and the reason)."""

    def __init__(self, url: str, problems: list[str]) -> None:
        self.url = url
        self.problems = list(problems)
        n = len(self.problems)
        head = f"recoding rules {url}: {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems))


# --------------------------------------------------------------------------------------------
# The rules file (pydantic)


class _Model(BaseModel):
    # Unknown keys are refused: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _classes_of(info: ValidationInfo) -> Collection[int]:
    return (info.context or {}).get("classes", DEFAULT_CLASSES)


class ClassFromAttribute(_Model):
    """``to_class`` read per feature from a column, optionally through a lookup CSV."""

    attribute: Annotated[str, StringConstraints(min_length=1)]
    lookup: str | None = None
    key: str | None = None
    value: str | None = None
    unmapped: Literal["error", "ignore"] = "error"

    @model_validator(mode="after")
    def _lookup_columns(self) -> ClassFromAttribute:
        if self.lookup is not None and (not self.key or not self.value):
            raise ValueError("a lookup needs 'key' and 'value' (its CSV columns)")
        if self.lookup is None and (self.key is not None or self.value is not None):
            raise ValueError("'key' and 'value' belong to a 'lookup'")
        return self


class FromAttribute(_Model):
    """``from_classes`` read per feature from a column: text "6,7" / "6" or an int."""

    attribute: Annotated[str, StringConstraints(min_length=1)]


def _int_or_mapping(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return "code"
    return "mapping" if isinstance(value, dict) else None


def _list_or_mapping(value: Any) -> str | None:
    if isinstance(value, list):
        return "codes"
    return "mapping" if isinstance(value, dict) else None


_TAGS = {"code", "codes", "mapping"}  # union tags, left out of error locations
Scalar = Union[StrictStr, StrictInt, StrictFloat, StrictBool]
ToClass = Annotated[
    Union[Annotated[StrictInt, Tag("code")], Annotated[ClassFromAttribute, Tag("mapping")]],
    Discriminator(_int_or_mapping, custom_error_type="to_class",
                  custom_error_message="must be a class code or {attribute: COL, ...}"),
]
FromClasses = Annotated[
    Union[Annotated[list[StrictInt], Tag("codes")], Annotated[FromAttribute, Tag("mapping")]],
    Discriminator(_list_or_mapping, custom_error_type="from_classes",
                  custom_error_message="must be a list of class codes or {attribute: COL}"),
]


class Rule(_Model):
    """One rule of the rules file (see the module docstring and ``load_rules``)."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$")]
    source: Annotated[str, StringConstraints(min_length=1)]
    layer: str | None = None
    where: dict[str, Scalar | list[Scalar]] | None = None
    to_class: ToClass
    from_classes: FromClasses | None = None
    within: str | None = None
    within_layer: str | None = None
    all_touched: StrictBool | None = None
    buffer_m: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] = 0.0  # metres, the grid's CRS
    comment: str | None = None

    @field_validator("to_class")
    @classmethod
    def _to_class_known(cls, value: Any, info: ValidationInfo) -> Any:
        classes = _classes_of(info)
        if isinstance(value, int) and value not in classes:
            raise ValueError(f"class {value} is not a class code ({_codes(classes)})")
        return value

    @field_validator("from_classes")
    @classmethod
    def _from_classes_known(cls, value: Any, info: ValidationInfo) -> Any:
        classes = _classes_of(info)
        if isinstance(value, list):
            if not value:
                raise ValueError("is empty (leave it out to recode from every class)")
            bad = sorted({c for c in value if c not in classes})
            if bad:
                raise ValueError(f"{bad} are not class codes ({_codes(classes)})")
        return value

    @field_validator("where")
    @classmethod
    def _where_values(cls, value: dict | None) -> dict | None:
        for column, values in (value or {}).items():
            if isinstance(values, list) and not values:
                raise ValueError(f"column {column!r} has an empty list of values")
        return value

    @model_validator(mode="after")
    def _within_layer(self) -> Rule:
        if self.within_layer is not None and self.within is None:
            raise ValueError("within_layer needs within")
        return self

    def columns(self) -> list[str]:
        """The attribute columns the rule reads."""
        cols = list(self.where or {})
        for spec in (self.to_class, self.from_classes):
            if isinstance(spec, (ClassFromAttribute, FromAttribute)) and spec.attribute not in cols:
                cols.append(spec.attribute)
        return cols


class _RulesFile(_Model):
    version: Literal[1]
    rules: list[dict[str, Any]]


def _codes(classes: Collection[int]) -> str:
    c = sorted(classes)
    return f"{c[0]}..{c[-1]}" if c == list(range(c[0], c[-1] + 1)) else ", ".join(map(str, c))


def _pydantic_problems(exc: ValidationError, where: str) -> list[str]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p not in _TAGS]
        path = ".".join(loc)
        if err["type"] == "extra_forbidden":
            out.append(f"{where}: unknown key {path!r}")
        elif err["type"] == "missing":
            out.append(f"{where}: missing key {path!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append(f"{where}: {path + ': ' if path else ''}{msg}")
    return out


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (PyYAML keeps the last one)."""


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        with contextlib.suppress(TypeError):
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _parse_yaml(data: bytes, url: str) -> Any:
    try:
        return yaml.load(data, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecodingRulesError(url, [f"YAML error{at}: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise RecodingRulesError(url, [f"YAML error: {exc}"]) from None


# --------------------------------------------------------------------------------------------
# Attribute values -> classes (by unique value, never per row in Python)


def _norm_key(value: Any) -> str | None:
    """A value as comparable text: 6, 6.0 and "6" are "6"; True is "true"; None/NaN is None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip()


def _factorize(series: pd.Series) -> tuple[np.ndarray, list[str | None], list[Any]]:
    """(row codes, normalised unique keys, raw uniques); code -1 for missing values."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    raw = list(uniques)
    return np.asarray(codes), [_norm_key(u) for u in raw], raw


def _where_mask(df: pd.DataFrame, where: dict | None) -> tuple[np.ndarray, dict[str, list]]:
    """Rows matching every column of ``where``; the values that never occur, per column."""
    mask = np.ones(len(df), bool)
    absent: dict[str, list] = {}
    for column, values in (where or {}).items():
        values = values if isinstance(values, list) else [values]
        codes, keys, _ = _factorize(df[column])
        wanted = {_norm_key(v) for v in values}
        hit = np.array([k in wanted for k in keys] + [False], bool)  # last: missing values
        mask &= hit[codes]
        present = set(keys)
        missing = [v for v in values if _norm_key(v) not in present]
        if missing:
            absent[column] = missing
    return mask, absent


def _as_class(key: str | None, classes: Collection[int]) -> int | None:
    if key is None:
        return None
    with contextlib.suppress(ValueError):
        code = int(key)
        return code if code in classes else None
    return None


def _to_classes(series: pd.Series, spec: ClassFromAttribute, lookup: dict[str, int] | None,
                classes: Collection[int]) -> tuple[np.ndarray, list[Any]]:
    """(class per row, 0 where unmapped; the raw values that are unmapped)."""
    codes, keys, raw = _factorize(series)
    mapped = [(lookup.get(k) if k is not None else None) if lookup is not None else _as_class(k, classes)
              for k in keys]
    table = np.array([m or 0 for m in mapped] + [0], np.uint8)
    bad = [r for r, m in zip(raw, mapped) if m is None]
    if (codes < 0).any():
        bad.append(None)
    return table[codes], bad


def _parse_from(key: str | None, classes: Collection[int]) -> frozenset[int] | None:
    if key is None:
        return None
    parts = [p.strip() for p in key.split(",")]
    codes = [_as_class(p, classes) for p in parts]
    if not parts or any(c is None for c in codes):
        return None
    return frozenset(codes)


def _from_sets(series: pd.Series, classes: Collection[int]) -> tuple[list[frozenset[int] | None], np.ndarray, list]:
    """(distinct from-class sets, None for invalid ones; the set index per row; bad raw values)."""
    codes, keys, raw = _factorize(series)
    sets = [_parse_from(k, classes) for k in keys] + [None]  # last: missing values
    bad = [r for r, s in zip(raw, sets) if s is None]
    if (codes < 0).any():
        bad.append(None)
    return sets, np.where(codes < 0, len(sets) - 1, codes), bad


def _from_table(sets: list[frozenset[int] | None], classes: Collection[int]) -> np.ndarray:
    """bool (len(sets), 256): which current codes a set allows; None allows 0 and every class."""
    table = np.zeros((len(sets), 256), bool)
    for i, s in enumerate(sets):
        table[i, [0, *classes] if s is None else sorted(s)] = True
    return table


def _listed(values: list) -> str:
    shown = ", ".join("empty" if v is None else repr(v) for v in values[:_MAX_LISTED])
    return shown + (f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else "")


# --------------------------------------------------------------------------------------------
# Files: URLs, local copies, stamps


def _resolve(ref: str, base_url: str) -> str:
    """The URL of a file named in the rules file: relative to its folder, an absolute path, or a
    file:// / s3:// URL."""
    if "://" in ref:
        if not ref.startswith(("file://", "s3://")):
            raise ValueError("unsupported URL scheme (file:// and s3:// are)")
        return as_url(ref)
    if os.path.isabs(ref):
        return as_url(os.path.normpath(ref))
    scheme, _, rest = base_url.partition("://")
    if scheme == "file":
        return as_url(os.path.normpath(os.path.join(os.path.dirname(rest), ref)))
    bucket, _, key = rest.partition("/")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(key), ref))
    if joined.startswith(".."):
        raise ValueError("points above the bucket")
    return f"{scheme}://{bucket}/{joined}"


def _is_shapefile(url: str) -> bool:
    return url.lower().endswith(".shp")


def _is_parquet(url: str) -> bool:
    return url.lower().endswith(_PARQUET_SUFFIXES)


def _shapefile_parts(url: str) -> list[str]:
    stem, suffix = url[:-4], url[-4:]
    upper = suffix.isupper()
    return [stem + (p.upper() if upper else p) for p in SHAPEFILE_PARTS]


class _Files:
    """Local paths and stamps of the referenced files; s3:// files are copied once into a
    private scratch folder (removed by :meth:`close`, or with the folders of dead processes)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stamps: dict[str, FileStamp] = {}
        self._local: dict[str, Path] = {}
        self._dir: Path | None = None
        self._finalizer: weakref.finalize | None = None

    def parts(self, url: str) -> tuple[list[str], list[str]]:
        """(the existing files of ``url``: a shapefile's parts, else itself; missing required ones)."""
        candidates = _shapefile_parts(url) if _is_shapefile(url) else [url]
        present, missing = [], []
        for i, part in enumerate(candidates):
            if self.store.exists(part):
                present.append(part)
            elif i == 0 or part[-4:].lower() in _SHAPEFILE_REQUIRED:
                missing.append(part)
        return present, missing

    def stamp(self, urls: Iterable[str]) -> None:
        for url in urls:
            self.stamps[url] = self.store.stat(url)

    def local(self, url: str, parts: list[str]) -> Path:
        if url.startswith("file://"):
            return Path(url[len("file://"):])
        if url not in self._local:
            if self._dir is None:
                # pid- prefix: the scratch root removes the folders of dead processes.
                self._dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-recoding-", dir=scratch_root()))
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._dir), True)
            folder = Path(tempfile.mkdtemp(dir=self._dir))  # one per file: equal names never clash
            for part in parts:
                with self.store.local_read(part) as tmp:
                    shutil.copyfile(tmp, folder / part.rsplit("/", 1)[-1])
            self._local[url] = folder / url.rsplit("/", 1)[-1]
        return self._local[url]

    def changed(self) -> list[str]:
        """file:// files whose stamp differs from the one taken when they were checked (s3://
        files are read from the copies made then)."""
        out = []
        for url, stamp in self.stamps.items():
            if url.startswith("file://"):
                try:
                    now = self.store.stat(url)
                except FileNotFoundError:
                    now = None
                if now != stamp:
                    out.append(url)
        return out

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


# --------------------------------------------------------------------------------------------
# Vector sources (pyogrio / GeoParquet)


@dataclass
class _Vector:
    """An opened vector file: what the checks found and how to read it."""

    label: str  # as written in the rules file
    url: str
    path: Path
    layer: str | None
    crs: Any  # pyproj.CRS
    fields: list[str]
    kinds: frozenset[str] | None  # None: the file does not declare one geometry type
    parquet_geometry: str | None = None

    def read_table(self, columns: list[str], geometry: bool) -> tuple[pd.DataFrame, np.ndarray | None]:
        """Attribute columns of every feature (and their shapely type ids if ``geometry``)."""
        if self.parquet_geometry:
            import pyarrow.parquet as pq

            names = columns + ([self.parquet_geometry] if geometry else [])
            table = pq.read_table(self.path, columns=names)
            df = table.select(columns).to_pandas() if columns else pd.DataFrame(index=range(table.num_rows))
            types = None
            if geometry:
                types = shapely.get_type_id(shapely.from_wkb(table.column(self.parquet_geometry).to_numpy(
                    zero_copy_only=False)))
            return df, types
        import pyogrio
        import pyogrio.raw

        if geometry:
            gdf = pyogrio.read_dataframe(self.path, layer=self.layer, columns=columns)
            return pd.DataFrame(gdf[columns]), shapely.get_type_id(gdf.geometry.values)
        if not columns:  # only the number of features: their ids
            fids = pyogrio.raw.read(self.path, layer=self.layer, columns=[], read_geometry=False,
                                    return_fids=True)[1]
            return pd.DataFrame(index=range(len(fids))), None
        return pyogrio.read_dataframe(self.path, layer=self.layer, columns=columns, read_geometry=False), None

    def read_bbox(self, columns: list[str], bbox: tuple[float, float, float, float]):
        """The features whose envelope meets ``bbox`` (source CRS), as a GeoDataFrame."""
        import geopandas as gpd

        if self.parquet_geometry:
            cols = [*columns, self.parquet_geometry]
            try:  # row filter on the bbox covering column where the file has one
                return gpd.read_parquet(self.path, columns=cols, bbox=bbox)
            except ValueError:
                gdf = gpd.read_parquet(self.path, columns=cols)
                return gdf[gdf.geometry.intersects(shapely.box(*bbox))]
        import pyogrio

        return pyogrio.read_dataframe(self.path, layer=self.layer, columns=columns, bbox=bbox)


def _open_vector(label: str, url: str, path: Path, layer: str | None) -> tuple[_Vector | None, str | None]:
    """(the opened file, None) or (None, the reason it cannot be used)."""
    from pyproj import CRS

    if _is_parquet(url):
        import pyarrow.parquet as pq

        if layer is not None:
            return None, f"has no layer {layer!r} (GeoParquet has no layers)"
        try:
            schema = pq.read_schema(path)
            geo = json.loads((schema.metadata or {}).get(b"geo", b"null"))
        except Exception as exc:  # noqa: BLE001 (any reader error is the operator's problem)
            return None, f"does not open as GeoParquet: {exc}"
        if not geo or "primary_column" not in geo:
            return None, "is a Parquet file without GeoParquet ('geo') metadata"
        primary = geo["primary_column"]
        meta = geo.get("columns", {}).get(primary, {})
        # GeoParquet: no "crs" key means OGC:CRS84; an explicit null means unknown.
        crs_json = meta.get("crs", "missing")
        crs = CRS.from_user_input("OGC:CRS84") if crs_json == "missing" else (
            CRS.from_json_dict(crs_json) if crs_json else None)
        types = [t.replace(" Z", "").replace(" M", "") for t in meta.get("geometry_types") or []]
        kinds = frozenset(_kind_of_name(t) for t in types) if types else None
        fields = [n for n in schema.names if n != primary and not n.startswith("__")]
        return _Vector(label, url, path, None, crs, fields, kinds, parquet_geometry=primary), None

    import pyogrio

    try:
        layers = [str(n) for n in pyogrio.list_layers(path)[:, 0]]
    except Exception as exc:  # noqa: BLE001
        return None, f"does not open: {str(exc).strip()}"
    if layer is None and len(layers) > 1:
        return None, f"has {len(layers)} layers, name one with layer ({', '.join(layers)})"
    if layer is not None and layer not in layers:
        return None, f"has no layer {layer!r} (layers: {', '.join(layers)})"
    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception as exc:  # noqa: BLE001
        return None, f"does not open: {str(exc).strip()}"
    crs = CRS.from_user_input(info["crs"]) if info.get("crs") else None
    declared = (info.get("geometry_type") or "Unknown").replace("2.5D ", "").split(" ")[0]
    kind = _kind_of_name(declared)
    kinds = None if kind in ("unknown", "collection") else frozenset([kind])
    return _Vector(label, url, path, layer, crs, [str(f) for f in info["fields"]], kinds), None


def _kind_of_name(geometry_type: str) -> str:
    t = geometry_type.lower()
    if t in ("point", "multipoint"):
        return "point"
    if t in ("linestring", "multilinestring", "linearring"):
        return "line"
    if t in ("polygon", "multipolygon"):
        return "polygon"
    return "collection" if t == "geometrycollection" else "unknown"


# --------------------------------------------------------------------------------------------
# The checked rule set


@dataclass
class LoadedRule:
    """A rule whose files were checked: its spec, its source, ``within`` file and lookup."""

    spec: Rule
    source: _Vector
    within: _Vector | None
    lookup: dict[str, int] | None
    kinds: frozenset[str]


@dataclass
class RuleSet:
    """The checked rules of one rules file (see :func:`load_rules`)."""

    url: str
    sha256: str
    rules: tuple[LoadedRule, ...]
    classes: tuple[int, ...]
    warnings: tuple[str, ...]
    _files: _Files = field(repr=False)

    @property
    def names(self) -> list[str]:
        return [r.spec.name for r in self.rules]

    def identity(self) -> dict[str, Any]:
        """JSON identity for the stage fingerprint: the rules file's sha256 and the size and
        stamp (mtime / ETag) of every referenced file (all parts of a shapefile), taken when
        the files were checked."""
        files = {url: [s.size, s.stamp] for url, s in sorted(self._files.stamps.items())}
        return {"rules": self.url, "rules_sha256": self.sha256, "files": files}

    def prepare(self, grid: Grid) -> PreparedRules:
        """Every rule's features for ``grid`` (see :class:`PreparedRule`)."""
        changed = self._files.changed()
        if changed:
            raise RecodingRulesError(self.url, [f"{u} changed since the rules were loaded (load them again)"
                                                for u in changed])
        return PreparedRules(grid, tuple(_prepare_rule(r, grid, self.classes, self.url) for r in self.rules),
                             self.classes)

    def close(self) -> None:
        """Remove the local copies of s3:// files."""
        self._files.close()

    def __enter__(self) -> RuleSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_rules(url: str | os.PathLike[str], store: Store | None = None,
               classes: Collection[int] = DEFAULT_CLASSES) -> RuleSet:
    """Read the rules file at ``url`` (path, file:// or s3://) and check it and every file it
    names; all problems are raised together as one :class:`RecodingRulesError`. Warnings (a
    ``where`` value that never occurs, features ignored as unmapped, an empty source) are logged
    and kept in ``RuleSet.warnings``. ``classes``: the class codes (``config.codes.classes``)."""
    store = store or Store()
    url = as_url(url)
    classes = tuple(sorted({int(c) for c in classes}))
    if not classes or classes[0] < 1 or classes[-1] > 255:
        raise ValueError(f"class codes are 1..255, got {classes}")
    try:
        data = store.read_bytes(url)
    except FileNotFoundError:
        raise RecodingRulesError(url, ["the rules file does not exist"]) from None
    parsed = _parse_yaml(data, url)
    problems: list[str] = []
    warnings: list[str] = []
    specs = _check_structure(parsed, classes, problems)
    files = _Files(store)
    loaded = []
    try:
        for spec in specs:
            rule = _check_rule(spec, url, files, classes, problems, warnings)
            if rule is not None:
                loaded.append(rule)
    except BaseException:
        files.close()
        raise
    if problems:
        files.close()
        raise RecodingRulesError(url, problems)
    for w in warnings:
        log.warning("recoding rules %s: %s", url, w)
    return RuleSet(url, hashlib.sha256(data).hexdigest(), tuple(loaded), classes, tuple(warnings), files)


def _check_structure(parsed: Any, classes: tuple[int, ...], problems: list[str]) -> list[Rule]:
    """The rules that parse (pydantic), in order; problems for the others and for repeated names."""
    try:
        top = _RulesFile.model_validate(parsed)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, "rules file")
        return []
    specs: list[Rule] = []
    seen: dict[str, list[int]] = {}
    for i, raw in enumerate(top.rules):
        label = f"rule {raw['name']!r}" if isinstance(raw.get("name"), str) else f"rule #{i + 1}"
        if isinstance(raw.get("name"), str):
            seen.setdefault(raw["name"], []).append(i + 1)
        try:
            specs.append(Rule.model_validate(raw, context={"classes": classes}))
        except ValidationError as exc:
            problems += _pydantic_problems(exc, label)
    for name, where in seen.items():
        if len(where) > 1:
            problems.append(f"rule {name!r}: the name is used by rules #{', #'.join(map(str, where))}")
    return specs


def _open_ref(rule: str, what: str, ref: str, layer: str | None, base_url: str, files: _Files,
              problems: list[str]) -> _Vector | None:
    """Resolve, stamp and open a vector file named by a rule; None (and a problem) if it fails."""
    try:
        url = _resolve(ref, base_url)
    except ValueError as exc:
        problems.append(f"rule {rule!r}: {what} {ref}: {exc}")
        return None
    parts, missing = files.parts(url)
    if missing:
        names = ", ".join(m.rsplit("/", 1)[-1] for m in missing)
        problems.append(f"rule {rule!r}: {what} {ref} does not exist" if missing[0] == url
                        else f"rule {rule!r}: {what} {ref}: shapefile part(s) missing: {names}")
        return None
    files.stamp(parts)
    vector, reason = _open_vector(ref, url, files.local(url, parts), layer)
    if vector is None:
        problems.append(f"rule {rule!r}: {what} {ref} {reason}")
        return None
    if vector.crs is None:
        problems.append(f"rule {rule!r}: {what} {ref} has no CRS")
        return None
    return vector


def _check_rule(spec: Rule, base_url: str, files: _Files, classes: tuple[int, ...], problems: list[str],
                warnings: list[str]) -> LoadedRule | None:
    name, n_before = spec.name, len(problems)
    lookup = None
    to_spec = spec.to_class if isinstance(spec.to_class, ClassFromAttribute) else None
    if to_spec is not None and to_spec.lookup is not None:
        lookup = _check_lookup(name, to_spec, base_url, files, classes, problems)
    within = None
    if spec.within is not None:
        within = _open_ref(name, "within", spec.within, spec.within_layer, base_url, files, problems)
        if within is not None:
            kinds = within.kinds
            if kinds is None:
                _, types = within.read_table([], geometry=True)
                kinds = frozenset(_KIND.get(int(t), "unknown") for t in types if t >= 0)
            if kinds - {"polygon"}:
                problems.append(f"rule {name!r}: within {spec.within} holds {_kinds_text(kinds)}, not only polygons")
    source = _open_ref(name, "source", spec.source, spec.layer, base_url, files, problems)
    if source is None:
        return None
    columns = spec.columns()
    missing = [c for c in columns if c not in source.fields]
    for c in missing:
        problems.append(f"rule {name!r}: source {spec.source} has no column {c!r} "
                        f"(columns: {', '.join([*source.fields, 'geometry'])})")
    if missing:
        return None
    df, types = source.read_table(columns, geometry=source.kinds is None)
    keep, absent = _where_mask(df, spec.where)
    for column, values in absent.items():
        hint = " (YAML reads unquoted yes/no/on/off as booleans: quote them)" if any(
            isinstance(v, bool) for v in values) else ""
        warnings.append(f"rule {name!r}: where {column}: value(s) {_listed(values)} never occur in "
                        f"source {spec.source}{hint}")
    kinds = source.kinds if types is None else frozenset(_KIND.get(int(t), "unknown") for t in types[keep] if t >= 0)
    if not keep.any():
        warnings.append(f"rule {name!r}: no feature of source {spec.source} matches (the rule recodes nothing)")
    if "collection" in kinds or "unknown" in kinds:
        problems.append(f"rule {name!r}: source {spec.source} holds geometry collections; "
                        "polygons and lines are accepted (points with buffer_m > 0)")
    if "point" in kinds and spec.buffer_m <= 0:
        problems.append(f"rule {name!r}: source {spec.source} holds points: they need buffer_m > 0")
    rows = df[keep]
    if to_spec is not None and (lookup is not None or to_spec.lookup is None):
        mapped, bad = _to_classes(rows[to_spec.attribute], to_spec, lookup, classes)
        if bad and to_spec.unmapped == "error":
            via = f"lookup {to_spec.lookup}" if lookup is not None else f"class codes ({_codes(classes)})"
            problems.append(f"rule {name!r}: to_class attribute {to_spec.attribute!r} has values not in "
                            f"{via}: {_listed(bad)} (unmapped: ignore drops such features)")
        elif bad:
            n = int((mapped == 0).sum())
            warnings.append(f"rule {name!r}: {n} feature(s) with unmapped to_class values are ignored "
                            f"({_listed(bad)})")
    if isinstance(spec.from_classes, FromAttribute):
        _, _, bad = _from_sets(rows[spec.from_classes.attribute], classes)
        if bad:
            problems.append(f"rule {name!r}: from_classes attribute {spec.from_classes.attribute!r} has "
                            f"values that are not class codes ({_codes(classes)}) or lists of them "
                            f"like \"6,7\": {_listed(bad)}")
    if len(problems) > n_before:
        return None
    return LoadedRule(spec, source, within, lookup, kinds)


def _kinds_text(kinds: Iterable[str]) -> str:
    return "/".join(sorted(kinds)) or "no geometries"


def _check_lookup(rule: str, spec: ClassFromAttribute, base_url: str, files: _Files, classes: tuple[int, ...],
                  problems: list[str]) -> dict[str, int] | None:
    """The lookup table as normalised key -> class, or None (and problems)."""
    try:
        url = _resolve(spec.lookup, base_url)
    except ValueError as exc:
        problems.append(f"rule {rule!r}: lookup {spec.lookup}: {exc}")
        return None
    try:
        files.stamp([url])
        data = files.store.read_bytes(url)
    except FileNotFoundError:
        problems.append(f"rule {rule!r}: lookup {spec.lookup} does not exist")
        return None
    try:
        # comma, semicolon or tab (sniffed: spreadsheet exports differ); a BOM is dropped
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True, sep=None,
                            engine="python", encoding="utf-8-sig")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"rule {rule!r}: lookup {spec.lookup} does not read as CSV: {exc}")
        return None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in (spec.key, spec.value) if c not in table.columns]
    if missing:
        problems.append(f"rule {rule!r}: lookup {spec.lookup} has no column(s) {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(table.columns)})")
        return None
    mapping: dict[str, int] = {}
    bad_values, conflicts = [], []
    for raw_key, raw_value in zip(table[spec.key], table[spec.value]):
        key, code = _norm_key(raw_key), _as_class(_norm_key(raw_value), classes)
        if code is None:
            bad_values.append(raw_value)
        elif key in mapping and mapping[key] != code:
            conflicts.append(raw_key)
        else:
            mapping[key] = code
    if bad_values:
        problems.append(f"rule {rule!r}: lookup {spec.lookup} column {spec.value!r} has values that are not "
                        f"class codes ({_codes(classes)}): {_listed(sorted(set(bad_values)))}")
    if conflicts:
        problems.append(f"rule {rule!r}: lookup {spec.lookup} maps key(s) {_listed(sorted(set(conflicts)))} "
                        "to different classes")
    return None if bad_values or conflicts else mapping


# --------------------------------------------------------------------------------------------
# Preparation for a grid


@dataclass
class PreparedRule:
    """One rule's features on a grid, in source order (the later feature wins where they overlap):
    geometries in the grid's CRS (buffered, clipped to ``within`` and the grid), the class each
    writes, the from-class mask of each (``from_table[from_index[i]]``, bool per code 0..255),
    whether each is burnt ``all_touched``, and an STRtree over them."""

    name: str
    geometries: np.ndarray
    to_class: np.ndarray  # uint8
    from_index: np.ndarray  # int32 into from_table
    from_table: np.ndarray  # bool (k, 256)
    all_touched: np.ndarray  # bool
    tree: shapely.STRtree
    unmapped_ignored: int = 0

    def allowed(self, i: int) -> np.ndarray:
        return self.from_table[self.from_index[i]]


@dataclass
class PreparedRules:
    grid: Grid
    rules: tuple[PreparedRule, ...]
    classes: tuple[int, ...]

    def summary(self) -> dict[str, dict[str, int]]:
        """Per rule: the features on the grid and those dropped as unmapped (``unmapped: ignore``)."""
        return {r.name: {"features": len(r.geometries), "unmapped_ignored": r.unmapped_ignored} for r in self.rules}

    def feature_counts(self) -> dict[str, int]:
        return {r.name: len(r.geometries) for r in self.rules}


def _source_bbox(grid: Grid, pad_m: float, crs: Any) -> tuple[float, float, float, float]:
    """The grid's bounds grown by ``pad_m``, in ``crs``, with densified edges (a projected
    rectangle's edges curve in another CRS)."""
    from pyproj import CRS, Transformer

    xmin, ymin, xmax, ymax = grid.bounds
    bounds = (xmin - pad_m, ymin - pad_m, xmax + pad_m, ymax + pad_m)
    if CRS.from_epsg(grid.epsg) == crs:
        return bounds
    transformer = Transformer.from_crs(grid.epsg, crs, always_xy=True)
    out = transformer.transform_bounds(*bounds, densify_pts=21)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"the grid's bounds do not transform to {crs.name}")
    return out


def _read_features(vector: _Vector, columns: list[str], grid: Grid, pad_m: float):
    gdf = vector.read_bbox(columns, _source_bbox(grid, pad_m, vector.crs))
    if gdf.crs is None:
        gdf = gdf.set_crs(vector.crs)
    return gdf


def _prepare_rule(rule: LoadedRule, grid: Grid, classes: tuple[int, ...], url: str) -> PreparedRule:
    spec = rule.spec
    pad = spec.buffer_m + 2 * grid.res  # features reaching the grid after buffering
    gdf = _read_features(rule.source, spec.columns(), grid, pad)
    keep, _ = _where_mask(gdf, spec.where)
    gdf = gdf[keep & ~gdf.geometry.isna().to_numpy()]
    n = len(gdf)
    # the class each feature writes
    unmapped = 0
    if isinstance(spec.to_class, ClassFromAttribute):
        to_class, bad = _to_classes(gdf[spec.to_class.attribute], spec.to_class, rule.lookup, classes)
        if bad and spec.to_class.unmapped == "error":  # the file changed under the same stamp
            raise RecodingRulesError(url, [f"rule {spec.name!r}: unmapped to_class values {_listed(bad)}"])
        unmapped = int((to_class == 0).sum())
    else:
        to_class = np.full(n, spec.to_class, np.uint8)
    # the classes each feature may recode
    if isinstance(spec.from_classes, FromAttribute):
        sets, from_index, bad = _from_sets(gdf[spec.from_classes.attribute], classes)
        if bad:
            raise RecodingRulesError(url, [f"rule {spec.name!r}: bad from_classes values {_listed(bad)}"])
    else:
        sets = [frozenset(spec.from_classes) if spec.from_classes else None]
        from_index = np.zeros(n, np.int64)
    mapped = to_class > 0
    geoms = gdf.geometry.to_crs(grid.crs).to_numpy()[mapped] if n else np.empty(0, object)
    to_class, from_index = to_class[mapped], from_index[mapped]
    if spec.buffer_m > 0 and len(geoms):
        geoms = shapely.buffer(geoms, spec.buffer_m)
    kinds = np.array([_KIND.get(int(t), "unknown") for t in shapely.get_type_id(geoms)], object) \
        if len(geoms) else np.empty(0, object)
    touched = np.full(len(geoms), spec.all_touched, bool) if spec.all_touched is not None else kinds != "polygon"
    # limit to the grid (one pixel beyond it, so edge pixels are judged on whole geometries)
    xmin, ymin, xmax, ymax = grid.bounds
    r = grid.res
    geoms = shapely.clip_by_rect(geoms, xmin - r, ymin - r, xmax + r, ymax + r) if len(geoms) else geoms
    if rule.within is not None and len(geoms):
        geoms = _clip_within(geoms, rule.within, grid, pad)
    ok = ~shapely.is_empty(geoms) if len(geoms) else np.zeros(0, bool)
    geoms, to_class, from_index, touched = geoms[ok], to_class[ok], from_index[ok], touched[ok]
    return PreparedRule(spec.name, geoms, to_class.astype(np.uint8), from_index.astype(np.int32),
                        _from_table(sets, classes), touched, shapely.STRtree(geoms), unmapped)


def _clip_within(geoms: np.ndarray, within: _Vector, grid: Grid, pad: float) -> np.ndarray:
    """``geoms`` intersected with the union of the ``within`` polygons near the grid."""
    area = _read_features(within, [], grid, pad).geometry.to_crs(grid.crs).to_numpy()
    area = shapely.union_all(shapely.make_valid(area[~shapely.is_empty(area)])) if len(area) else None
    if area is None or area.is_empty:
        return np.full(len(geoms), shapely.Polygon(), object)
    shapely.prepare(area)
    out = geoms.copy()
    inside = shapely.contains_properly(area, geoms)
    cut = ~inside & shapely.intersects(area, geoms)
    out[~inside & ~cut] = shapely.Polygon()
    if cut.any():
        part = geoms[cut]
        invalid = ~shapely.is_valid(part)
        part[invalid] = shapely.make_valid(part[invalid])  # OSM polygons are not always valid
        out[cut] = shapely.intersection(part, area)
    return out


# --------------------------------------------------------------------------------------------
# Application (pure)


def _burn(rule: PreparedRule, idx: np.ndarray, block: Grid) -> np.ndarray | None:
    """int32 (rows, cols): 1 + the index of the feature covering each pixel (0: none); the
    later feature wins. Features are clipped to the block (plus one pixel) first, so a large
    polygon costs what the block holds of it; centre and all_touched features are burnt apart
    and merged by the higher index."""
    from rasterio import features

    xmin, ymin, xmax, ymax = block.bounds
    r = block.res
    geoms = shapely.clip_by_rect(rule.geometries[idx], xmin - r, ymin - r, xmax + r, ymax + r)
    keep = ~shapely.is_empty(geoms)
    burn = None
    for touched in (False, True):
        sel = keep & (rule.all_touched[idx] == touched)
        if not sel.any():
            continue
        part = features.rasterize(zip(geoms[sel], (idx[sel] + 1).tolist()), out_shape=block.shape,
                                  transform=block.transform, fill=0, dtype="int32", all_touched=touched)
        burn = part if burn is None else np.maximum(burn, part)
    return burn


def recode_block(classes: np.ndarray, block: Grid, prepared: PreparedRules,
                 in_area: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Apply the prepared rules, in order, to the class codes ``classes`` (uint8 (rows, cols) of
    ``block``, 0 = no class). A pixel takes a feature's class where the feature covers it, its
    current class is in the feature's from-classes and it is in ``in_area`` (bool; None: all).
    Returns the recoded codes (a new array) and, per rule, the pixels it changed."""
    if classes.shape != block.shape:
        raise ValueError(f"classes {classes.shape} do not match the block {block.shape}")
    if in_area is not None and in_area.shape != block.shape:
        raise ValueError(f"in_area {in_area.shape} does not match the block {block.shape}")
    if block.epsg != prepared.grid.epsg:
        raise ValueError(f"block in EPSG:{block.epsg}, rules prepared for EPSG:{prepared.grid.epsg}")
    g, b, tol = prepared.grid.bounds, block.bounds, 1e-6 * block.res
    if b[0] < g[0] - tol or b[1] < g[1] - tol or b[2] > g[2] + tol or b[3] > g[3] + tol:
        raise ValueError(f"block {b} reaches outside the grid the rules were prepared for {g}")
    out = np.array(classes, dtype=np.uint8, order="C", copy=True)
    flat_out = out.reshape(-1)
    flat_area = None if in_area is None else np.asarray(in_area, bool).reshape(-1)
    query = shapely.box(*block.bounds)
    counts: dict[str, int] = {}
    for rule in prepared.rules:
        counts[rule.name] = 0
        idx = np.sort(rule.tree.query(query)) if len(rule.geometries) else np.empty(0, np.intp)
        if not idx.size:
            continue
        burn = _burn(rule, idx, block)
        if burn is None:
            continue
        pixels = np.flatnonzero(burn)
        if not pixels.size:
            continue
        feature = burn.reshape(-1)[pixels] - 1
        current = flat_out[pixels]
        new = rule.to_class[feature]
        ok = rule.from_table[rule.from_index[feature], current] & (new != current)
        if flat_area is not None:
            ok &= flat_area[pixels]
        flat_out[pixels[ok]] = new[ok]
        counts[rule.name] = int(ok.sum())
    return out, counts


def raspl(calibrated_classes: np.ndarray, final_classes: np.ndarray, in_area: np.ndarray | None,
          outside: int = 254) -> np.ndarray:
    """RASPL (uint8, ATBD 3.4): 1 where the final class differs from the calibrated class, 0
    elsewhere in the area, ``outside`` outside it (``in_area`` None: everywhere in)."""
    if calibrated_classes.shape != final_classes.shape:
        raise ValueError(f"shapes differ: {calibrated_classes.shape} vs {final_classes.shape}")
    out = (np.asarray(final_classes) != np.asarray(calibrated_classes)).astype(np.uint8)
    if in_area is not None:
        out[~np.asarray(in_area, bool)] = outside
    return out


__all__ = ["DEFAULT_CLASSES", "ClassFromAttribute", "FromAttribute", "LoadedRule", "PreparedRule", "PreparedRules",
           "RecodingRulesError", "Rule", "RuleSet", "load_rules", "raspl", "recode_block"]
