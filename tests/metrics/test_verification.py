"""Verification metrics against scikit-learn and brute-force references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from facetrip.metrics.verification import roc_curve, verification_metrics
from tests.metrics.references import (
    brute_best_threshold,
    brute_far_threshold,
    brute_kfold,
    tied_pairs,
)

# --------------------------------------------------------------------------- ROC / AUC


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_auc_and_roc_match_sklearn(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    if kind == "ties":
        d, same = tied_pairs(rng, 500)
    else:
        same = rng.random(500) < 0.4
        d = rng.normal(1.0 - 0.5 * same, 0.4)
    result = verification_metrics(d, same)
    assert result["auc"] == pytest.approx(roc_auc_score(same, -d), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(same, -d, drop_intermediate=False)
    curve = roc_curve(d, same, max_points=None)
    np.testing.assert_allclose(curve["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(curve["tpr"], tpr, atol=1e-12)
    for j, t in enumerate(curve["thresholds"]):
        assert np.mean(d[same] < t) == pytest.approx(curve["tpr"][j])
        assert np.mean(d[~same] < t) == pytest.approx(curve["fpr"][j])


@pytest.mark.parametrize(
    ("distances", "issame", "expected"),
    [
        ([0.5] * 6, [True, False] * 3, 0.5),  # all equal
        ([0.1, 0.2, 0.8, 0.9], [True, True, False, False], 1.0),  # separable
        ([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 0.0),  # inverted
        ([0.3, 0.3, 0.3, 0.9], [True, False, False, False], 2 / 3),  # tie across classes
    ],
)
def test_auc_adversarial_cases(distances, issame, expected) -> None:
    d, same = np.array(distances), np.array(issame)
    assert roc_auc_score(same, -d) == pytest.approx(expected)
    assert verification_metrics(d, same, n_folds=2)["auc"] == pytest.approx(expected)


@pytest.mark.parametrize("label", [True, False])
def test_single_class_gives_null_auc_but_accuracy(label: bool) -> None:
    d = np.linspace(0, 1, 40)
    result = verification_metrics(d, np.full(40, label))
    assert result["auc"] is None and result["eer"] is None
    assert all(v is None for v in result["tar_at_far"].values())
    assert all(v is None for v in result["val_at_far"].values())
    assert result["accuracy"] == 1.0
    assert roc_curve(d, np.full(40, label)) is None
    json.dumps(result, allow_nan=False)


def test_roc_is_subsampled_with_endpoints() -> None:
    rng = np.random.default_rng(0)
    same = rng.random(5000) < 0.5
    curve = roc_curve(rng.random(5000), same)
    assert 2 <= len(curve["fpr"]) <= 1000
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)


# --------------------------------------------------------------------------- k-fold accuracy


@pytest.mark.parametrize("seed", range(3))
def test_kfold_accuracy_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d, same = tied_pairs(rng, 300)
    fold = np.arange(300) * 10 // 300
    result = verification_metrics(d, same)
    expected = brute_kfold(d, same, fold)
    assert result["accuracy"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert result["accuracy_std"] == pytest.approx(np.std(expected), abs=1e-12)
    best = brute_best_threshold(d, same)
    assert np.isfinite(best)
    assert result["threshold"] == pytest.approx(best, abs=1e-12)
    assert result["folds"] == 10 and result["n_pairs"] == 300 and result["held_out"]


def test_kfold_uses_given_folds() -> None:
    rng = np.random.default_rng(7)
    same = rng.random(200) < 0.5
    d = rng.normal(1.0 - 0.6 * same, 0.5)
    fold = rng.integers(3, 8, 200)  # interleaved, non-contiguous ids
    result = verification_metrics(d, same, folds=fold)
    assert result["folds"] == 5
    assert result["accuracy"] == pytest.approx(np.mean(brute_kfold(d, same, fold)), abs=1e-12)
    contiguous = verification_metrics(d, same, n_folds=5)
    assert contiguous["accuracy"] != result["accuracy"]


def test_accuracy_with_all_distances_equal_and_single_fold() -> None:
    same = np.array([True] * 7 + [False] * 3)
    result = verification_metrics(np.full(10, 0.4), same, folds=np.zeros(10, dtype=int))
    assert not result["held_out"] and result["folds"] == 1
    assert result["accuracy"] == pytest.approx(0.7)  # everything predicted "same"
    assert result["threshold"] > 0.4
    assert result["eer"] == pytest.approx(0.5)


def test_ties_are_classified_together() -> None:
    d = np.array([0.1, 0.5, 0.5, 0.5, 0.9])
    same = np.array([True, True, False, False, False])
    t = verification_metrics(d, same, n_folds=1)["threshold"]
    assert t < 0.5 or t > 0.5  # never splits the tied group
    assert 0.1 < t < 0.5


def test_held_out_distance_equal_to_threshold_is_rejected() -> None:
    # fold 1's training (fold 0) has distances 0 and 1 only: threshold 0.5, and fold 1
    # holds a different pair at exactly 0.5, which "d < threshold" rejects.
    d = np.array([0.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0])
    same = np.array([True, True, False, False, False, True, False])
    fold = np.array([0, 0, 0, 0, 1, 1, 1])
    assert verification_metrics(d, same, folds=fold)["accuracy"] == 1.0


# --------------------------------------------------------------------------- EER, FAR


def test_eer_sanity() -> None:
    rng = np.random.default_rng(0)
    same = np.arange(20000) % 2 == 0
    separable = np.where(same, rng.random(20000), 2 + rng.random(20000))
    assert verification_metrics(separable, same)["eer"] == pytest.approx(0.0, abs=1e-12)
    identical = rng.random(20000)
    assert verification_metrics(identical, same)["eer"] == pytest.approx(0.5, abs=0.02)


def test_tar_and_val_at_far_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    d, same = tied_pairs(rng, 600)
    d = d + rng.normal(0, 0.05, 600)  # break most ties
    fold = np.arange(600) * 5 // 600
    fars = (0.1, 0.05, 1e-3)
    result = verification_metrics(d, same, n_folds=5, fars=fars)
    n_neg = int((~same).sum())
    assert n_neg < 1000  # 1e-3 is not resolvable
    assert result["tar_at_far"][1e-3] is None and result["val_at_far"][1e-3] is None
    for far in fars[:2]:
        t = brute_far_threshold(d, same, far)
        assert result["tar_at_far"][far] == pytest.approx(np.mean(d[same] < t))
        vals, fars_seen = [], []
        for f in range(5):
            tf = brute_far_threshold(d[fold != f], same[fold != f], far)
            test_d, test_s = d[fold == f], same[fold == f]
            vals.append(np.mean(test_d[test_s] < tf))
            fars_seen.append(np.mean(test_d[~test_s] < tf))
        assert result["val_at_far"][far]["val"] == pytest.approx(np.mean(vals))
        assert result["val_at_far"][far]["far"] == pytest.approx(np.mean(fars_seen))
    text = json.dumps(result, allow_nan=False)
    assert '"0.1"' in text


def test_verification_input_errors() -> None:
    with pytest.raises(ValueError, match="equal length"):
        verification_metrics(np.zeros(3), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        verification_metrics(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="no pairs"):
        verification_metrics(np.zeros(0), np.zeros(0, dtype=bool))


def test_verification_accepts_tensors() -> None:
    d = torch.tensor([0.1, 0.2, 0.7, 0.9])
    same = torch.tensor([True, True, False, False])
    assert verification_metrics(d, same, n_folds=2)["auc"] == 1.0


# --------------------------------------------------------------------------- calibrated protocol


def test_calibrated_thresholds_come_from_the_calibration_pairs_by_hand() -> None:
    # calibration: same at 0.1, 0.3; different at 0.5, 0.7 -> best threshold 0.4 (midpoint)
    cal_d, cal_same = np.array([0.1, 0.3, 0.5, 0.7]), np.array([True, True, False, False])
    # test pairs: with t = 0.4, 0.2 (same) and 0.6 (diff) are right, 0.45 (same) and 0.35
    # (diff) are wrong -> accuracy 2/4; an in-sample threshold would have scored 3/4.
    d, same = np.array([0.2, 0.45, 0.35, 0.6]), np.array([True, True, False, False])
    result = verification_metrics(d, same, calibration=(cal_d, cal_same), fars=(0.5,))
    assert result["protocol"] == "calibrated" and result["held_out"]
    assert result["threshold"] == pytest.approx(0.4)
    assert result["accuracy"] == pytest.approx(0.5) and result["accuracy_std"] is None
    assert result["calibration"] == {"n_pairs": 4, "n_same": 2, "n_different": 2}
    # FAR <= 0.5 on calibration: largest candidate accepting at most one of {0.5, 0.7}: 0.6.
    # On the test pairs, 0.6 accepts 0.2, 0.45 (TAR 1.0) and 0.35 but not 0.6 (FAR 0.5).
    assert result["val_at_far"][0.5] == {"val": 1.0, "val_std": None, "far": 0.5}
    in_sample = verification_metrics(d, same, n_folds=1)
    assert in_sample["protocol"] == "in-sample" and not in_sample["held_out"]
    assert in_sample["accuracy"] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(3))
def test_calibrated_accuracy_and_val_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    same, cal_same = rng.random(300) < 0.5, rng.random(400) < 0.5
    d, cal_d = rng.normal(1 - 0.5 * same, 0.4), rng.normal(1 - 0.5 * cal_same, 0.4)
    cal_d[:50] = np.round(cal_d[:50], 1)  # ties
    result = verification_metrics(d, same, folds=np.arange(300) % 3,
                                  calibration=(cal_d, cal_same), fars=(0.1, 0.01))
    t = brute_best_threshold(cal_d, cal_same)
    assert result["threshold"] == pytest.approx(t)
    assert result["accuracy"] == pytest.approx(np.mean((d < t) == same), abs=1e-12)
    for far in (0.1, 0.01):
        tf = brute_far_threshold(cal_d, cal_same, far)
        entry = result["val_at_far"][far]
        assert entry["val"] == pytest.approx(np.mean(d[same] < tf), abs=1e-12)
        assert entry["far"] == pytest.approx(np.mean(d[~same] < tf), abs=1e-12)
    # threshold-free figures are the scored pairs' own
    assert result["auc"] == pytest.approx(roc_auc_score(same, -d), abs=1e-12)
    assert result["folds"] == 1 and result["n_pairs"] == 300
