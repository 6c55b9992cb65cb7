"""The exported TorchScript module reproduces facetrip's preprocessing and embeddings."""

import json
import warnings

import pytest
import torch

from facetrip.data.transforms import Normalize, Preprocess
from facetrip.deploy.export import export_torchscript
from facetrip.model import EmbeddingNet, ModelSpec

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.5, 0.2]


@pytest.fixture(scope="module")
def model() -> EmbeddingNet:
    torch.manual_seed(0)
    return EmbeddingNet(ModelSpec(embedding_dim=8)).eval()


def _load(path):
    with warnings.catch_warnings():  # torch >= 2.9 calls TorchScript deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


@pytest.mark.parametrize(
    "pre",
    [
        Preprocess(24),
        Preprocess(24, crop_fraction=0.7),
        Preprocess(24, crop_box=(0.1, 0.2, 0.8, 0.95)),
        Preprocess(24, crop_fraction=0.9, grayscale=True),
    ],
    ids=["full", "centre-crop", "box", "grey"],
)
def test_preprocess_matches_facetrip(model, tmp_path, pre):
    path, sidecar = export_torchscript(model, tmp_path / "m.pt", pre, MEAN, STD)
    meta = json.loads(sidecar.read_text())
    assert meta["input_size"] == 24 and meta["grayscale"] == pre.grayscale
    assert meta["crop_box"] == (list(pre.crop_box) if pre.crop_box else None)
    scripted = _load(path)
    gen = torch.Generator().manual_seed(1)
    for h, w in ((50, 37), (24, 24), (61, 80)):
        raw = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=gen)
        ours = Normalize(MEAN, STD)(torch.stack([pre(img) for img in raw]))
        theirs = scripted.preprocess(raw)
        assert theirs.shape == ours.shape == (2, 3, 24, 24)
        assert torch.allclose(theirs, ours, atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(scripted(theirs), model(theirs), atol=1e-5)


def test_grey_preprocess_gives_equal_channels(model, tmp_path):
    path, _ = export_torchscript(model, tmp_path / "m.pt", Preprocess(16, grayscale=True),
                                 [0.5] * 3, [0.5] * 3)
    raw = torch.randint(0, 256, (1, 3, 20, 20), dtype=torch.uint8)
    x = _load(path).preprocess(raw)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
