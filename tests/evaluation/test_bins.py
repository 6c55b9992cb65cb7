""".bin verification sets: read without running anything, paired and folded as the published
tables, and scored exactly as the same pairs read from an LFW pairs file."""

import io
import os
import pickle
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facetrip.data.transforms import Normalize, Preprocess
from facetrip.errors import UserError
from facetrip.evaluation.bins import bin_pairs, read_bin, safe_load, score_bin
from facetrip.evaluation.evaluate import evaluate_checkpoint
from facetrip.evaluation.pairs import read_pairs
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint
from tests.deploy.models import random_checkpoint

LFW = Path(os.environ.get("FACETRIP_LFW", Path(__file__).resolve().parents[3] / "shared/data/lfw"))


def _jpeg(seed, size=20):
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write(path, content, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


# --------------------------------------------------------------------------- reading safely


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("as_array", [False, True])
def test_plain_bins_load_under_every_protocol(tmp_path, protocol, as_array):
    images = [_jpeg(i) for i in range(4)]
    issame = np.array([True, False]) if as_array else [True, False]
    bool_state = np.dtype(bool).__reduce__()
    loaded = read_bin(_write(tmp_path / "x.bin", (images, issame), protocol))
    assert loaded.images == images and loaded.issame.tolist() == [True, False]
    assert loaded.name == "x" and len(loaded) == 2
    assert np.dtype(bool).__reduce__() == bool_state  # numpy's own bool dtype untouched


def test_python2_pickles_load_with_their_strings_as_bytes():
    # PROTO 2, [SHORT_BINSTRING 'abc', SHORT_BINSTRING 'defg'], [NEWTRUE], TUPLE2, STOP
    py2 = b"\x80\x02](U\x03abcU\x04defge]\x88a\x86."
    assert safe_load(py2) == ([b"abc", b"defg"], [True])


class _Touch:
    """Unpickling this would create ``path`` (os.system) if anything were run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("payload", ["system", "eval", "object-array", "int-array", "nested"])
def test_anything_else_is_refused_in_one_line_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    content = {
        "system": ([_jpeg(0), _jpeg(1)], [_Touch(marker)]),
        "eval": pickle.loads(pickle.dumps(([b"a", b"b"], [True]))),  # replaced below
        "object-array": ([b"a", b"b"], np.array([True], dtype=object)),
        "int-array": ([b"a", b"b"], np.array([1], dtype=np.int64)),
        "nested": ([b"a", b"b"], [True, {"x": _Touch(marker)}]),
    }[payload]
    data = pickle.dumps(content, protocol=2)
    if payload == "eval":  # a GLOBAL builtins.eval REDUCE'd on a string
        data = (b"\x80\x02cbuiltins\neval\nX" + len(f"open('{marker}','w')").to_bytes(4, "little")
                + f"open('{marker}','w')".encode() + b"\x85R.")
    path = tmp_path / "evil.bin"
    path.write_bytes(data)
    with pytest.raises(UserError) as err:
        read_bin(path)
    message = str(err.value)
    assert "\n" not in message and "refused" in message and "nothing in it was run" in message
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ("text", "expected (images, issame)"),
    (([b"a"], [True]), "1 images for 1 pairs"),
    (([b"a", 3], [True]), "list of bytes"),
    (([b"a", b"b"], [2]), "list of bools"),
    (([], []), "at least one pair"),
])
def test_malformed_bins_are_one_line_errors(tmp_path, content, message):
    with pytest.raises(UserError, match=re.escape(message)):
        read_bin(_write(tmp_path / "m.bin", content))
    (tmp_path / "cut.bin").write_bytes(pickle.dumps(([b"a", b"b"], [True]))[:10])
    with pytest.raises(UserError, match="not a readable .bin set"):
        read_bin(tmp_path / "cut.bin")
    with pytest.raises(UserError, match="cannot read"):
        read_bin(tmp_path / "absent.bin")


# --------------------------------------------------------------------------- pairs and folds


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
    images = [_jpeg(i) for i in range(40)]
    images[5] = images[5][:30]  # pair 2 loses an image
    issame = [i % 2 == 0 for i in range(20)]
    result = score_bin(model, read_bin(_write(tmp_path / "b.bin", (images, issame))),
                       Preprocess(16), Normalize(cfg.data.mean, cfg.data.std),
                       torch.device("cpu"))
    assert result.metrics["skipped_pairs"] == 1 and result.metrics["n_pairs"] == 19
    assert 2 not in (result.pairs.idx1 // 2).tolist()
    assert result.metrics["folds"] == 10 and result.metrics["protocol"] == "k-fold"


# --------------------------------------------------------------------------- LFW


PAIRS_PER_FOLD = 60  #: same and different pairs taken from each of View 2's 10 folds


def _view2_subset(tmp_path):
    """The first ``PAIRS_PER_FOLD`` same and different pairs of each fold of pairs.txt, as a
    pairs file (10 folds), a folder of links to their images, and the ``.bin`` of their
    images in the file's order (insightface's lfw.bin layout)."""
    lines = (LFW / "pairs.txt").read_text().splitlines()
    per = int(lines[0].split()[1])
    kept = []
    for fold in range(10):
        block = lines[1 + 2 * per * fold: 1 + 2 * per * (fold + 1)]
        kept += block[:PAIRS_PER_FOLD] + block[per: per + PAIRS_PER_FOLD]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text(f"10\t{PAIRS_PER_FOLD}\n" + "\n".join(kept) + "\n")
    pairs = read_pairs(pairs_file)
    data = tmp_path / "lfw-subset"
    images = []
    for a, b in zip(pairs.path1, pairs.path2, strict=True):
        for rel in (a, b):
            link = data / rel
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(LFW / rel)
            images.append((LFW / rel).read_bytes())
    bin_path = _write(tmp_path / "lfw.bin", (images, pairs.issame.tolist()))
    return pairs_file, data, bin_path


@pytest.mark.slow
@pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason=f"no LFW at {LFW}")
def test_lfw_bin_scores_exactly_as_the_pairs_file(tmp_path):
    pairs_file, data, bin_path = _view2_subset(tmp_path)
    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=32", "data.crop_fraction=0.6",
                             dim=16)
    from_files = evaluate_checkpoint(ckpt, data, pairs_file=pairs_file).metrics["verification"]
    model, cfg = model_from_checkpoint(load_checkpoint(ckpt))
    d = cfg.data
    from_bin = score_bin(model, read_bin(bin_path), Preprocess(d.image_size, d.crop_fraction),
                         Normalize(d.mean, d.std), torch.device("cpu")).metrics
    assert from_bin["n_pairs"] == from_files["n_pairs"] == 20 * PAIRS_PER_FOLD
    assert from_bin["folds"] == from_files["folds"] == 10
    assert abs(from_bin["accuracy"] - from_files["accuracy"]) <= 1e-9
    assert abs(from_bin["auc"] - from_files["auc"]) <= 1e-9
    assert from_bin["accuracy_std"] == pytest.approx(from_files["accuracy_std"], abs=1e-9)
