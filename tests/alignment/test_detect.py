import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from facetrip.alignment.detect import Face, choose_face
from facetrip.alignment.similarity import fit_similarity, warp
from facetrip.alignment.template import template
from facetrip.data.decode import decode_rgb
from tests.conftest import PEOPLE


def face(left, top, side, score=0.99):
    box = np.array([left, top, left + side, top + side], dtype=float)
    return Face(box, score, np.zeros((5, 2)))


def test_largest_wins_and_ties_go_to_the_centre():
    small, big = face(0, 0, 50), face(300, 200, 80)
    assert choose_face([small, big], 300, 400) is big
    corner, central = face(0, 0, 80), face(160, 110, 80)  # same size; image centre (199.5, 149.5)
    assert choose_face([corner, central], 300, 400) is central
    assert choose_face([central, corner], 300, 400) is central
    nearly = face(170, 120, 79.8)  # within 1% of the largest area: a tie
    assert choose_face([corner, nearly], 300, 400) is nearly


def test_a_face_cut_by_the_edge_counts_what_is_inside():
    subject = face(150, 100, 100)  # 100 x 100, all inside the 400 x 300 photo
    bystander = face(-70, 100, 140)  # 140 x 140 box, half of it outside: counts 70 x 140 / 2
    assert bystander.area > subject.area
    assert bystander.visible_size(300, 400) == pytest.approx(70 * 140 / 2)
    assert choose_face([bystander, subject], 300, 400) is subject
    inside = face(0, 0, 140)  # the same box inside the photo wins
    assert choose_face([inside, subject], 300, 400) is inside


def test_center_rule_and_no_face():
    central, big = face(180, 130, 40), face(0, 0, 150)
    assert choose_face([big, central], 300, 400, "center") is central
    assert choose_face([], 300, 400) is None
    with pytest.raises(ValueError, match="largest"):
        choose_face([big], 300, 400, "biggest")


def grey_frame(crop, border):
    """``crop`` in the middle of a grey square ``border`` pixels wider on each side."""
    out = torch.full((3, crop.shape[1] + 2 * border, crop.shape[2] + 2 * border), 128,
                     dtype=torch.uint8)
    out[:, border:-border, border:-border] = crop
    return out


def test_real_faces_land_on_the_template(lfw, detector):
    paths = [p for person in PEOPLE
             for p in sorted((lfw / person).glob("*.jpg"))[:2]]
    images = [decode_rgb(p) for p in paths]
    found = detector.detect(images)
    points = template(112)
    crops = []
    for image, faces in zip(images, found):
        best = choose_face(faces, 250, 250)
        assert best is not None and best.score > 0.95
        eyes, nose, mouth = best.landmarks[:2], best.landmarks[2], best.landmarks[3:]
        assert eyes[0, 0] < eyes[1, 0] and eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
        crops.append(grey_frame(warp(image, fit_similarity(best.landmarks, points), 112), 56))
    errors = []
    for faces in detector.detect(crops):  # re-detected on the aligned crops
        again = choose_face(faces, 224, 224)
        assert again is not None
        errors.append(np.linalg.norm(again.landmarks - 56 - points, axis=1))
    assert np.median(errors) < 3.0


def test_large_photos_are_detected_on_a_reduced_copy(lfw, detector):
    image = decode_rgb(lfw / "AJ_Cook" / "AJ_Cook_0001.jpg")
    big = F.resize(image, [1000, 1000], antialias=True)  # shorter side > DETECT_SIDE
    small_face = choose_face(detector.detect([image])[0], 250, 250)
    big_face = choose_face(detector.detect([big])[0], 1000, 1000)
    expected = (small_face.landmarks + 0.5) * 4 - 0.5
    assert np.abs(big_face.landmarks - expected).max() < 8  # 2 px at the original scale


def test_no_face_in_a_blank_image(detector):
    assert detector.detect([torch.full((3, 120, 160), 90, dtype=torch.uint8)]) == [[]]


def test_the_missing_extra_is_one_line(tmp_path):
    code = ("import sys; sys.modules['facenet_pytorch'] = None\n"
            "from facetrip.cli import main\n"
            f"sys.argv = ['facetrip', 'align', {str(tmp_path)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'facetrip[align]'" in lines[0]
