"""The JSON sidecar of an exported model (``MODEL.json`` beside ``MODEL``), one schema for
every format, built in one place (:func:`describe_model`, also what a bare checkpoint says of
itself), and the model fingerprint galleries are tied to.

Fields (see README "Deploy"): ``facetrip_version``, ``format``, ``architecture``,
``model_spec``, ``input_size``, ``colour_order``, ``crop_fraction``, ``crop_box``,
``grayscale``, ``mean``, ``std``, ``embedding_dim``, ``normalized_output``, ``distance``,
``input`` (what the file takes), ``fingerprint``, ``file_sha256``, ``parity``,
``calibration`` (or null), ``checkpoint``, ``exported_at``; ONNX adds ``onnx``, torch.export
(format ``export``) ``export``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from facetrip.data.transforms import Preprocess, Preprocessing
from facetrip.errors import UserError
from facetrip.model import EmbeddingNet
from facetrip.version import __version__

REQUIRED = ("format", "model_spec", "input_size", "crop_fraction", "crop_box", "grayscale",
            "mean", "std", "embedding_dim", "distance", "fingerprint", "file_sha256")


def sidecar_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def preprocessing(pre: Preprocess, mean: Sequence[float], std: Sequence[float]) -> dict:
    """The sidecar's preprocessing fields of a run (:meth:`Preprocessing.to_fields`)."""
    return Preprocessing(pre, tuple(mean), tuple(std)).to_fields()


def preprocess_from_sidecar(meta: Mapping[str, Any]) -> Preprocess:
    """The :class:`Preprocess` a sidecar describes (facetrip's own, exactly as in training)."""
    return Preprocessing.from_fields(dict(meta)).crop


def fingerprint(state_dict: Mapping[str, torch.Tensor], model_spec: Mapping[str, Any],
                pre: Preprocess, mean: Sequence[float], std: Sequence[float]) -> str:
    """``sha256:<hex>`` of the weights (every tensor's name, dtype, shape and bytes, by name)
    and of everything that changes an embedding besides them (architecture, preprocessing).

    The same for a checkpoint and for every file exported from it, so a gallery enrolled with
    one can be searched with another, and with nothing else.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    rest = {"model_spec": dict(model_spec), **preprocessing(pre, mean, std)}
    h.update(json.dumps(rest, sort_keys=True).encode())
    return "sha256:" + h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_model(fmt: str, model: EmbeddingNet, pre: Preprocess, mean: Sequence[float],
                   std: Sequence[float], distance: str) -> dict:
    """The sidecar's fields of ``model`` with the preprocessing ``pre``, ``mean``, ``std``:
    what made it, what it is (``fmt``: an export format, or ``checkpoint``), its input and
    output, and its :func:`fingerprint`. An export adds what the file takes, its hash, the
    parity, the calibration and the provenance."""
    spec = model.spec.to_dict()
    return {
        "facetrip_version": __version__,
        "format": fmt,
        "architecture": model.spec.arch,
        "model_spec": spec,
        **preprocessing(pre, mean, std),
        "embedding_dim": model.spec.embedding_dim,
        "normalized_output": True,
        "distance": distance,
        "fingerprint": fingerprint(model.state_dict(), spec, pre, mean, std),
    }


def read_sidecar(model_path: str | Path, expected_format: str) -> dict:
    """The sidecar of the exported model ``model_path``, checked against the file.

    Raises:
        UserError: the sidecar is missing, not JSON, lacks a field, names another format, or
            describes other bytes than ``model_path`` holds (``file_sha256``).
    """
    model_path = Path(model_path)
    path = sidecar_path(model_path)
    if not path.is_file():
        raise UserError(f"{model_path} has no sidecar {path}: an exported model needs the "
                        "JSON file `facetrip export` writes beside it")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read sidecar {path}: {str(exc).splitlines()[0]}") from None
    missing = [k for k in REQUIRED if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise UserError(f"sidecar {path} lacks {', '.join(missing)}: not a facetrip sidecar")
    if meta["format"] != expected_format:
        raise UserError(f"sidecar {path} describes a {meta['format']!r} model, but {model_path} "
                        f"is {expected_format}")
    if file_sha256(model_path) != meta["file_sha256"]:
        raise UserError(f"sidecar {path} does not match {model_path} (it describes another "
                        "file): export again, or put the model's own sidecar beside it")
    return meta
