"""``facetrip export``: a checkpoint -> TorchScript, ONNX, safetensors or torch.export (``.pt2``),
plus one JSON sidecar
(:mod:`facetrip.deploy.sidecar`), checked for parity before anything is written.

Parity: the exported model runs on a batch of images (the run's own when its dataset is
there, else seeded synthetic ones) next to the checkpoint with facetrip's own preprocessing;
the export fails, writing nothing, when the embeddings differ by more than
:data:`PARITY_LIMIT` anywhere. The figure is returned (and printed by the CLI) either way.

No ``from __future__ import annotations`` here: TorchScript reads the annotations at run time.
"""

import hashlib
import io
import json
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from facetrip.data.crop import crop_region
from facetrip.data.decode import ImageError, decode_rgb, probe_image
from facetrip.data.index import list_dataset
from facetrip.data.transforms import GREY_WEIGHTS, Normalize, Preprocess, preprocess_from_config
from facetrip.deploy.calibration import calibrate, find_calibration
from facetrip.deploy.sidecar import FORMATS, fingerprint, preprocessing, sidecar_path
from facetrip.errors import UserError
from facetrip.io import atomic_write
from facetrip.model import EmbeddingNet
from facetrip.version import __version__

PARITY_LIMIT = 1e-4
PARITY_IMAGES = 16
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "safetensors": ".safetensors",
            "export": ".pt2"}


class ExportedEmbedder(nn.Module):
    """The deployable TorchScript module.

    ``forward(images)``: ``(B, 3, S, S)`` float images already normalised with the sidecar's
    mean/std -> ``(B, D)`` L2-normalised embeddings.
    ``preprocess(images)``: ``(B, 3, H, W)`` uint8 RGB -> the normalised ``(B, 3, S, S)`` input,
    the same steps as facetrip's own :class:`~facetrip.data.transforms.Preprocess` (face box or
    centre crop, antialiased bilinear resize to 8 bits, optional grey, normalise), so a
    caller needs nothing but torch and a decoded image.
    ``embed(images)``: ``(B, 3, H, W)`` uint8 -> ``(B, D)``, both steps.
    ``embed_preprocessed(images)``: uint8 ``(B, 3, S, S)`` face crops already cropped, resized
    (and made grey) as the run's preprocessing does -> ``(B, D)``.
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

    @torch.jit.export
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(images))

    @torch.jit.export
    def embed_preprocessed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


def torchscript_bytes(model: EmbeddingNet, pre: Preprocess, mean: Sequence[float],
                      std: Sequence[float]) -> bytes:
    """The TorchScript file of :class:`ExportedEmbedder` (CPU, eval mode)."""
    module = ExportedEmbedder(model.cpu().eval(), pre, mean, std).eval()
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; it still works
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(module)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def load_torchscript(source: str | Path | bytes,
                     device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load an exported TorchScript module (UserError when it cannot be read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            f = io.BytesIO(source) if isinstance(source, bytes) else str(source)
            return torch.jit.load(f, map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = "" if isinstance(source, bytes) else f" {source}"
            raise UserError(f"cannot load TorchScript model{where}: {first}") from None


# --------------------------------------------------------------------------- parity images


def run_images(root: str | Path | None, n: int = PARITY_IMAGES,
               size: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """Up to ``n`` decoded ``uint8 (3, H, W)`` images of the dataset ``root``, spread over it
    (only those of ``size = (H, W)`` when given); [] when ``root`` is not there."""
    if root is None or not Path(root).is_dir():
        return []
    try:
        files = [f for f in list_dataset(root)[0] if f.identity is not None]
    except UserError:
        return []
    step = max(1, len(files) // (4 * n))
    found: list[torch.Tensor] = []
    for f in files[::step]:
        try:
            image = decode_rgb(Path(root) / f.path)
        except ImageError:
            continue
        if size is None or tuple(image.shape[-2:]) == tuple(size):
            found.append(image)
        if len(found) == n:
            break
    return found


def synthetic_images(n: int, sizes: Sequence[tuple[int, int]],
                     seed: int = 0) -> list[torch.Tensor]:
    """``n`` seeded ``uint8 (3, H, W)`` test images cycling through ``sizes``: smooth
    gradients plus noise, so the crop and resize have structure to preserve."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        coarse = torch.rand(1, 3, 4, 4, generator=gen) * 255
        smooth = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
        noise = torch.randn(3, h, w, generator=gen) * 20
        images.append((smooth + noise).round().clamp(0, 255).to(torch.uint8))
    return images


def source_size(root: str | Path | None, default: int) -> tuple[int, int]:
    """The most common ``(H, W)`` among up to 64 images of the dataset ``root`` (headers
    only); ``(default, default)`` when it is not there."""
    if root is None or not Path(root).is_dir():
        return default, default
    try:
        files = [f for f in list_dataset(root)[0] if f.identity is not None]
    except UserError:
        return default, default
    sizes: Counter = Counter()
    for f in files[:: max(1, len(files) // 64)][:64]:
        try:
            _, width, height = probe_image(Path(root) / f.path)
        except ImageError:
            continue
        sizes[(height, width)] += 1
    return sizes.most_common(1)[0][0] if sizes else (default, default)


@torch.inference_mode()
def reference_embeddings(model: EmbeddingNet, pre: Preprocess, mean: Sequence[float],
                         std: Sequence[float], images: Sequence[torch.Tensor]) -> torch.Tensor:
    """facetrip's own path: :class:`Preprocess` each ``uint8 (3, H, W)`` image, normalise, run
    the network on the CPU -> ``(N, D)``."""
    x = Normalize(mean, std)(torch.stack([pre(img) for img in images]))
    return model.cpu().eval()(x)


def _by_size(images: Sequence[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """Images grouped into batches of one size: ``[(positions, uint8 (b, 3, H, W))]``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    return [(idx, torch.stack([images[i] for i in idx])) for idx in groups.values()]


@torch.inference_mode()
def _torchscript_embeddings(data: bytes, images: Sequence[torch.Tensor]) -> torch.Tensor:
    module = load_torchscript(data)
    out = [torch.empty(0)] * len(images)
    for idx, batch in _by_size(images):
        for i, e in zip(idx, module.embed(batch), strict=True):
            out[i] = e
    return torch.stack(out)


def _onnx_embeddings(data: bytes, info: dict, pre: Preprocess, mean: Sequence[float],
                     std: Sequence[float], images: Sequence[torch.Tensor]) -> torch.Tensor:
    from facetrip.deploy.onnx_export import onnx_session

    session = onnx_session(data)
    if info["input_dtype"] == "uint8":
        batch = torch.stack(list(images)).numpy()
    else:
        batch = Normalize(mean, std)(torch.stack([pre(img) for img in images])).numpy()
    return torch.from_numpy(session.run(None, {info["input_name"]: batch})[0])


def _safetensors_embeddings(data: bytes, model: EmbeddingNet, pre: Preprocess,
                            mean: Sequence[float], std: Sequence[float],
                            images: Sequence[torch.Tensor]) -> torch.Tensor:
    from facetrip.deploy.weights import model_from_safetensors

    loaded, _ = model_from_safetensors(data)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        if not torch.equal(value, original[key]) or value.dtype != original[key].dtype:
            raise UserError(f"safetensors round trip changed {key}: nothing written")
    return reference_embeddings(loaded, pre, mean, std, images)


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: Path
    sidecar: Path
    format: str
    parity: dict  #: {"max_abs_diff", "images", "source", "limit"}
    calibration: dict | None
    notes: list[str] = field(default_factory=list)  #: e.g. where the calibration came from


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "torchscript",
    calibration: str | Path | None = None,
    auto_calibration: bool = True,
    onnx_input: str = "uint8",
    onnx_source_size: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Export the network of ``checkpoint`` as ``fmt`` to ``out`` with its sidecar.

    Args:
        checkpoint: a training checkpoint (``best.pt``).
        out: the model file; the sidecar is ``out`` + ``.json``.
        fmt: ``torchscript``, ``onnx`` (the ``onnx`` extra), ``safetensors`` or ``export``
            (torch.export, ``.pt2``).
        calibration: ``facetrip eval``'s metrics.json of this checkpoint; without it, and with
            ``auto_calibration``, ``eval/metrics.json`` beside the checkpoint when it
            evaluates this checkpoint.
        onnx_input: ``uint8`` (whole preprocessing in the graph) or ``float``.
        onnx_source_size: ``(H, W)`` of the ONNX ``uint8`` input and of the torch.export
            program's input; default the most common size of the run's images, else the
            model input size.
        device: where calibration embeds its images.
        progress: ``progress(n)`` per batch of calibration images embedded.

    Raises:
        UserError: bad checkpoint, format or calibration; the ONNX extra missing; parity
            above :data:`PARITY_LIMIT` (then nothing is written).
    """
    from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt)
    pre, mean, std = preprocess_from_config(cfg.data), cfg.data.mean, cfg.data.std
    notes: list[str] = []

    fmt_info: dict = {}
    size = None
    if fmt == "onnx":
        from facetrip.deploy.onnx_export import onnx_bytes

        if onnx_input == "uint8":
            size = tuple(onnx_source_size or source_size(cfg.data.root, pre.size))
        data, fmt_info = onnx_bytes(model, pre, mean, std, onnx_input, size)
    elif fmt == "export":
        from facetrip.deploy.export_program import program_bytes

        size = tuple(onnx_source_size or source_size(cfg.data.root, pre.size))
        data, fmt_info = program_bytes(model, pre, mean, std, size)
    elif fmt == "torchscript":
        data = torchscript_bytes(model, pre, mean, std)
    meta = {
        "facetrip_version": __version__,
        "format": fmt,
        "architecture": model.spec.arch,
        "model_spec": model.spec.to_dict(),
        **preprocessing(pre, mean, std),
        "embedding_dim": model.spec.embedding_dim,
        "normalized_output": True,
        "distance": cfg.eval.metric,
        "fingerprint": fingerprint(model.state_dict(), model.spec.to_dict(), pre, mean, std),
    }
    if fmt == "safetensors":
        from facetrip.deploy.weights import safetensors_bytes

        data = safetensors_bytes(model, meta)

    images = run_images(cfg.data.root, PARITY_IMAGES, size)
    origin = f"images of the run's dataset {cfg.data.root}"
    if len(images) < 2:
        sizes = [size] if size else [(pre.size * 3 // 2, pre.size * 5 // 4), (pre.size,) * 2]
        images = synthetic_images(PARITY_IMAGES, sizes)
        origin = "synthetic images (the run's dataset is not here)"
    expected = reference_embeddings(model, pre, mean, std, images)
    if fmt == "torchscript":
        got = _torchscript_embeddings(data, images)
    elif fmt == "onnx":
        got = _onnx_embeddings(data, fmt_info, pre, mean, std, images)
    elif fmt == "export":
        from facetrip.deploy.export_program import program_embeddings

        got = program_embeddings(data, images)
    else:
        got = _safetensors_embeddings(data, model, pre, mean, std, images)
    diff = float((got.float() - expected).abs().max())
    parity = {"max_abs_diff": diff, "images": len(images), "source": origin,
              "limit": PARITY_LIMIT}
    if not diff <= PARITY_LIMIT:  # also catches NaN
        raise UserError(f"parity check failed: the {fmt} model's embeddings differ from the "
                        f"checkpoint's by up to {diff:.3g} (limit {PARITY_LIMIT:g}) on "
                        f"{len(images)} {origin}; nothing written")

    if calibration is None and auto_calibration:
        calibration, why = find_calibration(checkpoint)
        notes.append(why)
    calib = None
    if calibration is not None:
        calib = calibrate(calibration, model, cfg, checkpoint, device, progress=progress)
        meta["distance"] = calib["distance"]
    meta.update(
        input=_input_description(fmt, fmt_info),
        file_sha256=hashlib.sha256(data).hexdigest(),
        parity=parity,
        calibration=calib,
        checkpoint=str(checkpoint),
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if fmt in ("onnx", "export"):
        meta[fmt] = fmt_info
    atomic_write(out, data)
    sidecar = atomic_write(sidecar_path(out), json.dumps(meta, indent=2) + "\n")
    return ExportResult(out, sidecar, fmt, parity, calib, notes)


def _input_description(fmt: str, info: dict) -> str:
    if fmt == "torchscript":
        return ("module(x): float32 RGB (B, 3, S, S), values in [0, 1] then (x - mean) / std; "
                "module.preprocess(uint8 (B, 3, H, W)) does the run's whole preprocessing, "
                "module.embed(uint8 (B, 3, H, W)) both")
    if fmt == "onnx":
        if info["input_dtype"] == "uint8":
            h, w = info["input_shape"][2:]
            return (f"'{info['input_name']}': uint8 RGB (batch, 3, {h}, {w}); the graph does the "
                    "run's whole preprocessing (crop, resize, grey, normalise)")
        return (f"'{info['input_name']}': float32 RGB (batch, 3, S, S), values in [0, 1] then "
                "(x - mean) / std")
    if fmt == "export":
        h, w = info["input_shape"][2:]
        return (f"torch.export.load(path).module()(images): uint8 RGB (batch, 3, {h}, {w}); "
                "the program does the run's whole preprocessing (crop, resize, grey, normalise)")
    return "weights only: facetrip.load_model(path) -> EmbeddingNet taking what forward does"
