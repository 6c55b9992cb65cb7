"""The identity-classification head: its logits against a hand computation, its gradient
against finite differences, and the joint loss."""

import math

import numpy as np
import pytest
import torch

from facetrip.loss import TripletLoss
from facetrip.loss.classifier import DEFAULT_MARGINS, IdentityClassifier, JointLoss, margin_logits


def hand_logits(x, w, labels, kind, s, m):
    """Row by row, class by class, straight from the definitions (numpy, float64)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    out = np.zeros((len(x), len(w)))
    for i in range(len(x)):
        for c in range(len(w)):
            cos = float(x[i] @ w[c])
            if c == labels[i] and kind == "cosface":
                cos = cos - m
            elif c == labels[i] and kind == "arcface":
                cos = math.cos(min(math.acos(cos) + m, math.pi))
            out[i, c] = s * cos
    return out


@pytest.mark.parametrize("kind", ["softmax", "cosface", "arcface"])
def test_logits_and_loss_match_a_hand_computation(kind):
    gen = torch.Generator().manual_seed(0)
    head = IdentityClassifier(6, 5, kind, scale=16.0).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(5, 6, generator=gen, dtype=torch.float64))
    x = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
    want = hand_logits(x.numpy(), head.weight.detach().numpy(), labels.numpy(), kind, 16.0,
                       DEFAULT_MARGINS[kind])
    got = margin_logits(head.cosines(x), labels, kind, 16.0, head.margin)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    loss, stats = head(x, labels)
    log_softmax = want - np.log(np.exp(want).sum(1, keepdims=True))
    assert float(loss.detach()) == pytest.approx(-log_softmax[np.arange(9), labels.numpy()].mean(),
                                        rel=1e-12)
    cosines = hand_logits(x.numpy(), head.weight.detach().numpy(), labels.numpy(), "softmax",
                          1.0, 0.0)  # accuracy: the nearest class centre, with no margin
    assert stats["cls_accuracy"] == (cosines.argmax(1) == labels.numpy()).mean()


@pytest.mark.parametrize("kind", ["softmax", "cosface", "arcface"])
def test_the_gradient_is_the_finite_difference_one(kind):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    def through(x, w):
        cos = torch.nn.functional.linear(torch.nn.functional.normalize(x, dim=1),
                                         torch.nn.functional.normalize(w, dim=1))
        logits = margin_logits(cos, labels, kind, 4.0, DEFAULT_MARGINS[kind])
        return torch.nn.functional.cross_entropy(logits, labels)

    assert torch.autograd.gradcheck(through, (x, w), eps=1e-6, atol=1e-6)


def test_arcface_caps_theta_plus_m_at_pi():
    cos = torch.tensor([[-0.99, 0.5]], dtype=torch.float64)  # theta ~ 3.0; + 0.5 > pi
    got = margin_logits(cos, torch.tensor([0]), "arcface", 1.0, 0.5)
    assert float(got[0, 0]) == pytest.approx(-1.0) and float(got[0, 1]) == 0.5


def test_the_joint_loss_is_the_triplet_loss_plus_the_weighted_cross_entropy():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 5, generator=gen)
    labels = torch.arange(4).repeat_interleave(2)
    triplet, head = TripletLoss(mining="batch_all"), IdentityClassifier(5, 4, "cosface")
    joint, stats = JointLoss(triplet, head, 0.3)(x, labels)
    t, t_stats = triplet(x, labels)
    c, c_stats = head(x, labels)
    assert float(joint.detach()) == pytest.approx(float(t) + 0.3 * float(c.detach()), rel=1e-6)
    assert stats == {**t_stats, **c_stats} and "cls_loss" in stats
    with pytest.raises(ValueError, match="unknown classifier"):
        IdentityClassifier(5, 4, "sphereface")


def test_with_the_neck_the_triplet_loss_sees_the_first_half_and_the_head_the_second():
    gen = torch.Generator().manual_seed(4)
    before, after = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    both = torch.cat([before, after], 1).requires_grad_()
    labels = torch.arange(4).repeat_interleave(2)
    triplet, head = TripletLoss(mining="batch_all"), IdentityClassifier(5, 4, "softmax")
    joint, stats = JointLoss(triplet, head, 0.5, neck=True)(both, labels)
    t, t_stats = triplet(before, labels)
    c, c_stats = head(after, labels)
    assert float(joint.detach()) == pytest.approx(float(t) + 0.5 * float(c.detach()), rel=1e-6)
    assert stats == pytest.approx({**t_stats, **c_stats}, rel=1e-6)
    joint.backward()  # each half's gradient is its own loss's
    b, a = before.clone().requires_grad_(), after.clone().requires_grad_()
    (triplet(b, labels)[0] + 0.5 * head(a, labels)[0]).backward()
    torch.testing.assert_close(both.grad, torch.cat([b.grad, a.grad], 1))
