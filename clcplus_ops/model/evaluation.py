"""Accuracy of a classifier on a hold-out set, checked against the product's targets.

The CLCplus Backbone ATBD asks for an overall accuracy of at least 90 % and at most 15 %
omission and commission error per class. This module turns reference/predicted label arrays
into a confusion matrix and its statistics (:class:`Accuracy`), judges them against
:class:`Targets` (:class:`TargetCheck`), and renders a Markdown report and a PNG figure.

Conventions: rows of the confusion matrix are the reference class, columns the predicted
class, both in the order of ``classes``. Omission error is ``1 - producer's accuracy`` (per
reference class), commission error is ``1 - user's accuracy`` (per predicted class). A
statistic whose denominator is zero is ``None`` rather than 0 or NaN, so that "not
measurable" is never mistaken for "perfect" or "all wrong" and stays JSON-serialisable.

Pure functions on numpy arrays; matplotlib is imported only by :func:`plot_confusion_matrix`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

__all__ = [
    "Accuracy",
    "TargetCheck",
    "Targets",
    "accuracy",
    "accuracy_from_matrix",
    "check_targets",
    "confusion_matrix",
    "plot_confusion_matrix",
    "report_markdown",
]

# Decimals kept by the JSON form: enough to reproduce any percentage shown in a report.
_JSON_DECIMALS = 6


@dataclass(frozen=True)
class Targets:
    """Accuracy targets as fractions: a view of the configuration's ``training`` section, where
    the ATBD's values (OA >= 0.90, omission and commission <= 0.15) are the defaults; build it
    with :meth:`from_config`."""

    overall_accuracy: float
    max_omission: float
    max_commission: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Targets.{f.name} must be a fraction in [0, 1], got {value!r}")

    @classmethod
    def from_config(cls, training: Any) -> Targets:
        """From the ``training`` section of :class:`clcplus_ops.config.Config`."""
        return cls(
            overall_accuracy=training.target_overall_accuracy,
            max_omission=training.max_omission,
            max_commission=training.max_commission,
        )


# --------------------------------------------------------------------------- confusion matrix


def _validated_classes(classes: Sequence[int]) -> np.ndarray:
    cls = np.asarray(list(classes))
    if cls.ndim != 1 or cls.size == 0:
        raise ValueError("classes must be a non-empty sequence of integer codes")
    if not np.issubdtype(cls.dtype, np.integer):
        raise ValueError(f"classes must be integer codes, got {list(classes)!r}")
    if np.unique(cls).size != cls.size:
        raise ValueError(f"classes contain repeats: {cls.tolist()}")
    return cls.astype(np.int64)


def _class_index(values: np.ndarray, cls: np.ndarray, what: str) -> np.ndarray:
    """Position in ``cls`` of every value; ValueError naming the values that are not classes."""
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
            or values.dtype == np.bool_):
        raise ValueError(f"{what} must hold numeric class codes, got dtype {values.dtype}")
    order = np.argsort(cls)
    sorted_cls = cls[order]
    # searchsorted + equality instead of a lookup table: works for any code range and for
    # float inputs (2.0 is class 2, 2.5 and NaN are not classes).
    pos = np.clip(np.searchsorted(sorted_cls, values), 0, cls.size - 1)
    found = sorted_cls[pos] == values
    if not found.all():
        bad = np.unique(values[~found])
        shown = ", ".join(str(v) for v in bad[:20].tolist()) + (", ..." if bad.size > 20 else "")
        raise ValueError(
            f"{what} has value(s) not in classes {cls.tolist()}: {shown} "
            f"({int((~found).sum())} sample(s))"
        )
    return order[pos]


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Counts (k, k) int64: rows = reference class, columns = predicted class, in ``classes`` order."""
    cls = _validated_classes(classes)
    ref = np.asarray(reference)
    pred = np.asarray(predicted)
    # Same shape, not just same size: a transposed raster would pair the wrong pixels.
    if ref.shape != pred.shape:
        raise ValueError(f"reference and predicted differ in length/shape: {ref.shape} vs {pred.shape}")
    ref_i = _class_index(ref.ravel(), cls, "reference")
    pred_i = _class_index(pred.ravel(), cls, "predicted")
    k = cls.size
    # One bincount over the flattened (row, column) index: linear in n, no Python loop.
    counts = np.bincount(ref_i.astype(np.int64) * k + pred_i, minlength=k * k)
    return counts.reshape(k, k).astype(np.int64)


# --------------------------------------------------------------------------- statistics


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(eq=False)
class Accuracy:
    """Confusion matrix and the statistics derived from it (fractions, not percent)."""

    classes: list[int]
    class_names: dict[int, str]
    matrix: np.ndarray  # (k, k) int64 counts; rows reference, columns predicted
    overall_accuracy: float
    kappa: float  # Cohen's kappa
    omission: dict[int, float | None]  # 1 - producer's accuracy; None: no reference samples
    commission: dict[int, float | None]  # 1 - user's accuracy; None: never predicted
    producer_accuracy: dict[int, float | None]
    user_accuracy: dict[int, float | None]
    f1: dict[int, float | None]  # None only if the class is neither in reference nor predicted
    support: dict[int, int]  # reference samples per class
    n: int

    def name(self, code: int) -> str:
        return self.class_names.get(code, "")

    def label(self, code: int) -> str:
        """``class 3 (Woody ...)`` or ``class 3`` when no name is known."""
        name = self.name(code)
        return f"class {code} ({name})" if name else f"class {code}"

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare ndarrays with ==, whose truth value is ambiguous.
        if not isinstance(other, Accuracy):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name))
            if f.name == "matrix"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: class codes as string keys, floats rounded, matrix as nested lists."""

        def per_class(values: Mapping[int, float | None]) -> dict[str, float | None]:
            return {str(c): None if v is None else round(v, _JSON_DECIMALS) for c, v in values.items()}

        return {
            "classes": list(self.classes),
            "class_names": {str(c): n for c, n in self.class_names.items()},
            "matrix": self.matrix.tolist(),
            "n": self.n,
            "overall_accuracy": round(self.overall_accuracy, _JSON_DECIMALS),
            "kappa": round(self.kappa, _JSON_DECIMALS),
            "producer_accuracy": per_class(self.producer_accuracy),
            "user_accuracy": per_class(self.user_accuracy),
            "omission": per_class(self.omission),
            "commission": per_class(self.commission),
            "f1": per_class(self.f1),
            "support": {str(c): s for c, s in self.support.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Accuracy:
        """Inverse of :meth:`to_dict`. The statistics are recomputed from the matrix, so the
        result equals the original exactly (the dict's floats are rounded)."""
        classes = [int(c) for c in d["classes"]]
        names = {int(c): str(n) for c, n in d.get("class_names", {}).items()}
        acc = accuracy_from_matrix(np.asarray(d["matrix"], dtype=np.int64), classes, names)
        # A dict whose totals disagree with its matrix was edited or corrupted: refuse it.
        if "n" in d and int(d["n"]) != acc.n:
            raise ValueError(f"n = {d['n']} does not match the matrix total {acc.n}")
        if "overall_accuracy" in d and abs(float(d["overall_accuracy"]) - acc.overall_accuracy) > 1e-5:
            raise ValueError(
                f"overall_accuracy {d['overall_accuracy']} does not match the matrix ({acc.overall_accuracy:.6f})"
            )
        return acc


def _cohen_kappa(matrix: np.ndarray) -> float:
    n = float(matrix.sum())
    observed = float(np.trace(matrix)) / n
    # Chance agreement from the marginals; float64 before multiplying to avoid int overflow.
    expected = float(np.dot(matrix.sum(axis=1).astype(np.float64), matrix.sum(axis=0).astype(np.float64))) / (n * n)
    if expected >= 1.0:
        # Reference and prediction both all one class: kappa is 0/0. That case is perfect
        # agreement (observed == 1), and 1.0 keeps the field a JSON-able float.
        return 1.0
    return (observed - expected) / (1.0 - expected)


def accuracy_from_matrix(
    matrix: np.ndarray, classes: Sequence[int], class_names: Mapping[int, str] | None = None
) -> Accuracy:
    """Statistics of a confusion matrix (rows reference, columns predicted). Also the way to
    pool several hold-out sets: sum their matrices, then call this."""
    cls = _validated_classes(classes)
    m = np.asarray(matrix)
    k = cls.size
    if m.shape != (k, k):
        raise ValueError(f"matrix must be {k} x {k} for {k} classes, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer) or (m < 0).any():
        raise ValueError("matrix must hold non-negative integer counts")
    m = m.astype(np.int64)
    n = int(m.sum())
    if n == 0:
        raise ValueError("no samples: accuracy is undefined for an empty hold-out set")

    codes = [int(c) for c in cls]
    names = dict(class_names or {})
    diag = np.diag(m)
    rows = m.sum(axis=1)  # reference counts per class
    cols = m.sum(axis=0)  # predicted counts per class
    # Errors as (off-diagonal / total) rather than 1 - accuracy: 3/20 is exactly the float 0.15,
    # 1 - 17/20 is not, and the target check compares against 0.15.
    pa = {c: _ratio(diag[i], rows[i]) for i, c in enumerate(codes)}
    ua = {c: _ratio(diag[i], cols[i]) for i, c in enumerate(codes)}
    omission = {c: _ratio(rows[i] - diag[i], rows[i]) for i, c in enumerate(codes)}
    commission = {c: _ratio(cols[i] - diag[i], cols[i]) for i, c in enumerate(codes)}
    # F1 = 2TP / (2TP + FP + FN): defined (possibly 0) whenever the class occurs on either side.
    f1 = {c: _ratio(2 * diag[i], rows[i] + cols[i]) for i, c in enumerate(codes)}
    return Accuracy(
        classes=codes,
        class_names={c: str(names[c]) for c in codes if c in names},
        matrix=m,
        overall_accuracy=float(np.trace(m)) / n,
        kappa=_cohen_kappa(m),
        omission=omission,
        commission=commission,
        producer_accuracy=pa,
        user_accuracy=ua,
        f1=f1,
        support={c: int(rows[i]) for i, c in enumerate(codes)},
        n=n,
    )


def accuracy(
    reference: np.ndarray,
    predicted: np.ndarray,
    classes: Sequence[int],
    class_names: Mapping[int, str] | None = None,
) -> Accuracy:
    """Accuracy statistics of ``predicted`` against ``reference`` over ``classes``."""
    return accuracy_from_matrix(confusion_matrix(reference, predicted, classes), classes, class_names)


# --------------------------------------------------------------------------- targets


@dataclass
class TargetCheck:
    met: bool
    failures: list[str]
    targets: Targets
    # Per class: True/False, or None where the class could not be judged (no reference
    # samples and never predicted). Drives the report's "target met" column.
    class_met: dict[int, bool | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "met": self.met,
            "failures": list(self.failures),
            "targets": asdict(self.targets),
            "class_met": {str(c): v for c, v in self.class_met.items()},
        }


def _pct(value: float, limit: float) -> str:
    """Percent with one decimal, more where one decimal would print the value equal to the limit
    (15.04 % must not read "15.0 % > 15.0 %")."""
    for decimals in (1, 2, 3, 4):
        text = f"{value * 100:.{decimals}f}"
        if text != f"{limit * 100:.{decimals}f}":
            return f"{text} %"
    return f"{value * 100:.4f} %"


def check_targets(acc: Accuracy, targets: Targets) -> TargetCheck:
    """Judge ``acc`` against ``targets``. Omission is judged only for classes with reference
    samples, commission only for classes that were predicted (None is never judged)."""
    failures: list[str] = []
    if acc.overall_accuracy < targets.overall_accuracy:
        failures.append(
            f"overall accuracy {_pct(acc.overall_accuracy, targets.overall_accuracy)}"
            f" < {targets.overall_accuracy * 100:.1f} %"
        )
    class_met: dict[int, bool | None] = {}
    for c in acc.classes:
        om, co = acc.omission[c], acc.commission[c]
        if om is None and co is None:
            class_met[c] = None  # neither in reference nor predicted: nothing to judge
            continue
        ok = True
        # Strict comparisons: exactly 15 % meets a "<= 15 %" target.
        if om is not None and om > targets.max_omission:
            failures.append(
                f"{acc.label(c)} omission {_pct(om, targets.max_omission)} > {targets.max_omission * 100:.1f} %"
            )
            ok = False
        if co is not None and co > targets.max_commission:
            failures.append(
                f"{acc.label(c)} commission {_pct(co, targets.max_commission)}"
                f" > {targets.max_commission * 100:.1f} %"
            )
            ok = False
        class_met[c] = ok
    return TargetCheck(met=not failures, failures=failures, targets=targets, class_met=class_met)


# --------------------------------------------------------------------------- report


def _cell(text: str) -> str:
    # A "|" or a newline inside a value would break the Markdown table.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _fmt_met(value: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "–"}[value]


def report_markdown(
    acc: Accuracy, check: TargetCheck, *, title: str, context: Mapping[str, str] | None = None
) -> str:
    """A Markdown report: context, overall figures, per-class table, confusion matrix, verdict."""
    t = check.targets
    lines = [f"# {_cell(title)}", ""]
    for key, value in (context or {}).items():
        lines.append(f"- **{_cell(key)}**: {_cell(value)}")
    lines.append(f"- **Hold-out samples**: {acc.n}")
    lines += [
        "",
        "## Overall",
        "",
        f"- Overall accuracy: **{_fmt_pct(acc.overall_accuracy)}** (target ≥ {t.overall_accuracy * 100:.1f} %)",
        f"- Cohen's kappa: **{acc.kappa:.3f}**",
        "",
        "## Per class",
        "",
        f"Targets: omission ≤ {t.max_omission * 100:.1f} %, commission ≤ {t.max_commission * 100:.1f} %.",
        "",
        "| Code | Name | Reference n | Producer's acc. | User's acc. | Omission | Commission | F1 | Target met |",
        "|---:|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for c in acc.classes:
        f1 = acc.f1[c]
        lines.append(
            f"| {c} | {_cell(acc.name(c))} | {acc.support[c]} | {_fmt_pct(acc.producer_accuracy[c])}"
            f" | {_fmt_pct(acc.user_accuracy[c])} | {_fmt_pct(acc.omission[c])}"
            f" | {_fmt_pct(acc.commission[c])} | {'–' if f1 is None else f'{f1:.3f}'}"
            f" | {_fmt_met(check.class_met.get(c))} |"
        )

    cols = acc.matrix.sum(axis=0)
    lines += [
        "",
        "## Confusion matrix",
        "",
        "Rows: reference class; columns: predicted class.",
        "",
        "| Reference \\ Predicted | " + " | ".join(str(c) for c in acc.classes) + " | Total |",
        "|---:|" + "---:|" * (len(acc.classes) + 1),
    ]
    for i, c in enumerate(acc.classes):
        row = acc.matrix[i]
        lines.append(f"| **{c}** | " + " | ".join(str(v) for v in row.tolist()) + f" | {int(row.sum())} |")
    lines.append("| **Total** | " + " | ".join(str(v) for v in cols.tolist()) + f" | {acc.n} |")

    lines += ["", "## Verdict", ""]
    if check.met:
        lines.append("**Targets met.**")
    else:
        lines.append(f"**Targets not met** ({len(check.failures)} failure(s)):")
        lines.append("")
        lines += [f"- {_cell(f)}" for f in check.failures]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figure


def plot_confusion_matrix(acc: Accuracy, *, title: str) -> bytes:
    """PNG of the confusion matrix: colours row-normalised (share of each reference class),
    counts written in the cells. Deterministic: same input, same bytes."""
    # Object-oriented API with an explicit Agg canvas: no pyplot, so no global figure
    # registry, no backend switching and safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = acc.matrix
    k = len(acc.classes)
    rows = m.sum(axis=1, keepdims=True)
    # Row shares; a class without reference samples gets an all-zero (white) row.
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)

    size = max(4.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of reference class")

    fontsize = 9 if k <= 8 else 7 if k <= 14 else 5
    for i in range(k):
        for j in range(k):
            # White text on dark cells, black on light ones, so every count stays legible.
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=fontsize,
                    color="white" if share[i, j] > 0.5 else "black")
    labels = [str(c) for c in acc.classes]
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("Reference class")
    ax.set_title(f"{title}\nOA {acc.overall_accuracy * 100:.1f} %, kappa {acc.kappa:.3f}, n = {acc.n}",
                 fontsize=10)
    fig.tight_layout()

    buf = io.BytesIO()
    # No "Software" text chunk (it carries the matplotlib version); Agg writes no timestamp.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
