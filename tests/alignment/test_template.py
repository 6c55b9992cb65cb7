import numpy as np
import pytest

from facetrip.alignment.template import ARCFACE_112, template


def test_the_insightface_values():
    # insightface's arcface_dst (python-package/insightface/utils/face_align.py)
    assert ARCFACE_112.tolist() == [[38.2946, 51.6963], [73.5318, 51.5014],
                                    [56.0252, 71.7366], [41.5493, 92.3655],
                                    [70.7299, 92.2041]]
    assert not ARCFACE_112.flags.writeable


def test_the_face_is_upright_and_symmetric():
    eyes, nose, mouth = ARCFACE_112[:2], ARCFACE_112[2], ARCFACE_112[3:]
    assert eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0]  # image left first
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()  # eyes above nose above mouth
    centre = 56.0
    assert abs(eyes.mean(0)[0] - centre) < 0.1 and abs(mouth.mean(0)[0] - centre) < 0.3


@pytest.mark.parametrize("size", [16, 64, 112, 160, 224])
def test_scaling_keeps_the_share_of_the_crop(size):
    np.testing.assert_allclose(template(size) / size, ARCFACE_112 / 112, rtol=1e-12)
    assert template(112) is not ARCFACE_112 and template(112).flags.writeable


def test_too_small_a_crop_is_refused():
    with pytest.raises(ValueError, match="at least 16"):
        template(15)
