"""``facetrip train``: progress bars and a summary around :func:`facetrip.training.train`."""

from __future__ import annotations

import logging
import os
import shlex
import signal
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from facetrip.cli.app import app
from facetrip.errors import UserError


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
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its newest checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the run already in --out (its checkpoints are lost).")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="With --resume: continue even though the config changed.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Train with this many processes on this machine (one per GPU): "
                               "launches torchrun --standalone --nproc_per_node N.")
    ] = 1,
) -> None:
    """Train an embedding model with online triplet mining.

    Checkpoints are written every train.checkpoint_every steps and at each epoch end; Ctrl-C
    or SIGTERM finishes the step, writes one and exits (130 / 143; a second Ctrl-C exits at
    once); --resume continues exactly where it stopped. Exit codes: 0 done, 2 a mistake in
    the input (one line on stderr), 3 the loss diverged (non-finite for
    train.max_bad_steps steps in a row).

    Several GPUs or machines: run it under torchrun (torchrun --nproc_per_node 8 -m facetrip
    train ...), or pass --nproc N on one machine. sampler.p identities per batch are the
    global batch, split over the processes; rank 0 logs, validates and writes the run.
    """
    from facetrip.config import load_config
    from facetrip.training.loop import TrainingDiverged
    from facetrip.training.train import TrainingStopped
    from facetrip.training.train import train as run_training

    if nproc < 1:
        raise UserError("--nproc must be >= 1")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise SystemExit(_launch_torchrun(nproc))
    from facetrip.training.distributed import DistContext

    ctx = DistContext.from_env()
    if not ctx.is_main:  # the other ranks print nothing but errors
        logging.getLogger("facetrip").setLevel(logging.ERROR)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if force and not resume:
        raise UserError("--force only applies with --resume")
    cfg = load_config(config, set_ or [])
    run_dir = out or Path("runs") / (config.stem if config else "default")
    bar: dict = {}

    def on_resume(info) -> None:
        typer.echo(f"resuming {info.checkpoint}: epoch {info.epoch + 1}, batch {info.batch}, "
                   f"step {info.step}"
                   + (f"; changed: {', '.join(info.changed)}" if info.changed else ""))

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
        if data.val_note:
            typer.echo(f"note: {data.val_note}", err=True)
        if len(data.sampler) < 20:
            typer.echo(f"note: an epoch is only {len(data.sampler)} steps of "
                       f"{cfg.sampler.p} x {cfg.sampler.k} images; consider "
                       "--set sampler.batches_per_epoch=N (validation and checkpoints "
                       "follow epochs)", err=True)
        if data.skip_summary:
            typer.echo(f"warning: {data.skip_summary}", err=True)

    def on_step(s) -> None:
        if "bar" not in bar:  # counts images, so the bar shows img/s and the epoch's ETA
            bar["bar"] = tqdm(total=s.batches * s.images, initial=s.batch * s.images,
                              desc=f"epoch {s.epoch + 1}", unit="img", smoothing=0.1)
        b = bar["bar"]
        b.set_postfix(loss="skipped" if s.loss is None else f"{s.loss:.4f}",
                      active=f"{s.stats.get('active_fraction', 0):.2f}", refresh=False)
        b.update(s.images)
        if s.batch + 1 == s.batches:  # close before validation, so the rate is training only
            bar.pop("bar").close()

    def on_epoch(epoch, val) -> None:
        _close_bar(bar)
        if val is not None:
            typer.echo(f"epoch {epoch + 1}: val accuracy {val['accuracy']:.4f} "
                       f"± {val['accuracy_std']:.4f}, auc {val['auc']:.4f}")

    stop = StopOnSignal(quiet=not ctx.is_main)
    try:
        with stop:
            result = run_training(cfg, run_dir, resume=resume, on_start=on_start,
                                  on_step=on_step, on_epoch=on_epoch, overwrite=overwrite,
                                  force=force, should_stop=stop, on_resume=on_resume,
                                  dist_context=ctx)
    except TrainingStopped as exc:
        _close_bar(bar)
        code = 128 + (stop.signum or signal.SIGTERM)  # another rank's signal stopped this one
        if not ctx.is_main:
            raise SystemExit(code) from None
        again = " ".join(["facetrip", "train", *(["--config", str(config)] if config else []),
                          *(a for s in (set_ or []) for a in ("--set", shlex.quote(s))),
                          "--out", shlex.quote(str(run_dir)), "--resume"])
        typer.echo(f"{stop.name}: stopped at step {exc.result.steps}, checkpoint "
                   f"{exc.result.checkpoint}; resume with:\n  {again}", err=True)
        raise SystemExit(code) from None
    except TrainingDiverged as exc:
        _close_bar(bar)
        typer.echo(f"error: {exc}; the last good checkpoint in {run_dir} is intact", err=True)
        raise SystemExit(3) from None
    except RuntimeError as exc:
        if not ctx.distributed:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        typer.echo(f"error: rank {ctx.rank} of {ctx.world_size}: a collective with the other "
                   f"ranks failed (one died, or none answered within train.dist_timeout="
                   f"{cfg.train.dist_timeout:g} s): {first}", err=True)
        raise SystemExit(1) from None
    finally:
        ctx.close()
    if not ctx.is_main:
        return
    best = (f"best val accuracy {result.best_accuracy:.4f} (epoch {result.best_epoch + 1})"
            if result.best_accuracy is not None else "no validation split")
    typer.echo(f"done: {result.steps} steps; {best}; run in {result.run_dir}")


def _close_bar(bar: dict) -> None:
    if "bar" in bar:
        bar.pop("bar").close()


def _launch_torchrun(nproc: int) -> int:
    """Run this same command under ``torchrun --standalone --nproc_per_node N``; its exit code."""
    import subprocess
    import sys

    args, value_next = [], False
    for arg in sys.argv[1:]:  # this command without --nproc N
        if value_next or arg.startswith("--nproc="):
            value_next = False
        elif arg == "--nproc":
            value_next = True
        else:
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "facetrip", *args]
    with StopOnSignal(quiet=True, forward=True) as forward:
        proc = subprocess.Popen(cmd)
        forward.child = proc
        return proc.wait()


class StopOnSignal:
    """While entered: the first SIGINT or SIGTERM asks the run to stop after its step
    (``stop()`` turns true); a second SIGINT exits at once (130). Handlers are restored on
    exit. With ``forward``, signals go to :attr:`child` (the torchrun launcher) instead."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet: bool = False, forward: bool = False) -> None:
        self.signum: int | None = None
        self.quiet, self.forward = quiet, forward
        self.child = None
        self._previous: dict = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop"

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.forward:
            if self.child is not None and signum == signal.SIGTERM:
                self.child.send_signal(signum)  # Ctrl-C reaches the process group anyway
            return
        if self.signum is not None and signum == signal.SIGINT:
            os._exit(130)  # the second Ctrl-C: no checkpoint, no clean-up
        self.signum = self.signum or signum
        if not self.quiet:
            typer.echo(f"\n{signal.Signals(signum).name}: finishing the step and writing a "
                       "checkpoint (Ctrl-C again to quit at once)", err=True)

    def __enter__(self) -> StopOnSignal:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
