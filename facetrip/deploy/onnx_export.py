"""ONNX export (the ``onnx`` extra: onnx, onnxruntime, onnxscript) and running ONNX files.

The graph has a dynamic batch axis and one of two inputs:

* ``images``: ``uint8 (batch, 3, H, W)`` RGB at a fixed source size ``H x W`` (the run's
  image size by default): the graph does the run's whole preprocessing, the face crop, the
  antialiased resize to 8 bits (as two fixed-point matrix products giving exactly torch's
  pixels, see :mod:`facetrip.deploy.resize`), grey, normalisation;
* ``input``: ``float32 (batch, 3, S, S)`` already preprocessed and normalised.

The output ``embeddings`` is ``float32 (batch, D)``, unit norm.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from facetrip.data.crop import crop_region
from facetrip.data.transforms import GREY_WEIGHTS, Normalize, Preprocess
from facetrip.deploy.resize import resize_weights
from facetrip.errors import UserError
from facetrip.model import EmbeddingNet

OPSET = 18
INPUTS = ("uint8", "float")
EXTRA_HINT = "pip install 'facetrip[onnx]'"


def require_onnx() -> Any:
    """The ``onnxruntime`` module; UserError naming the ``onnx`` extra when it is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter)
    except ImportError as exc:
        raise UserError(f"ONNX needs the onnx extra ({exc.name} is not installed): "
                        f"{EXTRA_HINT}") from None
    return onnxruntime


class _Resize(nn.Module):
    """One axis of torch's uint8 antialiased resize: ``float64`` pixel values in, float64
    ``0..255`` integers out."""

    def __init__(self, n_in: int, n_out: int, axis: int) -> None:
        super().__init__()
        matrix, precision = resize_weights(n_in, n_out)
        weights = torch.from_numpy(matrix.astype(np.float64))
        self.axis = axis  # -1: columns (x @ W^T), -2: rows (W @ x)
        self.register_buffer("weights", weights.T.contiguous() if axis == -1 else weights)
        self.half = float(1 << (precision - 1)) if precision > 0 else 0.0
        self.scale = float(1 << precision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weights if self.axis == -1 else self.weights @ x
        return torch.floor((x + self.half) / self.scale).clamp(0.0, 255.0)


class OnnxEmbedder(nn.Module):
    """What the ONNX graph computes (a torch module, exported by ``torch.onnx``).

    ``forward(images)``: ``uint8 (B, 3, H, W)`` at the source size -> ``(B, D)`` embeddings
    (``input_kind="uint8"``), or normalised ``float32 (B, 3, S, S)`` -> ``(B, D)``
    (``input_kind="float"``).
    """

    def __init__(self, model: EmbeddingNet, pre: Preprocess, mean: Sequence[float],
                 std: Sequence[float], input_kind: str, source_size: tuple[int, int]) -> None:
        super().__init__()
        self.net, self.input_kind = model, input_kind
        height, width = source_size
        self.top, self.left, self.h, self.w = crop_region(height, width, pre.crop_fraction,
                                                          list(pre.crop_box or []))
        self.resize_w = _Resize(self.w, pre.size, -1) if self.w != pre.size else None
        self.resize_h = _Resize(self.h, pre.size, -2) if self.h != pre.size else None
        self.grayscale = pre.grayscale
        self.normalize = Normalize(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "float":
            return self.net(images)
        x = images[:, :, self.top : self.top + self.h, self.left : self.left + self.w]
        x = x.to(torch.float64)
        if self.resize_w is not None:  # horizontal first, as torch
            x = self.resize_w(x)
        if self.resize_h is not None:
            x = self.resize_h(x)
        x = x.to(torch.float32)
        if self.grayscale:  # ITU-R 601 luma truncated to 8 bits, as torchvision
            r, g, b = GREY_WEIGHTS
            x = (x[:, 0:1] * r + x[:, 1:2] * g + x[:, 2:3] * b).trunc().expand(-1, 3, -1, -1)
        return self.net(self.normalize(x))


def onnx_bytes(model: EmbeddingNet, pre: Preprocess, mean: Sequence[float],
               std: Sequence[float], input_kind: str = "uint8",
               source_size: tuple[int, int] | None = None) -> tuple[bytes, dict]:
    """``(the ONNX file's bytes, its sidecar block)`` of ``model`` on the CPU.

    ``source_size = (H, W)`` of the ``uint8`` input (default ``(S, S)``). The sidecar block
    holds ``opset``, ``input_name``, ``input_dtype``, ``input_shape`` (``"batch"`` for the
    dynamic axis), ``output_name`` and the onnx / onnxruntime versions.
    """
    require_onnx()
    import onnx
    import onnxruntime

    if input_kind not in INPUTS:
        raise UserError(f"ONNX input must be one of {', '.join(INPUTS)}, got {input_kind!r}")
    height, width = source_size or (pre.size, pre.size)
    module = OnnxEmbedder(model.cpu().eval(), pre, mean, std, input_kind, (height, width))
    module.eval()
    if input_kind == "uint8":
        name, shape = "images", [2, 3, height, width]
        example = torch.zeros(shape, dtype=torch.uint8)
    else:
        name, shape = "input", [2, 3, pre.size, pre.size]
        example = torch.zeros(shape, dtype=torch.float32)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, dynamic shapes)
        program = torch.onnx.export(
            module, (example,), input_names=[name], output_names=["embeddings"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, opset_version=OPSET,
            dynamo=True, verbose=False,
        )
    proto = program.model_proto
    info = {
        "opset": OPSET,
        "input_name": name,
        "input_dtype": "uint8" if input_kind == "uint8" else "float32",
        "input_shape": ["batch", *shape[1:]],
        "output_name": "embeddings",
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
    return proto.SerializeToString(), info


def onnx_session(source: str | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for a file path or the file's bytes (``threads``: intra-op
    threads, default torch's)."""
    ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(source, sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load ONNX model: {first}") from None
