""".bin sets are paired and folded as the published tables: consecutive images, ten contiguous
folds; a pair with an image that does not decode is left out and counted."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from facetrip.data.bins import read_bin
from facetrip.data.transforms import Normalize, Preprocess
from facetrip.metrics.bins import bin_pairs, embed_bin, score_bin
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint
from tests.data.encoded import encoded_image, write_bin
from tests.deploy.models import random_checkpoint


@pytest.mark.parametrize("n", [1, 7, 10, 25, 6000, 7000, 12345])
def test_pairs_are_consecutive_images_in_ten_contiguous_folds(n):
    pairs = bin_pairs(n)
    assert pairs.idx1.tolist() == list(range(0, 2 * n, 2))
    assert pairs.idx2.tolist() == list(range(1, 2 * n, 2))
    for i, fold in enumerate(pairs.fold.tolist()):  # fold k = pairs [k n / 10, (k + 1) n / 10)
        assert Fraction(fold * n, 10) <= i < Fraction((fold + 1) * n, 10)
    if n % 10 == 0:
        assert np.bincount(pairs.fold).tolist() == [n // 10] * 10


def test_an_image_that_does_not_decode_drops_its_pair_only(tmp_path):
    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=16")
    model, cfg = model_from_checkpoint(load_checkpoint(ckpt))
    images = [encoded_image(i) for i in range(40)]
    images[5] = images[5][:30]  # pair 2 loses an image
    issame = [i % 2 == 0 for i in range(20)]
    bin_set = read_bin(write_bin(tmp_path / "b.bin", (images, issame)))
    emb, decoded = embed_bin(model, bin_set, Preprocess(16), torch.device("cpu"),
                             Normalize(cfg.data.mean, cfg.data.std))
    assert decoded.tolist() == [i != 5 for i in range(40)]
    result = score_bin(bin_set, emb, decoded)
    assert result.metrics["skipped_pairs"] == 1 and result.metrics["n_pairs"] == 19
    assert 2 not in (result.pairs.idx1 // 2).tolist()
    assert result.metrics["folds"] == 10 and result.metrics["protocol"] == "k-fold"
