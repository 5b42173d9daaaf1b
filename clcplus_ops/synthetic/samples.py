"""Labelled sample points drawn from the ground truth, a known share deliberately mislabelled.

Points are 10 m pixel centres inside the world's bounds whose 3x3 neighbourhood is one
class (no mixed pixels at 20/60 m edges of the point itself), stratified over the classes
present: as balanced as the classes allow (a class with too few homogeneous pixels gives all
it has, the others share the rest). ``round(mislabelled_fraction * n)`` of them, chosen at
random, get a different class (uniform over the other classes present) as ``label``;
``true_label`` keeps the truth.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
from pyproj import Transformer

from clcplus_ops.synthetic import noise

COLUMNS = ("sample_id", "x", "y", "epsg", "lon", "lat", "label", "true_label", "mislabelled")


@dataclass
class Samples:
    sample_id: list[str]
    x: np.ndarray
    y: np.ndarray
    epsg: int
    lon: np.ndarray
    lat: np.ndarray
    label: np.ndarray
    true_label: np.ndarray
    mislabelled: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_id)

    def rows(self):
        for i in range(len(self)):
            yield {
                "sample_id": self.sample_id[i], "x": float(self.x[i]), "y": float(self.y[i]), "epsg": self.epsg,
                "lon": float(self.lon[i]), "lat": float(self.lat[i]), "label": int(self.label[i]),
                "true_label": int(self.true_label[i]), "mislabelled": bool(self.mislabelled[i]),
            }

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in self.rows():
            writer.writerow([row["sample_id"], repr(row["x"]), repr(row["y"]), row["epsg"], repr(row["lon"]),
                             repr(row["lat"]), row["label"], row["true_label"], "true" if row["mislabelled"] else "false"])
        return out.getvalue()

    def to_geojson(self, year: int) -> dict:
        return {
            "type": "FeatureCollection",
            "name": f"clcplus-synthetic-samples-{year}",
            "features": [
                {"type": "Feature", "id": row["sample_id"], "properties": row,
                 "geometry": {"type": "Point", "coordinates": [row["lon"], row["lat"]]}}
                for row in self.rows()
            ],
        }


def homogeneous(truth: np.ndarray) -> np.ndarray:
    """True where the 3x3 neighbourhood has one class (the border rows/columns are False)."""
    ok = np.zeros(truth.shape, bool)
    if truth.shape[0] < 3 or truth.shape[1] < 3:
        return ok
    centre = truth[1:-1, 1:-1]
    inner = np.ones(centre.shape, bool)
    h, w = truth.shape
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                inner &= truth[1 + dr:h - 1 + dr, 1 + dc:w - 1 + dc] == centre
    ok[1:-1, 1:-1] = inner
    return ok


def quotas(available: dict[int, int], n: int) -> dict[int, int]:
    """Balanced counts per class, capped by what each class has."""
    quota = {c: 0 for c in available}
    left, open_classes = n, sorted(c for c, k in available.items() if k > 0)
    while left > 0 and open_classes:
        share, extra = divmod(left, len(open_classes))
        for i, c in enumerate(open_classes):
            quota[c] += share + (1 if i < extra else 0)
        left = 0
        for c in open_classes:
            if quota[c] > available[c]:
                left += quota[c] - available[c]
                quota[c] = available[c]
        open_classes = [c for c in open_classes if quota[c] < available[c]]
    return quota


def draw_samples(truth: np.ndarray, bounds: tuple[int, int, int, int], epsg: int, n: int,
                 mislabelled_fraction: float, seed: int, year: int, res: int = 10) -> Samples:
    """``n`` samples from ``truth`` (the world window, upper-left corner at bounds' xmin/ymax)."""
    rng = noise.stream(seed, noise.SAMPLES, year)
    ok = homogeneous(truth)
    flat_truth, flat_ok = truth.ravel(), ok.ravel()
    classes = [int(c) for c in np.unique(flat_truth[flat_ok])] if flat_ok.any() else []
    candidates = {c: np.flatnonzero(flat_ok & (flat_truth == c)) for c in classes}
    counts = quotas({c: len(v) for c, v in candidates.items()}, n)
    picked = [np.sort(rng.choice(candidates[c], size=counts[c], replace=False)) for c in classes if counts[c]]
    index = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    index = index[rng.permutation(len(index))]
    rows, cols = np.divmod(index, truth.shape[1])
    x = bounds[0] + (cols + 0.5) * res
    y = bounds[3] - (rows + 0.5) * res
    true_label = flat_truth[index].astype(np.int64)
    label = true_label.copy()
    mislabelled = np.zeros(len(index), bool)
    n_wrong = int(round(mislabelled_fraction * len(index)))
    if n_wrong and len(classes) > 1:
        wrong = rng.choice(len(index), size=n_wrong, replace=False)
        for i in np.sort(wrong):
            others = [c for c in classes if c != true_label[i]]
            label[i] = others[int(rng.integers(len(others)))]
        mislabelled[wrong] = True
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    ids = [f"syn{year}-{i:06d}" for i in range(len(index))]
    return Samples(ids, x.astype(np.float64), y.astype(np.float64), epsg, np.round(np.asarray(lon, np.float64), 8),
                   np.round(np.asarray(lat, np.float64), 8), label, true_label, mislabelled)


def expert_decisions(flagged_csv: str, samples_csv: str) -> str:
    """The review an expert with VHR imagery would return for a label audit's flagged samples,
    from the synthetic truth: relabel a wrong label to the true class, keep a right one. Gives
    the decisions CSV (sample_id, decision, label, comment) the training review applies."""
    truth = {row["sample_id"]: row for row in csv.DictReader(io.StringIO(samples_csv))}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sample_id", "decision", "label", "comment"])
    for row in csv.DictReader(io.StringIO(flagged_csv)):
        real = truth[row["sample_id"]]
        if real["mislabelled"] == "true":
            writer.writerow([row["sample_id"], "relabel", real["true_label"], "checked on VHR imagery"])
        else:
            writer.writerow([row["sample_id"], "keep", "", "label confirmed"])
    return out.getvalue()
