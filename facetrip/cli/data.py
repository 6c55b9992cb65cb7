"""``facetrip synth`` and ``facetrip cache``: make a dataset, decode one once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import WORKERS_HELP, app, default_workers, renamed
from facetrip.errors import UserError


@app.command()
def synth(
    out: Annotated[Path | None, typer.Option(help="Output folder: OUT/<identity>/<n>.png")
    ] = None,
    identities: Annotated[int, typer.Option(help="Number of identities.")] = 300,
    images_per_identity: Annotated[int, typer.Option(help="Images per identity.")] = 20,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Parallel processes (default: one per CPU core).")
    ] = None,
    out_argument: Annotated[Path | None, typer.Argument(hidden=True, metavar="")] = None,
) -> None:
    """Generate a procedural face dataset with identities (no download needed)."""
    from facetrip.synth import synthesize

    out = renamed(out, out_argument, "--out", "a positional OUT")
    if out is None:
        raise UserError("--out is required: the folder to write the faces to")

    with tqdm(total=identities * images_per_identity, desc="synth", unit="img", delay=0.5) as bar:
        try:
            summary = synthesize(out, identities, images_per_identity, size, seed,
                                 progress=bar.update, overwrite=overwrite, workers=workers)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    typer.echo(f"wrote {summary.images} images of {summary.identities} identities to {out}")


@app.command()
def cache(
    data: Annotated[Path, typer.Argument(
        help="Data set: DATA/<identity>/<image>, or a RecordIO .rec.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Cache directory (the value for data.cache).")],
    image_size: Annotated[int | None, typer.Option(
        help="Model input side in pixels (= data.image_size; default 64).")] = None,
    crop_fraction: Annotated[
        float, typer.Option(help="Centre crop, share of the shorter side (= data.crop_fraction).")
    ] = 1.0,
    crop_box: Annotated[
        str | None,
        typer.Option(help="Face box 'left,top,right,bottom' in fractions (= data.crop_box)."),
    ] = None,
    grayscale: Annotated[bool, typer.Option(help="Store grey images (= data.grayscale).")] = False,
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP)] = None,
    size: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Decode, crop and resize every image once into a memory-mapped cache for training.

    Train from it with --set data.cache=OUT (and the same size/crop settings); a cache whose
    dataset changed since (file sizes, mtimes, added/removed files) is rebuilt, never reused.
    """
    from facetrip.config import config_from_dict
    from facetrip.data.cache import load_or_build_cache
    from facetrip.data.source import list_source
    from facetrip.data.transforms import preprocess_from_config

    size = renamed(image_size, size, "--image-size", "--size") or 64
    box = None
    if crop_box is not None:
        try:
            box = [float(v) for v in crop_box.split(",")]
        except ValueError:
            raise UserError(
                f"--crop-box expects 4 comma-separated numbers, got {crop_box!r}"
            ) from None
    cfg = config_from_dict({"data": {"root": str(data), "image_size": size,
                                     "crop_fraction": crop_fraction, "crop_box": box,
                                     "grayscale": grayscale}})
    files, _, _ = list_source(data)
    with tqdm(total=len(files), desc="cache", unit="img", delay=0.5) as bar:
        result, why = load_or_build_cache(data, out, preprocess_from_config(cfg.data),
                                          default_workers(workers),
                                          progress=bar.update)
    index = result.index
    megabytes = result.images.nbytes / 2**20
    state = f"built ({why})" if why else "already up to date"
    typer.echo(f"{out}: {len(index)} images of {len(index.classes)} identities, "
               f"{size}x{size}, {megabytes:.0f} MiB; {state}")
    if index.skipped:
        typer.echo(f"warning: {index.skip_summary()}", err=True)
