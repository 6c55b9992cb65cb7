"""enroll / identify: exact, block-wise search; the Recall@1 eval reports; the model check."""

import json
import shutil

import numpy as np
import pytest
import torch

from facetrip.deploy.embedder import load_embedder
from facetrip.deploy.gallery import check_model, enroll, load_gallery, nearest, rank_identities
from facetrip.errors import UserError
from tests.deploy.models import random_checkpoint


def _brute(queries, rows, k, metric, exclude=None):
    q, r = torch.from_numpy(queries).double(), torch.from_numpy(rows).double()
    d = torch.cdist(q, r) if metric == "euclidean" else 1 - (
        torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(r, dim=1).T)
    if exclude is not None:
        d[torch.arange(len(q)), torch.from_numpy(exclude)] = float("inf")
    order = np.lexsort((np.broadcast_to(np.arange(len(rows)), d.shape), d.numpy()), axis=1)
    return np.take_along_axis(d.numpy(), order, 1)[:, :k], order[:, :k]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("block_rows, chunk_size", [(7, 3), (1000, 512), (1, 1)])
def test_nearest_is_exact_whatever_the_blocks(metric, block_rows, chunk_size):
    rng = np.random.default_rng(0)
    rows = rng.integers(-3, 4, (60, 4)).astype(np.float32)  # many exact ties
    rows[30:40] = rows[0]  # duplicates of row 0
    queries = np.concatenate([rows[:5], rng.normal(size=(6, 4)).astype(np.float32)])
    d, i = nearest(queries, rows, 12, metric, chunk_size, block_rows)
    bd, bi = _brute(queries, rows, 12, metric)
    np.testing.assert_allclose(d, bd, atol=1e-5)
    assert np.array_equal(i[:5, 0], [0, 1, 2, 3, 4])  # each row finds itself first
    if metric == "euclidean":  # integer rows: exact distances, so ties go by index
        assert np.array_equal(i, bi)
    own = np.arange(5)
    d, i = nearest(rows[:5], rows, 3, metric, chunk_size, block_rows, exclude=own)
    assert not np.any(i == own[:, None])
    np.testing.assert_allclose(d, _brute(rows[:5], rows, 3, metric, own)[0], atol=1e-5)


@pytest.fixture(scope="module")
def gallery(run, tmp_path_factory):
    """The held-out identities enrolled with the checkpoint."""
    out = tmp_path_factory.mktemp("gallery") / "g.npz"
    embedder = load_embedder(run.checkpoint)
    return enroll(embedder, run.test, out, batch_size=16), embedder


def test_a_gallery_of_held_out_identities_reaches_evals_recall_at_1(run, gallery):
    result, embedder = gallery
    g = load_gallery(result.out)
    assert (result.identities, result.images) == (10, 60) and len(g.identities) == 10
    assert isinstance(g.embeddings, np.memmap) and g.embeddings.shape == (60, 32)
    meta = json.loads(run.metrics.read_text())
    everyone = np.arange(60)
    ranked = rank_identities(g, np.asarray(g.embeddings), k=3, exclude=everyone)
    top1 = np.array([m[0].identity for m in ranked])
    truth = g.identities[g.labels]
    recall_at_1 = float(np.mean(top1 == truth))
    assert recall_at_1 == pytest.approx(meta["retrieval"]["recall_at_k"]["1"], abs=1e-9)
    assert recall_at_1 > 0.3  # ten identities: chance is 0.1
    assert all(len({m.identity for m in r}) == 3 for r in ranked)  # k distinct identities


def test_identify_answers_for_enrolled_images_and_means(gallery):
    result, embedder = gallery
    g = load_gallery(result.out)
    probes = np.asarray(g.embeddings[::7])
    for by in ("image", "mean"):
        ranked = rank_identities(g, probes, k=10, by=by)
        assert [len(r) for r in ranked] == [10] * len(probes)
        for r in ranked:
            assert [m.distance for m in r] == sorted(m.distance for m in r)
    ranked = rank_identities(g, probes, k=2)
    for r, label in zip(ranked, g.labels[::7], strict=True):  # an enrolled image is itself
        assert r[0].identity == g.identities[label] and r[0].distance < 1e-3
    means = np.asarray(g.centroids)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1, atol=1e-6)
    first = np.asarray(g.embeddings[g.labels == 0]).mean(0)
    np.testing.assert_allclose(means[0], first / np.linalg.norm(first), atol=1e-6)
    assert rank_identities(g, means, k=1, by="mean")[0][0].identity == g.identities[0]


def test_a_gallery_of_another_model_is_refused(gallery, tmp_path):
    result, embedder = gallery
    g = load_gallery(result.out)
    check_model(g, embedder)  # its own model
    other = load_embedder(random_checkpoint(tmp_path / "o.pt", "data.image_size=32", dim=32))
    with pytest.raises(UserError, match="enrolled with another model"):
        check_model(g, other)


def test_zero_identities_are_refused(run, tmp_path):
    embedder = load_embedder(run.checkpoint)
    (tmp_path / "g" / "someone").mkdir(parents=True)
    (tmp_path / "g" / "someone" / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="zero identities"):
        enroll(embedder, tmp_path / "g", tmp_path / "g.npz")
    shutil.rmtree(tmp_path / "g" / "someone")
    with pytest.raises(UserError, match="no identities found"):
        enroll(embedder, tmp_path / "g", tmp_path / "g.npz")
    empty = {k: np.zeros((0,) if k != "centroids" else (0, 4)) for k in
             ("labels", "paths", "identities", "centroids", "counts")}
    np.savez(tmp_path / "e.npz", meta=np.asarray(json.dumps({"fingerprint": "x"})),
             embeddings=np.zeros((0, 4), np.float32), **empty)
    with pytest.raises(UserError, match="zero identities"):
        load_gallery(tmp_path / "e.npz")
