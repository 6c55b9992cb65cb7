"""The embedding loop of training and evaluation: batches of images in, ``(B, D)`` float32
embeddings out.

Validation during training and ``facetrip eval`` (the model and its baselines) run
:func:`embed_all`; they differ only in the loader they pass and the module that embeds (the
network, or a baseline such as :class:`~facetrip.evaluation.baselines.PixelEmbedder`). The
deploy commands embed through :mod:`facetrip.deploy.embedder` instead, one interface over every
model format (a checkpoint, TorchScript, ONNX, safetensors), which skips unreadable files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def embed_images(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    flip: bool = False,
) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, D)`` float32 embeddings on the CPU (``model`` in eval mode).

    ``batch_transform`` runs on ``device`` first (e.g. uint8 -> normalised float32). With
    ``flip``, the embedding is the mean of the image's and its mirror's, re-normalised.
    """
    images = images.to(device, non_blocking=True)
    if batch_transform is not None:
        images = batch_transform(images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    emb = model(images).float()
    if flip:
        emb = nn.functional.normalize(emb + model(images.flip(-1)).float(), dim=1)
    return emb.cpu()


def iter_embeddings(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, ...]],
    device: torch.device,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    flip: bool = False,
) -> Iterator[tuple[torch.Tensor, tuple]]:
    """Stream ``(embeddings (B, D) float32 on CPU, rest of the batch)`` for each batch (the
    first element of each batch is the image tensor). The model runs in eval mode, without
    autograd."""
    model.eval()
    for images, *rest in loader:
        yield embed_images(model, images, device, channels_last, batch_transform, flip), \
            tuple(rest)


def embed_all(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    flip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed a whole labelled dataset that fits in memory.

    ``loader`` yields ``(images, labels)``. Returns ``(embeddings (N, D) float32, labels (N,)
    int64)``. ``progress(n)`` after each batch of ``n`` images.
    """
    embs, labels = [], []
    for emb, (lab,) in iter_embeddings(model, loader, device, channels_last, batch_transform,
                                       flip):
        embs.append(emb.numpy())
        labels.append(np.asarray(lab))
        if progress is not None:
            progress(len(emb))
    return np.concatenate(embs), np.concatenate(labels).astype(np.int64)
