"""The embedding network and local trunk weights."""

import pytest
import torch
import torchvision

from facetrip.errors import UserError
from facetrip.model import EmbeddingNet, ModelSpec, load_trunk_weights


@pytest.mark.parametrize("stem, size", [("imagenet", 32), ("small", 16)])
def test_embeddings_have_unit_norm_and_the_spec_dimension(stem, size):
    torch.manual_seed(0)
    model = EmbeddingNet(ModelSpec(stem=stem, embedding_dim=12)).eval()
    out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 12)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_the_neck_output_is_the_normalised_pre_batchnorm_head_then_the_embedding():
    torch.manual_seed(3)
    model = EmbeddingNet(ModelSpec(embedding_dim=6))
    images = torch.randn(4, 3, 32, 32)
    for mode in (model.train, model.eval):  # train mode: the same batch statistics
        mode()
        both = model(images, neck=True)
        assert both.shape == (4, 12)
        head = model.embed(model.trunk(images))
        torch.testing.assert_close(both[:, :6], head / head.norm(dim=1, keepdim=True))
        torch.testing.assert_close(both[:, 6:], model(images))
        assert not torch.allclose(both[:, :6], both[:, 6:], atol=1e-3)  # the BN moved it


def test_unknown_arch_or_stem_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        EmbeddingNet(ModelSpec(arch="vgg"))
    with pytest.raises(ValueError, match="unknown stem"):
        EmbeddingNet(ModelSpec(stem="huge"))


def test_trunk_weights_load_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = EmbeddingNet(ModelSpec(embedding_dim=8))
    missing, unexpected = load_trunk_weights(model, tmp_path / "r18.pth")
    assert missing == [] and unexpected == []
    assert torch.equal(model.trunk.conv1.weight, source.conv1.weight)
    with pytest.raises(UserError, match="not found"):
        load_trunk_weights(model, tmp_path / "absent.pth")
    torch.save({"x": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(UserError, match="no weights matching"):
        load_trunk_weights(model, tmp_path / "foreign.pth")
