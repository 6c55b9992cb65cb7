import pytest
import torch

from facetrip.distances import pairwise_distances


def _brute(x, y, distance):
    out = torch.zeros(len(x), len(y), dtype=torch.float64)
    for i in range(len(x)):
        for j in range(len(y)):
            if distance == "cosine":
                out[i, j] = 1 - torch.dot(x[i], y[j]) / (x[i].norm() * y[j].norm())
            else:
                out[i, j] = ((x[i] - y[j]) ** 2).sum()
                out[i, j] = out[i, j] if distance == "squared_euclidean" else out[i, j].sqrt()
    return out


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_matches_brute_force(distance):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(4, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(pairwise_distances(x, y, distance), _brute(x, y, distance), atol=1e-10)
    d = pairwise_distances(x, None, distance)
    assert torch.allclose(d, _brute(x, x, distance), atol=1e-10) and (d.diagonal() == 0).all()


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_gradient_is_finite_when_points_coincide(distance):
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    pairwise_distances(x, None, distance).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_half_precision_is_computed_in_float32():
    x = torch.randn(3, 4).half()
    assert pairwise_distances(x).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown distance"):
        pairwise_distances(x, distance="manhattan")
