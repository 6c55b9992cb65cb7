"""``facetrip train``: progress bars and a summary around :func:`facetrip.training.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import app


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
    from facetrip.training.train import train as run_training

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
