"""``facetrip export`` and ``facetrip embed``: use a trained model outside training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import (
    BATCH_SIZE_HELP,
    DEVICE_HELP,
    MODEL_HELP,
    WORKERS_HELP,
    Align,
    app,
    check_batch_size,
    default_workers,
    renamed,
)
from facetrip.cli.app import device as _device
from facetrip.errors import UserError

FACE_CROPS = ("Inputs are face crops like the training data (the model's own crop, resize and "
              "normalisation are applied); a model trained on aligned crops detects and "
              "aligns each face itself (--no-align for inputs already aligned).")
FORMAT_HELP = "Format of --out (default from its suffix): "

#: ``--checkpoint``, the old name of ``--model`` (hidden; a deprecation line when used)
OldCheckpoint = Annotated[Path | None, typer.Option("--checkpoint", hidden=True)]


def model_option(model: Path | None, checkpoint: Path | None) -> Path:
    """``--model``, or the deprecated ``--checkpoint`` (UserError when neither is given)."""
    value = renamed(model, checkpoint, "--model", "--checkpoint")
    if value is None:
        raise UserError("missing option --model")
    return value


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"250x200"`` (width x height) or ``"250"`` -> ``(height, width)``."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise UserError(f"--source-size must be WIDTHxHEIGHT or SIZE, got {text!r}")
    width, height = (sizes[0], sizes[0]) if len(sizes) == 1 else sizes
    return height, width


@app.command(short_help="Export a .pt2 (torch.export), TorchScript, ONNX or safetensors model "
                        "with a calibrated sidecar.")
def export(
    out: Annotated[Path, typer.Option(help="Output model file, e.g. model.pt2, model.pt, "
                                           "model.onnx, model.safetensors (sidecar: "
                                           "OUT.json).")],
    model: Annotated[Path | None, typer.Option(
        help="Checkpoint (.pt) from facetrip train.")] = None,
    format: Annotated[str | None, typer.Option(
        "--format", help=FORMAT_HELP + "export (torch.export, .pt2), torchscript (.pt, and any "
                         "other suffix; deprecated by torch), onnx (needs the onnx extra) or "
                         "safetensors (weights only).")] = None,
    calibration: Annotated[Path | None, typer.Option(
        help="facetrip eval's metrics.json of this checkpoint: thresholds for best accuracy "
             "and FAR 1e-2/1e-3/1e-4 go into the sidecar. Default: CHECKPOINT_DIR/eval/"
             "metrics.json when it evaluates this checkpoint.")] = None,
    input: Annotated[str, typer.Option(
        "--input", help="ONNX input: uint8 (RGB images at --source-size; the graph does the "
                        "whole preprocessing) or float (normalised S x S).")] = "uint8",
    source_size: Annotated[str | None, typer.Option(
        help="Input size WIDTHxHEIGHT of ONNX uint8 and .pt2 models (default: the run's "
             "most common image size, else the model input size).")] = None,
    device: Annotated[str, typer.Option(
        help=DEVICE_HELP + " Where calibration embeds its images.")] = "auto",
    checkpoint: OldCheckpoint = None,
) -> None:
    """Export a model that runs without facetrip's training code, plus its JSON sidecar.

    torch.export (.pt2): torch.export.load(path).module() on uint8 images of one size, the
    whole preprocessing inside, any batch size. TorchScript (deprecated by torch, kept for
    existing users): model(x) on normalised input, model.preprocess / model.embed on uint8
    images of any size. ONNX: a dynamic batch axis, uint8 or float input. safetensors: the
    weights, for facetrip.load_model(path). Every export is checked against the checkpoint on
    a batch of images (max |difference| <= 1e-4) before anything is written.
    """
    from facetrip.deploy.export import ExportOptions, export_model

    model = model_option(model, checkpoint)
    options = ExportOptions(format, calibration, onnx_input=input,
                            onnx_source_size=parse_size(source_size), device=_device(device))
    with tqdm(desc="calibrate", unit="img", delay=0.5) as bar:
        result = export_model(model, out, options, progress=bar.update)
    for note in result.notes:
        typer.echo(note)
    p = result.parity
    typer.echo(f"parity: max |embedding difference| {p['max_abs_diff']:.2e} on {p['images']} "
               f"{p['source']} (limit {p['limit']:g})")
    c = result.calibration
    if c is not None:
        fars = ", ".join(f"FAR {k} {v['threshold']:.4f}" if v else f"FAR {k} -"
                         for k, v in c["far"].items())
        on = (f"{c['pairs']} pairs of {c['dataset']} ({c['date']}, in-sample)" if c["in_sample"]
              else f"{c['chosen_on']} ({c['chosen_on_pairs']} pairs, held out from the "
                   f"{c['pairs']} scored; {c['date']})")
        typer.echo(f"thresholds chosen on {on}: best accuracy "
                   f"{c['best_accuracy']['threshold']:.4f}, {fars}")
    typer.echo(f"wrote {result.path} and {result.sidecar}")


@app.command(short_help="Compute embeddings for every image under a folder.",
             help="Compute embeddings for every image under the folder DATA (searched "
                  "recursively), with a checkpoint or any exported model. " + FACE_CROPS)
def embed(
    data: Annotated[Path, typer.Argument(
        metavar="DATA", help="Folder of images (searched recursively).", show_default=False)],
    out: Annotated[Path, typer.Option(
        help="Output .npz (embeddings, paths[, labels, classes]) or .npy (+ OUT.paths.txt).")],
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    format: Annotated[str | None, typer.Option(
        "--format", help=FORMAT_HELP + "npz or npy (other suffixes: npz).")] = None,
    batch_size: Annotated[int, typer.Option(help=BATCH_SIZE_HELP)] = 256,
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    align: Align = None,
    checkpoint: OldCheckpoint = None,
) -> None:
    from facetrip.deploy.embed_folder import embed_folder, list_images
    from facetrip.deploy.embedder import load_embedder

    model = model_option(model, checkpoint)
    batch_size, workers = check_batch_size(batch_size), default_workers(workers)
    embedder = load_embedder(model, _device(device)).for_images(data, align)
    paths = list_images(data)
    with tqdm(total=len(paths), desc="embed", unit="img", delay=0.5) as bar:
        result = embed_folder(embedder, data, out, batch_size, workers, progress=bar.update,
                              paths=paths, fmt=format)
    if result.skipped:
        typer.echo(f"warning: skipped {len(result.skipped)} files that cannot be used, e.g. "
                   f"{result.skipped[0].path} ({result.skipped[0].reason}); see "
                   f"{result.skipped_list}", err=True)
    extra = f" (paths in {result.paths_file})" if result.paths_file else ""
    typer.echo(f"wrote {result.count} embeddings of dimension {result.dim} to {result.out}"
               + extra)
