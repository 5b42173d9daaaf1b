"""clcplus_ops.model.registry: numbered, immutable per-PU model versions on file:// and s3://."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from clcplus_ops.model import registry
from clcplus_ops.model.registry import (
    ModelNotFoundError,
    RegisteredModel,
    RegistryError,
    list_versions,
    read_artefact,
    register_model,
    resolve_model,
)
from clcplus_ops.config import Config
from clcplus_ops.errors import ClcplusError, InvalidIdError, PermanentError
from clcplus_ops.locations import Locations
from clcplus_ops.store import S3Settings, Store, as_url, join

CREATED = datetime(2025, 6, 1, 12, 30, tzinfo=timezone.utc)


def _locations(models_root: str) -> Locations:
    """The locations of a configuration whose models root is ``models_root``: the registry's
    version folders must be where :meth:`Locations.model` says they are."""
    config = Config()
    return Locations(config.model_copy(update={"store": config.store.model_copy(update={"models": models_root})}))


def _version(root: str, pu: str, version: str) -> str:
    return _locations(root).model(pu, version)


@pytest.fixture
def models(tmp_path: Path) -> tuple[Store, str]:
    """(store, models root) on the file:// backend."""
    return Store(), _locations(as_url(tmp_path / "models")).models


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, str]:
    if request.param == "file":
        return Store(), _locations(as_url(tmp_path / "models")).models
    endpoint = request.getfixturevalue("s3_server")
    return Store(S3Settings(endpoint_url=endpoint)), join(
        request.getfixturevalue("s3_bucket"), "models"
    )


def _card(**extra: object) -> dict:
    return {
        "training_data": {"samples": 12345, "hash": "ab" * 32, "source": "LUCAS 2022"},
        "metrics": {
            "overall_accuracy": 0.9123,
            "kappa": 0.8741,
            "n": 2000,
            "targets": {
                "met": False,
                "failures": ["class 3 (Woody broadleaved) omission 20.0 % > 15.0 %"],
                "targets": {"overall_accuracy": 0.9, "max_omission": 0.15, "max_commission": 0.15},
            },
        },
        "configuration": {"epochs": 8, "learning_rate": 0.001, "bands": ["B02", "B03"]},
        **extra,
    }


def _register(store: Store, root: str, pu: str = "DEMO1", weights: bytes = b"w1", **kw: object):
    return register_model(
        store, root, pu, {"model.pt": weights, "norm.json": b'{"mean": [1]}'}, _card(), **kw
    )


# ---- register / list / resolve -------------------------------------------------------------


def test_register_two_versions_and_resolve(models: tuple[Store, str]) -> None:
    store, root = models
    first = _register(store, root, weights=b"weights one", created=CREATED)
    second = _register(store, root, weights=b"weights two")
    assert (first.version, second.version) == ("v0001", "v0002")
    assert first.url == _version(root, "DEMO1", "v0001") and first.pu_id == "DEMO1"
    assert list_versions(store, root, "DEMO1") == ["v0001", "v0002"]

    latest = resolve_model(store, root, "DEMO1")
    assert latest == second
    assert resolve_model(store, root, "DEMO1", "latest") == second
    explicit = resolve_model(store, root, "DEMO1", "v0001")
    assert explicit == first
    assert read_artefact(store, explicit, "model.pt") == b"weights one"
    assert read_artefact(store, latest, "model.pt") == b"weights two"
    assert explicit.artefact_url("model.pt") in store.list(_version(root, "DEMO1", "v0001"))

    card = explicit.card
    assert card["pu_id"] == "DEMO1" and card["version"] == "v0001"
    assert card["created"] == "2025-06-01T12:30:00+00:00"
    assert card["artefacts"] == {
        "model.pt": {"sha256": hashlib.sha256(b"weights one").hexdigest(), "bytes": 11},
        "norm.json": {"sha256": hashlib.sha256(b'{"mean": [1]}').hexdigest(), "bytes": 13},
    }
    assert card["metrics"] == _card()["metrics"]  # the caller's fields are kept
    assert card["training_data"]["samples"] == 12345
    software = card["software"]
    for key in ("python", "platform", "clcplus_ops", "numpy", "torch", "cleanlab",
                "scikit-learn", "rasterio", "apache-airflow"):
        assert isinstance(software[key], str) and software[key]
    assert software["numpy"] == importlib.metadata.version("numpy")
    assert datetime.fromisoformat(latest.card["created"]).tzinfo == timezone.utc

    assert sorted(u.rsplit("/", 1)[1] for u in store.list(first.url)) == [
        "CLAIM", "MODEL_CARD.md", "model.pt", "model_card.json", "norm.json",
    ]
    claim = store.read_json(join(first.url, registry.CLAIM))
    assert claim["created"] == card["created"] and claim["pid"] > 0 and claim["host"]


def test_pus_are_independent(models: tuple[Store, str]) -> None:
    store, root = models
    assert _register(store, root, "PU042").version == "v0001"
    assert _register(store, root, "PU042").version == "v0002"
    assert _register(store, root, "PU043").version == "v0001"
    assert list_versions(store, root, "PU043") == ["v0001"]
    assert list_versions(store, root, "PU044") == []


def test_register_never_overwrites(models: tuple[Store, str]) -> None:
    store, root = models
    v1 = _register(store, root, weights=b"original")
    _register(store, root, weights=b"second")
    folder = Path(v1.url[len("file://") :])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    third = _register(store, root, weights=b"third")
    assert third.version == "v0003"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    again = resolve_model(store, root, "DEMO1", "v0001")
    assert again.card == v1.card
    assert read_artefact(store, again, "model.pt") == b"original"


def test_incomplete_version_is_skipped_and_its_number_not_reused(
    models: tuple[Store, str],
) -> None:
    store, root = models
    _register(store, root)
    # a run that claimed v0002 and died before writing its card
    dead = _version(root, "DEMO1", "v0002")
    store.write_bytes(join(dead, registry.CLAIM), b"{}")
    store.write_bytes(join(dead, "model.pt"), b"half")
    assert list_versions(store, root, "DEMO1") == ["v0001"]
    assert resolve_model(store, root, "DEMO1").version == "v0001"
    with pytest.raises(ModelNotFoundError, match=r"v0002 is incomplete: no model_card.json"):
        resolve_model(store, root, "DEMO1", "v0002")

    assert _register(store, root).version == "v0003"
    assert list_versions(store, root, "DEMO1") == ["v0001", "v0003"]
    assert store.read_bytes(join(dead, "model.pt")) == b"half"


def test_failed_registration_leaves_an_incomplete_version(
    models: tuple[Store, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, root = models
    _register(store, root)
    real_write = store.write_bytes

    def failing_write(url: str, data: bytes) -> None:
        if url.endswith("norm.json"):
            raise OSError("disk full")
        real_write(url, data)

    monkeypatch.setattr(store, "write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        _register(store, root)
    monkeypatch.undo()
    failed = _version(root, "DEMO1", "v0002")
    assert store.exists(join(failed, registry.CLAIM))
    assert not store.exists(join(failed, registry.CARD_JSON))
    assert resolve_model(store, root, "DEMO1").version == "v0001"
    assert _register(store, root).version == "v0003"


def test_only_incomplete_versions_is_not_found(models: tuple[Store, str]) -> None:
    store, root = models
    store.write_bytes(join(_version(root, "DEMO1", "v0001"), registry.CLAIM), b"{}")
    with pytest.raises(ModelNotFoundError, match=r"incomplete \(no model_card.json\): v0001"):
        resolve_model(store, root, "DEMO1")
    assert list_versions(store, root, "DEMO1") == []


def test_concurrent_registrations_get_distinct_versions(backend: tuple[Store, str]) -> None:
    store, root = backend
    workers = 8
    barrier = threading.Barrier(workers)
    results: dict[int, RegisteredModel] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = _register(store, root, "PU042", weights=f"model {i}".encode())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    versions = sorted(m.version for m in results.values())
    assert versions == [f"v{n:04d}" for n in range(1, workers + 1)]
    assert list_versions(store, root, "PU042") == versions
    for i, model in results.items():
        resolved = resolve_model(store, root, "PU042", model.version)
        assert read_artefact(store, resolved, "model.pt") == f"model {i}".encode()


# ---- not found, corrupt, tampered ------------------------------------------------------------


def test_model_not_found_for_unknown_pu(models: tuple[Store, str]) -> None:
    store, root = models
    _register(store, root, "DEMO1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(store, root, "PU999")
    message = str(info.value)
    assert "'PU999'" in message and "latest" in message
    assert f"looked in {root}/PU999" in message and "registered versions: none" in message
    # An expected error (one line for the operator) that no retry cures; still a LookupError.
    assert isinstance(info.value, LookupError) and isinstance(info.value, PermanentError)
    assert isinstance(info.value, ClcplusError)
    assert (info.value.pu_id, info.value.version, info.value.versions) == ("PU999", "latest", [])


def test_model_not_found_for_unknown_version(models: tuple[Store, str]) -> None:
    store, root = models
    _register(store, root)
    _register(store, root)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(store, root, "DEMO1", "v0007")
    message = str(info.value)
    assert "v0007" in message and "'DEMO1'" in message
    assert _version(root, "DEMO1", "v0007") in message
    assert "registered versions: v0001, v0002" in message
    assert info.value.versions == ["v0001", "v0002"]


@pytest.mark.parametrize("version", ["1", "v1", "../v0001", "v0001/x", ""])
def test_malformed_version_is_rejected(models: tuple[Store, str], version: str) -> None:
    store, root = models
    with pytest.raises(InvalidIdError, match="v0001"):
        resolve_model(store, root, "DEMO1", version)


def test_read_artefact_detects_tampering(models: tuple[Store, str]) -> None:
    store, root = models
    model = _register(store, root, weights=b"genuine weights")
    store.write_bytes(model.artefact_url("model.pt"), b"evil weights!!!")
    with pytest.raises(RegistryError, match=r"model.pt.*does not match.*sha256") as info:
        read_artefact(store, model, "model.pt")
    assert isinstance(info.value, ClcplusError)
    assert hashlib.sha256(b"genuine weights").hexdigest() in str(info.value)
    # the other artefact is still fine
    assert read_artefact(store, model, "norm.json") == b'{"mean": [1]}'

    store.delete(model.artefact_url("norm.json"))
    with pytest.raises(RegistryError, match=r"'norm.json'.*is missing"):
        read_artefact(store, model, "norm.json")


def test_unknown_artefact_names_the_present_ones(models: tuple[Store, str]) -> None:
    store, root = models
    model = _register(store, root)
    with pytest.raises(KeyError, match=r"no artefact 'weights.pt'; artefacts: model.pt, norm.json"):
        model.artefact_url("weights.pt")
    with pytest.raises(KeyError, match="weights.pt"):
        read_artefact(store, model, "weights.pt")


def test_corrupt_or_foreign_card_is_a_registry_error(models: tuple[Store, str]) -> None:
    store, root = models
    model = _register(store, root)
    card_url = join(model.url, registry.CARD_JSON)
    store.write_bytes(card_url, b"{not json")
    with pytest.raises(RegistryError, match="corrupt model card"):
        resolve_model(store, root, "DEMO1")  # the latest is corrupt: no silent fallback
    # a folder copied from another PU
    other = _register(store, root, "PU042")
    store.write_bytes(card_url, store.read_bytes(join(other.url, registry.CARD_JSON)))
    with pytest.raises(RegistryError, match=r"describes PU 'PU042'"):
        resolve_model(store, root, "DEMO1", "v0001")


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("pu", ["", "PU/1", "../PU1", "PU 1", "PU1\n", None])
def test_bad_pu_id_is_rejected(models: tuple[Store, str], pu: object) -> None:
    store, root = models
    with pytest.raises(InvalidIdError, match="PU id"):
        register_model(store, root, pu, {"m.pt": b"x"}, {})  # type: ignore[arg-type]
    with pytest.raises(InvalidIdError, match="PU id"):
        resolve_model(store, root, pu)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdError, match="PU id"):
        list_versions(store, root, pu)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("sub/model.pt", "simple file name"),
        ("", "simple file name"),
        ("..", "simple file name"),
        (".hidden", "simple file name"),
        ("CLAIM", "reserved"),
        ("model_card.json", "reserved"),
        ("MODEL_CARD.md", "reserved"),
    ],
)
def test_bad_artefact_name_is_rejected(
    models: tuple[Store, str], name: str, match: str
) -> None:
    store, root = models
    with pytest.raises(ValueError, match=match):
        register_model(store, root, "DEMO1", {"ok.pt": b"x", name: b"y"}, {})
    assert store.list(root) == []  # validation happens before a number is claimed


def test_bad_artefacts_and_cards_are_rejected(models: tuple[Store, str]) -> None:
    store, root = models
    with pytest.raises(ValueError, match="at least one artefact"):
        register_model(store, root, "DEMO1", {}, {})
    with pytest.raises(TypeError, match=r"artefact 'm.pt' must be bytes"):
        register_model(store, root, "DEMO1", {"m.pt": "text"}, {})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"'version'.*filled by the registry"):
        register_model(store, root, "DEMO1", {"m.pt": b"x"}, {"version": "v0009"})
    with pytest.raises(TypeError, match=r"key 'configuration.bands' holds set"):
        register_model(store, root, "DEMO1", {"m.pt": b"x"}, {"configuration": {"bands": {"B02"}}})
    with pytest.raises(TypeError, match=r"key 'metrics.per_class\[1\]' holds object"):
        register_model(
            store, root, "DEMO1", {"m.pt": b"x"}, {"metrics": {"per_class": [0.5, object()]}}
        )
    with pytest.raises(TypeError, match=r"key 'metrics.kappa' is nan"):
        register_model(store, root, "DEMO1", {"m.pt": b"x"}, {"metrics": {"kappa": float("nan")}})
    with pytest.raises(ValueError, match="timezone-aware"):
        register_model(store, root, "DEMO1", {"m.pt": b"x"}, {}, created=datetime(2025, 1, 1))
    assert store.list(root) == []


def test_created_is_recorded_in_utc(models: tuple[Store, str]) -> None:
    store, root = models
    cet = timezone(timedelta(hours=2))
    model = _register(store, root, created=datetime(2025, 6, 1, 14, 30, tzinfo=cet))
    assert model.card["created"] == "2025-06-01T12:30:00+00:00"


def test_missing_package_is_reported_as_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.SOFTWARE_PACKAGES, "imaginary", "no-such-dist-clcplus")
    versions = registry.software_versions()
    assert versions["imaginary"] == "not installed"
    assert versions["python"].count(".") == 2


# ---- markdown card ---------------------------------------------------------------------------


def test_markdown_card_has_metrics_software_and_artefacts(models: tuple[Store, str]) -> None:
    store, root = models
    model = _register(store, root, weights=b"weights", created=CREATED)
    text = store.read_text(model.markdown_card_url)
    assert text.startswith("# CLCplus Backbone model: PU DEMO1, v0001\n")
    assert "| Created (UTC) | 2025-06-01T12:30:00+00:00 |" in text
    # training data
    assert "- Samples: 12,345" in text and f"- Hash: `{'ab' * 32}`" in text
    assert "- source: LUCAS 2022" in text
    # metrics and the target verdict
    assert "- Overall accuracy: 91.23 %" in text
    assert "- Cohen's kappa: 0.874" in text
    assert "- Accuracy targets: **NOT met**" in text
    assert "  - failure: class 3 (Woody broadleaved) omission 20.0 % > 15.0 %" in text
    assert "overall accuracy >= 90.00 %" in text
    # configuration as YAML
    assert "```yaml\nbands:\n- B02\n- B03\nepochs: 8\nlearning_rate: 0.001\n```" in text
    # software and artefacts
    assert f"| numpy | {importlib.metadata.version('numpy')} |" in text
    assert f"| torch | {model.card['software']['torch']} |" in text
    assert "| apache-airflow |" in text and "| python |" in text
    assert f"| model.pt | 7 | `{hashlib.sha256(b'weights').hexdigest()}` |" in text


def test_markdown_card_with_targets_met_and_extra_fields() -> None:
    card = {
        "pu_id": "PU042",
        "version": "v0003",
        "created": "2025-06-01T12:30:00+00:00",
        "metrics": {"overall_accuracy": 0.95, "macro_f1": 0.91,
                    "targets": {"met": True, "failures": []},
                    "omission": {"1": 0.1}},
        "model": {"architecture": "TempCNN"},
        "artefacts": {},
        "software": {"python": "3.11.9"},
    }
    text = registry.render_model_card(card)
    assert "- Overall accuracy: 95.00 %" in text and "**met**" in text
    assert "| macro_f1 | 0.91 |" in text
    assert "Also in model_card.json (metrics): omission." in text
    assert '"architecture": "TempCNN"' in text  # unknown fields are not dropped
    assert "## Training data\n\nNot recorded." in text
    assert "## Configuration\n\nNot recorded." in text


# ---- S3 ------------------------------------------------------------------------------------


def test_round_trip_on_s3(s3_server: str, s3_bucket: str) -> None:
    store = Store(S3Settings(endpoint_url=s3_server))
    root = join(s3_bucket, "models")
    first = _register(store, root, "PU042", weights=b"s3 weights 1", created=CREATED)
    second = _register(store, root, "PU042", weights=b"s3 weights 2")
    assert (first.version, second.version) == ("v0001", "v0002")
    assert first.url == _version(root, "PU042", "v0001") == f"{s3_bucket}/models/PU042/v0001"

    store.write_bytes(join(_version(root, "PU042", "v0003"), registry.CLAIM), b"{}")  # incomplete
    assert list_versions(store, root, "PU042") == ["v0001", "v0002"]
    latest = resolve_model(store, root, "PU042")
    assert latest == second
    assert read_artefact(store, latest, "model.pt") == b"s3 weights 2"
    old = resolve_model(store, root, "PU042", "v0001")
    assert old.card == first.card
    assert read_artefact(store, old, "model.pt") == b"s3 weights 1"
    assert "91.23 %" in store.read_text(old.markdown_card_url)
    assert json.loads(store.read_bytes(join(old.url, registry.CARD_JSON))) == first.card

    assert _register(store, root, "PU042").version == "v0004"
    store.write_bytes(old.artefact_url("model.pt"), b"tampered")
    with pytest.raises(RegistryError, match="does not match"):
        read_artefact(store, old, "model.pt")
    with pytest.raises(ModelNotFoundError, match=rf"{re.escape(_version(root, 'PU042', 'v0009'))}.*v0001, v0002, v0004"):
        resolve_model(store, root, "PU042", "v0009")


def test_card_is_stored_as_json_reads_it(models: tuple[Store, str]) -> None:
    store, root = models
    card = {"metrics": {"support": {1: 10, 2: 20}}, "training_data": {"classes": (1, 2)}}
    model = register_model(store, root, "DEMO1", {"m.pt": b"x"}, card)
    assert model.card["metrics"]["support"] == {"1": 10, "2": 20}
    assert model.card["training_data"]["classes"] == [1, 2]
    assert resolve_model(store, root, "DEMO1").card == model.card
