"""``facetrip eval``: score a checkpoint or an embeddings file, print the table, write
metrics.json and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import (
    BATCH_SIZE_HELP,
    DEVICE_HELP,
    WORKERS_HELP,
    Align,
    app,
    check_batch_size,
    default_workers,
    renamed,
    split_list,
)
from facetrip.cli.app import device as _device
from facetrip.errors import UserError
from facetrip.io import atomic_write

Hidden = Annotated[Path | None, typer.Option(hidden=True)]
Model = Annotated[Path | None, typer.Option(
    help="Checkpoint (.pt) from facetrip train; embeds DATA with it.")]
Embeddings = Annotated[Path | None, typer.Option(
    help="Score an npz instead: embeddings (N, D), labels (N,)[, paths]; DATA, if given, is "
         "where the paths point (for the report's images).")]
Pairs = Annotated[Path | None, typer.Option(
    help="LFW-format pairs file (default: seeded pairs).")]
CalibrationPairs = Annotated[Path | None, typer.Option(
    help="Pairs of other people to choose the thresholds on (LFW View 1: pairsDevTrain.txt "
         "for --pairs pairsDevTest.txt).")]
HeldOut = Annotated[bool, typer.Option(
    help="Choose the thresholds on the checkpoint's run's validation pairs: people held out "
         "of its training (DATA must be its data.root).")]
AlsoPairs = Annotated[list[str] | None, typer.Option(
    help="Also score this pairs file, by its own folds (repeatable or comma-separated; e.g. "
         "View 2 pairs.txt).")]
Out = Annotated[Path | None, typer.Option(
    help="Output folder (default: beside the input, eval/).")]
Baseline = Annotated[list[str] | None, typer.Option(
    help="Also score a baseline on the same pairs: pixels, eigenfaces (repeatable or "
         "comma-separated; needs images).")]
BaselineFit = Annotated[Path | None, typer.Option(
    help="Identity folder to fit eigenfaces on (default: the images the checkpoint's run "
         "trained on).")]
Cache = Annotated[Path | None, typer.Option(
    help="Decoded-image cache for DATA, built if missing or stale (a training run's "
         "data.cache of the same folder is reused).")]
Distance = Annotated[str | None, typer.Option(
    help="euclidean or cosine (default euclidean; the loss's loss.distance).")]
Bins = Annotated[list[str] | None, typer.Option(
    "--bin", help="Also score a .bin verification set (insightface's lfw.bin, cfp_fp.bin, "
                  "agedb_30.bin...: 10 folds, as the published tables), read without running "
                  "anything in it (repeatable or comma-separated; DATA then optional).")]
Ks = Annotated[list[str] | None, typer.Option(
    "--k", help="Recall@k values (repeatable or comma-separated; default 1,2,4,8,16).")]


@app.command("eval")
def eval_(
    data: Annotated[Path | None, typer.Argument(
        help="Data set to embed (with --model): an identity folder or a RecordIO .rec.",
        show_default=False)] = None,
    model: Model = None,
    bin_sets: Bins = None,
    embeddings: Embeddings = None,
    pairs: Pairs = None,
    calibration_pairs: CalibrationPairs = None,
    calibrate_held_out: HeldOut = False,
    also_pairs: AlsoPairs = None,
    out: Out = None,
    baseline: Baseline = None,
    baseline_fit: BaselineFit = None,
    cache: Cache = None,
    distance: Distance = None,
    k: Ks = None,
    flip: Annotated[bool, typer.Option(help="Average with the mirrored image.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for drawing pairs without a file.")] = 0,
    folds: Annotated[int, typer.Option(help="Folds when pairs are drawn (no --pairs).")] = 10,
    pairs_per_fold: Annotated[int, typer.Option(
        help="Pairs per drawn fold, half same, half different.")] = 600,
    report: Annotated[bool, typer.Option(help="Write report.html beside metrics.json.")] = True,
    batch_size: Annotated[int, typer.Option(help=BATCH_SIZE_HELP)] = 256,
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    align: Align = None,
    checkpoint: Hidden = None,
    data_option: Annotated[Path | None, typer.Option("--data", hidden=True)] = None,
    metric: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Verification (k-fold, LFW protocol) and retrieval metrics: metrics.json + report.html.

    Either --model CHECKPOINT with DATA (embeds the images) and/or --bin sets, or
    --embeddings FILE.npz.
    """
    from facetrip.evaluation.evaluate import EvalRequest, PairProtocol, evaluate
    from facetrip.evaluation.sources import Loading

    model = renamed(model, checkpoint, "--model", "--checkpoint")
    data = renamed(data, data_option, "DATA", "--data")
    try:
        ks = tuple(int(v) for v in split_list(k) or ["1", "2", "4", "8", "16"])
    except ValueError:
        raise UserError(f"--k expects integers, got {' '.join(k or [])!r}") from None
    protocol = PairProtocol(pairs, seed, folds, pairs_per_fold, calibration_pairs,
                            calibrate_held_out, tuple(Path(p) for p in split_list(also_pairs)))
    request = EvalRequest(
        model, data, embeddings, protocol,
        renamed(distance, metric, "--distance", "--metric") or "euclidean", ks, flip,
        tuple(dict.fromkeys(split_list(baseline))), baseline_fit, cache,
        _device(device) if embeddings is None else "cpu",
        Loading(check_batch_size(batch_size), default_workers(workers)),
        tuple(Path(b) for b in split_list(bin_sets)), align)
    with tqdm(desc="embed", unit="img", delay=0.5, disable=embeddings is not None) as bar:
        result = evaluate(request, progress=bar.update)
    out = out or (embeddings.with_suffix("").parent if embeddings else model.parent) / "eval"
    _print(result, out, pairs)
    if report:
        from facetrip.evaluation.report import write_report

        typer.echo(f"report written to {write_report(result, out / 'report.html')}")


def _print(result, out: Path, pairs: Path | None) -> None:
    """Write metrics.json and print the tables, coverage and protocol notes."""
    from facetrip.evaluation.table import format_bins, format_text, protocol_notes

    atomic_write(out / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")
    if result.metrics["skipped"]:
        typer.echo(f"warning: skipped {len(result.metrics['skipped'])} unreadable files", err=True)
    if "verification" in result.metrics:
        typer.echo(format_text(result.metrics))
        typer.echo(_coverage(result.metrics))
        for note in protocol_notes(result.metrics, pairs.name if pairs else None):
            typer.echo(f"note: {note}")
    if result.metrics.get("bins"):
        typer.echo("\n.bin verification sets (10 folds, thresholds held out):")
        typer.echo(format_bins(result.metrics))
        for name, scores in result.metrics["bins"].items():
            if scores["skipped_pairs"]:
                typer.echo(f"warning: {name}: {scores['skipped_pairs']} pairs left out (an "
                           "image that does not decode)", err=True)
    for name, protocol in (result.metrics.get("also") or {}).items():
        typer.echo(f"\n{name}: {protocol['verification']['folds']} folds")
        typer.echo(format_text(protocol))
        for note in protocol_notes(protocol, Path(name).name):
            typer.echo(f"note: {note}")
    typer.echo(f"metrics written to {out / 'metrics.json'}")


def _coverage(metrics: dict) -> str:
    """What the table is about: pairs, folds, queries."""
    ver, ret = metrics["verification"], metrics["retrieval"]
    return (f"{ver['n_pairs']} pairs in {ver['folds']} folds; {ret['n_queries']} queries"
            + (f" ({ret['n_excluded']} without another image of their identity excluded)"
               if ret["n_excluded"] else ""))
