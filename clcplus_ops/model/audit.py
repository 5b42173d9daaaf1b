"""Label audit (ATBD 3.1.5 b): Cleanlab on out-of-sample probabilities, repeated over rounds
with different train/test compositions; a sample is flagged for expert review only when every
round flags it, which keeps the reviewers' list short and sure.

Each round is a stratified k-fold cross-prediction (grouped by polygon where samples have
one), so every sample gets out-of-sample probabilities from a TempCNN that never saw it. The
folds, and the seeds of the models, change from round to round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from cleanlab.filter import find_label_issues
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from clcplus_ops.model.trainer import TrainParams, fit

log = logging.getLogger(__name__)


@dataclass
class AuditResult:
    classes: list[int]
    rounds: int
    folds: int
    times_flagged: np.ndarray        # (samples,) rounds in which Cleanlab flagged the sample
    probabilities: np.ndarray        # (samples, classes) mean out-of-sample probabilities
    flagged_per_round: list[int]
    filter_by: str  # Cleanlab's filter (``training.label_audit_filter``)

    @property
    def flagged(self) -> np.ndarray:
        """Flagged in every round."""
        return self.times_flagged == self.rounds

    def suggested(self) -> np.ndarray:
        return np.asarray(self.classes)[self.probabilities.argmax(axis=1)]

    def given_label_probability(self, labels: np.ndarray) -> np.ndarray:
        column = np.searchsorted(self.classes, labels)
        return self.probabilities[np.arange(len(labels)), column]


def _splits(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int):
    if groups is not None:
        return StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(y, y, groups)
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(y, y)


def out_of_sample_probabilities(
    x: np.ndarray, y: np.ndarray, params: TrainParams, classes: Sequence[int], folds: int, seed: int,
    groups: np.ndarray | None = None, label: str = "audit",
) -> np.ndarray:
    """(samples, classes) probabilities, each from the fold model that did not train on it."""
    probabilities = np.zeros((len(y), len(classes)), np.float32)
    for k, (train, test) in enumerate(_splits(y, groups, folds, seed)):
        model = fit(x[train], y[train], replace(params, seed=seed + k), classes=classes, label=f"{label} fold {k + 1}/{folds}")
        probabilities[test] = model.predict_proba(x[test])
    return probabilities


def flag_label_issues(y: np.ndarray, probabilities: np.ndarray, classes: Sequence[int], filter_by: str) -> np.ndarray:
    """Cleanlab's confident-learning filter ``filter_by`` on out-of-sample probabilities.

    Cleanlab wants labels 0..k-1 with every class present; classes of the model that no
    sample carries are dropped and the rows renormalised."""
    present = sorted(set(np.unique(y).tolist()))
    if len(present) < 2:
        return np.zeros(len(y), bool)
    columns = [list(classes).index(c) for c in present]
    p = probabilities[:, columns].astype(np.float64)
    p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    labels = np.searchsorted(present, y)
    return find_label_issues(labels=labels, pred_probs=p, filter_by=filter_by, n_jobs=1)


def audit_labels(
    x: np.ndarray,
    y: np.ndarray,
    params: TrainParams,
    *,
    classes: Sequence[int],
    rounds: int,
    folds: int,
    seed: int,
    filter_by: str,
    groups: np.ndarray | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> AuditResult:
    """Run the audit; ``progress(round, rounds, flagged_this_round)`` is called after each round.
    ``rounds``, ``folds``, ``seed`` and ``filter_by`` are the configuration's
    ``training.label_audit_rounds``, ``label_audit_folds``, ``seed`` and ``label_audit_filter``."""
    y = np.asarray(y)
    classes = sorted(int(c) for c in classes)
    times = np.zeros(len(y), np.int64)
    mean_p = np.zeros((len(y), len(classes)), np.float64)
    per_round = []
    for r in range(rounds):
        round_seed = seed + 1000 * (r + 1)
        p = out_of_sample_probabilities(x, y, params, classes, folds, round_seed, groups, label=f"audit round {r + 1}/{rounds}")
        issues = flag_label_issues(y, p, classes, filter_by)
        times += issues
        mean_p += p
        per_round.append(int(issues.sum()))
        log.info("label audit round %d/%d: %d samples flagged (%d flagged in every round so far)",
                 r + 1, rounds, issues.sum(), int((times == r + 1).sum()))
        if progress:
            progress(r + 1, rounds, int(issues.sum()))
    return AuditResult(classes=classes, rounds=rounds, folds=folds, times_flagged=times,
                       probabilities=(mean_p / rounds).astype(np.float32), flagged_per_round=per_round,
                       filter_by=filter_by)
