"""RecordIO without MXNet: sets written by an independent writer (plain struct.pack, as
MXNet's recordio.py and dmlc-core's recordio.cc lay them out) are read exactly; facetrip's
own writer round-trips; damaged records are skipped and counted, never fatal."""

import struct
import sys

import numpy as np
import pytest
import torch

from facetrip.cli import main
from facetrip.data.decode import ImageError, decode_bytes, decode_rgb
from facetrip.data.index import scan_identity_folder
from facetrip.data.recordio import (
    NAMES_SUFFIX,
    RecordError,
    RecordFile,
    frame_record,
    pack_identity_folder,
    pack_payload,
    parse_record,
    read_index,
    scan_record_file,
    unpack_payload,
)
from facetrip.data.transforms import Preprocess
from facetrip.errors import UserError
from tests.data.encoded import (
    MAGIC,
    encoded_image,
    insightface_set,
    mx_payload,
    mx_record,
    write_mx_set,
)

# --------------------------------------------------------------------------- reading


def test_an_insightface_set_from_another_writer_is_read_exactly(tmp_path):
    rec, images = insightface_set(tmp_path / "train.rec")
    index = scan_record_file(rec)
    assert index.classes == [str(i) for i in range(200)]
    assert index.skipped == [] and index.empty_classes == []
    assert index.paths == [str(k) for k in sorted(images)]
    assert index.labels.tolist() == [images[k][0] for k in sorted(images)]
    reader = RecordFile(rec)
    for key in (1, 2, 37, max(images)):
        header, data = reader.image(key)
        assert data == images[key][1]
        assert header.label == images[key][0] and header.id == key
        assert torch.equal(decode_bytes(data), decode_rgb(_save(tmp_path / "x", data)))


def _save(path, data):
    path.write_bytes(data)
    return path


def test_a_set_without_header_records_takes_identities_from_the_labels(tmp_path):
    records = {k: mx_payload(float(label), encoded_image(k, "PNG", 12), k)
               for k, label in enumerate([7, 3, 7, 9, 3, 3])}
    # several labels: the first counts
    records[6] = mx_payload([9.0, 0.5], encoded_image(6, "PNG", 12), 6)
    records[7] = mx_payload(2.5, encoded_image(7, "PNG", 12), 7)  # not an identity number
    index = scan_record_file(write_mx_set(tmp_path / "im2rec.rec", records))
    assert index.classes == ["3", "7", "9"]
    assert index.paths == ["1", "4", "5", "0", "2", "3", "6"]
    assert index.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert [(s.path, s.reason.split(":")[0]) for s in index.skipped] == [("7", "corrupt record")]


def test_payloads_holding_the_magic_are_split_and_joined_as_dmlc_core_does():
    magic = struct.pack("<I", MAGIC)
    rng = np.random.default_rng(0)
    for payload in [b"", b"abc", magic, magic * 3, b"abcd" + magic + b"xy",
                    b"ab" + magic + b"cd",  # not 4-aligned: not split
                    rng.bytes(40) + magic + rng.bytes(13) + magic + magic + rng.bytes(3)]:
        framed = frame_record(payload)
        assert framed == mx_record(payload)
        assert len(framed) % 4 == 0
        assert parse_record(lambda offset, n, f=framed: f[offset:offset + n], 0) == payload


def test_split_records_in_a_set_are_read_whole(tmp_path):
    magic = struct.pack("<I", MAGIC)
    image = encoded_image(1, "PNG", 12)
    image = image[:8] + magic + image[8:]  # a PNG with the magic inside, 4-aligned in the payload
    payload = mx_payload(0.0, image, 1)
    assert len(mx_record(payload)) > len(payload) and magic in payload
    other = mx_payload(0.0, encoded_image(2, "PNG", 12), 2)
    rec = write_mx_set(tmp_path / "s.rec", {1: payload, 2: other})
    index = scan_record_file(rec)
    assert index.paths == ["1", "2"] and index.skipped == []
    assert RecordFile(rec).image(1)[1] == image


def test_ir_header_packing_matches_the_plain_struct_layout():
    assert pack_payload(3.0, b"img", 5) == mx_payload(3.0, b"img", 5)
    assert pack_payload([1.0, 2.0], b"", 9) == mx_payload([1.0, 2.0], b"", 9)
    header, data = unpack_payload(mx_payload([4.0, 8.0, 1.5], b"jpeg", 3))
    assert (header.flag, header.id, header.labels, data) == (3, 3, (4.0, 8.0, 1.5), b"jpeg")
    with pytest.raises(RecordError, match="corrupt record"):
        unpack_payload(b"short")
    with pytest.raises(RecordError, match="labels do not fit"):
        unpack_payload(struct.pack("<IfQQ", 5, 0.0, 0, 0) + b"1234")


# --------------------------------------------------------------------------- damage


def test_truncated_and_corrupt_records_are_skipped_and_counted(tmp_path):
    rec, images = insightface_set(tmp_path / "train.rec", n_identities=20)
    keys, offsets, _ = read_index(rec.with_suffix(".idx"))
    offset = dict(zip(keys.tolist(), offsets.tolist()))
    data = bytearray(rec.read_bytes())
    data[offset[5]:offset[5] + 4] = b"JUNK"  # no magic
    length = struct.unpack_from("<I", data, offset[9] + 4)[0]
    struct.pack_into("<I", data, offset[9] + 4, length + 64)  # overlaps the next record
    last_image = max(images)
    # move the last image to the end and cut it in half, as an interrupted copy would
    tail = mx_record(mx_payload(float(images[last_image][0]), images[last_image][1], last_image))
    idx = rec.with_suffix(".idx").read_text().replace(
        f"{last_image}\t{offset[last_image]}\n", f"{last_image}\t{len(data)}\n")
    rec.write_bytes(bytes(data) + tail[: len(tail) // 2])
    rec.with_suffix(".idx").write_text(idx + "123\n")  # and a cut index line
    index = scan_record_file(rec)
    reasons = {s.path: s.reason for s in index.skipped}
    assert reasons["5"].startswith("corrupt record: no RecordIO magic")
    assert reasons["9"].startswith("corrupt record") and "overlaps" in reasons["9"]
    assert reasons[str(last_image)].startswith("truncated")
    n_lines = len(idx.splitlines()) + 1
    assert reasons[f"train.idx line {n_lines}"] == "corrupt index: b'123'"
    assert len(index) == len(images) - 3
    assert set(index.paths) == {str(k) for k in images} - {"5", "9", str(last_image)}
    assert index.skip_summary() == "skipped 4 records: 2 corrupt record, 1 corrupt index, " \
                                   "1 truncated"
    reader = RecordFile(rec)
    for key in (5, 9, last_image):
        with pytest.raises(ImageError):  # what the training dataset counts and replaces
            reader.image(key)


def test_missing_files_and_a_set_without_images_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scan_record_file(tmp_path / "none.rec")
    (tmp_path / "a.rec").write_bytes(b"")
    with pytest.raises(UserError, match="no index"):
        scan_record_file(tmp_path / "a.rec")
    rec = write_mx_set(tmp_path / "b.rec", {0: mx_payload([1.0, 1.0])})  # header, no images
    with pytest.raises(UserError, match="no usable image record"):
        scan_record_file(rec)


def test_identity_records_that_disagree_are_skipped(tmp_path):
    records = {0: mx_payload([4.0, 7.0])}
    records.update({k: mx_payload(0.0, encoded_image(k, "PNG", 12), k) for k in (1, 2, 3)})
    records[4] = mx_payload([1.0, 3.0], key=4)
    records[5] = mx_payload([2.0, 4.0], key=5)  # claims image 2 again
    records[6] = mx_payload([3.0, 99.0], key=6)  # beyond the images
    index = scan_record_file(write_mx_set(tmp_path / "c.rec", records))
    assert index.classes == ["0"] and index.paths == ["1", "2"]
    reasons = {s.path: s.reason for s in index.skipped}
    assert "another identity" in reasons["5"] and "not an image range" in reasons["6"]
    assert reasons["3"] == "outside identity records"


# --------------------------------------------------------------------------- pack


@pytest.fixture
def folder(tmp_path):
    """3 identities of PNG/JPEG files, one broken file, one non-image file, a name with a
    space and accents."""
    root = tmp_path / "faces"
    names = ["alice", "bob b", "zoë"]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(3):
            fmt = "JPEG" if j == 1 else "PNG"
            (root / name / f"{j}.{fmt.lower()}").write_bytes(encoded_image(10 * i + j, fmt, 16))
    (root / "bob b" / "broken.jpg").write_bytes(encoded_image(99, "JPEG")[:40])
    (root / "alice" / "notes.txt").write_text("not an image")
    return root


def test_pack_round_trips_pixels_labels_and_names(folder, tmp_path):
    out = tmp_path / "rec" / "train.rec"
    result = pack_identity_folder(folder, out)
    assert (result.images, result.identities, result.image_size) == (9, 3, (16, 16))
    assert [s.path for s in result.skipped] == ["bob b/broken.jpg"]
    assert (tmp_path / "rec" / "property").read_text() == "3,16,16"
    assert out.with_suffix(NAMES_SUFFIX).read_text(encoding="utf-8") == "alice\nbob b\nzoë\n"
    original = scan_identity_folder(folder)
    packed = scan_record_file(out)
    assert packed.classes == original.classes
    assert packed.labels.tolist() == original.labels.tolist()
    reader = RecordFile(out)
    pre = Preprocess(8)
    for key, path in zip(packed.paths, original.paths, strict=True):
        header, data = reader.image(key)
        assert data == (folder / path).read_bytes()  # stored as it was
        assert torch.equal(decode_bytes(data), decode_rgb(folder / path))
        assert torch.equal(pre.load_bytes(data), pre.load(folder / path))


def test_packed_sets_follow_the_insightface_layout(folder, tmp_path):
    """Read facetrip's output with the test's own parser, as insightface's loader does:
    record 0's labels give the identity records, theirs the image ranges."""
    out = tmp_path / "train.rec"
    pack_identity_folder(folder, out)
    data = out.read_bytes()
    offset = {int(k): int(v) for k, v in
              (line.split("\t") for line in out.with_suffix(".idx").read_text().splitlines())}

    def payload(key):
        magic, lrec = struct.unpack_from("<II", data, offset[key])
        assert magic == MAGIC and lrec >> 29 == 0
        return data[offset[key] + 8: offset[key] + 8 + (lrec & (1 << 29) - 1)]

    def labels(key):
        flag, _, rid, _ = struct.unpack_from("<IfQQ", payload(key))
        assert rid == key
        return struct.unpack_from(f"<{flag}f", payload(key), 24)

    first, end = labels(0)
    assert (first, end) == (10.0, 13.0) and offset[0] == 0
    seen = []
    for identity, key in enumerate(range(int(first), int(end))):
        lo, hi = labels(key)
        for image in range(int(lo), int(hi)):
            flag, label, _, _ = struct.unpack_from("<IfQQ", payload(image))
            assert (flag, label) == (0, identity)
            seen.append(image)
    assert seen == list(range(1, 10))


def test_pack_writes_nothing_when_interrupted(folder, tmp_path, monkeypatch):
    from facetrip.data import recordio

    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return open(path, "rb").read()

    monkeypatch.setattr(recordio, "read_bytes", failing)
    with pytest.raises(KeyboardInterrupt):
        pack_identity_folder(folder, tmp_path / "out" / "train.rec")
    assert list((tmp_path / "out").iterdir()) == []


def _facetrip(monkeypatch, capfd, *args):
    """``facetrip ARGS`` in-process through the console-script entry point:
    ``(exit code, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["facetrip", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        main()
    out = capfd.readouterr()
    return done.value.code or 0, out.out, out.err


def test_pack_cli(folder, tmp_path, monkeypatch, capfd):
    out = tmp_path / "train.rec"
    code, stdout, stderr = _facetrip(monkeypatch, capfd, "pack", folder, "--out", out)
    assert code == 0 and "wrote 9 images of 3 identities" in stdout
    assert stderr.startswith("warning: skipped 1 file: 1 ")  # broken.jpg
    for args, message in [((), "--overwrite"), (("--out", tmp_path / "t.zip"), ".rec file")]:
        code, _, stderr = _facetrip(monkeypatch, capfd, "pack", folder, "--out", out, *args)
        assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    code, _, _ = _facetrip(monkeypatch, capfd, "pack", folder, "--out", out, "--overwrite")
    assert code == 0


def test_an_empty_index_line_and_duplicate_keys(tmp_path):
    rec = write_mx_set(tmp_path / "d.rec", {k: mx_payload(0.0, encoded_image(k, "PNG", 12), k)
                                            for k in (1, 2)})
    idx = rec.with_suffix(".idx")
    first = idx.read_text().splitlines()[0]
    idx.write_text(f"\n{idx.read_text()}\n{first}\n")  # blank lines, key 1 twice
    index = scan_record_file(rec)
    assert index.paths == ["1", "2"] and index.skipped == []
