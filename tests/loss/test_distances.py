import pytest
import torch

from facetrip.loss.distances import pairwise_distances


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


@pytest.mark.parametrize("same", [True, False])
def test_euclidean_gradient_matches_autograd_of_the_direct_formula(same):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    x[3] = x[5]  # a duplicate: zero distance off the diagonal
    y = None if same else torch.randn(6, 4, generator=g, dtype=torch.float64)
    w = torch.randn(9, 9 if same else 6, generator=g, dtype=torch.float64)

    def direct(a, b):
        diff = a[:, None, :] - b[None, :, :]
        sq = (diff * diff).sum(-1)
        safe = torch.where(sq > 0, sq, torch.ones_like(sq))
        return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))

    xa = x.clone().requires_grad_()
    ya = None if same else y.clone().requires_grad_()
    (pairwise_distances(xa, ya) * w).sum().backward()
    xb = x.clone().requires_grad_()
    yb = xb if same else y.clone().requires_grad_()
    (direct(xb, yb) * w).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-8)
    if not same:
        assert torch.allclose(ya.grad, yb.grad, atol=1e-8)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_gradients_with_respect_to_both_sides(distance):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pairwise_distances(a, b, distance), (x, y))
    # One side detached (references that carry no gradient): the other side's is unchanged.
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    gx, gy = torch.autograd.grad((pairwise_distances(x, y, distance) * w).sum(), (x, y))
    (only_x,) = torch.autograd.grad((pairwise_distances(x, y.detach(), distance) * w).sum(), x)
    (only_y,) = torch.autograd.grad((pairwise_distances(x.detach(), y, distance) * w).sum(), y)
    assert torch.equal(only_x, gx) and torch.equal(only_y, gy)
