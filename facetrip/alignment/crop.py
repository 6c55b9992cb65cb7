"""One image in, one aligned face crop out: detect, choose a face, fit, warp."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facetrip.alignment.detect import Detector, Face, choose_face
from facetrip.alignment.similarity import fit_similarity, warp
from facetrip.alignment.template import TEMPLATE_NAME, template


@dataclass(frozen=True)
class AlignSpec:
    """How crops are aligned: what a model trained on them records and expects."""

    method: str = "mtcnn"
    size: int = 112  #: side of the aligned crop (the template is scaled to it)
    face: str = "largest"  #: which face when there are several: largest | center
    min_face: float = 0.1  #: smallest face looked for, share of the shorter side

    def to_dict(self) -> dict:
        """What align.json, checkpoints and sidecars record (the template by name)."""
        return {"method": self.method, "template": TEMPLATE_NAME, "size": self.size,
                "face": self.face, "min_face": self.min_face}

    @classmethod
    def from_dict(cls, d: dict) -> AlignSpec:
        """What :meth:`to_dict` wrote.

        Raises:
            ValueError: another template than the one this version knows.
        """
        if d.get("template", TEMPLATE_NAME) != TEMPLATE_NAME:
            raise ValueError(f"unknown alignment template {d['template']!r} "
                             f"(this facetrip knows {TEMPLATE_NAME!r})")
        return cls(str(d["method"]), int(d["size"]), str(d.get("face", "largest")),
                   float(d.get("min_face", 0.1)))


#: the settings file ``facetrip align`` writes into its output folder
SETTINGS_NAME = "align.json"


def folder_alignment(folder: str | Path) -> AlignSpec | None:
    """How the crops in ``folder`` were aligned, when it is a ``facetrip align`` output (its
    ``align.json``); else ``None``. A model trained on such a folder records this alignment,
    and a folder of such crops is not aligned again."""
    try:
        return AlignSpec.from_dict(json.loads((Path(folder) / SETTINGS_NAME).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Aligned:
    """The aligned crop of one image, or why there is none."""

    crop: torch.Tensor | None  #: (3, size, size) uint8, None when no face was found
    face: Face | None  #: the face that was aligned
    faces: int  #: how many faces the image has
    transform: np.ndarray | None  #: (2, 3) image pixels -> crop pixels


def align_detected(images: Sequence[torch.Tensor], found: Sequence[Sequence[Face]],
                   spec: AlignSpec) -> list[Aligned]:
    """Crops of ``images`` ((3, H, W) uint8) from the faces already ``found`` in them."""
    points = template(spec.size)
    out = []
    for image, faces in zip(images, found):
        face = choose_face(faces, image.shape[-2], image.shape[-1], spec.face)
        if face is None:
            out.append(Aligned(None, None, 0, None))
            continue
        matrix = fit_similarity(face.landmarks, points)
        out.append(Aligned(warp(image, matrix, spec.size), face, len(faces), matrix))
    return out


def align_tensors(images: Sequence[torch.Tensor], detector: Detector, spec: AlignSpec
                  ) -> list[Aligned]:
    """Detect faces in (3, H, W) uint8 ``images`` (batched) and align one per image."""
    return align_detected(images, detector.detect(images), spec)

