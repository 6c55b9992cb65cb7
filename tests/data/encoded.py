"""Encoded test images, .bin files and RecordIO sets, as other tools write them (Pillow, plain
pickle, and MXNet's RecordIO layout in plain ``struct.pack``: a writer independent of
facetrip's, obviously correct, for facetrip's reader to be checked against)."""

import io
import pickle
import struct

import numpy as np
from PIL import Image

MAGIC = 0xCED7230A  #: MXNet RecordIO


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


def mx_payload(label, image=b"", key=0):
    """MXNet ``recordio.pack``: IRHeader '<IfQQ' (flag, label, id, id2), labels, image."""
    if isinstance(label, (int, float)):
        return struct.pack("<IfQQ", 0, float(label), key, 0) + image
    return (struct.pack("<IfQQ", len(label), 0.0, key, 0)
            + struct.pack(f"<{len(label)}f", *label) + image)


def mx_record(payload):
    """dmlc-core ``WriteRecord``: cut at every 4-aligned magic (dropped), flags 1/2/3, one
    padding at the end."""
    magic = struct.pack("<I", MAGIC)
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == magic]
    out, start = b"", 0
    for n, i in enumerate(cuts):
        out += struct.pack("<II", MAGIC, (1 if n == 0 else 2) << 29 | (i - start))
        out += payload[start:i]
        start = i + 4
    out += struct.pack("<II", MAGIC, (3 if cuts else 0) << 29 | (len(payload) - start))
    out += payload[start:]
    return out + b"\0" * (-len(payload[start:]) % 4)


def write_mx_set(path, records):
    """Write ``{key: payload}`` in the given order to ``path`` + its ``.idx``."""
    data, idx = b"", ""
    for key, payload in records.items():
        idx += f"{key}\t{len(data)}\n"
        data += mx_record(payload)
    path.write_bytes(data)
    path.with_suffix(".idx").write_text(idx)
    return path


def insightface_set(path, n_identities=200, seed=0, min_images=1):
    """An insightface-layout set: header record 0, images 1..N (``min_images`` to 3 per
    identity), identity records after them. Returns ``(path, {key: (identity, bytes)})``."""
    rng = np.random.default_rng(seed)
    images, key = {}, 1
    ranges = []
    for identity in range(n_identities):
        start = key
        for _ in range(int(rng.integers(min_images, 4))):
            fmt = "JPEG" if key % 3 == 0 else "PNG"
            images[key] = (identity, encoded_image(key, fmt, int(rng.integers(8, 17))))
            key += 1
        ranges.append((start, key))
    first = key
    records = {0: mx_payload([float(first), float(first + n_identities)])}
    records.update({k: mx_payload(float(ident), data, k) for k, (ident, data) in images.items()})
    records.update({first + i: mx_payload([float(a), float(b)], key=first + i)
                    for i, (a, b) in enumerate(ranges)})
    return write_mx_set(path, records), images
