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


def test_a_grid_pool_flattens_the_last_feature_map_cell_by_cell_into_the_head():
    torch.manual_seed(2)
    model = EmbeddingNet(ModelSpec(embedding_dim=6, pool_grid=2)).eval()
    assert model.embed.in_features == 512 * 4
    images = torch.randn(3, 3, 64, 64)
    t = model.trunk
    fmap = t.layer4(t.layer3(t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(images))))))))
    assert fmap.shape == (3, 512, 2, 2)  # 64 px / 32: the 2x2 grid is the map itself
    cells = torch.stack([fmap[:, c, i, j] for c in range(512) for i in range(2)
                         for j in range(2)], dim=1)  # channel-major, then row, then column
    head = model.bn(cells @ model.embed.weight.T)
    torch.testing.assert_close(model(images), head / head.norm(dim=1, keepdim=True))
    # a larger map is averaged down to 2x2: the top-left cell of a 4x4 map is its 2x2 corner
    fmap4 = torch.randn(1, 512, 4, 4)
    torch.testing.assert_close(t.avgpool(fmap4)[0, :, 0, 0], fmap4[0, :, :2, :2].mean((1, 2)))


def test_the_default_spec_keeps_its_fields_and_a_grid_spec_names_its_own():
    assert "pool_grid" not in ModelSpec().to_dict()  # the fingerprints of older models hold
    spec = ModelSpec(pool_grid=2)
    assert spec.to_dict()["pool_grid"] == 2 and ModelSpec(**spec.to_dict()) == spec


def test_unknown_arch_or_stem_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        EmbeddingNet(ModelSpec(arch="vgg"))
    with pytest.raises(ValueError, match="unknown stem"):
        EmbeddingNet(ModelSpec(stem="huge"))
    with pytest.raises(ValueError, match="pool_grid"):
        EmbeddingNet(ModelSpec(pool_grid=0))


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
