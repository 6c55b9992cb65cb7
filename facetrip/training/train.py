"""``facetrip train``, the workflow: build everything from the config, run the epochs, keep
the run directory (:mod:`facetrip.training.run`) and its checkpoints up to date.

A run can be stopped (``should_stop``, e.g. on SIGTERM) or killed at any point and resumed:
checkpoints are written every ``train.checkpoint_every`` steps and at each epoch end, and
``resume`` continues from the newest readable one at the next batch, with the same batches,
augmentation and random state, so the result is the uninterrupted run's, bit for bit on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facetrip.config import Config, config_from_dict, resume_config, save_config
from facetrip.errors import UserError
from facetrip.training.build import (
    TrainData,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    load_data,
    resolve_device,
    resolve_precision,
)
from facetrip.training.checkpoint import (
    Checkpoints,
    checkpoint_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from facetrip.training.distributed import DistContext, GlobalTripletLoss
from facetrip.training.loop import CollapseDetector, StepLog, StepOptions, train_one_epoch, validate
from facetrip.training.run import (
    MetricsLog,
    RunDir,
    TensorBoardScalars,
    truncate_metrics,
    write_skip_report,
)
from facetrip.training.state import TrainState

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where the run went and how it ended."""

    run_dir: Path
    epochs: int
    steps: int
    best_epoch: int | None
    best_accuracy: float | None
    last_val: dict | None
    stopped: bool = False  #: ``should_stop`` ended it early (a checkpoint was written)
    checkpoint: Path | None = None  #: the newest checkpoint


class TrainingStopped(Exception):
    """The run was asked to stop; its checkpoint is :attr:`checkpoint`."""

    def __init__(self, result: TrainResult) -> None:
        super().__init__(f"stopped at step {result.steps}; checkpoint {result.checkpoint}")
        self.result = result


@dataclass
class ResumeInfo:
    """What ``--resume`` started from (for the CLI to tell the user)."""

    checkpoint: Path
    epoch: int  #: 0-based epoch it continues
    batch: int  #: batches of that epoch already done
    step: int
    changed: list[str]  #: config keys that differ from the saved run (allowed or forced)
    skipped: list[str]  #: newer checkpoints that could not be read


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``: every epoch's randomness is independent of the past."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> 1)


def _open_run(cfg: Config, run: RunDir, resume: bool, overwrite: bool, force: bool,
              writer: bool) -> tuple[Config, dict | None, ResumeInfo | None]:
    """Check the run directory; for a resume, load the newest checkpoint and its config.
    Only the ``writer`` (rank 0) clears a directory for ``overwrite``."""
    if resume and not Checkpoints(run.root).exist():
        # killed before its first checkpoint (or never started): nothing is lost by starting
        # over, and a job script can always pass --resume
        log.warning("nothing to resume in %s (no checkpoint yet): starting from the first "
                    "step", run.root)
        if writer:
            run.clear()
        return cfg, None, None
    if resume:
        ckpt, path, skipped = Checkpoints(run.root).load_newest()
        try:
            saved = config_from_dict(ckpt["config"])
        except (KeyError, UserError) as exc:
            raise UserError(f"{path} holds no usable run config ({exc})") from None
        cfg, changed = resume_config(saved, cfg, force)
        info = ResumeInfo(path, ckpt["epoch"], ckpt.get("batch", 0), ckpt["step"], changed,
                          skipped)
        return cfg, ckpt, info
    if run.holds_run():
        if not overwrite:
            raise UserError(f"{run.root} already holds a run; pass --resume to continue it, "
                            "--overwrite to replace it, or --out NEW_DIR")
        if writer:
            run.clear()
    return cfg, None, None


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    on_start: Callable[[TrainData, torch.device], None] | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    on_epoch: Callable[[int, dict | None], None] | None = None,
    *,
    overwrite: bool = False,
    force: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_resume: Callable[[ResumeInfo], None] | None = None,
    dist_context: DistContext | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir``; with ``resume``, continue from its newest checkpoint.

    Writes ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per step and per
    epoch; on resume cut back to the checkpoint first, so every step appears once),
    checkpoints every ``train.checkpoint_every`` steps and after every epoch
    (``checkpoints/``, ``last.pt``), and ``best.pt`` whenever validation accuracy improves.
    ``overwrite`` replaces a run already in ``run_dir``; ``force`` resumes with a changed
    config. ``should_stop()`` is asked after every step: when true, a checkpoint is written
    and :class:`TrainingStopped` raised.

    Distributed (``dist_context``, default: torchrun's environment): every rank trains its
    share of each global batch under DistributedDataParallel, mining per ``loss.scope``; rank 0
    alone validates, writes the run directory and calls the callbacks; every rank resumes
    from the same checkpoint (with its own random state); a stop request on any rank stops
    all of them after the same step.

    Raises:
        UserError: a bad config, data or run directory; a checkpoint that cannot be written.
        TrainingDiverged: too many non-finite steps in a row (the last checkpoint is intact).
        TrainingStopped: ``should_stop`` said so.
    """
    ctx = dist_context or DistContext.from_env()
    main = ctx.is_main
    run = RunDir(Path(run_dir))
    device = ctx.device(str(resolve_device(cfg.train.device)))
    ctx.init(device, cfg.train.dist_timeout)
    cfg, ckpt, info = _open_run(cfg, run, resume, overwrite, force, writer=main)
    if main:
        run.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    ctx.barrier()

    autocast_dtype = resolve_precision(cfg.train.precision, device)
    data = load_data(cfg, device, ctx.rank, ctx.world_size)
    if main:
        report = write_skip_report(data.index, data.excluded, run.skipped)
        if report is not None and data.skip_summary:
            data.skip_summary += f"; see {report}"
    # seeded here, after the data: building a cache draws from torch's generator (DataLoader
    # seeds), and the initial weights must not depend on whether one was built
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    state = TrainState(
        model, optimizer, build_scheduler(cfg, optimizer, len(data.sampler)),
        torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None,
    )
    if ckpt is not None:
        state.load_state_dict(ckpt)
        if main:
            truncate_metrics(run.metrics, state.step, state.epoch)
            if on_resume is not None:
                on_resume(info)
    if ctx.distributed:  # after loading: every rank starts from the same weights
        state.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if main and on_start is not None:
        on_start(data, device)

    loss_fn = build_loss(cfg)
    if ctx.distributed and cfg.loss.scope == "global":
        loss_fn = GlobalTripletLoss(loss_fn)
    options = StepOptions(device, cfg.train.channels_last, cfg.train.grad_clip, autocast_dtype,
                          data.normalize)
    checkpoints = Checkpoints(run.root, cfg.train.keep_checkpoints)
    collapse = CollapseDetector(cfg.train.collapse_patience)
    last_val = ckpt.get("val") if ckpt is not None else None
    stop_requested = False
    newest: Path | None = info.checkpoint if info else None
    tensorboard = (TensorBoardScalars(run.root / "tensorboard",
                                      purge_step=state.step + 1 if ckpt is not None else None)
                   if main and cfg.train.tensorboard else None)
    with MetricsLog(run.metrics, append=resume, enabled=main, tensorboard=tensorboard) as metrics:

        def save(val: dict | None) -> dict:
            nonlocal newest
            rngs = ctx.gather_objects(rng_state()) if ctx.distributed else None
            saved = checkpoint_dict(state, cfg, val, rngs)
            if main:
                metrics.flush()  # the log is never behind a checkpoint
                newest = checkpoints.save(saved)
            return saved

        def after_step(s: StepLog) -> None:
            if ctx.distributed:  # every rank holds an equal share: count the whole job's
                s = replace(s, images=s.images * ctx.world_size,
                            images_per_s=s.images_per_s * ctx.world_size)
            metrics.step(s.epoch, s.step, s.loss, s.lr, s.images_per_s, s.stats)
            every = cfg.train.checkpoint_every
            if every and state.step % every == 0 and state.batch < len(data.sampler):
                save(last_val)
            if main and on_step is not None:
                on_step(s)

        def stop() -> bool:
            nonlocal stop_requested
            asked = stop_requested or (should_stop is not None and should_stop())
            stop_requested = ctx.all_agree(asked, device)
            return stop_requested

        def stopped() -> TrainingStopped:
            return TrainingStopped(TrainResult(
                run.root, cfg.train.epochs, state.step, state.best_epoch, state.best_accuracy,
                last_val, stopped=True, checkpoint=newest))

        while state.epoch < cfg.train.epochs:
            epoch = state.epoch
            if state.batch == 0:  # a resumed epoch continues from its checkpoint's state
                torch.manual_seed(epoch_seed(cfg.seed, epoch))
            elif ckpt is not None and "rng" in ckpt:
                ranks = ckpt.get("rng_ranks", [ckpt["rng"]])
                set_rng_state(ranks[ctx.rank] if len(ranks) == ctx.world_size else ckpt["rng"])
            data.sampler.set_epoch(epoch, state.batch)
            finished = train_one_epoch(state, loss_fn, data.train_loader, options, collapse,
                                       after_step, stop, cfg.train.max_bad_steps)
            if not finished:
                save(last_val)
                raise stopped()
            last_val = None
            if data.val_loader is not None:
                last_val = validate(state.net, data.val_loader, data.val_pairs,
                                    cfg.eval.metric, options)
            metrics.epoch(epoch, state.step, last_val,
                          getattr(data.train_loader.dataset, "failures", 0),
                          state.skipped_steps)
            acc = None if last_val is None else last_val["accuracy"]
            improved = acc is not None and (state.best_accuracy is None
                                            or acc > state.best_accuracy)
            if improved:
                state.best_accuracy, state.best_epoch = acc, epoch
            state.epoch, state.batch = epoch + 1, 0
            saved = save(last_val)
            if main and (improved or data.val_index is None):
                save_checkpoint(saved, run.best, weights_only=True)
            if main and on_epoch is not None:
                on_epoch(epoch, last_val)
            if stop():
                raise stopped()
    return TrainResult(run.root, cfg.train.epochs, state.step, state.best_epoch,
                       state.best_accuracy, last_val, checkpoint=newest)
