"""Encoded test images and .bin files, as other tools write them (Pillow, plain pickle)."""

import io
import pickle

import numpy as np
from PIL import Image


def encoded_image(seed: int, fmt: str = "JPEG", size: int = 20) -> bytes:
    """The bytes of a ``size x size`` random RGB image saved by Pillow as ``fmt``."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(buf, fmt)
    return buf.getvalue()


def write_bin(path, content, protocol=pickle.HIGHEST_PROTOCOL):
    """``content`` pickled to ``path`` as insightface writes a .bin set; returns ``path``."""
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path
