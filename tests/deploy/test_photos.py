"""Ordinary photos: a model trained on aligned crops aligns its inputs itself, so a face
pasted anywhere, at another scale, in a cluttered frame verifies like the original photo."""

import json

import numpy as np
import pytest
from PIL import Image

from facetrip.config import load_config
from facetrip.training.train import train
from tests.conftest import TINY_RUN, run_cli

PEOPLE = ("Abdullah_Gul", "Adam_Sandler", "Abdullah", "Aaron_Peirsol")


@pytest.fixture(scope="module")
def aligned_model(lfw, tmp_path_factory):
    """A small model trained (briefly) on aligned crops of 4 LFW people x 4 photos."""
    root = tmp_path_factory.mktemp("photos")
    for person in PEOPLE:
        (root / person).mkdir()
        for path in sorted((lfw / person).glob("*.jpg"))[:4]:
            (root / person / path.name).symlink_to(path)
    cfg = load_config(None, [f"data.root={root}", *TINY_RUN, "data.image_size=32",
                             "model.embedding_dim=16", "sampler.batches_per_epoch=4",
                             "data.align=mtcnn", f"data.cache={root.parent / 'cache'}",
                             "data.workers=0"])
    train(cfg, root.parent / "run")
    return root.parent / "run" / "best.pt"


def cluttered_frame(photo, scale, left, top, seed):
    """A 400 x 300 frame of random coloured rectangles with ``photo`` resized by ``scale``
    pasted at ``(left, top)``."""
    rng = np.random.default_rng(seed)
    frame = np.full((300, 400, 3), 90, dtype=np.uint8)
    for _ in range(60):
        x, y = rng.integers(0, 380), rng.integers(0, 280)
        w, h = rng.integers(10, 120, 2)
        frame[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    image = Image.fromarray(frame)
    with Image.open(photo) as face:
        side = round(face.width * scale)
        image.paste(face.convert("RGB").resize((side, side), Image.LANCZOS), (left, top))
    return image


def distance(model, a, b, *options):
    proc = run_cli("verify", a, b, "--model", model, "--threshold", "1", "--json", *options,
                   ok=False)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)["distance"]


@pytest.mark.slow
def test_a_pasted_face_verifies_like_the_original(aligned_model, lfw, tmp_path):
    original = lfw / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    other = lfw / "Abdullah_Gul" / "Abdullah_Gul_0013.jpg"  # not a training image
    reference = distance(aligned_model, original, other)
    aligned_errors, plain_errors = [], []
    for seed, (scale, left, top) in enumerate([(0.6, 20, 30), (0.85, 180, 50),
                                               (1.1, 110, 15)]):
        frame = tmp_path / f"frame{seed}.jpg"
        cluttered_frame(original, scale, left, top, seed).save(frame, quality=95)
        aligned_errors.append(abs(distance(aligned_model, frame, other) - reference))
        plain = distance(aligned_model, frame, other, "--no-align")
        plain_errors.append(abs(plain - reference))
    print(f"reference {reference:.4f}; |aligned - reference| {np.round(aligned_errors, 4)}; "
          f"|--no-align - reference| {np.round(plain_errors, 4)}")
    assert max(aligned_errors) < 0.1
    assert np.mean(plain_errors) > 3 * np.mean(aligned_errors)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pt", ".onnx", ".safetensors", ".pt2"])
def test_every_export_carries_the_alignment(aligned_model, lfw, tmp_path, suffix):
    from facetrip.deploy.embedder import load_embedder
    from facetrip.deploy.export import export_model

    result = export_model(aligned_model, tmp_path / f"model{suffix}")
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["align"] == {"method": "mtcnn", "template": "arcface-112", "size": 112,
                                "face": "largest", "min_face": 0.1}
    assert "aligned face crops" in sidecar["input"]
    exported, checkpoint = load_embedder(result.path), load_embedder(aligned_model)
    assert exported.align == checkpoint.align and exported.fingerprint == checkpoint.fingerprint
    photos = [lfw / "Abdullah_Gul" / f"Abdullah_Gul_000{i}.jpg" for i in (1, 2)]
    np.testing.assert_allclose(exported.embed_files(photos), checkpoint.embed_files(photos),
                               atol=1e-4)
    assert exported.aligned(False).align is None


@pytest.mark.slow
def test_a_frame_without_a_face_is_one_line(aligned_model, lfw, tmp_path):
    wall = tmp_path / "wall.jpg"
    cluttered_frame(lfw / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg", 0.1, 0, 0, 7).save(wall)
    proc = run_cli("verify", wall, lfw / "Abdullah_Gul" / "Abdullah_Gul_0013.jpg", "--model",
                   aligned_model, "--threshold", "1", ok=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {wall}: no face"]


@pytest.mark.slow
def test_identify_stops_and_embed_and_enroll_list_a_photo_without_a_face(aligned_model, lfw,
                                                                          tmp_path):
    people = tmp_path / "people"
    for person in ("Abdullah_Gul", "Adam_Sandler"):
        (people / person).mkdir(parents=True)
        for path in sorted((lfw / person).glob("*.jpg"))[2:4]:
            (people / person / path.name).symlink_to(path)
    wall = people / "Adam_Sandler" / "wall.jpg"
    cluttered_frame(lfw / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg", 0.1, 0, 0, 7).save(wall)
    enrolled = run_cli("enroll", people, "--model", aligned_model, "--out",
                       tmp_path / "g.npz", "--workers", "0")
    assert "Adam_Sandler/wall.jpg (no face)" in enrolled.stderr
    embedded = run_cli("embed", people, "--model", aligned_model, "--out", tmp_path / "e.npz",
                       "--workers", "0")
    assert "wrote 4 embeddings" in embedded.stdout and "(no face)" in embedded.stderr
    assert "no face\tAdam_Sandler/wall.jpg" in (tmp_path / "e.npz.skipped.txt").read_text()
    proc = run_cli("identify", wall, "--gallery", tmp_path / "g.npz", "--threshold", "1",
                   ok=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {wall}: no face"]
