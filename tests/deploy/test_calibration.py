"""Calibration: the thresholds at best accuracy and at target FARs, recovered from eval's
metrics.json and refused when they belong to another model or setting."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from facetrip.deploy.calibration import (
    calibrate,
    choose_threshold,
    find_calibration,
    optional_threshold,
)
from facetrip.errors import UserError
from facetrip.metrics.verification import operating_points, verification_metrics
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint
from tests.deploy.models import random_checkpoint


@pytest.mark.parametrize("n, ties", [(2400, False), (3000, True)])
def test_operating_points_agree_with_verification_metrics_and_the_far_definition(n, ties):
    rng = np.random.default_rng(n)
    same = rng.random(n) < 0.5
    d = np.where(same, rng.normal(0.8, 0.2, n), rng.normal(1.3, 0.2, n))
    if ties:
        d = np.round(d, 2)  # many equal distances across classes
    points = operating_points(d, same, (1e-2, 1e-3, 1e-4))
    metrics = verification_metrics(d, same, fars=(1e-2, 1e-3, 1e-4))
    assert points["best_accuracy"]["threshold"] == metrics["threshold"]
    t = points["best_accuracy"]["threshold"]
    assert points["best_accuracy"]["accuracy"] == np.mean((d < t) == same)
    neg = d[~same]
    for far in (1e-2, 1e-3):
        p = points["far"][far]
        assert p["tar"] == metrics["tar_at_far"][far]
        accepted = np.mean(neg < p["threshold"])
        assert accepted == p["far"] <= far
        # the largest such threshold: accepting the next negative distance breaks the target
        above = np.sort(neg[neg >= p["threshold"]])
        if above.size:
            assert np.mean(neg <= above[0]) > far
    assert points["far"][1e-4] is None  # fewer than 10,000 negative pairs


def test_choose_threshold():
    calib = {"pairs": 200, "dataset": "d", "date": "x", "best_accuracy": {"threshold": 0.9},
             "far": {"0.01": {"threshold": 0.3}, "0.001": None}}
    assert choose_threshold(calib) == (0.9, "best accuracy on 200 pairs of d, x")
    assert choose_threshold(calib, far=1e-2)[0] == 0.3
    assert choose_threshold(None, threshold=0.5) == (0.5, "--threshold")
    with pytest.raises(UserError, match="needs at least 1000 different pairs"):
        choose_threshold(calib, far=1e-3)
    with pytest.raises(UserError, match="no calibration"):
        choose_threshold(None)
    with pytest.raises(UserError, match="not both"):
        choose_threshold(calib, far=1e-2, threshold=0.5)


def test_a_ranking_needs_no_threshold():
    calib = {"pairs": 200, "dataset": "d", "date": "x", "best_accuracy": {"threshold": 0.9},
             "far": {"0.01": {"threshold": 0.3}}}
    assert optional_threshold(None) == (None, None)
    assert optional_threshold({}) == (None, None)
    assert optional_threshold(None, threshold=0.5) == (0.5, "--threshold")
    assert optional_threshold(calib) == choose_threshold(calib)
    assert optional_threshold(calib, far=1e-2) == (0.3, "FAR 0.01 on 200 pairs of d, x")
    with pytest.raises(UserError, match="no calibration"):
        optional_threshold(None, far=1e-2)


def test_calibrate_recovers_eval_and_adds_far_thresholds(run):
    model, cfg = model_from_checkpoint(load_checkpoint(run.checkpoint))
    metrics = json.loads(run.metrics.read_text())
    c = calibrate(run.metrics, model, cfg, run.checkpoint)
    assert math.isclose(c["best_accuracy"]["threshold"], metrics["verification"]["threshold"],
                        abs_tol=1e-5)
    assert (c["pairs"], c["same"], c["different"], c["folds"]) == (200, 100, 100, 2)
    assert c["dataset"] == str(run.test) and c["in_sample"] and c["date"].startswith("20")
    assert c["held_out_accuracy"] == metrics["verification"]["accuracy"]
    assert c["far"]["0.01"]["far"] <= 0.01 and c["far"]["0.001"] is None
    assert find_calibration(run.checkpoint) == (run.metrics, f"calibration from {run.metrics}")


def _edited(run, tmp_path, **changes):
    metrics = json.loads(run.metrics.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            metrics[section][field] = value
        else:
            metrics[section] = value
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    return path


def test_calibrate_refuses_other_models_and_settings(run, tmp_path):
    model, cfg = model_from_checkpoint(load_checkpoint(run.checkpoint))
    other = random_checkpoint(tmp_path / "other.pt", "data.image_size=32", dim=32)
    other_model, _ = model_from_checkpoint(load_checkpoint(other))
    with pytest.raises(UserError, match="evaluates .* not .*other.pt"):
        calibrate(run.metrics, other_model, cfg, other)
    moved = _edited(run, tmp_path, checkpoint=str(tmp_path / "gone.pt"))
    with pytest.raises(UserError, match="another model or changed data"):
        calibrate(moved, other_model, cfg, other)
    with pytest.raises(UserError, match="--flip"):
        calibrate(_edited(run, tmp_path, options__flip=True), model, cfg, run.checkpoint)
    with pytest.raises(UserError, match="embeddings file"):
        calibrate(_edited(run, tmp_path, dataset={"embeddings": "e.npz"}), model, cfg,
                  run.checkpoint)
    with pytest.raises(UserError, match="calibration file not found"):
        calibrate(tmp_path / "none.json", model, cfg, run.checkpoint)
    path, why = find_calibration(other)
    assert path is None and "no eval/metrics.json" in why


def _pairs_file(path, root, people):
    """An LFW View 1 style file over ``people``: every same pair of each, then as many
    different pairs (consecutive people)."""
    same, different = [], []
    for person in people:
        n = len(list((root / person).glob("*.png")))
        same += [f"{person} {i} {j}" for i in range(1, n + 1) for j in range(i + 1, n + 1)]
    for k in range(len(same)):
        a, b = people[k % len(people)], people[(k + 1) % len(people)]
        different.append(f"{a} {k % 6 + 1} {b} {(k // 6) % 6 + 1}")
    path.write_text(f"{len(same)}\n" + "\n".join(same + different) + "\n")
    return path


def test_thresholds_chosen_on_other_pairs_travel_into_the_calibration(run, tmp_path):
    from facetrip.data.index import scan_identity_folder
    from facetrip.data.transforms import Preprocessing
    from facetrip.evaluation.evaluate import EvalRequest, PairProtocol, evaluate
    from facetrip.evaluation.sources import embed_index, pairs_from_file
    from facetrip.metrics.pairs import pair_distances

    root = tmp_path / "faces"  # the test people under LFW-style names, for the pairs files
    people = sorted(p.name for p in run.test.iterdir() if p.is_dir())
    for person in people:
        for k, src in enumerate(sorted((run.test / person).glob("*.png")), 1):
            (root / person).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / person / f"{person}_{k:04d}.png")
    scored = _pairs_file(tmp_path / "scored.txt", root, people[:5])
    other = _pairs_file(tmp_path / "other.txt", root, people[5:])
    result = evaluate(EvalRequest(run.checkpoint, root, ks=(1,),
                                  protocol=PairProtocol(scored, calibration_pairs=other)))
    metrics_path = tmp_path / "eval" / "metrics.json"
    metrics_path.parent.mkdir()
    metrics_path.write_text(json.dumps(result.metrics))
    model, cfg = model_from_checkpoint(load_checkpoint(run.checkpoint))
    c = calibrate(metrics_path, model, cfg, run.checkpoint)
    assert c["in_sample"] is False and c["chosen_on"] == str(other)
    assert c["chosen_on_pairs"] == 150 and c["pairs"] == 150
    assert math.isclose(c["best_accuracy"]["threshold"],
                        result.metrics["verification"]["threshold"], abs_tol=1e-5)
    index = scan_identity_folder(root)  # the thresholds of the other pairs, computed apart
    emb = embed_index(model, index, Preprocessing.from_config(cfg.data).transform(),
                      torch.device("cpu"))
    pairs = pairs_from_file(other, index.paths)
    points = operating_points(pair_distances(emb, pairs, "euclidean"), pairs.issame)
    assert math.isclose(c["best_accuracy"]["threshold"],
                        points["best_accuracy"]["threshold"], abs_tol=1e-5)
    assert c["best_accuracy"]["accuracy"] == points["best_accuracy"]["accuracy"]
    assert choose_threshold(c)[1].startswith(f"best accuracy on {other}, ")


def test_an_eval_of_bin_sets_only_cannot_calibrate_and_says_why(tmp_path):
    from facetrip.deploy.calibration import read_eval_metrics

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"bins": {"lfw": {"accuracy": 0.9}}, "checkpoint": "c.pt"}))
    with pytest.raises(UserError, match="scores only .bin sets"):
        read_eval_metrics(path)
