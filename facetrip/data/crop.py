"""Where the face crop lies in an image: one function for facetrip's own preprocessing and the
exported TorchScript module (it compiles it), so the two cannot drift apart.

No ``from __future__ import annotations`` here: TorchScript reads the annotations at run time.
"""


def crop_region(height: int, width: int, crop_fraction: float,
                crop_box: list[float]) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` in pixels of a ``height x width`` image.

    ``crop_box = [left, top, right, bottom]`` in fractions of the width/height selects a fixed
    face box; an empty list means a square centre crop of ``crop_fraction`` of the shorter side.
    """
    if len(crop_box) == 4:
        x0 = int(round(crop_box[0] * width))
        y0 = int(round(crop_box[1] * height))
        x1 = max(x0 + 1, int(round(crop_box[2] * width)))
        y1 = max(y0 + 1, int(round(crop_box[3] * height)))
        return y0, x0, min(y1, height) - y0, min(x1, width) - x0
    side = max(1, int(round(min(width, height) * crop_fraction)))
    side_h, side_w = min(side, height), min(side, width)
    return (int(round((height - side_h) / 2.0)), int(round((width - side_w) / 2.0)),
            side_h, side_w)
