"""Export a trained model as a TorchScript file that runs without facetrip, plus a JSON sidecar."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from facetrip.model import EmbeddingNet


class ExportedEmbedder(nn.Module):
    """The deployable module.

    ``forward(images)``: ``(B, 3, S, S)`` float images already normalised with the sidecar's
    mean/std -> ``(B, D)`` L2-normalised embeddings.
    ``preprocess(images)``: ``(B, 3, H, W)`` uint8 RGB -> the normalised ``(B, 3, S, S)`` input
    (centre crop by ``crop_fraction``, bilinear antialiased resize, normalise), so a caller needs
    nothing but torch.
    """

    def __init__(self, model: EmbeddingNet, image_size: int, mean: list[float],
                 std: list[float], crop_fraction: float) -> None:
        super().__init__()
        self.net = model
        self.image_size = image_size
        self.crop_fraction = crop_fraction
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @torch.jit.export
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        h, w = x.shape[-2], x.shape[-1]
        side = max(1, int(round(min(h, w) * self.crop_fraction)))
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, :, top : top + side, left : left + side]
        x = nn.functional.interpolate(x, size=[self.image_size, self.image_size],
                                      mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


def export_torchscript(
    model: EmbeddingNet,
    out: str | Path,
    image_size: int,
    mean: list[float],
    std: list[float],
    crop_fraction: float = 1.0,
    extra: dict | None = None,
) -> tuple[Path, Path]:
    """Script ``model`` (on CPU, eval mode) to ``out`` and write ``out`` + ``.json`` beside it.

    The sidecar holds input size, mean/std, crop fraction, embedding dimension and ``extra``.
    Returns ``(model_path, sidecar_path)``. Both files are written atomically.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = ExportedEmbedder(model.cpu().eval(), image_size, mean, std, crop_fraction).eval()
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; it still works
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(module)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        os.close(fd)
        try:
            scripted.save(tmp)
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    sidecar = out.with_suffix(out.suffix + ".json")
    meta = {
        "format": "torchscript",
        "input": "float32 RGB (B, 3, S, S), values in [0, 1] then (x - mean) / std",
        "input_size": image_size,
        "mean": list(mean),
        "std": list(std),
        "crop_fraction": crop_fraction,
        "embedding_dim": model.spec.embedding_dim,
        "normalized_output": True,
        "model_spec": model.spec.to_dict(),
        **(extra or {}),
    }
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return out, sidecar
