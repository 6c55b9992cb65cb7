"""Export a trained model as a TorchScript file that runs without facetrip, plus a JSON sidecar."""

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from facetrip.data.crop import crop_region
from facetrip.data.transforms import GREY_WEIGHTS, Normalize, Preprocess
from facetrip.io import atomic_write
from facetrip.model import EmbeddingNet


class ExportedEmbedder(nn.Module):
    """The deployable module.

    ``forward(images)``: ``(B, 3, S, S)`` float images already normalised with the sidecar's
    mean/std -> ``(B, D)`` L2-normalised embeddings.
    ``preprocess(images)``: ``(B, 3, H, W)`` uint8 RGB -> the normalised ``(B, 3, S, S)`` input,
    the same steps as facetrip's own :class:`~facetrip.data.transforms.Preprocess` (face box or
    centre crop, antialiased bilinear resize to 8 bits, optional grey, normalise), so a
    caller needs nothing but torch and a decoded image.
    """

    crop_box: list[float]  # TorchScript needs the element type of a possibly empty list
    grey_weights: list[float]

    def __init__(self, model: EmbeddingNet, preprocess: Preprocess, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        self.net = model
        self.image_size = preprocess.size
        self.crop_fraction = preprocess.crop_fraction
        self.crop_box = list(preprocess.crop_box or [])  # [] = centre crop
        self.grayscale = preprocess.grayscale
        self.grey_weights = list(GREY_WEIGHTS)
        self.normalize = Normalize(mean, std)  # the training path's own arithmetic

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @torch.jit.export
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        top, left, h, w = crop_region(images.shape[-2], images.shape[-1],
                                      self.crop_fraction, self.crop_box)
        x = images[:, :, top : top + h, left : left + w]
        size = [self.image_size, self.image_size]
        if h != self.image_size or w != self.image_size:
            if x.device.type == "cpu":  # torch's native uint8 kernel, as torchvision uses
                x = nn.functional.interpolate(x, size=size, mode="bilinear",
                                              align_corners=False, antialias=True)
            else:  # no uint8 kernel: float, rounded back to 8 bits
                x = nn.functional.interpolate(x.float(), size=size, mode="bilinear",
                                              align_corners=False, antialias=True)
                x = x.round().clamp(0.0, 255.0)
        if self.grayscale:  # ITU-R 601 luma truncated to 8 bits, as torchvision
            r, g, b = self.grey_weights[0], self.grey_weights[1], self.grey_weights[2]
            f = x.float()
            grey = f[:, 0:1] * r + f[:, 1:2] * g + f[:, 2:3] * b
            x = grey.trunc().expand(-1, 3, -1, -1)
        return self.normalize(x)


def export_torchscript(
    model: EmbeddingNet,
    out: str | Path,
    preprocess: Preprocess,
    mean: Sequence[float],
    std: Sequence[float],
    extra: dict | None = None,
) -> tuple[Path, Path]:
    """Script ``model`` (on CPU, eval mode) to ``out`` and write ``out`` + ``.json`` beside it.

    ``preprocess`` and ``mean``/``std`` are the training run's; they become the module's
    ``preprocess`` method and the sidecar's fields (input size, crop, grey, mean/std, embedding
    dimension, model spec, ``extra``). Returns ``(model_path, sidecar_path)``. Both files are
    written atomically.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = ExportedEmbedder(model.cpu().eval(), preprocess, mean, std).eval()
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; it still works
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(module)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    atomic_write(out, buffer.getvalue())
    meta = {
        "format": "torchscript",
        "input": "float32 RGB (B, 3, S, S), values in [0, 1] then (x - mean) / std; "
                 "module.preprocess(uint8 (B, 3, H, W)) does every step",
        "input_size": preprocess.size,
        "crop_fraction": preprocess.crop_fraction,
        "crop_box": list(preprocess.crop_box) if preprocess.crop_box is not None else None,
        "grayscale": preprocess.grayscale,
        "mean": list(mean),
        "std": list(std),
        "embedding_dim": model.spec.embedding_dim,
        "normalized_output": True,
        "model_spec": model.spec.to_dict(),
        **(extra or {}),
    }
    sidecar = atomic_write(out.with_suffix(out.suffix + ".json"), json.dumps(meta, indent=2) + "\n")
    return out, sidecar
