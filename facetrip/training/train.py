"""``facetrip train``, the workflow in two named steps: :func:`prepare_run` (config -> data,
model, loss, optimiser, schedule, state and run directory) and :func:`fit` (the epochs, with
validation, checkpoints and ``metrics.jsonl``), reporting through one :class:`TrainHooks`.

A run can be stopped (``TrainHooks.should_stop``, e.g. on SIGTERM) or killed at any point and
resumed: checkpoints are written every ``train.checkpoint_every`` steps and at each epoch end,
and ``resume`` continues from the newest readable one at the next batch, with the same
batches, augmentation and random state, so the result is the uninterrupted run's, bit for bit
on CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from facetrip.config import Config, config_from_dict, resume_config, save_config
from facetrip.errors import UserError
from facetrip.loss.classifier import JointLoss
from facetrip.loss.margin import AdaptiveMarginLoss
from facetrip.loss.memory import MemoryTripletLoss
from facetrip.metrics.bins import embed_bin, score_bin
from facetrip.training.build import (
    TrainData,
    build_classifier,
    build_loss,
    build_margin,
    build_memory,
    build_model,
    build_optimizer,
    build_schedule,
    build_scheduler,
    load_data,
    resolve_device,
    resolve_precision,
    resolve_workers,
    saved_schedule,
)
from facetrip.training.checkpoint import (
    Checkpoints,
    checkpoint_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from facetrip.training.distributed import DistContext, GlobalClassifierLoss, GlobalTripletLoss
from facetrip.training.hooks import ResumeInfo, TrainHooks
from facetrip.training.loop import (
    CollapseDetector,
    StepLog,
    StepOptions,
    TrainingDiverged,
    train_one_epoch,
    validate,
)
from facetrip.training.metrics_log import MetricsLog, TensorBoardScalars, truncate_metrics
from facetrip.training.rundir import RunDir, write_skip_report
from facetrip.training.schedule import set_learning_rate
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
    checkpoint: Path | None = None  #: the newest checkpoint


class TrainingStopped(Exception):
    """The run was asked to stop; its checkpoint is :attr:`result.checkpoint`."""

    def __init__(self, result: TrainResult) -> None:
        super().__init__(f"stopped at step {result.steps}; checkpoint {result.checkpoint}")
        self.result = result


@dataclass
class PreparedRun:
    """Everything :func:`fit` needs, built from the config by :func:`prepare_run`."""

    cfg: Config
    dir: RunDir
    ctx: DistContext
    device: torch.device
    data: TrainData
    state: TrainState
    loss_fn: nn.Module
    options: StepOptions
    resumed: ResumeInfo | None = None
    checkpoint: dict | None = None  #: the checkpoint resumed from (random states, last val)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``: every epoch's randomness is independent of the past."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> 1)


def prepare_run(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    dist_context: DistContext | None = None,
) -> PreparedRun:
    """Check the run directory, load the data, build the model, loss, optimiser, schedule and
    state, and (``resume``) restore them from the newest checkpoint.

    ``overwrite`` replaces a run already in ``run_dir``; ``force`` resumes with a changed
    config. Distributed (``dist_context``, default: torchrun's environment): every rank builds
    its share of the data and wraps the model in DistributedDataParallel; rank 0 alone writes.

    Raises:
        UserError: a bad config, data or run directory.
    """
    ctx = dist_context or DistContext.from_env()
    run = RunDir(Path(run_dir))
    device = ctx.device(str(resolve_device(cfg.train.device)))
    ctx.init(device, cfg.train.dist_timeout)
    cfg, ckpt, info = _open_run(cfg, run, resume, overwrite, force, writer=ctx.is_main)
    autocast_dtype = resolve_precision(cfg.train.precision, device)
    data = load_data(cfg, device, ctx.rank, ctx.world_size)
    cfg = data.config  # every auto value resolved for this data (training.sizing)
    if ctx.is_main:  # only once the data loaded: a refused run leaves no directory behind
        run.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
        report = write_skip_report(data.index, data.excluded, run.skipped)
        if report is not None and data.skip_summary:
            data.skip_summary += f"; see {report}"
    ctx.barrier()
    state = _build_state(cfg, data, device, autocast_dtype, ckpt, info)
    if ctx.distributed:  # after loading: every rank starts from the same weights
        state.model = nn.parallel.DistributedDataParallel(
            state.model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = triplet = build_loss(cfg)
    if ctx.distributed and cfg.loss.scope == "global":
        loss_fn = GlobalTripletLoss(loss_fn, state.memory)
    elif state.memory is not None:
        loss_fn = MemoryTripletLoss(loss_fn, state.memory)
    if state.margin is not None:
        loss_fn = AdaptiveMarginLoss(loss_fn, triplet, state.margin)
    if state.classifier is not None:
        head = GlobalClassifierLoss(state.classifier) if ctx.distributed else state.classifier
        loss_fn = JointLoss(loss_fn, head, cfg.loss.classifier_weight, cfg.loss.neck)
    options = StepOptions(device, cfg.train.channels_last, cfg.train.grad_clip, autocast_dtype,
                          data.normalize, cfg.loss.neck)
    return PreparedRun(cfg, run, ctx, device, data, state, loss_fn, options, info, ckpt)


def _build_state(cfg: Config, data: TrainData, device: torch.device,
                 autocast_dtype: torch.dtype | None, ckpt: dict | None,
                 info: ResumeInfo | None) -> TrainState:
    """The model, optimiser, schedule and scaler, restored from ``ckpt`` when resuming."""
    # seeded here, after the data: building a cache draws from torch's generator (DataLoader
    # seeds), and the initial weights must not depend on whether one was built
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, initial=ckpt is None).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    classifier, memory = build_classifier(cfg, data.train_identities), build_memory(cfg)
    classifier = classifier.to(device) if classifier is not None else None
    memory = memory.to(device) if memory is not None else None
    margin = build_margin(cfg)  # stays on the CPU: a number read and written every step
    optimizer = build_optimizer(cfg, model, classifier)
    schedule = build_schedule(cfg, len(data.sampler), ckpt)
    state = TrainState(
        model, optimizer, build_scheduler(optimizer, schedule),
        torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None,
        schedule=schedule, classifier=classifier, memory=memory, margin=margin,
    )
    if cfg.train.ema is not None:
        state.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema),
                                  use_buffers=True)
    if ckpt is not None:
        state.load_state_dict(ckpt)
        if schedule != saved_schedule(ckpt, len(data.sampler)):  # train.epochs changed:
            set_learning_rate(state.scheduler, state.step)  # follow it from the first step
            info.schedule = schedule.describe(cfg.optim.lr)
    return state


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


def fit(run: PreparedRun, hooks: TrainHooks | None = None) -> TrainResult:
    """Train the prepared run to ``train.epochs``: validate after every epoch, write
    ``metrics.jsonl`` (on resume cut back to the checkpoint first, so every step appears
    once), checkpoints every ``train.checkpoint_every`` steps and after every epoch
    (``checkpoints/``, ``last.pt``), and ``best.pt`` whenever validation accuracy improves.

    Raises:
        UserError: a checkpoint cannot be written.
        TrainingDiverged: too many non-finite steps in a row, weights that became non-finite,
            or a run whose last steps were all skipped (the last good checkpoint is intact).
        TrainingStopped: ``hooks.should_stop()`` said so (a checkpoint was written).
    """
    hooks = hooks or TrainHooks()
    main, state = run.ctx.is_main, run.state
    if main and run.resumed is not None:
        truncate_metrics(run.dir.metrics, state.step, state.epoch)
        hooks.resumed(run.resumed)
    if main:
        hooks.started(run.data, run.device)
    tensorboard = (TensorBoardScalars(run.dir.root / "tensorboard", purge_step=state.step + 1
                                      if run.checkpoint is not None else None)
                   if main and run.cfg.train.tensorboard else None)
    with MetricsLog(run.dir.metrics, append=run.resumed is not None, enabled=main,
                    tensorboard=tensorboard) as metrics:
        epochs = _Epochs(run, metrics, hooks)
        while state.epoch < run.cfg.train.epochs:
            epochs.run_one()
    if state.bad_steps:
        raise TrainingDiverged(
            f"the run's last {state.bad_steps} steps were skipped (a non-finite loss or "
            "gradient), so it did not train to its end; lower optim.lr or set train.grad_clip")
    return epochs.result()


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    hooks: TrainHooks | None = None,
    *,
    overwrite: bool = False,
    force: bool = False,
    dist_context: DistContext | None = None,
) -> TrainResult:
    """:func:`prepare_run` then :func:`fit`: train ``cfg`` into ``run_dir`` (see both)."""
    run = prepare_run(cfg, run_dir, resume=resume, overwrite=overwrite, force=force,
                      dist_context=dist_context)
    return fit(run, hooks)


def score_val_bins(run: PreparedRun) -> dict[str, dict]:
    """``{name: verification metrics}`` of each ``train.val_bins`` set with the network as it
    is (10 folds, as :func:`facetrip.metrics.bins.score_bin`)."""
    data, options = run.data, run.options
    scores = {}
    for bin_set in data.val_bins:
        emb, decoded = embed_bin(run.state.evaluated, bin_set, data.preprocess, options.device,
                                 options.batch_transform, options.channels_last,
                                 batch_size=run.cfg.eval.batch_size,
                                 workers=resolve_workers(run.cfg.data.workers))
        scores[bin_set.name] = score_bin(bin_set, emb, decoded, run.cfg.eval.metric).metrics
    return scores


def tracked_accuracy(best_metric: str, val: dict | None, bins: dict[str, dict] | None
                     ) -> float | None:
    """What ``best.pt`` follows: the held-out pairs' accuracy (``val``), or the mean accuracy
    of the ``.bin`` sets (``bins``); None when it was not measured (on other ranks)."""
    if best_metric == "bins":
        return None if not bins else float(np.mean([b["accuracy"] for b in bins.values()]))
    return None if val is None else val["accuracy"]


class _Epochs:
    """The epoch loop of :func:`fit` and what it carries from step to step: the last
    validation, the newest checkpoint, whether a stop was asked."""

    def __init__(self, run: PreparedRun, metrics: MetricsLog, hooks: TrainHooks) -> None:
        self.run, self.metrics, self.hooks = run, metrics, hooks
        self.checkpoints = Checkpoints(run.dir.root, run.cfg.train.keep_checkpoints)
        self.collapse = CollapseDetector(run.cfg.train.collapse_patience)
        self.last_val = run.checkpoint.get("val") if run.checkpoint is not None else None
        self.newest = run.resumed.checkpoint if run.resumed is not None else None
        self.stop_requested = False

    def result(self) -> TrainResult:
        s = self.run.state
        return TrainResult(self.run.dir.root, self.run.cfg.train.epochs, s.step, s.best_epoch,
                           s.best_accuracy, self.last_val, checkpoint=self.newest)

    def run_one(self) -> None:
        """Train, validate and checkpoint the epoch in progress (the rest of it, resumed)."""
        run, state = self.run, self.run.state
        epoch = state.epoch
        self._seed(epoch)
        run.data.sampler.set_epoch(epoch, state.batch)
        finished = train_one_epoch(state, run.loss_fn, run.data.train_loader, run.options,
                                   self.collapse, self.after_step, self.stop,
                                   run.cfg.train.max_bad_steps)
        if not finished:
            self.save(self.last_val)
            raise TrainingStopped(self.result())
        self.last_val = None
        if run.data.val_loader is not None:
            self.last_val = validate(state.evaluated, run.data.val_loader, run.data.val_pairs,
                                     run.cfg.eval.metric, run.options)
        bins = score_val_bins(run) if run.data.val_bins else None
        self.metrics.epoch(epoch, state.step, self.last_val,
                           getattr(run.data.train_loader.dataset, "failures", 0),
                           state.skipped_steps, bins=bins)
        acc = tracked_accuracy(run.cfg.train.best_metric, self.last_val, bins)
        improved = acc is not None and (state.best_accuracy is None or acc > state.best_accuracy)
        if improved:
            state.best_accuracy, state.best_epoch = acc, epoch
        state.epoch, state.batch = epoch + 1, 0
        saved = self.save(self.last_val)
        if run.ctx.is_main and (improved or acc is None):  # nothing to follow: the newest
            best = saved if state.ema is None else {**saved,
                                                    "model": state.evaluated.state_dict()}
            save_checkpoint(best, run.dir.best, weights_only=True)
        if run.ctx.is_main:
            self.hooks.epoch_end(epoch, self.last_val)
            if bins is not None:
                self.hooks.bins_scored(epoch, bins)
        if self.stop():
            raise TrainingStopped(self.result())

    def _seed(self, epoch: int) -> None:
        """A new epoch is seeded from ``(seed, epoch)``; a resumed one continues from its
        checkpoint's random state (this rank's)."""
        run, ckpt = self.run, self.run.checkpoint
        if run.state.batch == 0:
            torch.manual_seed(epoch_seed(run.cfg.seed, epoch))
        elif ckpt is not None and "rng" in ckpt:
            ranks = ckpt.get("rng_ranks", [ckpt["rng"]])
            ctx = run.ctx
            set_rng_state(ranks[ctx.rank] if len(ranks) == ctx.world_size else ckpt["rng"])

    def save(self, val: dict | None) -> dict:
        """Checkpoint the state (every rank's random state gathered to rank 0, which writes)."""
        ctx = self.run.ctx
        rngs = ctx.gather_objects(rng_state()) if ctx.distributed else None
        saved = checkpoint_dict(self.run.state, self.run.cfg, val, rngs)
        if ctx.is_main:
            self.metrics.flush()  # the log is never behind a checkpoint
            self.newest = self.checkpoints.save(saved)
        return saved

    def after_step(self, s: StepLog) -> None:
        ctx, state = self.run.ctx, self.run.state
        if ctx.distributed:  # every rank holds an equal share: count the whole job's
            s = replace(s, images=s.images * ctx.world_size,
                        images_per_s=s.images_per_s * ctx.world_size)
        self.metrics.step(s.epoch, s.step, s.loss, s.lr, s.images_per_s, s.stats)
        every = self.run.cfg.train.checkpoint_every
        if every and state.step % every == 0 and state.batch < len(self.run.data.sampler):
            self.save(self.last_val)
        if ctx.is_main:
            self.hooks.step(s)

    def stop(self) -> bool:
        asked = self.stop_requested or self.hooks.should_stop()
        self.stop_requested = self.run.ctx.all_agree(asked, self.run.device)
        return self.stop_requested
