"""``facetrip train``, the workflow: build everything from the config, run the epochs, keep
the run directory (:mod:`facetrip.training.run`) up to date."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
from facetrip.training.checkpoint import checkpoint_dict, load_checkpoint, save_checkpoint
from facetrip.training.loop import CollapseDetector, StepLog, StepOptions, train_one_epoch, validate
from facetrip.training.run import MetricsLog, RunDir, write_skip_report
from facetrip.training.state import TrainState


@dataclass
class TrainResult:
    """Where the run went and how it ended."""

    run_dir: Path
    epochs: int
    steps: int
    best_epoch: int | None
    best_accuracy: float | None
    last_val: dict | None


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``: every epoch's randomness is independent of the past."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> 1)


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    on_start: Callable[[TrainData, torch.device], None] | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    on_epoch: Callable[[int, dict | None], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir``; with ``resume``, continue from ``run_dir/last.pt``.

    Writes ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per step and per
    epoch), ``last.pt`` after every epoch and ``best.pt`` whenever validation accuracy
    improves (atomic writes). Batches and augmentation depend only on ``(seed, epoch)``, so a
    resumed run continues exactly as an uninterrupted one would.
    """
    run = RunDir(Path(run_dir))
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run.last)
        cfg = resume_config(config_from_dict(ckpt["config"]), cfg)
    elif run.holds_run():
        raise UserError(
            f"{run.root} already holds a run; pass --resume to continue it or --out NEW_DIR"
        )
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)

    device = resolve_device(cfg.train.device)
    autocast_dtype = resolve_precision(cfg.train.precision, device)
    data = load_data(cfg, device)
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
    if on_start is not None:
        on_start(data, device)

    loss_fn = build_loss(cfg)
    options = StepOptions(device, cfg.train.channels_last, cfg.train.grad_clip, autocast_dtype,
                          data.normalize)
    collapse = CollapseDetector(cfg.train.collapse_patience)
    last_val = None
    with MetricsLog(run.metrics, append=resume) as metrics:

        def log_step(s: StepLog) -> None:
            metrics.step(s.epoch, s.step, s.loss, s.lr, s.images_per_s, s.stats)
            if on_step is not None:
                on_step(s)

        while state.epoch < cfg.train.epochs:
            epoch = state.epoch
            torch.manual_seed(epoch_seed(cfg.seed, epoch))
            data.sampler.set_epoch(epoch, state.batch)
            train_one_epoch(state, loss_fn, data.train_loader, options, collapse, log_step)
            last_val = None
            if data.val_loader is not None:
                last_val = validate(model, data.val_loader, data.val_pairs, cfg.eval.metric,
                                    options)
            metrics.epoch(epoch, state.step, last_val,
                          getattr(data.train_loader.dataset, "failures", 0))
            acc = None if last_val is None else last_val["accuracy"]
            improved = acc is not None and (state.best_accuracy is None
                                            or acc > state.best_accuracy)
            if improved:
                state.best_accuracy, state.best_epoch = acc, epoch
            state.epoch, state.batch = epoch + 1, 0
            ckpt = checkpoint_dict(state, cfg, last_val)
            save_checkpoint(ckpt, run.last)
            if improved or data.val_loader is None:
                save_checkpoint(ckpt, run.best, weights_only=True)
            if on_epoch is not None:
                on_epoch(epoch, last_val)
    return TrainResult(run.root, cfg.train.epochs, state.step, state.best_epoch,
                       state.best_accuracy, last_val)
