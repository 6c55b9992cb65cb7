"""The decoded cache: same pixels as decoding the files, never served stale, atomic, CLI."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facetrip.cli import app
from facetrip.data.cache import INDEX_NAME, build_cache, load_or_build_cache, open_cache
from facetrip.data.dataset import CachedFaceDataset, FaceDataset
from facetrip.data.index import list_dataset
from facetrip.data.transforms import Preprocess
from facetrip.errors import UserError
from tests.conftest import TINY_RUN, as_sets

SPEC = Preprocess(24, crop_fraction=0.8)


def _noise(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


@pytest.fixture
def faces(tmp_path):
    """4 identities x 3 images: JPEG and PNG, small and large (the large JPEG takes the
    reduced-scale decode), non-square."""
    root = tmp_path / "faces"
    for i in range(4):
        (root / f"id{i}").mkdir(parents=True)
        _noise(40, 50, 10 * i).save(root / f"id{i}" / "a.jpg", quality=90)
        _noise(33, 33, 10 * i + 1).save(root / f"id{i}" / "b.png")
        _noise(400, 300, 10 * i + 2).save(root / f"id{i}" / "c.jpg", quality=90)
    return root


def test_cached_pixels_equal_the_direct_path(faces, tmp_path):
    cache = build_cache(faces, tmp_path / "c", SPEC)
    assert cache.images.shape == (12, 3, 24, 24) and cache.images.dtype == np.uint8
    for path in cache.index.paths:
        row = cache.rows([path])[0]
        assert torch.equal(torch.from_numpy(np.array(cache.images[row])),
                           SPEC.load(faces / path)), path
    assert cache.original_sizes[cache.rows(["id0/c.jpg"])[0]].tolist() == [400, 300]
    direct, cached = FaceDataset(cache.index, SPEC), CachedFaceDataset(cache.index, cache)
    for i in range(len(direct)):
        (x, a), (y, b) = direct[i], cached[i]
        assert torch.equal(x, y) and a == b


def test_a_fresh_cache_is_reused_and_workers_read_the_same_rows(faces, tmp_path):
    first, why = load_or_build_cache(faces, tmp_path / "c", SPEC)
    assert why == "no cache yet"
    again, why = load_or_build_cache(faces, tmp_path / "c", SPEC)
    assert why is None and again.images_file == first.images_file
    ds = CachedFaceDataset(again.index, again)
    in_worker = list(torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1))
    in_main = list(torch.utils.data.DataLoader(ds, batch_size=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(in_worker, in_main))


def test_a_changed_dataset_is_detected_and_rebuilt(faces, tmp_path):
    out = tmp_path / "c"
    build_cache(faces, out, SPEC)
    _noise(40, 50, 99).save(faces / "id0" / "a.jpg", quality=90)  # new content
    stat = os.stat(faces / "id0" / "a.jpg")
    os.utime(faces / "id0" / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    (faces / "id1" / "b.png").unlink()
    _noise(30, 30, 98).save(faces / "id2" / "new.png")
    stale = open_cache(out)
    assert stale.staleness(*list_dataset(faces)) == "1 file changed, 1 file added, 1 file removed"
    cache, why = load_or_build_cache(faces, out, SPEC)
    assert why == "1 file changed, 1 file added, 1 file removed"
    row = cache.rows(["id0/a.jpg"])[0]
    assert torch.equal(torch.from_numpy(np.array(cache.images[row])),
                       SPEC.load(faces / "id0" / "a.jpg"))
    assert "id1/b.png" not in cache.index.paths and "id2/new.png" in cache.index.paths
    assert [p.name for p in out.glob("images-*.npy")] == [cache.images_file]  # old one removed

    os.utime(faces / "id3" / "b.png", ns=(0, 10**18))  # same bytes, new mtime: rebuilt too
    assert load_or_build_cache(faces, out, SPEC)[1] == "1 file changed"
    (faces / "id9").mkdir()  # a new (empty) identity folder changes the skip report
    assert load_or_build_cache(faces, out, SPEC)[1] == "identity folders changed"
    assert load_or_build_cache(faces, out, SPEC)[1] is None


def test_other_preprocessing_or_a_broken_index_rebuilds_and_foreign_dirs_are_refused(
    faces, tmp_path
):
    out = tmp_path / "c"
    build_cache(faces, out, SPEC)
    grey = Preprocess(24, crop_fraction=0.8, grayscale=True)
    cache, why = load_or_build_cache(faces, out, grey)
    assert why.startswith("built for {'size': 24, 'crop_fraction': 0.8, 'crop_box': None, "
                          "'grayscale': False, 'align': None}")
    assert cache.spec == grey and np.array_equal(cache.images[0, 0], cache.images[0, 2])
    (out / INDEX_NAME).write_text("{ truncated")
    assert "not a readable facetrip cache" in load_or_build_cache(faces, out, grey)[1]
    meta = json.loads((out / INDEX_NAME).read_text())
    assert meta["format"] == "facetrip-decoded-cache" and len(meta["sources"]) == 12
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a facetrip cache"):
        build_cache(faces, foreign, SPEC)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="outside the dataset"):
        build_cache(faces, faces / "cache", SPEC)
    assert not (faces / "cache").exists()


def test_cli_cache_then_train_from_it_with_images_per_s_and_eta(faces, tmp_path):
    def cli(*args):  # in-process (no second torch import); output as the console shows it
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    made = cli("cache", faces, "--image-size", 16, "--out", tmp_path / "c")
    assert "12 images of 4 identities, 16x16" in made.stdout
    assert "built (no cache yet)" in made.stdout
    sets = [f"data.root={faces}", f"data.cache={tmp_path / 'c'}", *TINY_RUN,
            "sampler.batches_per_epoch=3"]
    run = cli("train", *as_sets(sets), "--out", tmp_path / "run")
    assert "up to date, reused" in run.stdout, run.output
    bar = run.stderr.replace("\r", "\n").splitlines()
    done = [line for line in bar if line.startswith("epoch 1: 100%")]
    assert done, run.stderr
    assert "12/12 [" in done[-1] and "img/s" in done[-1] and "<00:00" in done[-1], done[-1]


def test_training_with_a_new_cache_equals_training_from_the_files(faces, tmp_path, tiny_config):
    from facetrip.training.checkpoint import load_checkpoint
    from facetrip.training.train import train

    sets = ["sampler.batches_per_epoch=2", "data.workers=0"]
    train(tiny_config(faces, *sets), tmp_path / "files")
    train(tiny_config(faces, *sets, f"data.cache={tmp_path / 'c'}"), tmp_path / "cached")
    a = load_checkpoint(tmp_path / "files" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cached" / "last.pt")["model"]
    for key in a:  # building the cache must not shift the seeded initial weights
        assert torch.equal(a[key], b[key]), key


def test_concurrent_builds_of_one_cache_build_it_once(faces, tmp_path):
    import threading

    from facetrip.data.cache import LOCK_NAME
    from facetrip.io import locked

    out = tmp_path / "c"
    results = []

    def build():
        cache, why = load_or_build_cache(faces, out, SPEC)
        results.append((cache.images_file, why))

    with locked(out / LOCK_NAME):  # someone else is building: both callers wait for the lock
        threads = [threading.Thread(target=build) for _ in range(2)]
        for t in threads:
            t.start()
        threads[0].join(0.5)
        assert all(t.is_alive() for t in threads) and not results
    for t in threads:
        t.join(60)
    assert sorted(why is None for _, why in results) == [False, True]  # built once, reused once
    assert len({name for name, _ in results}) == 1
    assert len(list(out.glob("images-*.npy"))) == 1
    assert np.array_equal(open_cache(out).images, build_cache(faces, tmp_path / "d", SPEC).images)
