import numpy as np
import pytest
import torch

from facetrip.alignment.similarity import apply, fit_similarity, warp


def random_similarity(rng):
    angle = rng.uniform(-np.pi, np.pi)
    scale = np.exp(rng.uniform(np.log(0.05), np.log(20)))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([scale * rotation, rng.uniform(-500, 500, (2, 1))])


def least_squares_reference(src, dst):
    """The obviously-correct fit: a similarity is x' = a x - b y + tx, y' = b x + a y + ty,
    linear in (a, b, tx, ty); solve the stacked equations with lstsq."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


@pytest.mark.parametrize("seed", range(20))
def test_recovers_a_known_transform_exactly(seed):
    rng = np.random.default_rng(seed)
    truth = random_similarity(rng)
    src = rng.uniform(0, 250, (int(rng.integers(2, 9)), 2))
    fitted = fit_similarity(src, apply(truth, src))
    np.testing.assert_allclose(fitted, truth, rtol=1e-9, atol=1e-7 * np.abs(truth).max())


@pytest.mark.parametrize("seed", range(20))
def test_noisy_points_match_the_least_squares_reference(seed):
    rng = np.random.default_rng(100 + seed)
    src = rng.uniform(0, 250, (5, 2))
    dst = apply(random_similarity(rng), src) + rng.normal(0, 3, (5, 2))
    np.testing.assert_allclose(fit_similarity(src, dst), least_squares_reference(src, dst),
                               rtol=1e-7, atol=1e-6)


def test_a_mirrored_face_is_not_reflected():
    src = np.array([[38.0, 51.0], [73.0, 51.0], [56.0, 71.0], [41.0, 92.0], [70.0, 92.0]])
    mirrored = src * [-1, 1]
    matrix = fit_similarity(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0  # a rotation and a scale, never a flip
    np.testing.assert_allclose(matrix, least_squares_reference(src, mirrored), atol=1e-9)


def test_degenerate_points_are_refused():
    with pytest.raises(ValueError, match="same point"):
        fit_similarity(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="N >= 2"):
        fit_similarity(np.ones((1, 2)), np.ones((1, 2)))


def blob_image(height, width, centre, sigma=2.0):
    """(3, H, W) uint8: a Gaussian spot at ``centre`` (x, y)."""
    ys, xs = np.mgrid[0:height, 0:width]
    spot = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return torch.from_numpy((spot * 255).round().astype(np.uint8)).expand(3, -1, -1)


def centroid(image):
    weights = image[0].double().numpy()
    ys, xs = np.mgrid[0:weights.shape[0], 0:weights.shape[1]]
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


def test_integer_translation_moves_pixels_exactly():
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    out = warp(image, np.array([[1.0, 0, -7], [0, 1.0, -11]]), 32)
    assert torch.equal(out, image[:, 11:43, 7:39])


def test_a_quarter_turn_is_rot90():
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    # (x, y) -> (y, 39 - x): the image turned a quarter anticlockwise
    out = warp(image, np.array([[0.0, 1, 0], [-1, 0, 39]]), 40)
    assert torch.equal(out, torch.rot90(image, 1, dims=(1, 2)))


@pytest.mark.parametrize("seed", range(6))
def test_a_point_lands_where_the_transform_sends_it(seed):
    rng = np.random.default_rng(seed)
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.25, 1.6)  # shrinking and enlarging
    source = np.array([rng.uniform(90, 160), rng.uniform(90, 160)])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = np.array([56.0, 60.0]) + rng.uniform(-5, 5, 2)
    matrix = np.hstack([rotation, (target - rotation @ source)[:, None]])
    out = warp(blob_image(250, 250, source, sigma=4.0), matrix, 112)
    np.testing.assert_allclose(centroid(out), target, atol=0.15)


def test_shrinking_is_antialiased():
    # one-pixel stripes shrunk 4x: the crop must be flat grey, not an alias pattern
    stripes = torch.zeros(3, 200, 200, dtype=torch.uint8)
    stripes[:, :, ::2] = 255
    out = warp(stripes, np.array([[0.25, 0, 0], [0, 0.25, 0]]), 48)
    inner = out[:, 2:-2, 2:-2].float()
    assert (inner - 127.5).abs().max() < 4


def test_outside_the_image_is_black():
    image = torch.full((3, 20, 20), 200, dtype=torch.uint8)
    out = warp(image, np.array([[1.0, 0, 10], [0, 1.0, 10]]), 40)
    assert out[:, :9, :].max() == 0 and out[:, 11:29, 11:29].min() == 200
