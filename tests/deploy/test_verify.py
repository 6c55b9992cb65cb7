"""verify on held-out synthetic identities: the calibrated thresholds decide as eval measured."""

import numpy as np
import pytest

from facetrip.data.index import scan_identity_folder
from facetrip.deploy.calibration import choose_threshold
from facetrip.deploy.embedder import load_embedder
from facetrip.deploy.export import export_model
from facetrip.deploy.verify import verify
from facetrip.errors import UserError
from facetrip.evaluation.sources import load_pairs


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The trained checkpoint as TorchScript, calibrated on the held-out identities."""
    return export_model(run.checkpoint, tmp_path_factory.mktemp("v") / "m.pt")


def test_verify_answers_the_held_out_pairs_as_calibrated(run, exported):
    embedder = load_embedder(exported.path)
    calib = embedder.calibration
    assert calib is not None and calib["pairs"] == 200  # found beside the checkpoint
    index = scan_identity_folder(run.test)
    pairs = load_pairs(index, None, 2, 100, 0)  # the pairs eval drew
    files = [(run.test / index.paths[a], run.test / index.paths[b])
             for a, b in zip(pairs.idx1, pairs.idx2, strict=True)]
    verdicts = [verify(embedder, a, b) for a, b in files]
    best = np.array([v.same for v in verdicts])
    # the FAR threshold on the same distances (one verify per pair keeps the test quick)
    far_threshold, _ = choose_threshold(calib, far=1e-2)
    strict = np.array([v.distance < far_threshold for v in verdicts])
    assert verify(embedder, *files[0], far=1e-2).same == strict[0]
    truth = pairs.issame
    accuracy = float(np.mean(best == truth))
    assert accuracy == pytest.approx(calib["best_accuracy"]["accuracy"], abs=1 / 200)
    assert accuracy >= 0.7  # a briefly trained model; chance is 0.5
    assert np.sum(strict & ~truth) <= 1  # FAR <= 1e-2 on 100 different pairs
    assert np.mean(strict[truth]) == pytest.approx(calib["far"]["0.01"]["tar"], abs=1 / 100)


def test_an_image_is_the_same_person_as_itself(run, exported):
    embedder = load_embedder(exported.path)
    image = run.test / "id_00000" / "00.png"
    verdict = verify(embedder, image, image, far=1e-2)
    assert verdict.same and verdict.distance < 1e-3 and verdict.threshold_source.startswith(
        "FAR 0.01 on 200 pairs")
    assert not verify(embedder, image, image, threshold=0.0).same


def test_a_probe_that_is_not_an_image(run, exported, tmp_path):
    embedder = load_embedder(exported.path)
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(UserError, match="x.jpg: not an image"):
        verify(embedder, run.test / "id_00000" / "00.png", tmp_path / "x.jpg")
    with pytest.raises(UserError, match="image not found"):
        verify(embedder, run.test / "id_00000" / "00.png", tmp_path / "none.jpg")
