"""Config -> built objects: device, precision, data loaders, model, loss, optimiser, schedule.

Plain functions in the style of torchvision's reference scripts. Everything downstream (the
loop, the run directory) receives what these return, never the config itself.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from facetrip.config import Config, config_from_dict
from facetrip.data.bins import VerificationBin, read_bins
from facetrip.data.cache import load_or_build_cache
from facetrip.data.dataset import AugmentCollate, CachedFaceDataset, FaceDataset, SeededItems
from facetrip.data.decode import display_path
from facetrip.data.index import (
    ImageFolderIndex,
    filter_min_images,
    split_identities,
)
from facetrip.data.sampler import PKSampler, SeededBatchSampler
from facetrip.data.source import scan_dataset
from facetrip.data.transforms import (
    BatchAugment,
    Normalize,
    Preprocess,
    preprocess_from_config,
)
from facetrip.errors import UserError
from facetrip.loss import TripletLoss
from facetrip.loss.classifier import IdentityClassifier
from facetrip.loss.margin import AdaptiveMargin
from facetrip.loss.memory import CrossBatchMemory
from facetrip.metrics.pairs import PairIndexList, generate_pairs
from facetrip.model import EmbeddingNet, ModelSpec, load_trunk_weights
from facetrip.training.checkpoint import load_checkpoint
from facetrip.training.schedule import LRSchedule
from facetrip.training.sizing import run_index, size_for_data

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Loaders and the facts about the data a user wants to see before a long run.

    Both loaders yield ``(uint8 (B, 3, S, S), labels (B,))``, training batches already
    augmented (in the workers); ``normalize`` turns a batch into the model's float input on
    the device.
    """

    config: Config  #: the run's config with every ``auto`` value resolved (what is saved)
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
    val_note: str = ""  #: '' or what validation pairs were drawn instead of the request
    sizing_note: str = ""  #: '' or what the ``auto`` values became (training.sizing)
    #: ``train.val_bins``, read (rank 0 only), scored after every epoch with ``preprocess``
    val_bins: list[VerificationBin] = field(default_factory=list)
    preprocess: Preprocess | None = None



def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else is passed to torch.
    ``option``: what the user set, named in the error (a config key or a CLI option)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option}={name}: not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option}={name} but CUDA is not available on this machine")
    return device


def resolve_workers(workers: int | None) -> int:
    """``data.workers``; ``None`` = one per CPU core but one (for the model), 1 to 8."""
    if workers is not None:
        return workers
    return min(8, max(1, (os.cpu_count() or 2) - 1))



def load_data(cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1
              ) -> TrainData:
    """Scan ``cfg.data.root`` (or open/build the decoded cache), split identities, build the PK
    training and validation loaders.

    With ``world_size`` ranks, the training loader yields rank ``rank``'s share of every
    global PK batch (``sampler.p / world_size`` identities) and only rank 0 gets a
    validation loader.

    Raises:
        UserError: no data, too few identities, or (with ``data.strict``) any skipped file.
    """
    d = cfg.data
    if not d.root:
        raise UserError("data.root is not set: pass --set data.root=DIR or set it in the config")
    preprocess = preprocess_from_config(d)
    cache, cache_note = None, ""
    if d.cache:
        cache, why = load_or_build_cache(d.root, d.cache, preprocess, resolve_workers(d.workers))
        cache_note = (f"decoded cache {d.cache}: " +
                      (f"built ({why})" if why else "up to date, reused"))
        full = cache.index
    else:
        full = scan_dataset(d.root)
    if d.strict and full.skipped:
        first = full.skipped[0]
        raise UserError(f"data.strict: {full.skip_summary()} (first: "
                        f"{display_path(first.path)}: {first.reason})")
    cfg, sizing_note = size_for_data(full, cfg, world_size)
    full, train_idx, val_idx = split_for_training(full, cfg)
    val_pairs, val_note = None, ""
    if val_idx is not None:  # drawn before training, so a bad setting fails at once
        val_pairs, val_note = draw_validation_pairs(val_idx.labels, cfg.eval.folds,
                                                    cfg.eval.pairs_per_fold, cfg.seed)
        if val_pairs is None:
            val_idx = None
    kept, excluded = _training_identities(full, train_idx, cfg, world_size)
    sampler = SeededBatchSampler(PKSampler(kept.labels, cfg.sampler.p, cfg.sampler.k,
                                           cfg.sampler.batches_per_epoch, seed=cfg.seed),
                                 seed=cfg.seed, rank=rank, world_size=world_size)
    workers = resolve_workers(d.workers)
    # The loaders draw their worker seeds from their own generator, never from torch's global
    # one, so a resumed run's global random state is exactly the interrupted run's.
    generator = torch.Generator().manual_seed(cfg.seed)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0, generator=generator,
                  worker_init_fn=_worker_ignores_interrupts if workers else None)

    def dataset(index: ImageFolderIndex) -> torch.utils.data.Dataset:
        return CachedFaceDataset(index, cache) if cache else FaceDataset(index, preprocess)

    train_loader = torch.utils.data.DataLoader(
        SeededItems(dataset(kept)), batch_sampler=sampler,
        collate_fn=AugmentCollate(
            BatchAugment(d.mean, d.augment_area, d.erase_p) if d.augment else None), **common,
    )
    val_loader = None
    if val_idx is not None and rank == 0:
        val_loader = torch.utils.data.DataLoader(dataset(val_idx),
                                                 batch_size=cfg.eval.batch_size, **common)
    return TrainData(
        cfg, train_loader, sampler, val_loader, val_idx, val_pairs, len(kept), len(kept.classes),
        len(excluded), full.skip_summary(), normalize=Normalize(d.mean, d.std), index=full,
        excluded=excluded, cache_note=cache_note, val_note=val_note, sizing_note=sizing_note,
        val_bins=read_bins(cfg.train.val_bins) if rank == 0 else [], preprocess=preprocess,
    )



def _training_identities(full: ImageFolderIndex, train_idx: ImageFolderIndex, cfg: Config,
                         world_size: int) -> tuple[ImageFolderIndex, dict[str, int]]:
    """``(the identities PK batches can draw from, identity -> usable images of those left
    out)``: training identities with at least ``min_images_per_identity`` images (1: people
    with a single image train too, their K slots filled with differently augmented copies).

    Raises:
        UserError: too few identities or images for one batch, or a ``sampler.p`` the
            processes cannot share.
    """
    d = cfg.data
    min_images = d.min_images_per_identity
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
    if cfg.sampler.p * cfg.sampler.k > len(kept):
        raise UserError(
            f"sampler.p x sampler.k = {cfg.sampler.p * cfg.sampler.k} images per batch, but the "
            f"training split has only {len(kept)} usable images; lower sampler.p or sampler.k"
        )
    if cfg.sampler.p % world_size:
        raise UserError(f"sampler.p={cfg.sampler.p} (identities per global batch) must be a "
                        f"multiple of the {world_size} processes")
    return kept, excluded


def _worker_ignores_interrupts(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: workers leave it to the training process,
    which finishes its step and writes a checkpoint before the loader is shut down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def split_for_training(full: ImageFolderIndex, cfg: Config
                       ) -> tuple[ImageFolderIndex, ImageFolderIndex, ImageFolderIndex | None]:
    """``(dataset, train split, validation split or None)`` of a run: ``full`` restricted to
    ``data.identities_file`` (when set), then split by identity with ``seed``."""
    full = run_index(full, cfg)
    return (full, *split_identities(full, cfg.data.val_fraction, cfg.seed))


def run_identities(cfg: Config, full: ImageFolderIndex | None = None
                   ) -> tuple[ImageFolderIndex, list[str]]:
    """What a run learned from, rebuilt from its config: ``(the training images it sampled
    (identities with at least ``min_images_per_identity`` images), the names of every identity
    it saw, validation included)``. ``full``: the index of ``data.root`` when the caller has
    it; otherwise ``data.root`` is scanned (UserError when it is gone)."""
    if full is None:
        full = scan_dataset(cfg.data.root)
    _, train_idx, val_idx = split_for_training(full, cfg)
    kept = filter_min_images(train_idx, cfg.data.min_images_per_identity)
    return kept, kept.classes + (val_idx.classes if val_idx is not None else [])


def run_validation_pairs(cfg: Config, full: ImageFolderIndex | None = None
                         ) -> tuple[ImageFolderIndex, PairIndexList, str]:
    """The validation pairs a run drew, rebuilt from its config: ``(held-out split, pairs
    (indices into it), note)``. Their people were never trained on, so they can choose a
    threshold for unseen people. ``full``: the index of ``data.root`` when the caller has it.

    Raises:
        UserError: the run held out no identities, or too few to form pairs.
    """
    if full is None:
        full = scan_dataset(cfg.data.root)
    _, _, val_idx = split_for_training(full, cfg)
    if val_idx is None:
        raise UserError(f"the run held out no identities (data.val_fraction="
                        f"{cfg.data.val_fraction}), so it has no validation pairs")
    pairs, note = draw_validation_pairs(val_idx.labels, cfg.eval.folds,
                                        cfg.eval.pairs_per_fold, cfg.seed)
    if pairs is None:
        raise UserError(f"the run's {len(val_idx.classes)} held-out identities cannot form "
                        "validation pairs")
    return val_idx, pairs, note


def draw_validation_pairs(
    labels: np.ndarray, folds: int, pairs_per_fold: int, seed: int
) -> tuple[PairIndexList | None, str]:
    """``folds x pairs_per_fold`` validation pairs of the held-out identities ``labels (N,)``,
    or, when they cannot supply that many, the most they can: fewer pairs per fold first,
    then fewer folds (at least 2 folds of 2 pairs). Returns ``(pairs or None, note)``; the
    note says what was drawn instead of the request ('' when it was met), or why there is no
    validation at all."""
    def attempt(n_folds: int, per_fold: int) -> PairIndexList | None:
        try:
            return generate_pairs(labels, n_folds=n_folds, pairs_per_fold=per_fold, seed=seed)
        except ValueError:
            return None

    pairs = attempt(folds, pairs_per_fold)
    if pairs is not None:
        return pairs, ""
    for n_folds in range(folds, 1, -1):
        lo, hi, best = 1, pairs_per_fold // 2, None  # same pairs per fold; feasible below a bound
        while lo <= hi:
            mid = (lo + hi) // 2
            found = attempt(n_folds, 2 * mid)
            if found is not None:
                lo, best = mid + 1, found
            else:
                hi = mid - 1
        if best is not None:
            per = len(best) // n_folds
            return best, (f"validation: the held-out identities supply {n_folds} folds x {per} "
                          f"pairs, not the {folds} x {pairs_per_fold} asked for (eval.folds, "
                          "eval.pairs_per_fold, data.val_fraction)")
    return None, ("validation: the held-out identities cannot form 2 folds of pairs; training "
                  "without validation (raise data.val_fraction)")


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """``train.precision`` -> the autocast dtype (``None`` = fp32, no autocast)."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_model(cfg: Config, initial: bool = True) -> EmbeddingNet:
    """The embedding network of ``cfg.model``; with ``initial`` (a run's start, not a resume),
    the weights of ``model.init_from`` or the local trunk weights of ``model.pretrained``.

    Raises:
        UserError: ``model.init_from`` is not a facetrip checkpoint of this network; the
            ``model.pretrained`` file leaves trunk keys missing or holds unexpected ones, and
            ``model.pretrained_strict`` is on (the default).
    """
    m = cfg.model
    model = EmbeddingNet(ModelSpec(m.arch, m.stem, m.embedding_dim, m.head_bn, m.pool_grid))
    if m.init_from and initial:
        init_from_checkpoint(model, m.init_from)
    if m.pretrained and initial:
        missing, unexpected = load_trunk_weights(model, m.pretrained)
        if (missing or unexpected) and m.pretrained_strict:
            def some(keys: list[str]) -> str:
                return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

            parts = ([f"{len(missing)} trunk keys missing ({some(missing)})"] if missing else [])
            parts += ([f"{len(unexpected)} unexpected ({some(unexpected)})"] if unexpected
                      else [])
            raise UserError(f"{m.pretrained} does not fit a {m.arch} trunk: "
                            + "; ".join(parts) + " (set model.pretrained_strict=false to load "
                            "the keys that fit)")
        if missing or unexpected:
            log.warning("%s: loaded with %d trunk keys missing and %d unexpected",
                        m.pretrained, len(missing), len(unexpected))
    return model


def init_from_checkpoint(model: EmbeddingNet, path: str) -> None:
    """Load the whole network of the facetrip checkpoint ``path`` into ``model``.

    Raises:
        UserError: not a readable facetrip checkpoint, or one of another network (the
            differing ``model`` keys are named).
    """
    ckpt = load_checkpoint(path)
    # whole specs, defaults filled in: to_dict leaves out the fields at their old defaults
    theirs = asdict(ModelSpec(**ckpt["model_spec"]))
    differ = [f"model.{k}={theirs[k]!r} there, {v!r} here"
              for k, v in asdict(model.spec).items() if theirs[k] != v]
    if differ:
        raise UserError(f"model.init_from={path} holds another network: " + "; ".join(differ))
    model.load_state_dict(ckpt["model"])


def build_optimizer(cfg: Config, model: torch.nn.Module,
                    head: torch.nn.Module | None = None) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over ``model`` (and a training-only ``head``); no weight decay
    on biases and normalisation parameters."""
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                               nesterov=cfg.optim.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr)


def build_schedule(cfg: Config, steps_per_epoch: int, ckpt: dict | None = None
                   ) -> LRSchedule:
    """The run's learning-rate schedule: warm-up then cosine decay over ``train.epochs``;
    resuming from ``ckpt``, the checkpoint's schedule, extended (see
    :mod:`facetrip.training.schedule`) when ``train.epochs`` changed since."""
    total = cfg.train.epochs * steps_per_epoch
    if ckpt is None:
        warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
        return LRSchedule.cosine(total, warmup, cfg.optim.min_lr / cfg.optim.lr)
    return saved_schedule(ckpt, steps_per_epoch).extended(ckpt["step"], total)


def saved_schedule(ckpt: dict, steps_per_epoch: int) -> LRSchedule:
    """The schedule a checkpoint's run was following."""
    if "schedule" in ckpt:
        return LRSchedule.from_dict(ckpt["schedule"])
    old = config_from_dict(ckpt["config"])  # written before schedules were saved
    return LRSchedule.cosine(old.train.epochs * steps_per_epoch,
                             int(round(old.optim.warmup_epochs * steps_per_epoch)),
                             old.optim.min_lr / old.optim.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following ``schedule``. (The schedule is wrapped in a function, so
    the scheduler's state dict holds plain numbers only.)"""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))


def build_classifier(cfg: Config, identities: int) -> IdentityClassifier | None:
    """The identity-classification head of ``loss.classifier`` over the ``identities``
    training identities, or None when it is off."""
    c = cfg.loss
    if c.classifier is None:
        return None
    return IdentityClassifier(cfg.model.embedding_dim, identities, c.classifier,
                              c.classifier_scale, c.classifier_margin)


def build_memory(cfg: Config) -> CrossBatchMemory | None:
    """The cross-batch memory of ``loss.memory`` (None when 0)."""
    if not cfg.loss.memory:
        return None
    return CrossBatchMemory(cfg.loss.memory, cfg.model.embedding_dim, cfg.loss.memory_start)


def build_margin(cfg: Config) -> AdaptiveMargin | None:
    """The adaptive margin of ``loss.margin_target`` (None when the margin is fixed)."""
    if cfg.loss.margin_target is None:
        return None
    return AdaptiveMargin(cfg.loss.margin, cfg.loss.margin_target)


def build_loss(cfg: Config) -> TripletLoss:
    """The triplet loss of ``cfg.loss``: ``loss(embeddings, labels) -> (loss, stats)``."""
    return TripletLoss(mining=cfg.loss.mining, margin=cfg.loss.margin,
                       distance=cfg.loss.distance)
