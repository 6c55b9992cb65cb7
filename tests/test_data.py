import numpy as np
import pytest
import torch
from PIL import Image

from facetrip.data.dataset import FaceDataset, load_rgb
from facetrip.data.folder import filter_min_images, scan_identity_folder, split_identities
from facetrip.data.transforms import build_transform
from facetrip.errors import UserError


def _img(path, mode="RGB", size=(20, 24), color=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def dataset_dir(tmp_path):
    _img(tmp_path / "alice" / "1.png")
    _img(tmp_path / "alice" / "2.jpg")
    _img(tmp_path / "alice" / "sub" / "3.bmp", mode="L")
    _img(tmp_path / "bob" / "1.PNG", mode="RGBA")
    _img(tmp_path / "bob" / "2.png", mode="P")
    (tmp_path / "bob" / "notes.txt").write_text("not an image, not an image extension")
    (tmp_path / "bob" / "fake.jpg").write_text("a text file named .jpg")
    (tmp_path / "bob" / "empty.png").write_bytes(b"")
    _img(tmp_path / "carol" / "only.ppm")
    (tmp_path / "dave").mkdir()  # empty identity folder
    _img(tmp_path / "stray.png")  # files at the root are ignored
    return tmp_path


def test_scan_labels_skips_and_ignores(dataset_dir):
    index = scan_identity_folder(dataset_dir)
    assert index.classes == ["alice", "bob", "carol"]
    assert sorted(index.paths) == sorted([
        "alice/1.png", "alice/2.jpg", "alice/sub/3.bmp", "bob/1.PNG", "bob/2.png",
        "carol/only.ppm",
    ])
    assert index.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert sorted(s.path for s in index.skipped) == ["bob/empty.png", "bob/fake.jpg"]
    assert index.skip_summary() == "skipped 2 files: 2 not an image"


def test_empty_and_missing_directories_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scan_identity_folder(tmp_path / "absent")
    (tmp_path / "x").mkdir()
    _img(tmp_path / "root_only.png")
    with pytest.raises(UserError, match="no identities found"):
        scan_identity_folder(tmp_path)


def test_min_images_filter_and_identity_split(dataset_dir):
    index = scan_identity_folder(dataset_dir)
    kept = filter_min_images(index, 2)
    assert kept.classes == ["alice", "bob"] and kept.labels.tolist() == [0, 0, 0, 1, 1]
    labels = np.repeat(np.arange(20), 3)
    big = type(index)(index.root, [f"{i}.png" for i in range(60)], labels,
                      [str(i) for i in range(20)])
    train, val = split_identities(big, 0.25, seed=0)
    assert len(val.classes) == 5 and len(train.classes) == 15
    assert not set(train.classes) & set(val.classes)
    assert split_identities(big, 0.25, seed=0)[1].classes == val.classes
    assert split_identities(big, 0.0, seed=0)[1] is None


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "RGB"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    ext = "jpg" if mode == "CMYK" else ("tif" if mode == "I;16" else "png")
    path = _img(tmp_path / f"x.{ext}", mode=mode, color=200 if mode != "I;16" else 40000)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (20, 24)


def test_transform_shapes_and_normalisation():
    img = Image.new("RGB", (50, 40), (255, 0, 128))
    t = build_transform(32, [0.5] * 3, [0.5] * 3, crop_fraction=0.8)
    x = t(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[:, 16, 16], torch.tensor([1.0, -1.0, 0.0039]), atol=0.01)
    aug = build_transform(32, [0.5] * 3, [0.5] * 3, augment=True)
    assert aug(img).shape == (3, 32, 32)


def test_a_file_broken_after_the_scan_is_replaced_by_the_same_identity(dataset_dir):
    index = filter_min_images(scan_identity_folder(dataset_dir), 2)
    broken = index.paths.index("alice/2.jpg")
    (dataset_dir / "alice" / "2.jpg").write_bytes(b"\xff\xd8\xff truncated")
    ds = FaceDataset(index, build_transform(16, [0.5] * 3, [0.5] * 3))
    x, label = ds[broken]
    assert x.shape == (3, 16, 16) and label == 0 and ds.failures == 1
