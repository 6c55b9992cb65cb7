"""Face detection with MTCNN (the P/R/O-nets shipped inside the ``facenet-pytorch`` wheel):
boxes, scores and five landmarks per face, and the choice of one face per image.

``facenet-pytorch`` is the optional ``align`` extra; without it :func:`load_detector` raises a
one-line :class:`~facetrip.errors.UserError` naming ``pip install 'facetrip[align]'``.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from facetrip.errors import UserError

INSTALL_HINT = "pip install 'facetrip[align]'"
#: how to choose one face when a photo has several
FACE_CHOICES = ("largest", "center")
#: MTCNN's stage thresholds (P, R, O-net) and pyramid step: the published values
THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709
#: the smallest face MTCNN can find, in pixels (its P-net window)
MIN_FACE_PIXELS = 12
#: photos whose shorter side is longer are detected on a copy reduced to this side (faces of
#: ``min_face`` times the side keep >= 72 px there), then the points are scaled back
DETECT_SIDE = 720


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixels of the image it was found in."""

    box: np.ndarray  #: (4,) float64 left, top, right, bottom
    score: float  #: O-net face probability
    landmarks: np.ndarray  #: (5, 2) float64 x, y: eyes, nose, mouth corners (image left first)

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def visible_size(self, height: int, width: int) -> float:
        """How large the face is in the photo: the area of its box inside the image, times
        the share of the box inside (a face cut in half by the edge counts a quarter), so a
        bystander cut off by the frame does not beat the subject."""
        box = np.clip(self.box, 0, [width, height, width, height])
        inside = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
        return float(inside * inside / self.area) if self.area > 0 else 0.0

    def centre_distance(self, height: int, width: int) -> float:
        """Distance from the box centre to the image centre, in pixels."""
        cx, cy = (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2
        return float(np.hypot(cx - (width - 1) / 2, cy - (height - 1) / 2))


def choose_face(faces: Sequence[Face], height: int, width: int, rule: str = "largest"
                ) -> Face | None:
    """The face to align: the ``largest`` (by :meth:`Face.visible_size`; ties, within 1%, to
    the one nearer the image centre) or the one nearest the ``center``; ``None`` when there is
    none."""
    if rule not in FACE_CHOICES:
        raise ValueError(f"face rule must be one of {FACE_CHOICES}, got {rule!r}")
    if not faces:
        return None
    if rule == "center":
        return min(faces, key=lambda f: f.centre_distance(height, width))
    sizes = [f.visible_size(height, width) for f in faces]
    tied = [f for f, size in zip(faces, sizes) if size >= 0.99 * max(sizes)]
    return min(tied, key=lambda f: f.centre_distance(height, width))


def _facenet() -> Any:
    """The ``facenet_pytorch`` modules this needs, or the one-line install hint."""
    try:
        from facenet_pytorch.models import mtcnn
        from facenet_pytorch.models.utils import detect_face
    except ImportError as exc:
        raise UserError(f"face alignment needs the align extra ({exc.name} is missing): "
                        f"{INSTALL_HINT}") from None
    return mtcnn, detect_face


def check_installed() -> None:
    """UserError (one line naming the ``align`` extra) when the detector cannot be imported;
    cheaper than loading it, for a command's first step."""
    _facenet()


class _ChannelsLast(torch.nn.Module):
    """Runs a network on channels-last input: MTCNN's max-pools and convolutions are about
    twice as fast that way on CPU, with the same results up to float rounding."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x.contiguous(memory_format=torch.channels_last))


class Detector:
    """MTCNN on CPU (or ``device``), weights from the ``facenet-pytorch`` wheel, loaded with
    ``torch.load(weights_only=True)``; nothing is downloaded.

    Args:
        min_face: the smallest face to look for, as a share of the image's shorter side
            (never below 12 px, MTCNN's window); larger is faster.
        device: where the networks run.
    """

    def __init__(self, min_face: float = 0.1, device: str | torch.device = "cpu") -> None:
        if not 0 < min_face <= 1:
            raise ValueError(f"min_face must be in (0, 1], got {min_face}")
        mtcnn, detect_face = _facenet()
        self.min_face = min_face
        self.device = torch.device(device)
        self._detect_face = detect_face.detect_face
        data = os.path.join(os.path.dirname(mtcnn.__file__), os.pardir, "data")
        nets = []
        for name, cls in (("pnet", mtcnn.PNet), ("rnet", mtcnn.RNet), ("onet", mtcnn.ONet)):
            net = cls(pretrained=False)
            state = torch.load(os.path.join(data, f"{name}.pt"), map_location="cpu",
                               weights_only=True)
            net.load_state_dict(state)
            nets.append(_ChannelsLast(net).eval().to(self.device))
        self.nets = nets

    def min_face_pixels(self, height: int, width: int) -> float:
        """MTCNN's ``minsize`` for an image of this size."""
        return max(float(MIN_FACE_PIXELS), self.min_face * min(height, width))

    @torch.inference_mode()
    def detect(self, images: Sequence[torch.Tensor]) -> list[list[Face]]:
        """Every face in each image, best score first (coordinates to 1/100 pixel).

        Args:
            images: (3, H, W) uint8 RGB tensors; images of the same size run as one batch.

        Returns:
            one list of :class:`Face` per image (empty when none was found).
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[tuple(image.shape[-2:])].append(i)
        found: list[list[Face]] = [[] for _ in images]
        for (height, width), members in groups.items():
            batch = torch.stack([images[i] for i in members])
            shrink = min(1.0, DETECT_SIDE / min(height, width))
            if shrink < 1.0:
                size = [round(height * shrink), round(width * shrink)]
                batch = F.resize(batch, size, antialias=True)
            for i, faces in zip(members, self._detect_batch(batch, height, width)):
                found[i] = [_rounded(_rescale(face, batch.shape[-1] / width,
                                              batch.shape[-2] / height)) for face in faces]
        return found

    def _detect_batch(self, batch: torch.Tensor, height: int, width: int
                      ) -> list[list[Face]]:
        """(B, 3, h, w) uint8 -> faces per image, in the pixels of ``batch``."""
        minsize = self.min_face_pixels(height, width) * batch.shape[-1] / width
        boxes, points = self._detect_face(
            batch.permute(0, 2, 3, 1).to(self.device), max(minsize, MIN_FACE_PIXELS),
            *self.nets, list(THRESHOLDS), PYRAMID_FACTOR, self.device)
        out = []
        for image_boxes, image_points in zip(boxes, points):
            faces = [Face(np.asarray(b[:4], dtype=np.float64), float(b[4]),
                          np.asarray(p, dtype=np.float64).reshape(5, 2))
                     for b, p in zip(image_boxes, image_points)]
            out.append(sorted(faces, key=lambda f: -f.score))
        return out


def _rounded(face: Face) -> Face:
    """``face`` to 1/100 pixel: what align.jsonl records, so a transform fitted to it is the
    same whatever float noise the thread count adds to the networks."""
    return Face(np.round(face.box, 2), round(face.score, 5), np.round(face.landmarks, 2))


def _rescale(face: Face, fx: float, fy: float) -> Face:
    """``face`` found on an image resized by ``fx, fy`` in the original's pixels."""
    if fx == 1.0 and fy == 1.0:
        return face
    scale = np.array([fx, fy])
    box = (face.box.reshape(2, 2) + 0.5) / scale - 0.5
    return Face(box.reshape(4), face.score, (face.landmarks + 0.5) / scale - 0.5)


def load_detector(method: str = "mtcnn", min_face: float = 0.1) -> Detector:
    """The detector of an alignment ``method`` (only ``mtcnn``).

    Raises:
        UserError: another method, or the ``align`` extra is not installed (one line).
    """
    if method != "mtcnn":
        raise UserError(f"unknown face detector {method!r}; the one available is 'mtcnn'")
    return Detector(min_face=min_face)


@functools.cache
def shared_detector(method: str, min_face: float) -> Detector:
    """One detector per process and setting, for code that aligns image by image (the
    decoded-cache build in each DataLoader worker, the deploy commands)."""
    return load_detector(method, min_face)
