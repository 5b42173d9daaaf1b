"""Per-production-unit model registry: immutable, numbered versions under the models root.

Layout (``models_root`` is ``config.store.models``, a ``file://`` or ``s3://`` URL)::

    {models}/{pu}/v0001/CLAIM            who claimed the number, and when (JSON)
    {models}/{pu}/v0001/<artefact>...    the files of the model (weights, normalisation, ...)
    {models}/{pu}/v0001/MODEL_CARD.md    the card, for people
    {models}/{pu}/v0001/model_card.json  the card, for programs; written last = commit marker

A registered version is never overwritten. :func:`register_model` claims the next free number
by creating ``CLAIM`` with :meth:`Store.write_bytes_if_absent` (a conditional write on S3, a
hard link on a filesystem), so concurrent registrations get distinct versions; if the claim is
lost it tries the next number. It then writes the artefacts and ``MODEL_CARD.md``, and finally
``model_card.json``, again only if absent. A version folder without ``model_card.json`` (a run
that died half way) is incomplete: :func:`list_versions` and :func:`resolve_model` ignore it,
and its number is never reused.

The card is the caller's card plus fields the registry fills (:data:`REGISTRY_FIELDS`): the PU,
the version, the creation time, each artefact's sha256 and size, and the versions of the
software that trained the model. :func:`read_artefact` verifies the recorded sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any

import yaml

from clcplus_ops.errors import ClcplusError, InvalidIdError, PermanentError
from clcplus_ops.locations import Place, model_pu_url, model_version_url
from clcplus_ops.store import Store, canonical_json

__all__ = [
    "CARD_JSON",
    "CARD_MARKDOWN",
    "CLAIM",
    "REGISTRY_FIELDS",
    "ModelNotFoundError",
    "RegisteredModel",
    "RegistryError",
    "list_versions",
    "read_artefact",
    "register_model",
    "render_model_card",
    "resolve_model",
    "software_versions",
]

log = logging.getLogger("clcplus_ops.model.registry")

CLAIM = "CLAIM"
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
_RESERVED_NAMES = frozenset(n.lower() for n in (CLAIM, CARD_JSON, CARD_MARKDOWN))
# Card fields filled by the registry; a caller's card may not set them.
REGISTRY_FIELDS = ("pu_id", "version", "created", "artefacts", "software")
# Card key -> distribution name, for the "software" field.
SOFTWARE_PACKAGES = {
    "clcplus_ops": "clcplus-ops",
    "numpy": "numpy",
    "torch": "torch",
    "cleanlab": "cleanlab",
    "scikit-learn": "scikit-learn",
    "rasterio": "rasterio",
    "apache-airflow": "apache-airflow",
}
NOT_INSTALLED = "not installed"

_PU_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # bounded: a folder name, not "File name too long"
_VERSION_RE = re.compile(r"v([0-9]{4,})")  # ASCII digits only: versions make paths
# Simple file names: no separators, no hidden or temporary names (list() hides ".clcplus-tmp-*").
_ARTEFACT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Numbers tried after the first free one before giving up (only reached under heavy contention).
_MAX_CLAIM_ATTEMPTS = 1000


class ModelNotFoundError(PermanentError, LookupError):
    """No complete model for the PU (and version) asked; the message says where it looked.
    Retrying does not register one: tasks fail at once."""

    def __init__(
        self, pu_id: str, version: str | None, url: str, versions: list[str], *, note: str = ""
    ) -> None:
        self.pu_id = pu_id
        self.version = version or "latest"
        self.url = url
        self.versions = list(versions)
        available = ", ".join(self.versions) if self.versions else "none"
        what = "no registered model (asked: latest)" if version is None else f"no model {version}"
        message = (
            f"{what} for PU {pu_id!r}; looked in {url}; registered versions: {available}"
        )
        super().__init__(message + (f" ({note})" if note else ""))


class RegistryError(ClcplusError, RuntimeError):
    """The registry is inconsistent: corrupt card, artefact missing or not matching its sha256."""


@dataclass(frozen=True)
class RegisteredModel:
    pu_id: str
    version: str
    url: str  # {models}/{pu}/{version}
    card: dict  # the parsed model_card.json

    def artefact_url(self, name: str) -> str:
        """``{url}/{name}``; KeyError naming the artefacts present if the card has no ``name``."""
        artefacts = self.card.get("artefacts") or {}
        if name not in artefacts:
            present = ", ".join(sorted(artefacts)) or "none"
            raise KeyError(
                f"model {self.pu_id}/{self.version} has no artefact {name!r}; "
                f"artefacts: {present}"
            )
        return Place(self.url).file(name)

    @property
    def markdown_card_url(self) -> str:
        """The model card for people (``MODEL_CARD.md``)."""
        return Place(self.url).file(CARD_MARKDOWN)


# --------------------------------------------------------------------------------------------
# public API


def register_model(
    store: Store,
    models_root: str,
    pu_id: str,
    artefacts: Mapping[str, bytes],
    card: Mapping[str, Any],
    *,
    created: datetime | None = None,
) -> RegisteredModel:
    """Register ``artefacts`` with ``card`` as the next version of ``pu_id``'s model.

    Everything is validated before a version number is claimed, so a bad call burns no number:
    ValueError for a bad PU id or artefact name (or no artefacts, or a card setting a field of
    :data:`REGISTRY_FIELDS`), TypeError for a card that is not JSON-serialisable (naming the
    key) or artefacts that are not bytes. ``created`` (timezone-aware; default now) is recorded
    in UTC.
    """
    _check_pu(pu_id)
    blobs = _check_artefacts(artefacts)
    caller_card = _check_card(card)
    created_iso = _utc_iso(created)
    software = software_versions()

    version, url = _claim(store, models_root, pu_id, created_iso)
    entries: dict[str, dict[str, Any]] = {}
    for name, data in blobs.items():
        store.write_bytes(Place(url).file(name), data)
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    full = {
        **caller_card,
        "pu_id": pu_id,
        "version": version,
        "created": created_iso,
        "artefacts": entries,
        "software": software,
    }
    payload = canonical_json(full).encode("utf-8")
    written = json.loads(payload)  # as readers will see it (string keys, lists for tuples)
    store.write_text(Place(url).file(CARD_MARKDOWN), render_model_card(written, url=url))
    card_url = Place(url).file(CARD_JSON)
    if not store.write_bytes_if_absent(card_url, payload):
        # Only this run holds the claim, so the card can only be ours (a retried PUT whose
        # first answer was lost); anything else means the version folder was tampered with.
        if store.read_bytes(card_url) != payload:
            raise RegistryError(
                f"{card_url} appeared while PU {pu_id} {version} was being registered by this "
                "run; the version folder was written by someone else"
            )
    log.info("registered PU %s model %s at %s (%d artefact(s))", pu_id, version, url, len(entries))
    return RegisteredModel(pu_id=pu_id, version=version, url=url, card=written)


def list_versions(store: Store, models_root: str, pu_id: str) -> list[str]:
    """The complete versions (with a ``model_card.json``) of ``pu_id``, ascending."""
    _check_pu(pu_id)
    _, complete = _scan(store, models_root, pu_id)
    return complete


def resolve_model(
    store: Store, models_root: str, pu_id: str, version: str | None = None
) -> RegisteredModel:
    """The model ``version`` of ``pu_id`` (``None`` or ``"latest"``: the latest complete one).

    ModelNotFoundError if there is none (an incomplete version counts as none; the latest is
    never silently replaced by an older one), RegistryError if its card is corrupt, ValueError
    for a malformed PU id or version string.
    """
    _check_pu(pu_id)
    pu_url = model_pu_url(models_root, pu_id)
    if version is None or version == "latest":
        used, complete = _scan(store, models_root, pu_id)
        if not complete:
            incomplete = sorted(set(used) - set(complete), key=_number)
            note = f"incomplete (no {CARD_JSON}): {', '.join(incomplete)}" if incomplete else ""
            raise ModelNotFoundError(pu_id, None, pu_url, [], note=note)
        version = complete[-1]
    elif not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise InvalidIdError(f"model version must look like 'v0001' (or be 'latest'), got {version!r}")
    url = model_version_url(models_root, pu_id, version)
    try:
        card = _load_card(store, url, pu_id, version)
    except FileNotFoundError:
        used, complete = _scan(store, models_root, pu_id)
        note = f"{version} is incomplete: no {CARD_JSON}" if version in used else ""
        raise ModelNotFoundError(pu_id, version, url, complete, note=note) from None
    return RegisteredModel(pu_id=pu_id, version=version, url=url, card=card)


def read_artefact(store: Store, model: RegisteredModel, name: str) -> bytes:
    """The bytes of artefact ``name`` of ``model``, checked against the card's sha256 and size.

    KeyError if the card lists no such artefact; RegistryError if it is missing or modified.
    """
    url = model.artefact_url(name)
    expected = model.card["artefacts"][name]
    try:
        data = store.read_bytes(url)
    except FileNotFoundError:
        raise RegistryError(
            f"artefact {name!r} of model {model.pu_id}/{model.version} is missing: {url}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.get("sha256") or len(data) != expected.get("bytes", len(data)):
        raise RegistryError(
            f"artefact {name!r} of model {model.pu_id}/{model.version} does not match its model "
            f"card: {url} has sha256 {digest} ({len(data)} bytes), the card records "
            f"{expected.get('sha256')} ({expected.get('bytes')} bytes)"
        )
    return data


def software_versions() -> dict[str, str]:
    """Python, platform and the versions of the packages that matter for a model."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for key, dist in SOFTWARE_PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = NOT_INSTALLED
    return versions


# --------------------------------------------------------------------------------------------
# Markdown card


_KNOWN_SECTIONS = ("training_data", "metrics", "targets", "configuration")


def render_model_card(card: Mapping[str, Any], *, url: str | None = None) -> str:
    """Human-readable Markdown for a (complete) card as written to ``model_card.json``."""
    pu, version = card.get("pu_id", "?"), card.get("version", "?")
    lines = [f"# CLCplus Backbone model: PU {pu}, {version}", ""]
    lines += _table(
        ("Field", "Value"),
        [("Production unit", pu), ("Version", version), ("Created (UTC)", card.get("created", "?"))]
        + ([("Location", url)] if url else []),
    )

    lines += ["", "## Training data", ""]
    training = card.get("training_data")
    if isinstance(training, Mapping) and training:
        labels = {"samples": "Samples", "hash": "Hash"}
        order = [k for k in labels if k in training]
        order += sorted(k for k in training if k not in labels)
        for key in order:
            value = training[key]
            shown = f"{value:,}" if key == "samples" and _is_int(value) else _inline(value)
            if key == "hash":
                shown = f"`{value}`"
            lines.append(f"- {labels.get(key, key)}: {shown}")
    else:
        lines.append("Not recorded." if training is None else _inline(training))

    lines += ["", "## Metrics", ""]
    lines += _metrics_lines(card)

    lines += ["", "## Configuration", ""]
    if "configuration" in card:
        dumped = yaml.safe_dump(
            card["configuration"], sort_keys=True, allow_unicode=True, default_flow_style=False
        )
        lines += ["```yaml", dumped.rstrip("\n"), "```"]
    else:
        lines.append("Not recorded.")

    extra = {
        k: v for k, v in card.items() if k not in _KNOWN_SECTIONS and k not in REGISTRY_FIELDS
    }
    if extra:
        lines += ["", "## Other information", "", "```json", canonical_json(extra).rstrip(), "```"]

    lines += ["", "## Software", ""]
    software = card.get("software") or {}
    lines += _table(("Component", "Version"), list(software.items()))

    lines += ["", "## Artefacts", ""]
    artefacts = card.get("artefacts") or {}
    lines += _table(
        ("Name", "Bytes", "sha256"),
        [
            (name, f"{a.get('bytes', '?'):,}" if _is_int(a.get("bytes")) else "?",
             f"`{a.get('sha256', '?')}`")
            for name, a in sorted(artefacts.items())
        ],
    )
    lines += [
        "",
        f"Generated by the CLCplus model registry; the machine-readable card is {CARD_JSON}.",
    ]
    return "\n".join(lines) + "\n"


def _metrics_lines(card: Mapping[str, Any]) -> list[str]:
    metrics = card.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else {}
    lines: list[str] = []
    if "overall_accuracy" in metrics:
        lines.append(f"- Overall accuracy: {_percent(metrics['overall_accuracy'])}")
    if "kappa" in metrics:
        kappa = metrics["kappa"]
        shown = f"{kappa:.3f}" if _is_number(kappa) else _inline(kappa)
        lines.append(f"- Cohen's kappa: {shown}")
    if _is_int(metrics.get("n")):
        lines.append(f"- Validation samples: {metrics['n']:,}")
    targets = metrics.get("targets")
    if not (isinstance(targets, Mapping) and "met" in targets):
        targets = card.get("targets")
    if isinstance(targets, Mapping) and "met" in targets:
        verdict = "met" if targets["met"] else "NOT met"
        lines.append(f"- Accuracy targets: **{verdict}**")
        thresholds = targets.get("targets")
        if isinstance(thresholds, Mapping):
            parts = [
                f"{label} {op} {_percent(thresholds[key])}"
                for key, label, op in (
                    ("overall_accuracy", "overall accuracy", ">="),
                    ("max_omission", "omission", "<="),
                    ("max_commission", "commission", "<="),
                )
                if key in thresholds
            ]
            if parts:
                lines.append(f"  - targets: {', '.join(parts)}")
        for failure in targets.get("failures") or []:
            lines.append(f"  - failure: {_inline(failure)}")
    shown = {"overall_accuracy", "kappa", "n", "targets"}
    others = [
        (k, v) for k, v in sorted(metrics.items())
        if k not in shown and (v is None or isinstance(v, (str, int, float, bool)))
    ]
    if others:
        lines += ["", *_table(("Metric", "Value"), others)]
    nested = sorted(k for k, v in metrics.items() if k not in shown and isinstance(v, (dict, list)))
    if nested:
        lines += ["", f"Also in {CARD_JSON} (metrics): {', '.join(nested)}."]
    return lines or ["Not recorded."]


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    if not rows:
        return ["None."]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _cell(value: Any) -> str:
    return _inline(value).replace("|", "\\|")


def _inline(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return " ".join(text.split())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _percent(value: Any) -> str:
    """A fraction as percent (0.9123 -> 91.23 %); anything else as it is."""
    return f"{value * 100:.2f} %" if _is_number(value) else _inline(value)


# --------------------------------------------------------------------------------------------
# internals


def _check_pu(pu_id: Any) -> None:
    if not isinstance(pu_id, str) or not _PU_RE.fullmatch(pu_id):
        raise InvalidIdError(f"PU id must be 1 to 64 letters, digits, '_' or '-', got {pu_id!r:.80}")


def _check_artefacts(artefacts: Mapping[str, bytes]) -> dict[str, bytes]:
    if not isinstance(artefacts, Mapping) or not artefacts:
        raise ValueError("a model needs at least one artefact (a mapping name -> bytes)")
    blobs: dict[str, bytes] = {}
    for name in sorted(artefacts):
        if not isinstance(name, str) or not _ARTEFACT_RE.fullmatch(name):
            raise ValueError(
                f"artefact name {name!r} is not a simple file name (letters, digits, '.', '_', "
                "'-', starting with a letter or digit; no '/')"
            )
        if name.lower() in _RESERVED_NAMES:
            raise ValueError(
                f"artefact name {name!r} is reserved by the registry "
                f"({CLAIM}, {CARD_JSON}, {CARD_MARKDOWN})"
            )
        data = artefacts[name]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"artefact {name!r} must be bytes, got {type(data).__name__}")
        blobs[name] = bytes(data)
    return blobs


def _check_card(card: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(card, Mapping):
        raise TypeError(f"model card must be a mapping, got {type(card).__name__}")
    clash = [k for k in REGISTRY_FIELDS if k in card]
    if clash:
        raise ValueError(
            f"model card sets {', '.join(map(repr, clash))}: these fields are filled by the "
            "registry"
        )
    for key in card:
        if not isinstance(key, str):
            raise TypeError(f"model card keys must be strings, got {key!r}")
        problem = _json_problem(card[key], key)
        if problem:
            raise TypeError(f"model card is not JSON-serialisable: {problem}")
    return dict(card)


def _json_problem(value: Any, path: str, depth: int = 0) -> str | None:
    """Where and why ``value`` cannot be written as strict JSON, or None if it can."""
    try:
        json.dumps(value, sort_keys=True, allow_nan=False)
        return None
    except (TypeError, ValueError) as exc:
        error = exc
    if depth > 50:  # a circular reference
        return f"key {path!r}: {error}"
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return f"key {path!r} has a key {k!r} of type {type(k).__name__}"
            found = _json_problem(v, f"{path}.{k}", depth + 1)
            if found:
                return found
        return f"key {path!r}: {error}"  # e.g. keys of mixed types that cannot be sorted
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _json_problem(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return f"key {path!r}: {error}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"key {path!r} is {value!r}, which is not valid JSON (use None)"
    return f"key {path!r} holds {type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _utc_iso(created: datetime | None) -> str:
    if created is None:
        created = datetime.now(timezone.utc)
    elif not isinstance(created, datetime):
        raise TypeError(f"created must be a datetime, got {type(created).__name__}")
    elif created.tzinfo is None or created.utcoffset() is None:
        raise ValueError(f"created must be timezone-aware, got naive {created.isoformat()}")
    return created.astimezone(timezone.utc).isoformat(timespec="seconds")


def _number(version: str) -> int:
    return int(version[1:])


def _scan(store: Store, models_root: str, pu_id: str) -> tuple[list[str], list[str]]:
    """(all version folders, complete ones), each ascending by number."""
    pu_url = model_pu_url(models_root, pu_id)
    prefix = _normalised(pu_url) + "/"
    used: set[str] = set()
    complete: set[str] = set()
    for url in store.list(pu_url):
        url = _normalised(url)
        if not url.startswith(prefix):
            continue
        version, _, rest = url[len(prefix) :].partition("/")
        if not rest or not _VERSION_RE.fullmatch(version):
            continue
        used.add(version)
        if rest == CARD_JSON:
            complete.add(version)
    return sorted(used, key=_number), sorted(complete, key=_number)


def _normalised(url: str) -> str:
    # file:// listings come from pathlib, which folds "//" and "/./": fold the root the same way.
    if url.startswith("file://"):
        return "file://" + PurePosixPath(url[len("file://") :]).as_posix()
    return url


def _claim(store: Store, models_root: str, pu_id: str, created_iso: str) -> tuple[str, str]:
    """Claim the next free version number of ``pu_id``: (version, its URL)."""
    used, _ = _scan(store, models_root, pu_id)
    number = max((_number(v) for v in used), default=0) + 1
    for _ in range(_MAX_CLAIM_ATTEMPTS):
        version = f"v{number:04d}"
        url = model_version_url(models_root, pu_id, version)
        claim = {
            "pu_id": pu_id,
            "version": version,
            "created": created_iso,
            "claimed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if store.write_bytes_if_absent(Place(url).file(CLAIM), canonical_json(claim).encode("utf-8")):
            log.info("PU %s: claimed model version %s (%s)", pu_id, version, url)
            return version, url
        log.info("PU %s: model version %s is taken, trying the next", pu_id, version)
        number += 1
    raise RegistryError(
        f"PU {pu_id}: could not claim a model version after {_MAX_CLAIM_ATTEMPTS} attempts "
        f"(last tried v{number - 1:04d} under {model_pu_url(models_root, pu_id)})"
    )


def _load_card(store: Store, url: str, pu_id: str, version: str) -> dict[str, Any]:
    """The parsed card of the version at ``url``; FileNotFoundError if absent."""
    card_url = Place(url).file(CARD_JSON)
    try:
        card = store.read_json(card_url)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise RegistryError(f"corrupt model card {card_url}: {exc}") from exc
    if not isinstance(card, dict):
        raise RegistryError(f"corrupt model card {card_url}: not a JSON object")
    if card.get("pu_id") != pu_id or card.get("version") != version:
        raise RegistryError(
            f"model card {card_url} describes PU {card.get('pu_id')!r} "
            f"{card.get('version')!r}, not {pu_id!r} {version!r} (was a folder copied?)"
        )
    artefacts = card.get("artefacts")
    if not isinstance(artefacts, dict) or not all(
        isinstance(a, dict) and isinstance(a.get("sha256"), str) for a in artefacts.values()
    ):
        raise RegistryError(f"corrupt model card {card_url}: 'artefacts' must map names to sha256")
    return card
