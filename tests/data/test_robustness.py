"""Every kind of bad file a real face dataset has: loaded correctly, or skipped and counted."""

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from facetrip.data.cache import build_cache
from facetrip.data.dataset import FaceDataset
from facetrip.data.decode import decode_rgb
from facetrip.data.index import filter_min_images, scan_identity_folder
from facetrip.data.transforms import Preprocess
from facetrip.errors import UserError
from facetrip.training.build import load_data
from facetrip.training.hooks import TrainHooks
from facetrip.training.train import train

NON_UTF8 = os.fsdecode(b"caf\xe9.jpg")  # a name that is not valid UTF-8 on disk


def _noise(w=40, h=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def _save(path, img, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def _png_header_only(width, height):
    """A PNG whose header claims ``width x height`` (a decompression bomb, a few bytes long)."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


#: loadable files in alice/ and skipped ones (name -> reason category)
LOADABLE = ["good.jpg", "good.png", "grey16.png", "cmyk.jpg", "rgba.png", "palette.png",
            "exif.jpg", NON_UTF8]
SKIPPED = {"truncated.jpg": "truncated", "zero.jpg": "not an image",
           "text.jpg": "not an image", "tiny.png": "too small", "bomb.png": "too large",
           "link.jpg": "broken link"}


@pytest.fixture
def bad_dataset(tmp_path):
    root = tmp_path / "data"
    a = root / "alice"
    _save(a / "good.jpg", _noise(seed=1))
    _save(a / "good.png", _noise(seed=2))
    _save(a / "grey16.png", Image.fromarray(
        (np.arange(30 * 40).reshape(30, 40) * 53 % 65536).astype(np.uint16)))
    _save(a / "cmyk.jpg", _noise(seed=3).convert("CMYK"))
    _save(a / "rgba.png", _noise(seed=4).convert("RGBA"))
    _save(a / "palette.png", _noise(seed=5).convert("P"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    _save(a / "exif.jpg", _noise(seed=6), exif=exif.tobytes())
    _save(a / NON_UTF8, _noise(seed=7))
    buf = io.BytesIO()
    _noise(seed=8).save(buf, "JPEG")
    (a / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (a / "zero.jpg").write_bytes(b"")
    (a / "text.jpg").write_text("a text file named .jpg\n")
    _save(a / "tiny.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    (a / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))
    os.symlink(tmp_path / "nowhere.jpg", a / "link.jpg")
    _save(root / "bob" / "only.jpg", _noise(seed=9))  # one image: cannot form a positive pair
    (root / "carol").mkdir()  # empty identity folder
    for name in ("dave", "eve"):
        for i in range(2):
            _save(root / name / f"{i}.png", _noise(seed=hash((name, i)) % 1000))
    _save(root / "stray.jpg", _noise(seed=10))  # at the root: belongs to no identity
    return root


def _category(reason):
    return reason.split(":")[0]


def test_scan_loads_or_skips_every_bad_file_with_a_reason(bad_dataset):
    index = scan_identity_folder(bad_dataset)
    alice = sorted(Path(p).name for p, lab in zip(index.paths, index.labels) if lab == 0)
    assert alice == sorted(LOADABLE)
    reasons = {Path(s.path).name: _category(s.reason) for s in index.skipped}
    assert reasons == {**SKIPPED, "stray.jpg": "outside identity folders"}
    assert index.classes == ["alice", "bob", "dave", "eve"] and index.empty_classes == ["carol"]
    assert index.skip_summary() == ("skipped 7 files: 2 not an image, 1 broken link, "
                                    "1 outside identity folders, 1 too large, 1 too small, "
                                    "1 truncated")


def test_loadable_files_decode_to_the_right_rgb_pixels(bad_dataset):
    a = bad_dataset / "alice"

    def pil(name):
        return torch.from_numpy(np.array(Image.open(a / name).convert("RGB"))).permute(2, 0, 1)

    for name in ("good.png", "rgba.png", "palette.png"):  # lossless: exactly Pillow's RGB
        assert torch.equal(decode_rgb(a / name), pil(name)), name
    for name in ("good.jpg", "cmyk.jpg", NON_UTF8):  # same libjpeg: at most rounding apart
        assert (decode_rgb(a / name).int() - pil(name).int()).abs().max() <= 2, name
    grey = decode_rgb(a / "grey16.png")
    raw = np.asarray(Image.open(a / "grey16.png")).astype(np.int64)
    assert grey.shape == (3, 30, 40) and torch.equal(grey[0], grey[2])
    assert torch.equal(grey[0].long(), torch.from_numpy(raw >> 8))  # 16 -> 8 bits, not clipped
    rotated = decode_rgb(a / "exif.jpg")
    upright = ImageOps.exif_transpose(Image.open(a / "exif.jpg")).convert("RGB")
    assert rotated.shape == (3, 40, 30) and upright.size == (30, 40)
    diff = rotated.int() - torch.from_numpy(np.array(upright)).permute(2, 0, 1).int()
    assert diff.abs().float().mean() < 1.0


def test_the_cache_build_finds_the_same_files_by_full_decode(bad_dataset, tmp_path):
    scan = scan_identity_folder(bad_dataset)
    cache = build_cache(bad_dataset, tmp_path / "cache", Preprocess(16))
    assert cache.index.paths == scan.paths and cache.index.classes == scan.classes
    assert ({s.path: _category(s.reason) for s in cache.index.skipped}
            == {s.path: _category(s.reason) for s in scan.skipped})


def test_a_run_reports_skips_and_excluded_identities_and_strict_refuses(bad_dataset, tmp_path,
                                                                      tiny_config):
    seen = {}

    class Started(TrainHooks):
        def started(self, data, device):
            seen.update(data=data)

    train(tiny_config(bad_dataset, "sampler.batches_per_epoch=1"), tmp_path / "run",
          hooks=Started())
    data, report = seen["data"], tmp_path / "run" / "skipped.txt"
    assert data.skip_summary.startswith("skipped 7 files: 2 not an image")
    assert data.skip_summary.endswith(f"; see {report}")
    assert data.excluded == {"bob": 1, "carol": 0} and data.dropped_identities == 2
    assert data.train_identities == 3
    lines = [line.split(b"\t") for line in report.read_bytes().splitlines()
             if not line.startswith(b"#")]
    listed = {path.decode(): reason.decode().split(":")[0] for reason, path in lines}
    assert listed == {**{f"alice/{n}": r for n, r in SKIPPED.items()},
                      "stray.jpg": "outside identity folders", "bob/": "1 image",
                      "carol/": "0 images"}
    with pytest.raises(UserError, match=r"data.strict: skipped 7 files.*\(first: "):
        load_data(tiny_config(bad_dataset, "data.strict=true"), torch.device("cpu"))


def test_a_file_that_breaks_mid_training_is_replaced_and_counted_across_workers(bad_dataset):
    index = filter_min_images(scan_identity_folder(bad_dataset), 2)
    ds = FaceDataset(index, Preprocess(16))
    broken = index.paths.index("dave/0.png")
    (bad_dataset / "dave" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage now")
    (bad_dataset / "alice" / "good.jpg").unlink()
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1,
                                         sampler=[broken, index.paths.index("alice/good.jpg")])
    items = list(loader)
    dave_1 = Preprocess(16).load(bad_dataset / "dave" / "1.png")
    assert torch.equal(items[0][0], dave_1) and items[0][1] == index.classes.index("dave")
    assert items[1][1] == 0 and items[1][0].shape == (3, 16, 16)
    assert ds.failures == 2  # counted in the worker, visible here


def test_a_permission_error_is_skipped_as_unreadable(bad_dataset, monkeypatch):
    # Tests run as root here, where chmod 000 does not stop reading: make open() refuse.
    real_open, target = open, str(bad_dataset / "eve" / "1.png")

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    skipped = {s.path: s.reason for s in scan_identity_folder(bad_dataset).skipped}
    assert skipped["eve/1.png"] == "unreadable: permission denied"
    with pytest.raises(ValueError, match="unreadable: permission denied"):
        decode_rgb(target)
