"""TempCNN and its trainer on plain arrays: architecture, cyclic learning rate, early stopping,
determinism, serialisation, the Formosat-2 example of the TempCNN paper, and the label audit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from clcplus_ops.config import parse_config
from clcplus_ops.model.audit import audit_labels, flag_label_issues
from clcplus_ops.model.tempcnn import Architecture, TempCNN
from clcplus_ops.model.trainer import TrainedModel, TrainParams, fit, validation_split

FORMOSAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries" / "formosat2_tempcnn_example"
SMALL = TrainParams(epochs=4, batch_size=32, conv_filters=8, dense_units=16, patience_epochs=10)


def blobs(n_per_class: int = 60, classes=(1, 2, 3, 4), channels: int = 3, steps: int = 12, seed: int = 0):
    """Separable classes: each a distinct temporal profile per channel, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, steps)
    x, y = [], []
    for k, code in enumerate(classes):
        profile = np.stack([np.sin(t + k + c) * 1000 + 500 * k for c in range(channels)])
        x.append(profile + rng.normal(0, 150, (n_per_class, channels, steps)))
        y += [code] * n_per_class
    return np.concatenate(x).astype(np.int16), np.array(y)


def test_tempcnn_has_the_papers_layers_and_counts_its_flops():
    arch = Architecture(channels=12, time_steps=54, classes=11)
    net = TempCNN(arch)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(12, 64, 5), (64, 64, 5), (64, 64, 5)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == 4
    dense = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(64 * 54, 256), (256, 11)]
    assert net.eval()(torch.zeros(7, 12, 54)).shape == (7, 11)
    expected = 2 * 54 * 5 * (12 * 64 + 64 * 64 * 2) + 2 * 64 * 54 * 256 + 2 * 256 * 11
    assert arch.flops_per_sample() == expected
    small = TempCNN(Architecture(channels=3, time_steps=20, classes=4, conv_layers=2, conv_filters=8, kernel_size=3))
    assert small(torch.zeros(2, 3, 20)).shape == (2, 4)


def test_learning_rate_follows_the_triangular2_cycle():
    x, y = blobs(n_per_class=32)
    # 128 samples, batch 32 -> 4 steps per epoch; a cycle of 4 epochs rises for 2 epochs.
    params = replace(SMALL, epochs=8, min_lr=1e-4, max_lr=1e-2, lr_cycle_epochs=4, validation_fraction=0)
    model = fit(x, y, params)
    lr = [h["lr"] for h in model.history]
    assert lr[1] == pytest.approx(1e-2)            # top of the first cycle
    assert lr[3] == pytest.approx(1e-4)            # back at the bottom
    assert lr[5] == pytest.approx(1e-4 + (1e-2 - 1e-4) / 2)  # second peak halved
    assert lr[7] == pytest.approx(1e-4)


def test_early_stopping_keeps_the_best_validation_weights():
    x, y = blobs()
    params = replace(SMALL, epochs=40, patience_epochs=3, max_lr=2e-2)
    model = fit(x, y, params)
    assert len(model.history) < 40
    losses = [h["val_loss"] for h in model.history]
    assert model.best_epoch == 1 + int(np.argmin(losses))
    assert len(model.history) - model.best_epoch == 3
    assert (model.predict(x) == y).mean() > 0.95


def test_training_is_seeded_and_the_model_round_trips_with_its_normalisation():
    x, y = blobs()
    a, b = fit(x, y, SMALL), fit(x, y, SMALL)
    assert a.to_bytes() == b.to_bytes()
    c = fit(x, y, replace(SMALL, seed=1))
    assert c.to_bytes() != a.to_bytes()
    restored = TrainedModel.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(restored.normaliser.mean, a.normaliser.mean)
    np.testing.assert_array_equal(restored.predict_proba(x), a.predict_proba(x))
    assert restored.classes == [1, 2, 3, 4]
    p = a.predict_proba(x)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)


def test_fixed_classes_give_one_output_per_class_even_when_absent():
    x, y = blobs(classes=(2, 5, 7))
    model = fit(x, y, SMALL, classes=range(1, 12))
    assert model.classes == list(range(1, 12)) and model.predict_proba(x[:3]).shape == (3, 11)
    assert set(model.predict(x)) <= {2, 5, 7} or (model.predict(x) == y).mean() > 0.5


def test_bad_tables_are_refused_with_clear_errors():
    x, y = blobs()
    with pytest.raises(ValueError, match="samples, channels, time steps"):
        fit(x[:, 0], y, SMALL)
    with pytest.raises(ValueError, match="labels"):
        fit(x, y[:-1], SMALL)
    with pytest.raises(ValueError, match=r"labels \[9\] are not among the classes"):
        fit(x, np.where(y == 4, 9, y), SMALL, classes=[1, 2, 3, 4])
    model = fit(x, y, SMALL)
    with pytest.raises(ValueError, match="expects"):
        model.predict(x[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        fit(np.full((10, 2, 5), np.nan), np.arange(10) % 2, SMALL)


def test_validation_split_is_stratified_and_keeps_rare_classes():
    y = np.array([1] * 50 + [2] * 10 + [3] * 2 + [4])
    train, val = validation_split(y, 0.2, 0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
    assert np.bincount(y[val], minlength=5).tolist() == [0, 10, 2, 1, 0]


def test_training_config_names_the_schedule_and_refuses_bad_rates():
    from clcplus_ops.config import ConfigError

    params = TrainParams.from_config(parse_config({}).training)
    assert (params.conv_filters, params.kernel_size, params.dense_units, params.conv_layers) == (64, 5, 256, 3)
    with pytest.raises(ConfigError, match="min_lr"):
        parse_config({"training": {"min_lr": 0.1, "max_lr": 0.01}})
    with pytest.raises(ConfigError, match="kernel_size"):
        parse_config({"training": {"kernel_size": 4}})


def _formosat(name: str):
    table = np.loadtxt(FORMOSAT / name, delimiter=",")
    # class, polygon id, then 149 dates x (NIR, R, G), date-major
    x = table[:, 2:].reshape(len(table), -1, 3).transpose(0, 2, 1).astype(np.float32)
    return x, table[:, 0].astype(int), table[:, 1].astype(int)


def test_tempcnn_learns_the_formosat2_example_of_the_paper():
    x_train, y_train, _ = _formosat("train_dataset.csv")
    x_test, y_test, _ = _formosat("test_dataset.csv")
    assert x_train.shape == (260, 3, 149) and len(np.unique(y_train)) == 13
    model = fit(x_train, y_train, TrainParams(epochs=8, batch_size=32, patience_epochs=8))
    accuracy = (model.predict(x_test) == y_test).mean()
    assert accuracy > 0.45, accuracy  # 13 balanced classes: chance is 7.7 %


def test_cleanlab_filter_finds_flipped_labels_given_good_probabilities():
    rng = np.random.default_rng(0)
    y = np.repeat([1, 2, 3], 100)
    probabilities = np.full((300, 3), 0.05)
    probabilities[np.arange(300), y - 1] = 0.9
    noisy = y.copy()
    flipped = rng.choice(300, 15, replace=False)
    noisy[flipped] = np.where(y[flipped] == 3, 1, y[flipped] + 1)
    issues = flag_label_issues(noisy, probabilities, [1, 2, 3])
    assert set(np.flatnonzero(issues)) == set(flipped)


def test_audit_flags_injected_label_noise_over_rounds():
    x, y = blobs(n_per_class=80)
    rng = np.random.default_rng(1)
    noisy = y.copy()
    flipped = rng.choice(len(y), 16, replace=False)
    noisy[flipped] = rng.choice([1, 2, 3, 4], 16)
    noisy[flipped] = np.where(noisy[flipped] == y[flipped], noisy[flipped] % 4 + 1, noisy[flipped])
    progress = []
    result = audit_labels(x, noisy, replace(SMALL, epochs=15, max_lr=2e-2), classes=range(1, 12), rounds=2, folds=3,
                          progress=lambda r, n, k: progress.append((r, n)))
    assert progress == [(1, 2), (2, 2)]
    truth = np.isin(np.arange(len(y)), flipped)
    flagged = result.flagged
    precision = (flagged & truth).sum() / max(flagged.sum(), 1)
    recall = (flagged & truth).sum() / truth.sum()
    assert precision >= 0.7 and recall >= 0.7, (precision, recall)
    assert (result.suggested()[flagged & truth] == y[flagged & truth]).mean() > 0.8
    assert result.probabilities.shape == (len(y), 11)
