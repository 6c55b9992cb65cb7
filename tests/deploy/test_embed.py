"""facetrip embed: any model file, decoded exactly as training and eval decode, streamed to npz
or npy, with unusable files skipped and listed."""

import numpy as np
import pytest
import torch
from PIL import Image

from facetrip.data.index import scan_identity_folder
from facetrip.data.transforms import build_transform
from facetrip.deploy.embed_folder import embed_folder
from facetrip.deploy.embedder import load_embedder
from facetrip.deploy.export import ExportOptions, export_model
from facetrip.evaluation.sources import embed_index
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint
from tests.deploy.models import random_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # a 400 x 300 JPEG is >= 8x the 24 px input, so training/eval decode it at reduced scale;
    # embed must produce the same pixels, hence the same embedding
    root = tmp_path_factory.mktemp("embed") / "data"
    rng = np.random.default_rng(0)
    for name, size, ext in (("a", (400, 300), "jpg"), ("b", (40, 40), "png")):
        (root / name).mkdir(parents=True)
        for j in range(2):
            arr = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
            Image.fromarray(arr).save(root / name / f"{j}.{ext}")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "c.pt", "data.image_size=24",
                             "data.crop_fraction=0.9")


def _expected(checkpoint, root):
    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint))
    transform = build_transform(24, cfg.data.mean, cfg.data.std, crop_fraction=0.9)
    index = scan_identity_folder(root)
    return index.paths, embed_index(model, index, transform, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["checkpoint", "torchscript", "safetensors"])
def test_embed_matches_eval_for_every_model_file(tmp_path, data, checkpoint, kind):
    model = checkpoint
    if kind != "checkpoint":
        suffix = {"torchscript": ".pt", "safetensors": ".safetensors"}[kind]
        model = export_model(checkpoint, tmp_path / f"m{suffix}", ExportOptions(kind)).path
    embedder = load_embedder(model)
    assert embedder.kind == kind
    result = embed_folder(embedder, data, tmp_path / "e.npz", batch_size=3)
    assert result.count == 4 and not result.skipped and result.skipped_list is None
    npz = np.load(tmp_path / "e.npz")
    paths, expected = _expected(checkpoint, data)
    order = [list(npz["paths"]).index(p) for p in paths]
    np.testing.assert_allclose(npz["embeddings"][order], expected, atol=1e-5)
    assert list(npz["classes"]) == ["a", "b"] and npz["labels"].tolist() == [0, 0, 1, 1]


def test_embed_npy_streams_and_lists_skipped_files(tmp_path, data, checkpoint):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data, root)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (root / "b" / "empty.png").write_bytes(b"")
    embedder = load_embedder(checkpoint)
    seen = []
    result = embed_folder(embedder, root, tmp_path / "e.npy", batch_size=2, progress=seen.append)
    assert sum(seen) == 6 and result.count == 4
    assert sorted(s.path for s in result.skipped) == ["a/broken.jpg", "b/empty.png"]
    listed = result.skipped_list.read_text().splitlines()
    assert len(listed) == 2 and all("\t" in line for line in listed)
    emb = np.load(tmp_path / "e.npy")
    paths = result.paths_file.read_text().splitlines()
    assert emb.shape == (4, 8) and emb.dtype == np.float32 and len(paths) == 4
    expected_paths, expected = _expected(checkpoint, data)
    order = [paths.index(p) for p in expected_paths]
    np.testing.assert_allclose(emb[order], expected, atol=1e-5)
    assert not list(tmp_path.glob(".e.npy.*"))  # the scratch directory is gone
    # a clean run removes the stale list
    result = embed_folder(embedder, data, tmp_path / "e.npy")
    assert result.skipped_list is None and not (tmp_path / "e.npy.skipped.txt").exists()
