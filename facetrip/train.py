"""``facetrip train``: build data, model, loss and optimiser from a config and run the loop.

Plain functions in the style of torchvision's reference scripts: :func:`load_data`,
:func:`build_model`, :func:`build_optimizer`, :func:`validate`, and :func:`train`, which owns
the run directory (resolved config, ``metrics.jsonl``, ``last.pt``, ``best.pt``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facetrip.checkpoint import atomic_save, load_checkpoint
from facetrip.config import Config, config_from_dict, config_to_dict, save_config
from facetrip.data.dataset import FaceDataset
from facetrip.data.folder import (
    ImageFolderIndex,
    filter_min_images,
    scan_identity_folder,
    split_identities,
)
from facetrip.data.sampler import PKSampler
from facetrip.data.transforms import build_transform
from facetrip.engine import (
    CollapseDetector,
    StepLog,
    cosine_warmup_lambda,
    embed_all,
    train_one_epoch,
)
from facetrip.errors import UserError
from facetrip.evaluate import load_pairs, pair_distances
from facetrip.losses import TripletLoss
from facetrip.metrics import verification_metrics
from facetrip.model import EmbeddingNet, ModelSpec, load_trunk_weights
from facetrip.pairs import PairIndexList

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Loaders and the facts about the data a user wants to see before a long run."""

    train_loader: torch.utils.data.DataLoader
    sampler: PKSampler
    val_loader: torch.utils.data.DataLoader | None
    val_index: ImageFolderIndex | None
    val_pairs: PairIndexList | None  #: drawn once, with the run's seed
    train_images: int
    train_identities: int
    dropped_identities: int  #: training identities with fewer than min_images_per_identity
    skip_summary: str  #: '' or "skipped N files: ..." from the scan


@dataclass
class TrainResult:
    """Where the run went and how it ended."""

    run_dir: Path
    epochs: int
    steps: int
    best_epoch: int | None
    best_accuracy: float | None
    last_val: dict | None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but CUDA is not available on this machine")
    return device


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``: every epoch's randomness is independent of the past."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> 1)


def load_data(cfg: Config, device: torch.device) -> TrainData:
    """Scan ``cfg.data.root``, split identities, build the PK training and validation loaders."""
    if not cfg.data.root:
        raise UserError("data.root is not set: pass --set data.root=DIR or set it in the config")
    full = scan_identity_folder(cfg.data.root)
    train_idx, val_idx = split_identities(full, cfg.data.val_fraction, cfg.seed)
    kept = filter_min_images(train_idx, max(2, cfg.data.min_images_per_identity))
    dropped = len(train_idx.classes) - len(kept.classes)
    if len(kept.classes) < cfg.sampler.p:
        raise UserError(
            f"{cfg.data.root}: only {len(kept.classes)} training identities have at least "
            f"{max(2, cfg.data.min_images_per_identity)} images; sampler.p={cfg.sampler.p} "
            "needs at least that many"
        )
    d = cfg.data
    train_tf = build_transform(d.image_size, d.mean, d.std, d.crop_fraction, augment=d.augment)
    eval_tf = build_transform(d.image_size, d.mean, d.std, d.crop_fraction, augment=False)
    sampler = PKSampler(kept.labels, cfg.sampler.p, cfg.sampler.k,
                        cfg.sampler.batches_per_epoch, seed=cfg.seed)
    pin = device.type == "cuda"
    common = dict(num_workers=d.workers, pin_memory=pin, persistent_workers=d.workers > 0)
    train_loader = torch.utils.data.DataLoader(
        FaceDataset(kept, train_tf), batch_sampler=sampler, **common
    )
    val_loader, val_pairs = None, None
    if val_idx is not None:
        val_loader = torch.utils.data.DataLoader(
            FaceDataset(val_idx, eval_tf), batch_size=cfg.eval.batch_size, **common
        )
        val_pairs = load_pairs(val_idx, None, cfg.eval.folds, cfg.eval.pairs_per_fold, cfg.seed)
    return TrainData(train_loader, sampler, val_loader, val_idx, val_pairs, len(kept),
                     len(kept.classes), dropped, full.skip_summary())


def build_model(cfg: Config) -> EmbeddingNet:
    """The embedding network of ``cfg.model``, with local trunk weights when configured."""
    m = cfg.model
    model = EmbeddingNet(ModelSpec(m.arch, m.stem, m.embedding_dim, m.head_bn))
    if m.pretrained:
        load_trunk_weights(model, m.pretrained)
    return model


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; no weight decay on biases and normalisation parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                               nesterov=cfg.optim.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr)


def build_scheduler(
    cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up then cosine decay over the whole run."""
    total = cfg.train.epochs * steps_per_epoch
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    factor = cosine_warmup_lambda(total, warmup, cfg.optim.min_lr / cfg.optim.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def validate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    pairs: PairIndexList,
    metric: str,
    device: torch.device,
    channels_last: bool = False,
) -> dict:
    """Verification metrics of ``model`` on ``pairs`` of the validation images (no ROC curve)."""
    emb, _ = embed_all(model, loader, device, channels_last)
    result = verification_metrics(pair_distances(emb, pairs, metric), pairs.issame,
                                  folds=pairs.fold)
    return {k: v for k, v in result.items() if k != "roc"}


def _check_resume(saved: Config, wanted: Config) -> Config:
    """A resumed run keeps its saved config; only ``train.epochs`` may grow."""
    a, b = config_to_dict(saved), config_to_dict(wanted)
    diffs = [
        f"{section}.{key}"
        for section, values in a.items() if isinstance(values, dict)
        for key, value in values.items()
        if b[section][key] != value and f"{section}.{key}" != "train.epochs"
    ] + (["seed"] if a["seed"] != b["seed"] else [])
    if diffs:
        raise UserError(
            "cannot resume with a different config (changed: " + ", ".join(diffs) + "); "
            "start a new run with --out instead"
        )
    saved.train.epochs = wanted.train.epochs
    return saved


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
    run_dir = Path(run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    ckpt = None
    if resume:
        ckpt = load_checkpoint(last_path)
        cfg = _check_resume(config_from_dict(ckpt["config"]), cfg)
    elif last_path.exists():
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it or --out NEW_DIR"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, device)
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = TripletLoss(mining=cfg.loss.mining, margin=cfg.loss.margin,
                          distance=cfg.loss.distance)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(data.sampler))
    start_epoch, step, best_acc, best_epoch = 0, 0, None, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        # After the scheduler exists: building one resets the learning rate, loading the
        # optimizer restores it. The schedule itself comes from the (possibly longer) config.
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        best_acc, best_epoch = ckpt.get("best_accuracy"), ckpt.get("best_epoch")
    if on_start is not None:
        on_start(data, device)

    collapse = CollapseDetector(cfg.train.collapse_patience)
    last_val = None
    with open(run_dir / "metrics.jsonl", "a" if resume else "w") as metrics_file:

        def log_step(s: StepLog) -> None:
            row = {"type": "step", "epoch": s.epoch, "step": s.step, "loss": s.loss,
                   "lr": s.lr, "images_per_s": s.images_per_s, **s.stats}
            metrics_file.write(json.dumps(row) + "\n")
            if on_step is not None:
                on_step(s)

        for epoch in range(start_epoch, cfg.train.epochs):
            torch.manual_seed(epoch_seed(cfg.seed, epoch))
            data.sampler.set_epoch(epoch)
            step = train_one_epoch(
                model, loss_fn, optimizer, scheduler, data.train_loader, device, epoch, step,
                cfg.train.channels_last, cfg.train.grad_clip, collapse, log_step,
            )
            last_val = None
            if data.val_loader is not None:
                last_val = validate(model, data.val_loader, data.val_pairs, cfg.eval.metric,
                                    device, cfg.train.channels_last)
            row = {"type": "epoch", "epoch": epoch, "step": step, "val": last_val}
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            acc = None if last_val is None else last_val["accuracy"]
            improved = acc is not None and (best_acc is None or acc > best_acc)
            if improved:
                best_acc, best_epoch = acc, epoch
            state = {
                "config": config_to_dict(cfg),
                "model_spec": model.spec.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "step": step,
                "best_accuracy": best_acc,
                "best_epoch": best_epoch,
                "val": last_val,
            }
            atomic_save(state, last_path)
            if improved or data.val_loader is None:  # weights only: no optimizer state
                skip = ("optimizer", "scheduler")
                atomic_save({k: v for k, v in state.items() if k not in skip}, best_path)
            if on_epoch is not None:
                on_epoch(epoch, last_val)
    return TrainResult(run_dir, cfg.train.epochs, step, best_epoch, best_acc, last_val)
