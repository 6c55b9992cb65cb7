"""``facetrip eval``: score a checkpoint or an embeddings file, print the table, write
metrics.json and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import app
from facetrip.cli.app import device as _device
from facetrip.errors import UserError
from facetrip.io import atomic_write


@app.command("eval")
def eval_(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint (.pt) from facetrip train (with --data).")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Identity-folder dataset to embed.")] = None,
    embeddings: Annotated[
        Path | None,
        typer.Option(help="Score an npz instead: embeddings (N, D), labels (N,)[, paths]."),
    ] = None,
    pairs: Annotated[
        Path | None, typer.Option(help="LFW-format pairs file (default: seeded pairs).")
    ] = None,
    calibration_pairs: Annotated[
        Path | None,
        typer.Option(help="Pairs of other people to choose the thresholds on (LFW View 1: "
                          "pairsDevTrain.txt for --pairs pairsDevTest.txt)."),
    ] = None,
    calibrate_held_out: Annotated[
        bool,
        typer.Option(help="Choose the thresholds on the checkpoint's run's validation pairs: "
                          "people held out of its training (--data must be its data.root)."),
    ] = False,
    also_pairs: Annotated[
        list[Path] | None,
        typer.Option(help="Also score this pairs file, by its own folds (repeatable; e.g. "
                          "View 2 pairs.txt)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: beside the input, eval/).")
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(help="Also score a baseline on the same pairs: pixels, eigenfaces "
                          "(repeatable or comma-separated; with --data)."),
    ] = None,
    baseline_fit: Annotated[
        Path | None,
        typer.Option(help="Identity folder to fit eigenfaces on (default: the images the "
                          "checkpoint's run trained on)."),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="Decoded-image cache for --data, built if missing or stale (a "
                          "training run's data.cache of the same folder is reused)."),
    ] = None,
    metric: Annotated[str, typer.Option(help="euclidean or cosine.")] = "euclidean",
    k: Annotated[str, typer.Option(help="Recall@k values, comma-separated.")] = "1,2,4,8,16",
    flip: Annotated[bool, typer.Option(help="Average with the mirrored image.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for drawing pairs without a file.")] = 0,
    folds: Annotated[int, typer.Option(help="Folds when pairs are drawn (no --pairs).")] = 10,
    pairs_per_fold: Annotated[
        int, typer.Option(help="Pairs per drawn fold, half same, half different.")
    ] = 600,
    report: Annotated[bool, typer.Option(help="Write report.html beside metrics.json.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Verification (k-fold, LFW protocol) and retrieval metrics: metrics.json + report.html.

    Either --checkpoint with --data (embeds the images), or --embeddings FILE.npz.
    """
    from facetrip.evaluation.evaluate import evaluate_checkpoint, evaluate_npz
    from facetrip.evaluation.table import format_text, protocol_notes

    if metric not in ("euclidean", "cosine"):
        raise UserError(f"--metric must be euclidean or cosine, got {metric!r}")
    try:
        ks = tuple(int(v) for v in k.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--k expects comma-separated integers, got {k!r}") from None
    with_images = checkpoint is not None and data is not None
    if with_images == (embeddings is not None) or (checkpoint is None) != (data is None):
        raise UserError("give either --checkpoint and --data, or --embeddings")
    baselines = [b.strip() for item in baseline or [] for b in item.split(",") if b.strip()]
    if calibration_pairs is not None and pairs is None:
        raise UserError("--calibration-pairs chooses the thresholds for --pairs: give both")
    if calibration_pairs is not None and calibrate_held_out:
        raise UserError("give --calibration-pairs or --calibrate-held-out, not both")
    if embeddings is not None:
        if baselines or flip or baseline_fit or also_pairs or cache or calibrate_held_out:
            raise UserError("--baseline, --baseline-fit, --also-pairs, --cache, --flip and "
                            "--calibrate-held-out need images: use --checkpoint and --data")
        result = evaluate_npz(embeddings, pairs, metric, ks, seed, folds, pairs_per_fold,
                              calibration_pairs=calibration_pairs)
        out = out or embeddings.with_suffix("").parent / "eval"
    else:
        with tqdm(desc="embed", unit="img", delay=0.5) as bar:
            result = evaluate_checkpoint(checkpoint, data, pairs, metric, ks, flip, baselines,
                                         _device(device), seed, folds, pairs_per_fold,
                                         progress=bar.update,
                                         calibration_pairs=calibration_pairs,
                                         also_pairs=also_pairs or [], baseline_fit=baseline_fit,
                                         cache=cache, calibrate_held_out=calibrate_held_out)
        out = out or checkpoint.parent / "eval"
    atomic_write(out / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")
    if result.metrics["skipped"]:
        typer.echo(f"warning: skipped {len(result.metrics['skipped'])} unreadable files", err=True)
    typer.echo(format_text(result.metrics))
    typer.echo(_coverage(result.metrics))
    for note in protocol_notes(result.metrics, pairs.name if pairs else None):
        typer.echo(f"note: {note}")
    for name, protocol in (result.metrics.get("also") or {}).items():
        typer.echo(f"\n{name}: {protocol['verification']['folds']} folds")
        typer.echo(format_text(protocol))
        for note in protocol_notes(protocol, Path(name).name):
            typer.echo(f"note: {note}")
    typer.echo(f"metrics written to {out / 'metrics.json'}")
    if report:
        from facetrip.evaluation.report import write_report

        typer.echo(f"report written to {write_report(result, out / 'report.html')}")




def _coverage(metrics: dict) -> str:
    """What the table is about: pairs, folds, queries."""
    ver, ret = metrics["verification"], metrics["retrieval"]
    return (f"{ver['n_pairs']} pairs in {ver['folds']} folds; {ret['n_queries']} queries"
            + (f" ({ret['n_excluded']} without another image of their identity excluded)"
               if ret["n_excluded"] else ""))
