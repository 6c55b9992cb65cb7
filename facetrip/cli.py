"""The ``facetrip`` command line: parse arguments, call the library, print the results."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, evaluate, embed with and export triplet-loss face embedding models.",
    pretty_exceptions_enable=False,
)


class _TqdmHandler(logging.Handler):
    """Route library warnings through tqdm so they do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(f"{record.levelname.lower()}: {record.getMessage()}", file=None)


def _setup_logging() -> None:
    logger = logging.getLogger("facetrip")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        logger.addHandler(_TqdmHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _device(name: str):
    from facetrip.train import resolve_device

    return resolve_device(name)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder: OUT/<identity>/<n>.png")],
    identities: Annotated[int, typer.Option(help="Number of identities.")] = 300,
    images_per_identity: Annotated[int, typer.Option(help="Images per identity.")] = 20,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Parallel processes (default: one per CPU core).")
    ] = None,
) -> None:
    """Generate a procedural face dataset with identities (no download needed)."""
    from facetrip.data.synth import synthesize

    with tqdm(total=identities * images_per_identity, desc="synth", unit="img", delay=0.5) as bar:
        try:
            summary = synthesize(out, identities, images_per_identity, size, seed,
                                 progress=bar.update, overwrite=overwrite, workers=workers)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    typer.echo(f"wrote {summary.images} images of {summary.identities} identities to {out}")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="YAML config file.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set optim.lr=0.01 (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default: runs/<config name>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
) -> None:
    """Train an embedding model with online triplet mining."""
    from facetrip.config import load_config
    from facetrip.train import train as run_training

    cfg = load_config(config, set_ or [])
    run_dir = out or Path("runs") / (config.stem if config else "default")
    bar: dict = {}

    def on_start(data, device) -> None:
        typer.echo(
            f"train: {data.train_images} images of {data.train_identities} identities"
            + (f" ({data.dropped_identities} identities with too few images left out)"
               if data.dropped_identities else "")
            + (f"; val: {len(data.val_index)} images of {len(data.val_index.classes)} identities"
               if data.val_index is not None else "; no validation split")
            + f"; device {device}"
        )
        if data.cache_note:
            typer.echo(data.cache_note)
        if data.skip_summary:
            typer.echo(f"warning: {data.skip_summary}", err=True)

    def on_step(s) -> None:
        if s.batch == 0:  # counts images, so the bar shows img/s and the epoch's ETA
            bar["bar"] = tqdm(total=s.batches * s.images, desc=f"epoch {s.epoch + 1}",
                              unit="img", smoothing=0.1)
        b = bar["bar"]
        b.set_postfix(loss=f"{s.loss:.4f}", active=f"{s.stats.get('active_fraction', 0):.2f}",
                      refresh=False)
        b.update(s.images)
        if s.batch + 1 == s.batches:  # close before validation, so the rate is training only
            bar.pop("bar").close()

    def on_epoch(epoch, val) -> None:
        if "bar" in bar:
            bar.pop("bar").close()
        if val is not None:
            typer.echo(f"epoch {epoch + 1}: val accuracy {val['accuracy']:.4f} "
                       f"± {val['accuracy_std']:.4f}, auc {val['auc']:.4f}")

    result = run_training(cfg, run_dir, resume=resume, on_start=on_start, on_step=on_step,
                          on_epoch=on_epoch)
    best = (f"best val accuracy {result.best_accuracy:.4f} (epoch {result.best_epoch + 1})"
            if result.best_accuracy is not None else "no validation split")
    typer.echo(f"done: {result.steps} steps; {best}; run in {result.run_dir}")


@app.command()
def cache(
    data: Annotated[Path, typer.Argument(help="Identity-folder dataset: DATA/<identity>/<image>.")],
    out: Annotated[Path, typer.Option(help="Cache directory (the value for data.cache).")],
    size: Annotated[int, typer.Option(help="Side in pixels (= data.image_size).")] = 64,
    crop_fraction: Annotated[
        float, typer.Option(help="Centre crop, share of the shorter side (= data.crop_fraction).")
    ] = 1.0,
    crop_box: Annotated[
        str | None,
        typer.Option(help="Face box 'left,top,right,bottom' in fractions (= data.crop_box)."),
    ] = None,
    grayscale: Annotated[bool, typer.Option(help="Store grey images (= data.grayscale).")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes (default: CPU cores - 1, 1 to 8).")
    ] = None,
) -> None:
    """Decode, crop and resize every image once into a memory-mapped cache for training.

    Train from it with --set data.cache=OUT (and the same size/crop settings); a cache whose
    dataset changed since (file sizes, mtimes, added/removed files) is rebuilt, never reused.
    """
    from facetrip.config import config_from_dict
    from facetrip.data.cache import load_or_build_cache
    from facetrip.data.folder import list_dataset
    from facetrip.train import preprocess_from_config, resolve_workers

    box = None
    if crop_box is not None:
        try:
            box = [float(v) for v in crop_box.split(",")]
        except ValueError:
            raise UserError(
                f"--crop-box expects 4 comma-separated numbers, got {crop_box!r}"
            ) from None
    if workers is not None and workers < 0:
        raise UserError("--workers must be >= 0")
    cfg = config_from_dict({"data": {"root": str(data), "image_size": size,
                                     "crop_fraction": crop_fraction, "crop_box": box,
                                     "grayscale": grayscale}})
    files, _ = list_dataset(data)
    with tqdm(total=len(files), desc="cache", unit="img", delay=0.5) as bar:
        result, why = load_or_build_cache(data, out, preprocess_from_config(cfg),
                                          resolve_workers(workers), progress=bar.update)
    index = result.index
    megabytes = result.images.nbytes / 2**20
    state = f"built ({why})" if why else "already up to date"
    typer.echo(f"{out}: {len(index)} images of {len(index.classes)} identities, "
               f"{size}x{size}, {megabytes:.0f} MiB; {state}")
    if index.skipped:
        typer.echo(f"warning: {index.skip_summary()}", err=True)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_metrics_table(metrics: dict) -> str:
    """A fixed-width table of the headline metrics (model and baselines side by side)."""
    columns = {"model": metrics, **metrics.get("baselines", {})}
    ver, ret = metrics["verification"], metrics["retrieval"]
    rows = [
        ("verification accuracy", lambda m: m["verification"]["accuracy"]),
        ("  std over folds", lambda m: m["verification"]["accuracy_std"]),
        ("  threshold", lambda m: m["verification"]["threshold"]),
        ("ROC AUC", lambda m: m["verification"]["auc"]),
        ("EER", lambda m: m["verification"]["eer"]),
    ]
    for far in ver["tar_at_far"]:
        rows.append((f"TAR@FAR={float(far):g}",
                     lambda m, f=far: m["verification"]["tar_at_far"][f]))
    for k in ret["recall_at_k"]:
        rows.append((f"Recall@{k}", lambda m, k=k: m["retrieval"]["recall_at_k"][k]))
    rows += [
        ("precision@1", lambda m: m["retrieval"]["precision_at_1"]),
        ("R-precision", lambda m: m["retrieval"]["r_precision"]),
        ("MAP@R", lambda m: m["retrieval"]["map_at_r"]),
    ]
    lines = [f"{'metric':<24}" + "".join(f"{name:>12}" for name in columns)]
    for label, get in rows:
        lines.append(f"{label:<24}" + "".join(f"{_fmt(get(m)):>12}" for m in columns.values()))
    lines.append(f"{ver['n_pairs']} pairs in {ver['folds']} folds; {ret['n_queries']} queries"
                 + (f" ({ret['n_excluded']} without another image of their identity excluded)"
                    if ret["n_excluded"] else ""))
    return "\n".join(lines)


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
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: beside the input, eval/).")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Also score a baseline: 'pixels' (with --data).")
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
    from facetrip.evaluate import evaluate_checkpoint, evaluate_npz

    if metric not in ("euclidean", "cosine"):
        raise UserError(f"--metric must be euclidean or cosine, got {metric!r}")
    try:
        ks = tuple(int(v) for v in k.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--k expects comma-separated integers, got {k!r}") from None
    with_images = checkpoint is not None and data is not None
    if with_images == (embeddings is not None) or (checkpoint is None) != (data is None):
        raise UserError("give either --checkpoint and --data, or --embeddings")
    if embeddings is not None:
        if baseline or flip:
            raise UserError("--baseline and --flip need images: use --checkpoint and --data")
        result = evaluate_npz(embeddings, pairs, metric, ks, seed, folds, pairs_per_fold)
        out = out or embeddings.with_suffix("").parent / "eval"
    else:
        with tqdm(desc="embed", unit="img", delay=0.5) as bar:
            result = evaluate_checkpoint(checkpoint, data, pairs, metric, ks, flip, baseline,
                                         _device(device), seed, folds, pairs_per_fold,
                                         progress=bar.update)
        out = out or checkpoint.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    if result.metrics["skipped"]:
        typer.echo(f"warning: skipped {len(result.metrics['skipped'])} unreadable files", err=True)
    typer.echo(format_metrics_table(result.metrics))
    typer.echo(f"metrics written to {out / 'metrics.json'}")
    if report:
        from facetrip.report import write_report

        typer.echo(f"report written to {write_report(result, out / 'report.html')}")


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
    from facetrip.checkpoint import load_checkpoint, model_from_checkpoint
    from facetrip.data.transforms import build_transform
    from facetrip.embed import embed_folder, list_images

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
    from facetrip.checkpoint import load_checkpoint, model_from_checkpoint
    from facetrip.export import export_torchscript
    from facetrip.train import preprocess_from_config

    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint))
    path, sidecar = export_torchscript(model, out, preprocess_from_config(cfg), cfg.data.mean,
                                       cfg.data.std, extra={"checkpoint": str(checkpoint)})
    typer.echo(f"wrote {path} and {sidecar}")


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    _setup_logging()
    try:
        app()
    except (UserError, FileExistsError, FileNotFoundError, NotADirectoryError,
            PermissionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
