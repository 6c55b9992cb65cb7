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
from facetrip.training.hooks import TrainHooks


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
    once); --resume continues exactly where it stopped (a changed train.epochs extends the
    learning-rate schedule, as the console says). Exit codes: 0 done, 2 a mistake in the input
    (one line on stderr), 3 the run diverged (non-finite loss or gradient for
    train.max_bad_steps steps in a row, weights that became non-finite, or a run whose last
    steps were all skipped; the last good checkpoint is kept).

    Several GPUs or machines: run it under torchrun (torchrun --nproc_per_node 8 -m facetrip
    train ...), or pass --nproc N on one machine. sampler.p identities per batch are the
    global batch, split over the processes; rank 0 logs, validates and writes the run.
    """
    from facetrip.config import load_config
    from facetrip.training.distributed import DistContext

    if nproc < 1:
        raise UserError("--nproc must be >= 1")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise SystemExit(_launch_torchrun(nproc))
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if force and not resume:
        raise UserError("--force only applies with --resume")
    ctx = DistContext.from_env()
    if not ctx.is_main:  # the other ranks print nothing but errors
        logging.getLogger("facetrip").setLevel(logging.ERROR)
    cfg = load_config(config, set_ or [])
    run_dir = out or Path("runs") / (config.stem if config else "default")
    again = " ".join(["facetrip", "train", *(["--config", str(config)] if config else []),
                      *(a for s in (set_ or []) for a in ("--set", shlex.quote(s))),
                      "--out", shlex.quote(str(run_dir)), "--resume"])
    result = _run(cfg, run_dir, ctx, again, resume=resume, overwrite=overwrite, force=force)
    if ctx.is_main:
        best = (f"best val accuracy {result.best_accuracy:.4f} (epoch {result.best_epoch + 1})"
                if result.best_accuracy is not None else "no validation split")
        typer.echo(f"done: {result.steps} steps; {best}; run in {result.run_dir}")


def _run(cfg, run_dir: Path, ctx, again: str, **how):
    """Train under a signal handler with console hooks; each way a run can end becomes its
    message and exit code (``again``: the command that resumes it)."""
    from facetrip.training.loop import TrainingDiverged
    from facetrip.training.train import TrainingStopped, train

    stop = StopOnSignal(quiet=not ctx.is_main)
    hooks = ConsoleHooks(stop)
    try:
        with stop:
            return train(cfg, run_dir, hooks=hooks, dist_context=ctx, **how)
    except TrainingStopped as exc:
        hooks.close_bar()
        code = 128 + (stop.signum or signal.SIGTERM)  # another rank's signal stopped this one
        if ctx.is_main:
            typer.echo(f"{stop.name}: stopped at step {exc.result.steps}, checkpoint "
                       f"{exc.result.checkpoint}; resume with:\n  {again}", err=True)
        raise SystemExit(code) from None
    except TrainingDiverged as exc:
        hooks.close_bar()
        kept = _newest_checkpoint(run_dir)
        typer.echo(f"error: {exc}; " + (f"the last good checkpoint {kept} is kept" if kept
                                         else "no checkpoint was written"), err=True)
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


def _newest_checkpoint(run_dir: Path) -> Path | None:
    from facetrip.training.checkpoint import Checkpoints

    saved = Checkpoints(run_dir).saved()
    return saved[0] if saved else None


class ConsoleHooks(TrainHooks):
    """What ``facetrip train`` prints as a run goes: the data summary, one progress bar per
    epoch (counting images, so it shows images/s and the ETA), validation lines; the signal
    handler decides :meth:`should_stop`."""

    def __init__(self, stop: StopOnSignal) -> None:
        self.stop = stop
        self.bar: tqdm | None = None

    def should_stop(self) -> bool:
        return self.stop()

    def resumed(self, info) -> None:
        typer.echo(f"resuming {info.checkpoint}: epoch {info.epoch + 1}, batch {info.batch}, "
                   f"step {info.step}"
                   + (f"; changed: {', '.join(info.changed)}" if info.changed else ""))
        if info.schedule:
            typer.echo(f"note: train.epochs changed: {info.schedule}")

    def started(self, data, device) -> None:
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
        if data.sizing_note:
            typer.echo(f"note: {data.sizing_note}", err=True)
        if data.val_note:
            typer.echo(f"note: {data.val_note}", err=True)
        p, k = data.config.sampler.p, data.config.sampler.k
        if len(data.sampler) < 20:
            typer.echo(f"note: an epoch is only {len(data.sampler)} steps of {p} x {k} images; "
                       "consider --set sampler.batches_per_epoch=N (validation and "
                       "checkpoints follow epochs)", err=True)
        if data.skip_summary:
            typer.echo(f"warning: {data.skip_summary}", err=True)

    def step(self, log) -> None:
        if self.bar is None:
            self.bar = tqdm(total=log.batches * log.images, initial=log.batch * log.images,
                            desc=f"epoch {log.epoch + 1}", unit="img", smoothing=0.1)
        shown = {"loss": "skipped" if log.loss is None else f"{log.loss:.4f}",
                 "active": f"{log.stats.get('active_fraction', 0):.2f}"}
        if "margin" in log.stats:  # loss.margin_target: the margin it has grown to
            shown["margin"] = f"{log.stats['margin']:.3f}"
        if "cls_accuracy" in log.stats:  # loss.classifier: how well it names the identities
            shown["cls"] = f"{log.stats['cls_accuracy']:.2f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(log.images)
        if log.batch + 1 == log.batches:  # closed before validation: the rate is training's
            self.close_bar()

    def epoch_end(self, epoch: int, val: dict | None) -> None:
        self.close_bar()
        if val is not None:
            typer.echo(f"epoch {epoch + 1}: val accuracy {val['accuracy']:.4f} "
                       f"± {val['accuracy_std']:.4f}, auc {val['auc']:.4f}")

    def bins_scored(self, epoch: int, bins: dict[str, dict]) -> None:
        scores = ", ".join(f"{name} {m['accuracy']:.4f}" for name, m in bins.items())
        typer.echo(f"epoch {epoch + 1}: .bin accuracy {scores}")

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
