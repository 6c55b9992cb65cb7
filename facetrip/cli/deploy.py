"""``facetrip embed`` and ``facetrip export``: use a trained model outside training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import app
from facetrip.cli.app import device as _device


@app.command()
def embed(
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint (.pt) from facetrip train.")],
    out: Annotated[Path, typer.Option(help="Output .npz (embeddings, paths[, labels]).")],
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 256,
    workers: Annotated[int, typer.Option(help="Decoding worker processes.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Compute embeddings for every image under a folder."""
    from facetrip.data.transforms import build_transform
    from facetrip.deploy.embed import embed_folder, list_images
    from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint

    dev = _device(device)
    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint), dev)
    d = cfg.data
    transform = build_transform(d.image_size, d.mean, d.std, d.crop_fraction,
                                crop_box=d.crop_box, grayscale=d.grayscale)
    paths = list_images(images)
    with tqdm(total=len(paths), desc="embed", unit="img") as bar:
        result = embed_folder(model, images, out, transform, dev, batch_size, workers,
                              progress=bar.update, paths=paths)
    if result.skipped:
        typer.echo(f"warning: skipped {len(result.skipped)} files that cannot be decoded, "
                   f"e.g. {result.skipped[0].path}", err=True)
    typer.echo(f"wrote {result.count} embeddings of dimension {result.dim} to {result.out}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint (.pt) from facetrip train.")],
    out: Annotated[Path, typer.Option(help="Output TorchScript file, e.g. model.pt.")],
) -> None:
    """Export a TorchScript model (+ JSON sidecar) that runs without facetrip."""
    from facetrip.data.transforms import preprocess_from_config
    from facetrip.deploy.export import export_torchscript
    from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint

    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint))
    path, sidecar = export_torchscript(model, out, preprocess_from_config(cfg.data), cfg.data.mean,
                                       cfg.data.std, extra={"checkpoint": str(checkpoint)})
    typer.echo(f"wrote {path} and {sidecar}")
