"""facetrip.embed: a folder of images -> npz, decoded exactly as training and eval decode."""

import numpy as np
import torch
from PIL import Image

from facetrip.data.index import scan_identity_folder
from facetrip.data.transforms import build_transform
from facetrip.deploy.embed import embed_folder
from facetrip.evaluation.evaluate import embed_index
from facetrip.model import EmbeddingNet, ModelSpec


def test_embed_matches_eval_also_for_large_jpegs(tmp_path):
    # a 400 x 300 JPEG is >= 8x the 24 px input, so training/eval decode it at reduced scale;
    # embed must produce the same pixels, hence the same embedding
    rng = np.random.default_rng(0)
    for name, size, ext in (("a", (400, 300), "jpg"), ("b", (40, 40), "png")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for j in range(2):
            arr = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / name / f"{j}.{ext}")
    torch.manual_seed(0)
    model = EmbeddingNet(ModelSpec(embedding_dim=8)).eval()
    transform = build_transform(24, [0.5] * 3, [0.5] * 3, crop_fraction=0.9)
    result = embed_folder(model, tmp_path / "data", tmp_path / "e.npz", transform,
                          torch.device("cpu"), batch_size=3)
    assert result.count == 4 and not result.skipped
    npz = np.load(tmp_path / "e.npz")
    index = scan_identity_folder(tmp_path / "data")
    expected = embed_index(model, index, transform, torch.device("cpu"))
    order = [list(npz["paths"]).index(p) for p in index.paths]
    np.testing.assert_allclose(npz["embeddings"][order], expected, atol=1e-5)
