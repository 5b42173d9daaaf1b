"""Accuracy statistics of a hold-out set and the check against the ATBD targets."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest

from clcplus_ops.config import CLASS_NAMES, Config
from clcplus_ops.model.evaluation import (
    Accuracy,
    TargetCheck,
    Targets,
    accuracy,
    accuracy_from_matrix,
    check_targets,
    confusion_matrix,
    plot_confusion_matrix,
    report_markdown,
)

ALL_CLASSES = sorted(CLASS_NAMES)
# The targets are a view of the configuration, whose defaults are the ATBD's.
ATBD = Targets.from_config(Config().training)

# Hand example, 3 classes, n = 40 (rows reference, columns predicted):
#            pred 1  pred 2  pred 3 | ref total
#   ref 1       8       1       1   |   10
#   ref 2       2      15       3   |   20
#   ref 3       0       2       8   |   10
#   pred total 10      18      12   |   40
HAND = np.array([[8, 1, 1], [2, 15, 3], [0, 2, 8]])


def samples_from_matrix(matrix: np.ndarray, classes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference/predicted pairs with exactly ``matrix`` as their confusion matrix, shuffled."""
    ref, pred = [], []
    for i, r in enumerate(classes):
        for j, p in enumerate(classes):
            ref += [r] * int(matrix[i, j])
            pred += [p] * int(matrix[i, j])
    order = np.random.default_rng(seed).permutation(len(ref))
    return np.array(ref, dtype=np.uint8)[order], np.array(pred, dtype=np.uint8)[order]


@pytest.fixture
def hand() -> Accuracy:
    ref, pred = samples_from_matrix(HAND, [1, 2, 3])
    return accuracy(ref, pred, [1, 2, 3], CLASS_NAMES)


def test_hand_computed_example(hand):
    np.testing.assert_array_equal(hand.matrix, HAND)
    assert hand.matrix.dtype == np.int64
    assert hand.n == 40
    # OA = (8 + 15 + 8) / 40 = 31/40
    assert hand.overall_accuracy == pytest.approx(0.775)
    # p_e = (10*10 + 20*18 + 10*12) / 40^2 = 580/1600 = 0.3625
    # kappa = (0.775 - 0.3625) / (1 - 0.3625) = 0.4125 / 0.6375 = 11/17 = 0.647058...
    assert hand.kappa == pytest.approx(11 / 17)
    assert hand.support == {1: 10, 2: 20, 3: 10}
    assert hand.producer_accuracy == pytest.approx({1: 0.8, 2: 0.75, 3: 0.8})
    assert hand.user_accuracy == pytest.approx({1: 0.8, 2: 15 / 18, 3: 8 / 12})
    # omission = off-diagonal of the row / row total: 2/10, 5/20, 2/10
    assert hand.omission == pytest.approx({1: 0.2, 2: 0.25, 3: 0.2})
    # commission = off-diagonal of the column / column total: 2/10, 3/18, 4/12
    assert hand.commission == pytest.approx({1: 0.2, 2: 1 / 6, 3: 1 / 3})
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (row + column): 16/20, 30/38, 16/22
    assert hand.f1 == pytest.approx({1: 0.8, 2: 15 / 19, 3: 8 / 11})
    assert hand.class_names == {1: "Sealed", 2: CLASS_NAMES[2], 3: CLASS_NAMES[3]}


def test_matrix_follows_the_order_of_classes():
    ref, pred = samples_from_matrix(HAND, [1, 2, 3])
    m = confusion_matrix(ref, pred, [3, 1, 2])
    np.testing.assert_array_equal(m, HAND[np.ix_([2, 0, 1], [2, 0, 1])])


def test_agrees_with_scikit_learn_on_eleven_classes():
    from sklearn.metrics import cohen_kappa_score
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    rng = np.random.default_rng(42)
    n = 5000
    ref = rng.choice(ALL_CLASSES, size=n, p=np.arange(1, 12) / 66)
    # 80 % correct, the rest uniformly wrong-or-right: a realistic, imperfect classifier.
    pred = np.where(rng.random(n) < 0.8, ref, rng.choice(ALL_CLASSES, size=n))
    acc = accuracy(ref, pred, ALL_CLASSES, CLASS_NAMES)
    np.testing.assert_array_equal(acc.matrix, sk_confusion_matrix(ref, pred, labels=ALL_CLASSES))
    assert acc.kappa == pytest.approx(cohen_kappa_score(ref, pred, labels=ALL_CLASSES), abs=1e-12)
    assert acc.overall_accuracy == pytest.approx(np.mean(ref == pred), abs=1e-12)
    assert sum(acc.support.values()) == n


def test_perfect_classification():
    ref = np.array([1, 1, 2, 3, 3, 3, 11])
    acc = accuracy(ref, ref.copy(), ALL_CLASSES, CLASS_NAMES)
    assert acc.overall_accuracy == 1.0
    assert acc.kappa == 1.0
    for c in (1, 2, 3, 11):
        assert acc.omission[c] == 0.0 and acc.commission[c] == 0.0 and acc.f1[c] == 1.0
    # Classes absent from both sides have no statistics at all.
    assert acc.omission[5] is None and acc.commission[5] is None and acc.f1[5] is None
    assert acc.support[5] == 0
    check = check_targets(acc, ATBD)
    assert check.met and check.failures == []
    assert check.class_met[1] is True and check.class_met[5] is None


def test_single_class_perfect_agreement_has_kappa_one():
    # p_e = 1 makes kappa 0/0; perfect agreement is reported as 1.
    acc = accuracy([2, 2, 2], [2, 2, 2], [1, 2])
    assert acc.kappa == 1.0 and acc.overall_accuracy == 1.0


def test_class_never_predicted():
    # Class 3 has reference samples but is always predicted as 2.
    acc = accuracy([1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 2, 2], [1, 2, 3], CLASS_NAMES)
    assert acc.commission[3] is None and acc.user_accuracy[3] is None
    assert acc.omission[3] == 1.0 and acc.producer_accuracy[3] == 0.0
    assert acc.f1[3] == 0.0
    check = check_targets(acc, replace(ATBD, overall_accuracy=0.5))
    # Judged on omission (100 %), not on commission (undefined).
    assert check.failures == [
        "class 2 (Woody needle leaved trees) commission 50.0 % > 15.0 %",
        "class 3 (Woody broadleaved deciduous trees) omission 100.0 % > 15.0 %",
    ]
    assert check.class_met == {1: True, 2: False, 3: False}


def test_class_absent_from_reference():
    # Class 3 is predicted once but has no reference samples.
    acc = accuracy([1, 1, 2, 2], [1, 1, 2, 3], [1, 2, 3], CLASS_NAMES)
    assert acc.support[3] == 0
    assert acc.omission[3] is None and acc.producer_accuracy[3] is None
    assert acc.commission[3] == 1.0 and acc.user_accuracy[3] == 0.0
    check = check_targets(acc, replace(ATBD, overall_accuracy=0.5))
    assert check.failures == [
        "class 2 (Woody needle leaved trees) omission 50.0 % > 15.0 %",
        "class 3 (Woody broadleaved deciduous trees) commission 100.0 % > 15.0 %",
    ]


def test_targets_failing_lists_every_failure(hand):
    check = check_targets(hand, ATBD)
    assert not check.met
    assert check.failures == [
        "overall accuracy 77.5 % < 90.0 %",
        "class 1 (Sealed) omission 20.0 % > 15.0 %",
        "class 1 (Sealed) commission 20.0 % > 15.0 %",
        "class 2 (Woody needle leaved trees) omission 25.0 % > 15.0 %",
        "class 2 (Woody needle leaved trees) commission 16.7 % > 15.0 %",
        "class 3 (Woody broadleaved deciduous trees) omission 20.0 % > 15.0 %",
        "class 3 (Woody broadleaved deciduous trees) commission 33.3 % > 15.0 %",
    ]
    assert check.class_met == {1: False, 2: False, 3: False}
    # Looser targets: only what still exceeds them is listed; no names -> "class N".
    loose = check_targets(accuracy_from_matrix(HAND, [1, 2, 3]), Targets(0.75, 0.25, 0.30))
    assert loose.failures == ["class 3 commission 33.3 % > 30.0 %"]
    assert loose.class_met == {1: True, 2: True, 3: False}


def test_targets_met_exactly_at_the_limits():
    # n = 100, 10 errors: OA exactly 90 %; class 1 omission 3/20 and commission 3/20 exactly 15 %.
    m = np.array([[17, 3, 0], [0, 36, 4], [3, 0, 37]])
    acc = accuracy_from_matrix(m, [1, 2, 3], CLASS_NAMES)
    assert acc.overall_accuracy == 0.9 and acc.omission[1] == 0.15 and acc.commission[1] == 0.15
    check = check_targets(acc, ATBD)
    assert check.met and check.failures == []
    assert check.to_dict() == {
        "met": True,
        "failures": [],
        "targets": {"overall_accuracy": 0.9, "max_omission": 0.15, "max_commission": 0.15},
        "class_met": {"1": True, "2": True, "3": True},
    }


def test_failure_text_never_reads_equal_to_the_limit():
    # Omission 0.1504 would print "15.0 % > 15.0 %" with one decimal.
    m = np.array([[8496, 1504], [0, 10000]])
    check = check_targets(accuracy_from_matrix(m, [1, 2]), replace(ATBD, overall_accuracy=0.5))
    assert check.failures == ["class 1 omission 15.04 % > 15.0 %"]


def test_targets_from_config_and_validation():
    assert ATBD == Targets(overall_accuracy=0.90, max_omission=0.15, max_commission=0.15)
    training = Config().training.model_copy(update={"target_overall_accuracy": 0.85, "max_commission": 0.2})
    assert Targets.from_config(training) == Targets(0.85, 0.15, 0.2)
    with pytest.raises(TypeError):
        Targets()  # no defaults of its own: the configuration holds them
    with pytest.raises(ValueError, match="max_omission"):
        Targets(0.9, 15, 0.15)


def test_report_contains_table_matrix_and_verdict(hand):
    check = check_targets(hand, ATBD)
    text = report_markdown(
        hand, check, title="Model evaluation PU 23",
        context={"Production unit": "PU 23", "Model version": "tempcnn-2023-01"},
    )
    assert text.startswith("# Model evaluation PU 23\n")
    assert "- **Production unit**: PU 23" in text
    assert "- **Model version**: tempcnn-2023-01" in text
    assert "- **Hold-out samples**: 40" in text
    assert "Overall accuracy: **77.5 %**" in text
    assert "Cohen's kappa: **0.647**" in text
    assert "| Code | Name | Reference n | Producer's acc. | User's acc. | Omission | Commission | F1 | Target met |" in text
    assert "| 2 | Woody needle leaved trees | 20 | 75.0 % | 83.3 % | 25.0 % | 16.7 % | 0.789 | **no** |" in text
    assert "| Reference \\ Predicted | 1 | 2 | 3 | Total |" in text
    assert "| **2** | 2 | 15 | 3 | 20 |" in text
    assert "| **Total** | 10 | 18 | 12 | 40 |" in text
    assert "**Targets not met** (7 failure(s)):" in text
    assert "- class 3 (Woody broadleaved deciduous trees) commission 33.3 % > 15.0 %" in text


def test_report_of_a_passing_model_with_absent_classes():
    ref = np.array([1, 1, 2, 10])
    acc = accuracy(ref, ref, ALL_CLASSES, CLASS_NAMES)
    text = report_markdown(acc, check_targets(acc, ATBD), title="t")
    assert "**Targets met.**" in text
    assert "| 10 | Water | 1 | 100.0 % | 100.0 % | 0.0 % | 0.0 % | 1.000 | yes |" in text
    assert "| 11 | Snow and ice | 0 | – | – | – | – | – | – |" in text
    # Every table row has the same number of cells as its header.
    table = [line for line in text.splitlines() if line.startswith("| ") and "Code" not in line and "**" not in line]
    assert all(line.count(" | ") == 8 for line in table[:11])


def test_png_is_valid_deterministic_and_readable(hand):
    import matplotlib.image

    png = plot_confusion_matrix(hand, title="PU 23")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert plot_confusion_matrix(hand, title="PU 23") == png
    assert b"Software" not in png and b"matplotlib" not in png
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 300
    # Different input, different picture.
    assert plot_confusion_matrix(hand, title="PU 24") != png


def test_png_with_eleven_classes_and_empty_rows():
    import matplotlib.image

    ref = np.array([1, 2, 2, 5, 10, 10, 10])
    acc = accuracy(ref, np.array([1, 2, 3, 5, 10, 9, 10]), ALL_CLASSES, CLASS_NAMES)
    png = plot_confusion_matrix(acc, title="eleven classes")
    assert matplotlib.image.imread(io.BytesIO(png), format="png").shape[2] in (3, 4)


def test_plotting_leaves_pyplot_alone(hand):
    import matplotlib

    backend = matplotlib.get_backend()
    plot_confusion_matrix(hand, title="t")
    assert matplotlib.get_backend() == backend
    import sys

    if "matplotlib.pyplot" in sys.modules:  # imported by someone else: no figure was registered
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_to_dict_from_dict_round_trip_through_json(hand):
    d = hand.to_dict()
    text = json.dumps(d)
    back = Accuracy.from_dict(json.loads(text))
    assert back == hand
    assert back.to_dict() == d
    assert d["omission"]["2"] == 0.25 and d["commission"]["2"] == 0.166667
    assert d["class_names"]["1"] == "Sealed" and d["matrix"] == HAND.tolist()
    # None survives as null, and the round trip keeps it.
    acc = accuracy([1, 2], [1, 1], [1, 2, 3], CLASS_NAMES)
    back = Accuracy.from_dict(json.loads(json.dumps(acc.to_dict())))
    assert back == acc and back.commission[2] is None and back.f1[3] is None
    check = check_targets(acc, ATBD)
    assert json.loads(json.dumps(check.to_dict()))["failures"] == check.failures


def test_from_dict_refuses_an_inconsistent_dict(hand):
    d = hand.to_dict()
    d["n"] = 41
    with pytest.raises(ValueError, match="n = 41"):
        Accuracy.from_dict(d)


@pytest.mark.parametrize(
    ("reference", "predicted", "classes", "message"),
    [
        ([1, 2, 3], [1, 2], [1, 2, 3], "differ in length"),
        ([1, 2, 12], [1, 2, 3], [1, 2, 3], r"reference has value\(s\) not in classes \[1, 2, 3\]: 12"),
        ([1, 2, 3], [0, 2, 255], [1, 2, 3], r"predicted has value\(s\) not in classes \[1, 2, 3\]: 0, 255"),
        ([1.0, 2.5], [1, 2], [1, 2], r"reference has value\(s\) not in classes \[1, 2\]: 2.5"),
        ([1, 2], [1, 2], [], "non-empty"),
        ([1, 2], [1, 2], [1, 2, 2], "repeats"),
        (["a", "b"], [1, 2], [1, 2], "numeric"),
    ],
)
def test_bad_input(reference, predicted, classes, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.asarray(reference), np.asarray(predicted), classes)


def test_bad_input_for_statistics():
    with pytest.raises(ValueError, match="no samples"):
        accuracy(np.array([], dtype=int), np.array([], dtype=int), [1, 2])
    with pytest.raises(ValueError, match="2 x 2"):
        accuracy_from_matrix(np.zeros((3, 3), dtype=int), [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        accuracy_from_matrix(np.array([[1, -1], [0, 1]]), [1, 2])
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix(np.ones((2, 3), dtype=int), np.ones((3, 2), dtype=int), [1])


def test_float_codes_that_are_whole_numbers_are_accepted():
    m = confusion_matrix(np.array([1.0, 2.0]), np.array([2, 2], dtype=np.uint8), [1, 2])
    np.testing.assert_array_equal(m, [[0, 1], [0, 1]])


def test_target_check_dataclass_minimal_construction():
    # The three required fields suffice (a default for the per-class verdicts).
    check = TargetCheck(met=False, failures=["x"], targets=ATBD)
    assert check.to_dict()["failures"] == ["x"]
    text = report_markdown(accuracy([1], [1], [1]), check, title="t")
    assert "- x" in text
