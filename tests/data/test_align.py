import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetrip.alignment.crop import AlignSpec
from facetrip.alignment.similarity import apply
from facetrip.alignment.template import template
from facetrip.data.align import align_folder
from facetrip.errors import UserError
from tests.conftest import run_cli


def add_bad_images(root: Path) -> None:
    """A photo without a face and a file that is not an image, in the first identity."""
    person = sorted(p for p in root.iterdir() if p.is_dir())[0]
    Image.new("RGB", (200, 150), (120, 130, 140)).save(person / "wall.jpg")
    (person / "broken.jpg").write_bytes(b"not a jpeg")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rows_skips_and_crops(lfw_photos, tmp_path):
    add_bad_images(lfw_photos)
    out = tmp_path / "aligned"
    seen = []
    summary = align_folder(lfw_photos, out, progress=seen.append)
    assert (summary.images, summary.aligned, summary.reused) == (7, 5, 0)
    assert sum(seen) == 7
    assert summary.skip_summary() == "skipped 2: 1 no face, 1 not an image"
    person = sorted(p.name for p in lfw_photos.iterdir())[0]
    # reason, tab, path: the format of every facetrip skip list (runs, embed)
    assert (out / "skipped.txt").read_text() == (f"not an image\t{person}/broken.jpg\n"
                                                 f"no face\t{person}/wall.jpg\n")
    rows = [json.loads(line) for line in (out / "align.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == sorted(str(p.relative_to(lfw_photos))
                                                 for p in lfw_photos.rglob("*_0*.jpg"))
    for row in rows:
        assert row["out"] == str(Path(row["source"]).with_suffix(".png"))
        assert set(row) == {"source", "out", "faces", "box", "score", "landmarks",
                            "transform"}
        landed = apply(np.array(row["transform"]), np.array(row["landmarks"]))
        assert np.abs(landed - template(112)).max() < 12  # a face is not the template
        assert row["score"] > 0.9 and row["faces"] >= 1
        with Image.open(out / row["out"]) as crop:
            assert crop.size == (112, 112) and crop.mode == "RGB"
    assert json.loads((out / "align.json").read_text())["template"] == "arcface-112"


def test_a_rerun_skips_what_is_done_and_keeps_the_bytes(lfw_photos, tmp_path):
    add_bad_images(lfw_photos)
    out = tmp_path / "aligned"
    align_folder(lfw_photos, out)
    before = snapshot(out)
    again = align_folder(lfw_photos, out, workers=2)
    assert (again.aligned, again.reused, len(again.skipped)) == (0, 5, 2)
    after = snapshot(out)
    crops = [name for name in before if name.endswith(".png")]
    assert all(after[name] == before[name] for name in crops)  # not even rewritten
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    # a lost crop is made again, with the same bytes, in worker processes
    (out / crops[0]).unlink()
    third = align_folder(lfw_photos, out, workers=2)
    assert (third.aligned, third.reused) == (1, 4)
    assert {k: v[0] for k, v in snapshot(out).items()} == {k: v[0] for k, v in before.items()}


def test_other_settings_are_refused(lfw_photos, tmp_path):
    out = tmp_path / "aligned"
    align_folder(lfw_photos, out, AlignSpec(size=64))
    with pytest.raises(UserError, match=r"size 64 \(now 112\)"):
        align_folder(lfw_photos, out)
    with pytest.raises(UserError, match="inside"):
        align_folder(lfw_photos, lfw_photos / "aligned")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an aligned folder"):
        align_folder(lfw_photos, tmp_path / "other")


def test_a_flat_folder_of_lfw_photos(lfw_photos, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(lfw_photos.rglob("*.jpg"))[:2]:
        (flat / path.name).symlink_to(path.resolve())
    out = tmp_path / "aligned"
    align_folder(flat, out, AlignSpec(size=64))
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        p.with_suffix(".png").name for p in flat.iterdir())
    with Image.open(next(out.glob("*.png"))) as crop:
        assert crop.size == (64, 64)


@pytest.mark.slow
def test_cli_summary_and_strict(lfw_photos, tmp_path):
    add_bad_images(lfw_photos)
    out = tmp_path / "aligned"
    proc = run_cli("align", lfw_photos, "--out", out, "--workers", "0")
    assert "5 of 7 images aligned" in proc.stdout
    assert "skipped 2: 1 no face, 1 not an image" in proc.stderr
    strict = run_cli("align", lfw_photos, "--out", out, "--strict", ok=False)
    assert strict.returncode == 2 and "error: skipped 2" in strict.stderr
    bad = run_cli("align", lfw_photos, "--out", out, "--face", "biggest", ok=False)
    assert bad.returncode == 2 and "--face must be one of" in bad.stderr


def test_python_api(lfw):
    import facetrip

    path = lfw / "AJ_Cook" / "AJ_Cook_0001.jpg"
    with Image.open(path) as img:
        as_array = np.asarray(img.convert("RGB"))
    blank = np.full((150, 200, 3), 100, dtype=np.uint8)
    crops = facetrip.align([path, as_array, blank], size=96)
    assert crops[0].shape == (96, 96, 3) and crops[0].dtype == np.uint8
    assert np.array_equal(crops[0], crops[1]) and crops[2] is None
