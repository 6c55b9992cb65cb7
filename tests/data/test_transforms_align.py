"""Preprocess with alignment: the decoded cache of photos, the records that carry it."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

import facetrip
from facetrip.alignment.crop import AlignSpec
from facetrip.config import load_config
from facetrip.data.cache import load_or_build_cache, open_cache
from facetrip.data.decode import ImageError
from facetrip.data.transforms import Preprocess, Preprocessing, preprocess_from_config
from facetrip.errors import UserError


def test_the_aligned_crop_then_the_usual_resize(lfw):
    path = lfw / "AJ_Cook" / "AJ_Cook_0001.jpg"
    spec = Preprocess(64, align=AlignSpec(size=112))
    expected = F.resize(torch.from_numpy(facetrip.align([path])[0]).permute(2, 0, 1),
                        [64, 64], antialias=True)
    assert torch.equal(spec.load(path), expected)
    assert spec.reduction(4000, 3000) == 1  # a face's size is unknown before detection


def test_no_face_is_a_skip_reason():
    blank = torch.full((3, 150, 200), 100, dtype=torch.uint8)
    with pytest.raises(ImageError) as info:
        Preprocess(64, align=AlignSpec())(blank)
    assert info.value.reason == "no face"


def test_records_round_trip():
    spec = Preprocess(96, 0.9, None, True, AlignSpec(size=128, face="center"))
    assert Preprocess.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["align"] == {"method": "mtcnn", "template": "arcface-112",
                                       "size": 128, "face": "center", "min_face": 0.1}
    pre = Preprocessing(spec, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    assert Preprocessing.from_fields(pre.to_fields()) == pre  # a sidecar's fields
    plain = Preprocessing(Preprocess(96))
    assert "align" not in plain.to_fields()  # as before alignment existed: same fingerprints
    assert Preprocessing.from_fields(plain.to_fields()) == plain
    with pytest.raises(ValueError, match="template"):
        Preprocess.from_dict({**spec.to_dict(), "align": {**spec.to_dict()["align"],
                                                          "template": "other"}})


def test_forcing_alignment_on_or_off():
    aligned = Preprocessing(Preprocess(64, align=AlignSpec(size=96)))
    plain = Preprocessing(Preprocess(64))
    assert aligned.aligned(None) is aligned and plain.aligned(None) is plain
    assert aligned.aligned(False).crop.align is None
    assert aligned.aligned(True) is aligned
    assert plain.aligned(True).crop.align == AlignSpec()


def test_config(tmp_path):
    cfg = load_config(None, ["data.align=mtcnn", "data.align_size=96",
                             f"data.cache={tmp_path}"])
    assert preprocess_from_config(cfg.data).align == AlignSpec(size=96)
    with pytest.raises(UserError, match="data.align needs data.cache"):
        load_config(None, ["data.align=mtcnn"])
    with pytest.raises(UserError, match="align_size"):
        load_config(None, ["data.align_size=8"])
    with pytest.raises(UserError, match="data.align"):
        load_config(None, ["data.align=dlib", f"data.cache={tmp_path}"])


def test_the_decoded_cache_of_photos(lfw_photos, tmp_path):
    Image.new("RGB", (200, 150), (120, 130, 140)).save(lfw_photos / "Abdullah_Gul" / "wall.jpg")
    spec = Preprocess(32, align=AlignSpec())
    cache, why = load_or_build_cache(lfw_photos, tmp_path / "cache", spec)
    assert why and cache.index.skip_summary() == "skipped 1 file: 1 no face"
    assert len(cache.index) == 5
    reopened = open_cache(tmp_path / "cache", lfw_photos)
    assert reopened.spec == spec
    path = cache.index.paths[0]
    assert torch.equal(torch.from_numpy(np.array(cache.images[cache.rows([path])[0]])),
                       spec.load(lfw_photos / path))
    # another alignment is another cache
    _, why = load_or_build_cache(lfw_photos, tmp_path / "cache", Preprocess(32))
    assert "align" in why


def test_the_missing_extra_is_one_line(tmp_path):
    code = ("import sys; sys.modules['facenet_pytorch'] = None\n"
            "from facetrip.cli import main\n"
            f"sys.argv = ['facetrip', 'train', '--set', 'data.root={tmp_path}', '--set', "
            f"'data.align=mtcnn', '--set', 'data.cache={tmp_path / 'c'}', '--out', "
            f"'{tmp_path / 'run'}']\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'facetrip[align]'" in lines[0]
