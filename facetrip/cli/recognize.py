"""``facetrip verify``, ``facetrip enroll``, ``facetrip identify``: same person? who is this?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
)
from facetrip.cli.app import device as _device
from facetrip.cli.deploy import FACE_CROPS
from facetrip.errors import UserError

if TYPE_CHECKING:
    from facetrip.deploy.gallery import Identification

FAR_HELP = ("Use the calibrated threshold at this false-accept rate (1e-2, 1e-3 or 1e-4; "
            "default: the best-accuracy threshold).")
THRESHOLD_HELP = "Use this distance threshold instead (same iff distance < threshold)."


@app.command(short_help="Are two face images the same person? (exit code 0 same, 1 different)",
             help="Are two face images the same person? Prints the distance, the threshold "
                  "and where it came from; exit code 0 same, 1 different, 2 error. "
                  + FACE_CROPS)
def verify(
    image_a: Annotated[Path, typer.Argument(help="First face image.")],
    image_b: Annotated[Path, typer.Argument(help="Second face image.")],
    model: Annotated[Path, typer.Option(help=MODEL_HELP)],
    far: Annotated[float | None, typer.Option(help=FAR_HELP)] = None,
    threshold: Annotated[float | None, typer.Option(help=THRESHOLD_HELP)] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    align: Align = None,
) -> None:
    from facetrip.deploy.embedder import load_embedder
    from facetrip.deploy.verify import verify as verify_pair

    verdict = verify_pair(load_embedder(model, _device(device), align), image_a, image_b, far,
                          threshold)
    if json_:
        typer.echo(json.dumps({"image_a": str(image_a), "image_b": str(image_b),
                               **verdict.to_dict()}))
    else:
        answer = "same person" if verdict.same else "different people"
        sign = "<" if verdict.same else ">="
        typer.echo(f"{answer}: {verdict.metric} distance {verdict.distance:.4f} {sign} "
                   f"threshold {verdict.threshold:.4f} ({verdict.threshold_source})")
    raise typer.Exit(0 if verdict.same else 1)


@app.command(short_help="Enroll identity folders into a gallery for identify.",
             help="Enroll the identity folders of DATA (DATA/<identity>/<image>) into a "
                  "gallery: every image's embedding, one mean embedding per identity, and the "
                  "model's fingerprint, so the gallery is only ever searched with this model. "
                  + FACE_CROPS)
def enroll(
    data: Annotated[Path, typer.Argument(
        metavar="DATA", help="Identity folders of face images.", show_default=False)],
    model: Annotated[Path, typer.Option(help=MODEL_HELP)],
    out: Annotated[Path, typer.Option(help="Output gallery, e.g. gallery.npz.")],
    batch_size: Annotated[int, typer.Option(help=BATCH_SIZE_HELP)] = 256,
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    align: Align = None,
) -> None:
    from facetrip.data.index import scan_identity_folder
    from facetrip.deploy.embedder import load_embedder
    from facetrip.deploy.gallery import enroll as enroll_gallery

    batch_size, workers = check_batch_size(batch_size), default_workers(workers)
    embedder = load_embedder(model, _device(device)).for_images(data, align)
    total = len(scan_identity_folder(data, validate=False))
    with tqdm(total=total, desc="enroll", unit="img", delay=0.5) as bar:
        result = enroll_gallery(embedder, data, out, batch_size, workers, progress=bar.update)
    if result.skipped:
        s = result.skipped[0]
        typer.echo(f"warning: skipped {len(result.skipped)} files, e.g. {s.path} ({s.reason})",
                   err=True)
    if result.empty:
        typer.echo(f"warning: {len(result.empty)} identity folders without a usable image "
                   f"left out, e.g. {result.empty[0]}", err=True)
    typer.echo(f"enrolled {result.identities} identities ({result.images} images) into "
               f"{result.out}")


@app.command(short_help="Who is this? The nearest gallery identities of each probe image.",
             help="Who is this? The top-k gallery identities of each probe image with their "
                  "distances, and, when there is a threshold (the model's calibrated one, "
                  "--far or --threshold), the verdict: the nearest identity, or 'unknown' when "
                  "even it is at or above the threshold. A model without calibration ranks "
                  "only (--json: identity, known and threshold null). Exact search, in "
                  "bounded memory. " + FACE_CROPS)
def identify(
    probes: Annotated[list[Path], typer.Argument(help="Face images to identify.")],
    gallery: Annotated[Path, typer.Option(help="Gallery from facetrip enroll.")],
    model: Annotated[Path | None, typer.Option(
        help="The model that enrolled the gallery, or an export of it (default: the file "
             "the gallery names).")] = None,
    top_k: Annotated[int, typer.Option(help="Identities listed per probe.")] = 5,
    by: Annotated[str, typer.Option(
        help="image: an identity's distance is its nearest image's; mean: its mean "
             "embedding's.")] = "image",
    far: Annotated[float | None, typer.Option(help=FAR_HELP)] = None,
    threshold: Annotated[float | None, typer.Option(help=THRESHOLD_HELP)] = None,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object per probe: probe, identity (null when unknown "
                       "or without a threshold), known (null without a threshold), threshold, "
                       "threshold_source, metric, matches.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    align: Align = None,
) -> None:
    from facetrip.deploy.embedder import load_embedder
    from facetrip.deploy.gallery import identify as identify_probes
    from facetrip.deploy.gallery import load_gallery

    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    g = load_gallery(gallery)
    embedder = load_embedder(model or Path(g.meta["model"]), _device(device), align)
    answers = identify_probes(embedder, g, list(probes), top_k, by, far, threshold)
    for answer in answers:
        if json_:
            typer.echo(json.dumps(answer.to_dict()))
        else:
            _print_identification(answer)
    if not json_ and answers[0].threshold is not None:
        typer.echo(f"threshold {answers[0].threshold:.4f}: {answers[0].threshold_source}")
    elif not json_:
        typer.echo("no threshold: the ranking only (this model has no calibration; pass "
                   "--threshold, or export it with --calibration EVAL/metrics.json)")


def _print_identification(answer: Identification) -> None:
    """``PROBE: verdict`` then the ranking, one identity a line."""
    first = answer.matches[0]
    if answer.known is None:
        head = f"nearest {first.identity} (distance {first.distance:.4f})"
    elif answer.known:
        head = f"{first.identity} (distance {first.distance:.4f})"
    else:
        head = (f"unknown (nearest {first.identity} at {first.distance:.4f} >= threshold "
                f"{answer.threshold:.4f})")
    typer.echo(f"{answer.probe}: {head}")
    for rank, m in enumerate(answer.matches, 1):
        typer.echo(f"  {rank}. {m.identity}  {m.distance:.4f}")
