"""``facetrip align``: photos -> aligned face crops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import app
from facetrip.errors import UserError


@app.command()
def align(
    data: Annotated[Path, typer.Argument(
        help="Photos: identity folders DATA/<identity>/<image>, or a flat folder.")],
    out: Annotated[Path, typer.Option(
        help="Output folder: OUT/<identity>/<stem>.png, align.jsonl, skipped.txt.")],
    size: Annotated[int, typer.Option(
        help="Side of the aligned crops (the 112-pixel template is scaled to it).")] = 112,
    face: Annotated[str, typer.Option(
        help="Which face when a photo has several: largest (its part inside the photo; ties: "
             "the most central) | center.")] = "largest",
    min_face: Annotated[float, typer.Option(
        help="Smallest face looked for, as a share of the photo's shorter side (lower finds "
             "smaller faces, slower).")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="Images per detector call.")] = 32,
    workers: Annotated[int | None, typer.Option(
        help="Aligning processes (default: one per CPU core, 1 to 8; 0 = in-process).")] = None,
    strict: Annotated[bool, typer.Option(
        help="Exit 2 when any image is skipped (no face, unreadable).")] = False,
) -> None:
    """Detect the face in every photo (MTCNN, five landmarks), warp it onto the five-point
    112 x 112 template (insightface's) and write the crops. Photos without a face are listed
    in OUT/skipped.txt and counted, not fatal. A re-run aligns only what is new. Needs the
    align extra: pip install 'facetrip[align]'."""
    from facetrip.alignment.crop import AlignSpec
    from facetrip.alignment.detect import FACE_CHOICES, check_installed
    from facetrip.data.align import SKIPPED_NAME, align_folder, default_workers

    if face not in FACE_CHOICES:
        raise UserError(f"--face must be one of {', '.join(FACE_CHOICES)}, got {face!r}")
    if size < 16:
        raise UserError(f"--size must be at least 16, got {size}")
    if not 0 < min_face <= 1:
        raise UserError(f"--min-face must be in (0, 1], got {min_face}")
    if batch_size < 1 or (workers is not None and workers < 0):
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    check_installed()  # the missing extra is one line before any work
    spec = AlignSpec(size=size, face=face, min_face=min_face)
    start = time.perf_counter()
    with tqdm(desc="align", unit="img", delay=0.5) as bar:
        summary = align_folder(data, out, spec, default_workers() if workers is None else workers,
                               batch_size, progress=bar.update, total=bar.reset)
    seconds = time.perf_counter() - start
    rate = summary.aligned / seconds if summary.aligned else 0.0
    line = (f"{out}: {summary.aligned + summary.reused} of {summary.images} images aligned "
            f"({summary.reused} from an earlier run), {rate:.1f} img/s")
    if summary.several:
        line += f"; {summary.several} with several faces (kept the {face})"
    typer.echo(line)
    if summary.skipped:
        message = f"{summary.skip_summary()} (listed in {out / SKIPPED_NAME})"
        if strict:
            raise UserError(message)
        typer.echo(f"warning: {message}", err=True)
