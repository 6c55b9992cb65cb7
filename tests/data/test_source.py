"""A RecordIO set is a data set like a folder: the same index, the same decoded pixels in the
DataLoader workers, the decoded cache, damaged records skipped and counted."""

import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from facetrip.data.cache import load_or_build_cache
from facetrip.data.dataset import CachedFaceDataset, FaceDataset
from facetrip.data.recordio import RecordFile, pack_identity_folder
from facetrip.data.source import is_record_file, scan_dataset
from facetrip.data.transforms import Preprocess

SPEC = Preprocess(16, crop_fraction=0.8)


@pytest.fixture
def packed(tmp_path):
    """``(folder, its .rec)``: 5 identities x 4 JPEG/PNG images of several sizes."""
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for i in range(5):
        (root / f"id{i}").mkdir(parents=True)
        for j in range(4):
            size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            image = Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8))
            image.save(root / f"id{i}" / f"{j}.{'jpg' if j % 2 else 'png'}")
    rec = tmp_path / "rec" / "train.rec"
    pack_identity_folder(root, rec)
    return root, rec


def _all(dataset, workers=0):
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers)
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def test_records_decode_in_workers_as_the_files_do(packed):
    root, rec = packed
    assert is_record_file(rec) and not is_record_file(root)
    folder, records = scan_dataset(root), scan_dataset(rec)
    assert records.classes == folder.classes
    assert records.labels.tolist() == folder.labels.tolist()
    x, a = _all(FaceDataset(folder, SPEC))
    y, b = _all(FaceDataset(records, SPEC), workers=2)
    assert torch.equal(x, y) and torch.equal(a, b)


def test_a_record_damaged_after_the_scan_is_replaced_and_counted(packed):
    _, rec = packed
    index = scan_dataset(rec)
    reader = RecordFile(rec)
    at = reader.positions(np.asarray([int(index.paths[1])]))[0]
    with open(rec, "r+b") as f:  # its magic overwritten
        f.seek(int(reader.offsets[at]))
        f.write(b"JUNK")
    dataset = FaceDataset(index, SPEC)
    image, label = dataset[1]
    assert label == index.labels[1] and dataset.failures == 1
    assert torch.equal(image, FaceDataset(index, SPEC)[2][0])  # the identity's next image


def test_the_decoded_cache_of_a_rec(packed):
    root, rec = packed
    cache_dir = rec.parent.parent / "cache"
    cache, why = load_or_build_cache(rec, cache_dir, SPEC)
    assert why == "no cache yet"
    index = scan_dataset(rec)
    assert cache.index.paths == index.paths and cache.index.classes == index.classes
    x, _ = _all(CachedFaceDataset(cache.index, cache))
    y, _ = _all(FaceDataset(index, SPEC))
    assert torch.equal(x, y)
    assert load_or_build_cache(rec, cache_dir, SPEC)[1] is None  # reused
    data = bytearray(rec.read_bytes())
    first_image = int(RecordFile(rec).offsets[1])
    struct.pack_into("<I", data, first_image, 0)  # record 1 loses its magic
    rec.write_bytes(bytes(data))
    os.utime(rec, ns=(1, 2))
    cache, why = load_or_build_cache(rec, cache_dir, SPEC)
    assert why == f"{len(index)} files changed"
    assert [s.path for s in cache.index.skipped] == ["1"]
    assert cache.index.skipped[0].reason.startswith("corrupt record")
    assert cache.index.skip_summary() == "skipped 1 record: 1 corrupt record"


def test_facetrip_cache_of_a_rec(packed, monkeypatch, capfd):
    from tests.conftest import cli_result

    _, rec = packed
    code, out, err = cli_result("cache", rec, "--image-size", 16, "--out",
                              rec.parent.parent / "c", "--workers", 0)
    assert code == 0, err
    assert "20 images of 5 identities, 16x16" in out and "built (no cache yet)" in out
