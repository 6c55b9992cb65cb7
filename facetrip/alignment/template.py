"""The five-point face template that aligned crops are warped onto.

The insightface / ArcFace template (the crop format of MS1M, Glint360K, WebFace and most face
data sets since): where the eye centres, the nose tip and the mouth corners of a frontal face
sit in a 112 x 112 crop. Coordinates are pixels with integer values at pixel centres (the
OpenCV convention insightface uses); :func:`template` scales them to another side.
"""

from __future__ import annotations

import numpy as np

#: the name recorded with every alignment (align.json, checkpoints, sidecars)
TEMPLATE_NAME = "arcface-112"
#: side of the crop the template is defined on
TEMPLATE_SIDE = 112
#: (5, 2) x, y of: the eye on the image's left, the other eye, the nose tip, the mouth corner
#: on the image's left, the other mouth corner (insightface ``arcface_dst``)
ARCFACE_112 = np.array(
    [[38.2946, 51.6963],
     [73.5318, 51.5014],
     [56.0252, 71.7366],
     [41.5493, 92.3655],
     [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_112.flags.writeable = False


def template(size: int = TEMPLATE_SIDE) -> np.ndarray:
    """The (5, 2) float64 template for a ``size`` x ``size`` crop: the 112-pixel points times
    ``size / 112`` (insightface's scaling), so the face fills the same share of any side.

    Raises:
        ValueError: ``size`` below 16 (no face fits).
    """
    if size < 16:
        raise ValueError(f"the aligned crop side must be at least 16 pixels, got {size}")
    return ARCFACE_112 * (size / TEMPLATE_SIDE)
