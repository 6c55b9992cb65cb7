"""``facetrip export``: a checkpoint -> one model file (a format of :data:`FORMATS`) plus one
JSON sidecar (:mod:`facetrip.deploy.sidecar`), checked for parity before anything is written.

A shared core (:func:`export_model`: load the checkpoint, describe it, check parity,
calibrate, write both files atomically) around one function per format, each turning the
checkpoint into the file's bytes, what the file takes, and a way to embed images with those
bytes. A new format is one such function and one entry in :data:`FORMATS`.

Parity: the exported model runs on a batch of images (:mod:`facetrip.deploy.parity`: the
run's own when its dataset is there, else seeded synthetic ones) next to the checkpoint with
facetrip's own preprocessing; the export fails, writing nothing, when the embeddings differ by
more than :data:`PARITY_LIMIT` anywhere. The figure is returned (and printed by the CLI)
either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

from facetrip.config import Config
from facetrip.data.transforms import Normalize, Preprocess, Preprocessing
from facetrip.deploy.calibration import calibrate, find_calibration
from facetrip.deploy.parity import by_size, parity_images, reference_embeddings, source_size
from facetrip.deploy.sidecar import describe_model, sidecar_path
from facetrip.errors import UserError
from facetrip.io import atomic_write
from facetrip.model import EmbeddingNet

PARITY_LIMIT = 1e-4
DEFAULT_FORMAT = "torchscript"


@dataclass(frozen=True)
class ExportOptions:
    """How to export, besides which checkpoint and where to.

    Attributes:
        format: a key of :data:`FORMATS`; None: from the output's suffix, else torchscript.
        calibration: ``facetrip eval``'s metrics.json of the checkpoint; without it, and with
            ``auto_calibration``, ``eval/metrics.json`` beside the checkpoint when it
            evaluates this checkpoint.
        onnx_input: ``uint8`` (whole preprocessing in the graph) or ``float``.
        onnx_source_size: ``(H, W)`` of the ONNX ``uint8`` input and of the torch.export
            program's input; default the most common size of the run's images, else the
            model input size.
        device: where calibration embeds its images.
    """

    format: str | None = None
    calibration: Path | None = None
    auto_calibration: bool = True
    onnx_input: str = "uint8"
    onnx_source_size: tuple[int, int] | None = None
    device: str | torch.device = "cpu"


@dataclass(frozen=True)
class ExportSource:
    """The checkpoint being exported: its network (CPU, eval mode), run config and
    preprocessing (``pre`` then normalisation by ``mean``/``std``)."""

    path: Path
    model: EmbeddingNet
    cfg: Config
    pre: Preprocess
    mean: Sequence[float]
    std: Sequence[float]

    @classmethod
    def load(cls, checkpoint: str | Path) -> ExportSource:
        from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(checkpoint)
        model, cfg = model_from_checkpoint(ckpt)
        return cls(Path(checkpoint), model.cpu().eval(), cfg,
                   Preprocessing.from_checkpoint(ckpt, cfg.data).crop, cfg.data.mean,
                   cfg.data.std)

    @property
    def graph_pre(self) -> Preprocess:
        """What the exported file does itself: ``pre`` without the alignment (a model trained
        on aligned crops is fed aligned crops: ``facetrip.align``; the sidecar says which)."""
        return self.pre.with_align(None)


@dataclass(frozen=True)
class Exported:
    """What a format function made of a checkpoint (nothing written yet).

    Attributes:
        data: the file's bytes.
        input: what the file takes (the sidecar's ``input``).
        embed: ``embed(uint8 (3, H, W) images) -> (N, D)``, running ``data`` (for parity).
        sidecar: fields the format adds to the sidecar (ONNX: ``onnx``).
        image_size: ``(H, W)`` the file takes images of, or None (any size).
    """

    data: bytes
    input: str
    embed: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    sidecar: dict = field(default_factory=dict)
    image_size: tuple[int, int] | None = None


# --------------------------------------------------------------------------- the formats


@torch.inference_mode()
def _torchscript_embeddings(data: bytes, images: Sequence[torch.Tensor]) -> torch.Tensor:
    from facetrip.deploy.torchscript import load_torchscript

    module = load_torchscript(data)
    out = [torch.empty(0)] * len(images)
    for idx, batch in by_size(images):
        for i, e in zip(idx, module.embed(batch), strict=True):
            out[i] = e
    return torch.stack(out)


def export_torchscript(src: ExportSource, options: ExportOptions, meta: dict) -> Exported:
    """The TorchScript module (:mod:`facetrip.deploy.torchscript`): network + preprocessing."""
    from facetrip.deploy.torchscript import torchscript_bytes

    data = torchscript_bytes(src.model, src.graph_pre, src.mean, src.std)
    return Exported(
        data,
        "module(x): float32 RGB (B, 3, S, S), values in [0, 1] then (x - mean) / std; "
        "module.preprocess(uint8 (B, 3, H, W)) does the run's whole preprocessing, "
        "module.embed(uint8 (B, 3, H, W)) both",
        partial(_torchscript_embeddings, data))


def _onnx_embeddings(data: bytes, info: dict, src: ExportSource,
                     images: Sequence[torch.Tensor]) -> torch.Tensor:
    from facetrip.deploy.onnx_export import onnx_session

    if info["input_dtype"] == "uint8":
        batch = torch.stack(list(images)).numpy()
    else:
        batch = Normalize(src.mean, src.std)(torch.stack([src.graph_pre(img)
                                                          for img in images]))
        batch = batch.numpy()
    return torch.from_numpy(onnx_session(data).run(None, {info["input_name"]: batch})[0])


def _aligned_side(src: ExportSource) -> tuple[int, int] | None:
    """The input size of a fixed-size graph of a model trained on aligned crops: the aligned
    crop's side (its inputs are aligned crops); None for other models."""
    return (src.pre.align.size,) * 2 if src.pre.align else None


def export_onnx(src: ExportSource, options: ExportOptions, meta: dict) -> Exported:
    """An ONNX graph (:mod:`facetrip.deploy.onnx_export`, the ``onnx`` extra), ``uint8``
    input at one source size (the whole preprocessing inside) or normalised ``float``."""
    from facetrip.deploy.onnx_export import onnx_bytes

    size = None
    if options.onnx_input == "uint8":  # aligned models take the aligned crops
        size = tuple(options.onnx_source_size or _aligned_side(src)
                     or source_size(src.cfg.data.root, src.pre.size))
    data, info = onnx_bytes(src.model, src.graph_pre, src.mean, src.std, options.onnx_input,
                            size)
    if info["input_dtype"] == "uint8":
        h, w = info["input_shape"][2:]
        described = (f"'{info['input_name']}': uint8 RGB (batch, 3, {h}, {w}); the graph does "
                     "the run's whole preprocessing (crop, resize, grey, normalise)")
    else:
        described = (f"'{info['input_name']}': float32 RGB (batch, 3, S, S), values in [0, 1] "
                     "then (x - mean) / std")
    return Exported(data, described, partial(_onnx_embeddings, data, info, src),
                    {"onnx": info}, size)


def _safetensors_embeddings(data: bytes, src: ExportSource,
                            images: Sequence[torch.Tensor]) -> torch.Tensor:
    from facetrip.deploy.safetensors_io import model_from_safetensors

    loaded, _ = model_from_safetensors(data)
    original = src.model.state_dict()
    for key, value in loaded.state_dict().items():
        if not torch.equal(value, original[key]) or value.dtype != original[key].dtype:
            raise UserError(f"safetensors round trip changed {key}: nothing written")
    return reference_embeddings(loaded, src.graph_pre, src.mean, src.std, images)


def export_safetensors(src: ExportSource, options: ExportOptions, meta: dict) -> Exported:
    """The weights, bit for bit, with ``meta`` (model spec, preprocessing) in the header
    (:mod:`facetrip.deploy.safetensors_io`)."""
    from facetrip.deploy.safetensors_io import safetensors_bytes

    data = safetensors_bytes(src.model, meta)
    return Exported(
        data, "weights only: facetrip.load_model(path) -> EmbeddingNet taking what forward does",
        partial(_safetensors_embeddings, data, src))


def export_program(src: ExportSource, options: ExportOptions, meta: dict) -> Exported:
    """A torch.export ExportedProgram (:mod:`facetrip.deploy.export_program`): ``uint8``
    input at one source size, the whole preprocessing inside, a dynamic batch axis."""
    from facetrip.deploy.export_program import program_bytes, program_embeddings

    size = tuple(options.onnx_source_size or _aligned_side(src)
                 or source_size(src.cfg.data.root, src.pre.size))
    data, info = program_bytes(src.model, src.graph_pre, src.mean, src.std, size)
    h, w = size
    return Exported(
        data,
        f"torch.export.load(path).module()(images): uint8 RGB (batch, 3, {h}, {w}); the "
        "program does the run's whole preprocessing (crop, resize, grey, normalise)",
        partial(program_embeddings, data), {"export": info}, size)


@dataclass(frozen=True)
class Format:
    """An export format: the suffix of its files and the function that makes them."""

    suffix: str
    export: Callable[[ExportSource, ExportOptions, dict], Exported]


#: every export format, by its ``--format`` name
FORMATS: dict[str, Format] = {
    "torchscript": Format(".pt", export_torchscript),
    "onnx": Format(".onnx", export_onnx),
    "safetensors": Format(".safetensors", export_safetensors),
    "export": Format(".pt2", export_program),
}


def format_of(out: str | Path) -> str:
    """The format a file name asks for (by its suffix); :data:`DEFAULT_FORMAT` otherwise."""
    suffix = Path(out).suffix
    return next((name for name, f in FORMATS.items() if f.suffix == suffix), DEFAULT_FORMAT)


# --------------------------------------------------------------------------- the shared core


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: Path
    sidecar: Path
    format: str
    parity: dict  #: {"max_abs_diff", "images", "source", "limit"}
    calibration: dict | None
    notes: list[str] = field(default_factory=list)  #: e.g. where the calibration came from


def check_parity(src: ExportSource, exported: Exported, fmt: str) -> dict:
    """``{"max_abs_diff", "images", "source", "limit"}`` of the exported file against the
    checkpoint on :func:`~facetrip.deploy.parity.parity_images`.

    Raises:
        UserError: the difference is above :data:`PARITY_LIMIT` (or not a number).
    """
    images, origin = parity_images(src.cfg.data.root, src.pre.size, exported.image_size,
                                   src.pre.align)
    expected = reference_embeddings(src.model, src.graph_pre, src.mean, src.std, images)
    diff = float((exported.embed(images).float() - expected).abs().max())
    if not diff <= PARITY_LIMIT:  # also catches NaN
        raise UserError(f"parity check failed: the {fmt} model's embeddings differ from the "
                        f"checkpoint's by up to {diff:.3g} (limit {PARITY_LIMIT:g}) on "
                        f"{len(images)} {origin}; nothing written")
    return {"max_abs_diff": diff, "images": len(images), "source": origin, "limit": PARITY_LIMIT}


def _calibration(src: ExportSource, options: ExportOptions,
                 progress: Callable[[int], None] | None) -> tuple[dict | None, list[str]]:
    """``(the sidecar's calibration or None, notes on where it came from)``."""
    path, notes = options.calibration, []
    if path is None and options.auto_calibration:
        path, why = find_calibration(src.path)
        notes.append(why)
    if path is None:
        return None, notes
    return calibrate(path, src.model, src.cfg, src.path, options.device,
                     progress=progress), notes


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    options: ExportOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Export the network of ``checkpoint`` (``best.pt``) to ``out`` with its sidecar
    (``out`` + ``.json``), as ``options`` say.

    ``progress(n)`` per batch of calibration images embedded.

    Raises:
        UserError: bad checkpoint, format or calibration; the ONNX extra missing; parity
            above :data:`PARITY_LIMIT` (then nothing is written).
    """
    options, out = options or ExportOptions(), Path(out)
    fmt = options.format or format_of(out)
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    src = ExportSource.load(checkpoint)
    meta = describe_model(fmt, src.model, src.pre, src.mean, src.std, src.cfg.eval.metric)
    exported = FORMATS[fmt].export(src, options, meta)
    parity = check_parity(src, exported, fmt)
    calib, notes = _calibration(src, options, progress)
    if calib is not None:
        meta["distance"] = calib["distance"]
    aligned = ("; inputs are aligned face crops (facetrip.align(images), or facetrip's own "
               "commands, which align each photo)") if src.pre.align else ""
    meta.update(
        input=exported.input + aligned,
        file_sha256=hashlib.sha256(exported.data).hexdigest(),
        parity=parity,
        calibration=calib,
        checkpoint=str(checkpoint),
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **exported.sidecar,
    )
    atomic_write(out, exported.data)
    sidecar = atomic_write(sidecar_path(out), json.dumps(meta, indent=2) + "\n")
    return ExportResult(out, sidecar, fmt, parity, calib, notes)
