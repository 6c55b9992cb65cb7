"""One interface to every model file facetrip reads: a training checkpoint, or a TorchScript,
ONNX or safetensors export (with its sidecar). ``embed``, ``verify``, ``enroll`` and
``identify`` use nothing else, so an exported file alone is enough to run them.

An :class:`Embedder` decodes an image file with the model's own preprocessing
(:attr:`Embedder.loader`, picklable for DataLoader workers) and embeds a batch of those
decoded images (:meth:`Embedder.embed`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facetrip.alignment.crop import AlignSpec, folder_alignment
from facetrip.data.decode import ImageError, decode_rgb
from facetrip.data.transforms import (
    Normalize,
    Preprocess,
    Preprocessing,
    choose_align,
)
from facetrip.deploy.calibration import checkpoint_calibration
from facetrip.deploy.sidecar import describe_model, preprocess_from_sidecar, read_sidecar
from facetrip.errors import UserError


@dataclass(frozen=True)
class SourceSizeLoader:
    """Decodes an image for a model whose graph does the whole preprocessing at one input size
    (ONNX with ``uint8`` input, torch.export). ``load(path) -> uint8 (3, H, W)``; an image of
    another size is refused (an :class:`ImageError`, so ``embed`` skips and lists it). With
    ``align``, the aligned crop is resized to that size instead (an aligned model's graph
    takes aligned crops)."""

    height: int
    width: int
    kind: str = "ONNX"
    align: AlignSpec | None = None

    def load(self, path: str | Path) -> torch.Tensor:
        image = decode_rgb(path)
        if self.align is not None:
            from torchvision.transforms.v2 import functional as F

            crop = Preprocess(self.align.size, align=self.align)(image)
            return F.resize(crop, [self.height, self.width], antialias=True)
        if tuple(image.shape[-2:]) != (self.height, self.width):
            raise ImageError("wrong size", f"{image.shape[-1]}x{image.shape[-2]}; this {self.kind} "
                             f"model takes {self.width}x{self.height} (export it as "
                             "TorchScript, or ONNX with --input float, for any size)")
        return image


@dataclass
class Embedder:
    """A loaded model of any kind.

    Attributes:
        path: the model file.
        kind: ``checkpoint``, ``torchscript``, ``onnx``, ``safetensors`` or ``export``
            (torch.export).
        meta: the sidecar (or, for a checkpoint, the same fields derived from it).
        loader: ``loader.load(path) -> uint8 (3, h, w)``, the model's decoding and
            preprocessing (:class:`~facetrip.data.transforms.Preprocess` or
            :class:`SourceSizeLoader`); raises :class:`~facetrip.data.decode.ImageError`.
        device: where the network runs (ONNX: always the CPU).
    """

    path: Path
    kind: str
    meta: dict
    loader: Any
    device: torch.device
    _forward: Callable[[torch.Tensor], torch.Tensor]

    @property
    def fingerprint(self) -> str:
        """Weights + preprocessing: equal for a checkpoint and every export of it."""
        return self.meta["fingerprint"]

    @property
    def distance(self) -> str:
        """``euclidean`` or ``cosine``: what the calibration measured."""
        return self.meta["distance"]

    @property
    def calibration(self) -> dict | None:
        return self.meta.get("calibration")

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    @property
    def align(self) -> AlignSpec | None:
        """The alignment its :attr:`loader` applies (``None``: inputs taken as crops)."""
        return self.loader.align

    def aligned(self, align: bool | None) -> Embedder:
        """This model with inputs aligned as recorded (``None``), not at all (``False``,
        ``--no-align``: already aligned crops) or always (``True``, ``--align``)."""
        spec = choose_align(self.align, align)
        return self if spec == self.align else replace(self,
                                                       loader=replace(self.loader, align=spec))

    def for_images(self, root: str | Path, align: bool | None = None) -> Embedder:
        """For the images under ``root``: ``align`` as given (``--align``/``--no-align``);
        by default as the model records, except that the crops of a ``facetrip align`` output
        folder are not aligned again."""
        if align is None and folder_alignment(root) is not None:
            align = False
        return self.aligned(align)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 (B, 3, h, w)`` from :attr:`loader` -> ``float32 (B, D)`` unit-norm
        embeddings on the CPU (no autograd)."""
        with torch.inference_mode():
            return self._forward(images).float().cpu()

    def embed_files(self, paths: list[Path]) -> np.ndarray:
        """``(N, D)`` embeddings of image files (UserError naming a file that is unusable)."""
        images = []
        for path in paths:
            if not Path(path).is_file():
                raise UserError(f"image not found: {path}")
            try:
                images.append(self.loader.load(path))
            except ImageError as exc:
                raise UserError(f"{path}: {exc}") from None
        out = []
        for image in images:  # one at a time: images may differ in size (ONNX uint8 input)
            out.append(self.embed(image[None]).numpy())
        return np.concatenate(out)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold code (``*/code/``); ``torch.save`` checkpoints do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _checkpoint_embedder(path: Path, device: torch.device) -> Embedder:
    from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(path)
    model, cfg = model_from_checkpoint(ckpt, device)
    pre, mean, std = Preprocessing.from_checkpoint(ckpt, cfg.data).crop, cfg.data.mean, cfg.data.std
    calibration = checkpoint_calibration(path)
    distance = calibration["distance"] if calibration else cfg.eval.metric
    meta = {**describe_model("checkpoint", model, pre, mean, std, distance),
            "calibration": calibration}
    return Embedder(path, "checkpoint", meta, pre, device,
                    _network(model, mean, std, device, cfg.train.channels_last))


def _network(model: torch.nn.Module, mean, std, device: torch.device,
             channels_last: bool = True):
    """``uint8 (B, 3, S, S)`` -> ``(B, D)`` through ``model``: normalised on ``device``, in
    channels-last memory format (as training runs by default; ~1.5x faster on CPU)."""
    normalize = Normalize(mean, std).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model(normalize(images.to(device)).contiguous(memory_format=layout))

    return forward


def load_embedder(path: str | Path, device: str | torch.device = "cpu",
                  align: bool | None = None) -> Embedder:
    """Load any model file facetrip makes (by suffix: ``.pt2``, ``.onnx``, ``.safetensors``;
    otherwise a TorchScript export or a training checkpoint, told apart by content). A model
    trained on aligned crops detects and aligns each input (``align``: see
    :meth:`Embedder.aligned`).

    Exported files are checked against their sidecar (format and sha256), so a sidecar of
    another file is refused.

    Raises:
        UserError: the file is missing or unreadable, or its sidecar is missing or does not
            match it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    return _load_embedder(path, torch.device(device)).aligned(align)


def _load_embedder(path: Path, device: torch.device) -> Embedder:
    if path.suffix == ".onnx":
        return _onnx_embedder(path, read_sidecar(path, "onnx"))
    if path.suffix == ".pt2":
        return _program_embedder(path, read_sidecar(path, "export"))
    if path.suffix == ".safetensors":
        from facetrip.deploy.safetensors_io import model_from_safetensors

        meta = read_sidecar(path, "safetensors")
        model, _ = model_from_safetensors(path, device)
        return Embedder(path, "safetensors", meta, preprocess_from_sidecar(meta), device,
                        _network(model, meta["mean"], meta["std"], device))
    if _is_torchscript(path):
        from facetrip.deploy.torchscript import load_torchscript

        meta = read_sidecar(path, "torchscript")
        module = load_torchscript(path, device)

        def forward(images: torch.Tensor) -> torch.Tensor:
            return module.embed_preprocessed(images.to(device))

        return Embedder(path, "torchscript", meta, preprocess_from_sidecar(meta), device,
                        forward)
    return _checkpoint_embedder(path, device)


def _onnx_embedder(path: Path, meta: dict) -> Embedder:
    from facetrip.deploy.onnx_export import onnx_session

    session = onnx_session(str(path))
    info = meta["onnx"]
    name = info["input_name"]
    if info["input_dtype"] == "uint8":
        align = Preprocessing.from_fields(meta).crop.align
        loader: Any = SourceSizeLoader(*info["input_shape"][2:], align=align)

        def forward(images: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: images.cpu().numpy()})[0])
    else:
        loader = preprocess_from_sidecar(meta)
        normalize = Normalize(meta["mean"], meta["std"])

        def forward(images: torch.Tensor) -> torch.Tensor:
            x = normalize(images.cpu()).numpy()
            return torch.from_numpy(session.run(None, {name: x})[0])

    return Embedder(path, "onnx", meta, loader, torch.device("cpu"), forward)


def _program_embedder(path: Path, meta: dict) -> Embedder:
    """A torch.export program: ``uint8`` images of its input size, run on the CPU (where it
    was exported; its resize is torch's ``uint8`` CPU kernel)."""
    from facetrip.deploy.export_program import load_program

    module = load_program(path)
    loader = SourceSizeLoader(*meta["export"]["input_shape"][2:], kind="torch.export",
                              align=Preprocessing.from_fields(meta).crop.align)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return module(images.cpu())

    return Embedder(path, "export", meta, loader, torch.device("cpu"), forward)
