"""``facetrip train``: build data, model, loss and optimiser from a config and run the loop.

Plain functions in the style of torchvision's reference scripts: :func:`load_data`,
:func:`build_model`, :func:`build_optimizer`, :func:`validate`, and :func:`train`, which owns
the run directory (resolved config, ``metrics.jsonl``, ``last.pt``, ``best.pt``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facetrip.checkpoint import atomic_save, load_checkpoint
from facetrip.config import Config, config_from_dict, config_to_dict, save_config
from facetrip.data.cache import load_or_build_cache
from facetrip.data.dataset import (
    AugmentCollate,
    CachedFaceDataset,
    FaceDataset,
    SeededItems,
)
from facetrip.data.decode import display_path
from facetrip.data.folder import (
    ImageFolderIndex,
    filter_min_images,
    scan_identity_folder,
    split_identities,
)
from facetrip.data.sampler import PKSampler, SeededBatchSampler
from facetrip.data.transforms import BatchAugment, Normalize, Preprocess
from facetrip.engine import (
    CollapseDetector,
    StepLog,
    cosine_warmup_lambda,
    embed_all,
    train_one_epoch,
)
from facetrip.errors import UserError
from facetrip.evaluate import pair_distances
from facetrip.losses import TripletLoss
from facetrip.metrics import verification_metrics
from facetrip.model import EmbeddingNet, ModelSpec, load_trunk_weights
from facetrip.pairs import PairIndexList, generate_pairs

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Loaders and the facts about the data a user wants to see before a long run.

    Both loaders yield ``(uint8 (B, 3, S, S), labels (B,))``, training batches already
    augmented (in the workers); ``normalize`` turns a batch into the model's float input on
    the device.
    """

    train_loader: torch.utils.data.DataLoader
    sampler: SeededBatchSampler  #: ``set_epoch`` selects the batches and their augmentation
    val_loader: torch.utils.data.DataLoader | None
    val_index: ImageFolderIndex | None
    val_pairs: PairIndexList | None  #: drawn once, with the run's seed
    train_images: int
    train_identities: int
    dropped_identities: int  #: training identities with fewer than min_images_per_identity
    skip_summary: str  #: '' or "skipped N files: ..." from the scan
    normalize: Normalize
    index: ImageFolderIndex  #: the whole scanned dataset (with its skipped files)
    excluded: dict[str, int]  #: identity -> usable images, for identities left out of training
    cache_note: str = ""  #: '' or how the decoded cache was used / why it was (re)built


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


def preprocess_from_config(cfg: Config) -> Preprocess:
    """The deterministic per-image preprocessing of ``cfg.data`` (what the cache stores)."""
    d = cfg.data
    box = tuple(d.crop_box) if d.crop_box is not None else None
    return Preprocess(d.image_size, d.crop_fraction, box, d.grayscale)


def resolve_workers(workers: int | None) -> int:
    """``data.workers``; ``None`` = one per CPU core but one (for the model), 1 to 8."""
    if workers is not None:
        return workers
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def load_data(cfg: Config, device: torch.device) -> TrainData:
    """Scan ``cfg.data.root`` (or open/build the decoded cache), split identities, build the PK
    training and validation loaders.

    Raises:
        UserError: no data, too few identities, or (with ``data.strict``) any skipped file.
    """
    d = cfg.data
    if not d.root:
        raise UserError("data.root is not set: pass --set data.root=DIR or set it in the config")
    preprocess = preprocess_from_config(cfg)
    cache, cache_note = None, ""
    if d.cache:
        cache, why = load_or_build_cache(d.root, d.cache, preprocess, resolve_workers(d.workers))
        cache_note = (f"decoded cache {d.cache}: " +
                      (f"built ({why})" if why else "up to date, reused"))
        full = cache.index
    else:
        full = scan_identity_folder(d.root)
    if d.strict and full.skipped:
        first = full.skipped[0]
        raise UserError(f"data.strict: {full.skip_summary()} (first: "
                        f"{display_path(first.path)}: {first.reason})")
    train_idx, val_idx = split_identities(full, d.val_fraction, cfg.seed)
    val_pairs = None
    if val_idx is not None:  # drawn before any slow work, so a bad setting fails at once
        try:
            val_pairs = generate_pairs(val_idx.labels, cfg.eval.folds, cfg.eval.pairs_per_fold,
                                       cfg.seed)
        except ValueError as exc:
            raise UserError(
                f"cannot draw {cfg.eval.folds} x {cfg.eval.pairs_per_fold} validation pairs "
                f"from the {len(val_idx.classes)} held-out identities (data.val_fraction="
                f"{d.val_fraction}): {exc} (config keys: eval.pairs_per_fold, eval.folds, "
                "data.val_fraction)"
            ) from None
    min_images = max(2, d.min_images_per_identity)
    kept = filter_min_images(train_idx, min_images)
    counts = train_idx.images_per_class()
    excluded = {c: int(n) for c, n in zip(train_idx.classes, counts, strict=True)
                if n < min_images}
    excluded.update({c: 0 for c in full.empty_classes})
    if len(kept.classes) < cfg.sampler.p:
        raise UserError(
            f"{d.root}: only {len(kept.classes)} training identities have at least "
            f"{min_images} images; sampler.p={cfg.sampler.p} needs at least that many"
        )
    sampler = SeededBatchSampler(PKSampler(kept.labels, cfg.sampler.p, cfg.sampler.k,
                                           cfg.sampler.batches_per_epoch, seed=cfg.seed),
                                 seed=cfg.seed)
    workers = resolve_workers(d.workers)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0)

    def dataset(index: ImageFolderIndex) -> torch.utils.data.Dataset:
        return CachedFaceDataset(index, cache) if cache else FaceDataset(index, preprocess)

    train_loader = torch.utils.data.DataLoader(
        SeededItems(dataset(kept)), batch_sampler=sampler,
        collate_fn=AugmentCollate(BatchAugment(d.mean) if d.augment else None), **common,
    )
    val_loader = None
    if val_idx is not None:
        val_loader = torch.utils.data.DataLoader(dataset(val_idx),
                                                 batch_size=cfg.eval.batch_size, **common)
    return TrainData(
        train_loader, sampler, val_loader, val_idx, val_pairs, len(kept), len(kept.classes),
        len(excluded), full.skip_summary(), normalize=Normalize(d.mean, d.std), index=full,
        excluded=excluded, cache_note=cache_note,
    )


def write_skip_report(data: TrainData, path: str | Path) -> Path | None:
    """Write every skipped file and excluded identity to ``path`` (tab-separated, one per
    line); ``None`` (and no file) if there are none."""
    if not data.index.skipped and not data.excluded:
        return None
    path = Path(path)
    lines = [f"# files not used, relative to {data.index.root}: reason<TAB>path"]
    lines += [f"{s.reason}\t{s.path}" for s in data.index.skipped]
    lines += ["# identities left out of triplet batches: images<TAB>identity/"]
    lines += [f"{n} image{'s' * (n != 1)}\t{name}/" for name, n in sorted(data.excluded.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    return path


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """``train.precision`` -> the autocast dtype (``None`` = fp32, no autocast)."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


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
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Verification metrics of ``model`` on ``pairs`` of the validation images (no ROC curve)."""
    emb, _ = embed_all(model, loader, device, channels_last, batch_transform)
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
    autocast_dtype = resolve_precision(cfg.train.precision, device)
    data = load_data(cfg, device)
    report = write_skip_report(data, run_dir / "skipped.txt")
    if report is not None and data.skip_summary:
        data.skip_summary += f"; see {report}"
    # seeded here, after the data: building a cache draws from torch's generator (DataLoader
    # seeds), and the initial weights must not depend on whether one was built
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = TripletLoss(mining=cfg.loss.mining, margin=cfg.loss.margin,
                          distance=cfg.loss.distance)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(data.sampler))
    scaler = (torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None)
    start_epoch, step, best_acc, best_epoch = 0, 0, None, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        # After the scheduler exists: building one resets the learning rate, loading the
        # optimizer restores it. The schedule itself comes from the (possibly longer) config.
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
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
                data.normalize, autocast_dtype, scaler,
            )
            last_val = None
            if data.val_loader is not None:
                last_val = validate(model, data.val_loader, data.val_pairs, cfg.eval.metric,
                                    device, cfg.train.channels_last, data.normalize)
            row = {"type": "epoch", "epoch": epoch, "step": step, "val": last_val,
                   "replaced_images": getattr(data.train_loader.dataset, "failures", 0)}
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
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            atomic_save(state, last_path)
            if improved or data.val_loader is None:  # weights only: no optimizer state
                skip = ("optimizer", "scheduler", "scaler")
                atomic_save({k: v for k, v in state.items() if k not in skip}, best_path)
            if on_epoch is not None:
                on_epoch(epoch, last_val)
    return TrainResult(run_dir, cfg.train.epochs, step, best_epoch, best_acc, last_val)
