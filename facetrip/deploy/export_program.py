"""``torch.export`` (``--format export``, ``.pt2``): the network and facetrip's preprocessing as
one ExportedProgram, the format torch supports going forward (TorchScript is deprecated).

The program takes ``uint8 (batch, 3, H, W)`` RGB images at one source size ``H x W`` (the
run's most common image size by default) with a dynamic batch axis, and does what facetrip
does to them: the face crop, torch's antialiased bilinear resize to 8 bits (the kernel
torchvision's ``resize`` uses), grey, normalisation, the network. Out comes ``float32
(batch, D)``, unit norm. The steps are
:class:`~facetrip.deploy.torchscript.ExportedEmbedder`'s, the TorchScript module's, traced at
that source size, so the two formats cannot drift apart.

Loading needs nothing of facetrip: ``torch.export.load("model.pt2").module()(images)``.
(The crop's arithmetic rounds, so a symbolic image size would specialise: the size is fixed.)
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from facetrip.data.transforms import Preprocess
from facetrip.deploy.torchscript import ExportedEmbedder
from facetrip.errors import UserError
from facetrip.model import EmbeddingNet

EXAMPLE_BATCH = 2  #: the batch size the program is traced with (any size runs)


class _Embed(nn.Module):
    """``uint8 (B, 3, H, W) -> (B, D)``: :meth:`ExportedEmbedder.embed` as ``forward``."""

    def __init__(self, inner: ExportedEmbedder) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(images)


def program_bytes(model: EmbeddingNet, pre: Preprocess, mean: Sequence[float],
                  std: Sequence[float], source_size: tuple[int, int]) -> tuple[bytes, dict]:
    """``(the .pt2 file's bytes, its sidecar block)``: ``model`` with the preprocessing of
    ``uint8`` images of ``source_size = (H, W)``, exported on the CPU with a dynamic batch.

    The sidecar block holds ``input_dtype``, ``input_shape`` (``"batch"`` for the dynamic
    axis), ``torch_version``.
    """
    height, width = source_size
    module = _Embed(ExportedEmbedder(model.cpu().eval(), pre, mean, std)).eval()
    example = torch.zeros(EXAMPLE_BATCH, 3, height, width, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter notes on specialised dimensions
        program = torch.export.export(module, (example,),
                                      dynamic_shapes={"images": {0: batch}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    info = {"input_dtype": "uint8", "input_shape": ["batch", 3, height, width],
            "torch_version": torch.__version__}
    return buffer.getvalue(), info


def load_program(source: str | Path | bytes) -> nn.Module:
    """The callable module of a ``.pt2`` file (or its bytes): ``uint8 (B, 3, H, W) -> (B, D)``.

    Raises:
        UserError: the file is not an ExportedProgram torch can load.
    """
    f = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        return torch.export.load(f).module()
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "" if isinstance(source, bytes) else f" {source}"
        raise UserError(f"cannot load torch.export program{where}: {first}") from None


@torch.inference_mode()
def program_embeddings(data: bytes, images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(N, D)`` embeddings of ``uint8 (3, H, W)`` images (all of the program's source size)
    by the program in ``data``, in one batch."""
    return load_program(data)(torch.stack(list(images)))
