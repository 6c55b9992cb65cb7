"""Typed run configuration: YAML file + ``--set a.b=value`` overrides -> :class:`Config`.

Every key is declared here with its type and default, so a typo or a wrong type is an error
that names the key instead of a silently ignored setting. The resolved config is saved with
every run and inside every checkpoint, from which :func:`config_from_dict` rebuilds it;
:func:`resume_config` decides what a resumed run may change.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from facetrip.errors import UserError
from facetrip.io import atomic_write

_UNIONS = (Union, types.UnionType)
#: the value of a key worked out from the data set (facetrip.training.sizing): AUTO_KEYS
AUTO = "auto"
AUTO_KEYS = ("data.val_fraction", "sampler.p", "sampler.batches_per_epoch")


@dataclass
class DataConfig:
    """Where the images are and how they become tensors."""

    root: str = ""  #: identity-folder dataset: ``root/<identity>/<image>``
    #: train (and validate) on these identities only: one name per line, or LFW people*.txt
    identities_file: str | None = None
    #: fraction of identities held out for validation (``auto``: sized to the data set)
    val_fraction: float | Literal["auto"] = 0.1
    #: identities with fewer images are left out of training (1: single-image people train
    #: too, as K differently augmented copies of their one image)
    min_images_per_identity: int = 2
    image_size: int = 64  #: model input is ``image_size x image_size``
    crop_fraction: float = 1.0  #: centre crop (fraction of the shorter side) before resizing
    #: ``[left, top, right, bottom]`` as fractions of width/height; replaces the centre crop
    crop_box: list[float] | None = None
    grayscale: bool = False  #: convert to grey (kept as 3 identical channels)
    #: ``mtcnn``: detect the face in each photo and warp it onto the five-point template
    #: (while building ``data.cache``, which it needs) before the crop and resize above
    align: Literal["mtcnn"] | None = None
    align_size: int = 112  #: side of the aligned crop (the 112-pixel template scaled to it)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    #: flip, random resized crop, colour jitter, random erasing (per batch)
    augment: bool = True
    #: ``[min, max]`` share of the image's area the random resized crop keeps
    augment_area: list[float] = field(default_factory=lambda: [0.8, 1.0])
    erase_p: float = 0.25  #: probability of random erasing (a 2-20% rectangle) per image
    #: DataLoader worker processes (0 = in the main process; null = CPU cores - 1, at most 8)
    workers: int | None = None
    #: decoded-image cache directory: built on first use, rebuilt when the dataset changes
    cache: str | None = None
    strict: bool = False  #: any skipped file is an error instead of a warning


@dataclass
class SamplerConfig:
    """PK batches: ``p`` identities x ``k`` images each."""

    p: int | Literal["auto"] = 32  #: ``auto``: min(32, training people), see training.sizing
    k: int = 4
    #: batches per epoch; ``None`` = training images // (p * k), i.e. about one pass over the
    #: data; ``auto``: the same, but at least 20 steps
    batches_per_epoch: int | Literal["auto"] | None = None


@dataclass
class ModelConfig:
    """Backbone and embedding head."""

    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    #: ``imagenet``: 7x7/2 conv + max-pool (input /4); ``small``: 3x3/1 conv, no pool
    stem: Literal["imagenet", "small"] = "imagenet"
    embedding_dim: int = 128
    head_bn: bool = True  #: BatchNorm1d after the embedding Linear
    #: average-pool the last feature map to a g x g grid and flatten it into the head: 1 is
    #: the global average pool; 2 keeps where on the face each feature is (4x the head's input)
    pool_grid: int = 1
    pretrained: str | None = None  #: local weights file for the trunk (never downloaded)
    #: refuse ``pretrained`` weights with missing or unexpected trunk keys (false: load the rest)
    pretrained_strict: bool = True
    #: start from a facetrip checkpoint's whole network (e.g. RUN/best.pt of a pre-training run)
    init_from: str | None = None


@dataclass
class LossConfig:
    """Triplet loss and online mining."""

    mining: Literal["semihard", "semihard_all", "batch_hard", "batch_all", "all"] = "semihard"
    margin: float | None = 0.2  #: ``null`` = soft margin, softplus(d_ap - d_an)
    #: hold this share of the candidate triplets active: the margin grows (from
    #: ``loss.margin``, never below it) while fewer are, see facetrip.loss.margin; null = fixed
    margin_target: float | None = None
    distance: Literal["euclidean", "squared_euclidean", "cosine"] = "euclidean"
    #: with several processes: ``global`` mines each rank's anchors against the all-gathered
    #: global batch (the single-process loss, exactly); ``local`` within each rank's share
    scope: Literal["global", "local"] = "global"
    #: identity-classification head beside the triplet loss (training only): a normalised
    #: linear layer over the training identities, with softmax / cosface / arcface logits
    classifier: Literal["softmax", "cosface", "arcface"] | None = None
    classifier_weight: float = 1.0  #: its cross-entropy's weight beside the triplet loss
    classifier_scale: float = 30.0  #: s, the logits' scale
    #: m: null = the kind's usual one (softmax 0, cosface 0.35, arcface 0.5 radians)
    classifier_margin: float | None = None
    #: the BNNeck (Luo et al. 2019): the triplet loss sees the head's output before its
    #: BatchNorm (L2-normalised), the classifier the embedding after it (the deployed one);
    #: false = both see the deployed embedding. Needs loss.classifier and model.head_bn
    neck: bool = False
    #: cross-batch memory: mine against the last N embeddings too (0 = off)
    memory: int = 0
    memory_start: int = 0  #: steps before the memory is used (it fills from the first)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then cosine to ``min_lr``)."""

    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9  #: SGD only
    warmup_epochs: float = 1.0
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 10
    device: str = "auto"  #: ``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:1``...
    channels_last: bool = True
    #: autocast: ``auto`` = bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_clip: float | None = None  #: max gradient norm; ``None`` = no clipping
    collapse_patience: int = 50  #: steps of near-zero distances before the collapse warning
    #: also write a checkpoint every this many steps (0 = at epoch ends only)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  #: newest step checkpoints kept in RUN/checkpoints/ (plus best.pt)
    #: steps in a row with a non-finite loss or gradient (each skipped) before the run stops
    max_bad_steps: int = 10
    #: seconds a collective may wait for the other ranks before the job fails (distributed)
    dist_timeout: float = 1800.0
    #: also log the metrics as TensorBoard scalars in RUN/tensorboard (the tensorboard extra)
    tensorboard: bool = False
    #: .bin verification sets (insightface's lfw.bin, cfp_fp.bin...) scored after every epoch
    val_bins: list[str] = field(default_factory=list)
    #: what best.pt follows: ``val`` (accuracy on the held-out identities' pairs) or ``bins``
    #: (the mean accuracy over ``val_bins``)
    best_metric: Literal["val", "bins"] = "val"
    #: decay of an exponential moving average of the weights (e.g. 0.999; null = off):
    #: validation, best.pt and its exports use the average
    ema: float | None = None


@dataclass
class EvalConfig:
    """Validation during training (on the held-out identities)."""

    folds: int = 10
    pairs_per_fold: int = 600  #: half same, half different, as LFW
    metric: Literal["euclidean", "cosine"] = "euclidean"
    batch_size: int = 256


@dataclass
class Config:
    """A whole run. ``seed`` drives every random number generator."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in _UNIONS:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else tp.__name__


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a UserError naming ``key``."""
    origin = typing.get_origin(tp)
    ok: bool
    if origin in _UNIONS:
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
        ok = False
    elif origin is Literal:
        ok = value in typing.get_args(tp)
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, typing.get_args(tp)[0], key) for v in value]
        ok = False
    elif tp is type(None):
        ok = value is None
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def _merge(obj: Any, values: dict, prefix: str = "") -> None:
    """Write ``values`` into the dataclass ``obj`` in place, checking keys and types."""
    if not isinstance(values, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = typing.get_type_hints(type(obj))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in hints:
            known = ", ".join(hints)
            raise UserError(f"unknown config key '{key}' (known here: {known})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _merge(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return tree


def _valid_box(box: list[float]) -> bool:
    return len(box) == 4 and 0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0


def _validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    checks = [
        (cfg.sampler.p == AUTO or cfg.sampler.p >= 2,
         "sampler.p must be >= 2 (triplets need two identities) or auto"),
        (cfg.sampler.k >= 2, "sampler.k must be >= 2 (triplets need two images of an identity)"),
        (cfg.data.min_images_per_identity >= 1, "data.min_images_per_identity must be >= 1"),
        (cfg.data.image_size >= 16, "data.image_size must be >= 16"),
        (cfg.data.image_size % 8 == 0,
         "data.image_size must be a multiple of 8 (the ResNet halves it stage by stage)"),
        (0.0 < cfg.data.crop_fraction <= 1.0, "data.crop_fraction must be in (0, 1]"),
        (cfg.data.crop_box is None or _valid_box(cfg.data.crop_box),
         "data.crop_box must be [left, top, right, bottom] fractions with "
         "0 <= left < right <= 1 and 0 <= top < bottom <= 1"),
        (cfg.data.val_fraction == AUTO or 0.0 <= cfg.data.val_fraction < 1.0,
         "data.val_fraction must be in [0, 1) or auto"),
        (cfg.data.align_size >= 16, "data.align_size must be >= 16"),
        (cfg.data.align is None or cfg.data.cache is not None,
         "data.align needs data.cache (the detector then runs once per photo, while the cache "
         "is built, instead of on every image of every epoch)"),
        (len(cfg.data.mean) == 3 and len(cfg.data.std) == 3, "data.mean/std need 3 values"),
        (all(s > 0 for s in cfg.data.std), "data.std values must be > 0"),
        (cfg.data.workers is None or cfg.data.workers >= 0, "data.workers must be >= 0 or null"),
        (cfg.model.embedding_dim >= 1, "model.embedding_dim must be >= 1"),
        (len(cfg.data.augment_area) == 2
         and 0 < cfg.data.augment_area[0] <= cfg.data.augment_area[1] <= 1,
         "data.augment_area must be [min, max] with 0 < min <= max <= 1"),
        (0 <= cfg.data.erase_p <= 1, "data.erase_p must be in [0, 1]"),
        (cfg.model.pool_grid >= 1, "model.pool_grid must be >= 1 (1 = global average pool)"),
        (not (cfg.model.pretrained and cfg.model.init_from),
         "set model.pretrained (trunk weights) or model.init_from (a facetrip checkpoint), "
         "not both"),
        (cfg.loss.margin is None or cfg.loss.margin >= 0, "loss.margin must be >= 0 or null"),
        (cfg.loss.margin is not None or cfg.loss.mining != "semihard_all",
         "loss.mining=semihard_all needs a margin (its window is d_ap < d_an < d_ap + margin)"),
        (cfg.loss.margin_target is None or 0 < cfg.loss.margin_target < 1,
         "loss.margin_target must be in (0, 1) or null"),
        (cfg.loss.margin_target is None or bool(cfg.loss.margin),
         "loss.margin_target needs a margin > 0 to start from (the soft margin has none)"),
        (cfg.loss.margin_target is None or cfg.loss.mining != "semihard_all",
         "loss.margin_target does not apply to loss.mining=semihard_all (all its terms are "
         "active)"),
        (cfg.loss.memory >= 0, "loss.memory must be >= 0 (0 = off)"),
        (cfg.loss.memory_start >= 0, "loss.memory_start must be >= 0"),
        (cfg.loss.classifier_weight >= 0, "loss.classifier_weight must be >= 0"),
        (cfg.loss.classifier_scale > 0, "loss.classifier_scale must be > 0"),
        (cfg.loss.classifier_margin is None or cfg.loss.classifier_margin >= 0,
         "loss.classifier_margin must be >= 0 or null"),
        (not cfg.loss.neck or cfg.loss.classifier is not None,
         "loss.neck needs loss.classifier (the neck puts the classifier after the head's "
         "BatchNorm and the triplet loss before it)"),
        (not cfg.loss.neck or cfg.model.head_bn,
         "loss.neck needs model.head_bn=true (the BatchNorm it splits the losses around)"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0"),
        (cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
        (cfg.train.max_bad_steps >= 0, "train.max_bad_steps must be >= 0"),
        (cfg.train.dist_timeout > 0, "train.dist_timeout must be > 0"),
        (cfg.train.ema is None or 0.0 < cfg.train.ema < 1.0, "train.ema must be in (0, 1)"),
        (cfg.train.grad_clip is None or cfg.train.grad_clip > 0, "train.grad_clip must be > 0"),
        (cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
        (cfg.optim.min_lr >= 0, "optim.min_lr must be >= 0"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (cfg.sampler.batches_per_epoch in (None, AUTO) or cfg.sampler.batches_per_epoch >= 1,
         "sampler.batches_per_epoch must be >= 1, null or auto"),
        (cfg.eval.pairs_per_fold >= 2, "eval.pairs_per_fold must be >= 2"),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
        (cfg.eval.folds >= 2, "eval.folds must be >= 2"),
        (cfg.train.best_metric != "bins" or bool(cfg.train.val_bins),
         "train.best_metric=bins needs train.val_bins (the .bin sets whose mean it follows)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"invalid config: {message}")


def config_from_dict(values: dict) -> Config:
    """Build a validated :class:`Config` from a (possibly partial) nested dict."""
    cfg = Config()
    _merge(cfg, values or {})
    _validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (optional), apply ``--set`` overrides, validate."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {exc}") from None
    cfg = Config()
    _merge(cfg, values)
    _merge(cfg, parse_overrides(overrides or []))
    _validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (YAML/JSON/checkpoint friendly)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def changed_keys(a: Config, b: Config) -> list[str]:
    """The dotted keys whose values differ between ``a`` and ``b`` (``seed`` included)."""
    da, db = config_to_dict(a), config_to_dict(b)
    return [
        f"{section}.{key}"
        for section, values in da.items() if isinstance(values, dict)
        for key, value in values.items() if db[section][key] != value
    ] + (["seed"] if da["seed"] != db["seed"] else [])


RESUMABLE_KEYS = ("train.epochs", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.max_bad_steps", "train.dist_timeout", "train.tensorboard",
                  "data.workers")
"""Keys a resumed run may change: they do not alter what is computed."""


def resume_config(saved: Config, wanted: Config, force: bool = False) -> tuple[Config, list[str]]:
    """The config a resumed run continues with, and the keys that differ from the saved one.

    Only :data:`RESUMABLE_KEYS` may change (``train.epochs`` grow or shrink); any other change
    raises UserError naming the keys, unless ``force``, which takes ``wanted`` as it is (the
    run then continues with another config, no longer the one it started with).
    """
    for key in AUTO_KEYS:  # what the saved run worked out from its data stands for auto
        section, name = key.split(".")
        if getattr(getattr(wanted, section), name) == AUTO:
            setattr(getattr(wanted, section), name, getattr(getattr(saved, section), name))
    diffs = changed_keys(saved, wanted)
    fixed = [k for k in diffs if k not in RESUMABLE_KEYS]
    if fixed and not force:
        raise UserError(
            "cannot resume with a different config (changed: " + ", ".join(fixed) + "); "
            "start a new run with --out, or pass --force to continue with the new values"
        )
    if force:
        return wanted, diffs
    for key in diffs:
        section, name = key.split(".")
        setattr(getattr(saved, section), name, getattr(getattr(wanted, section), name))
    return saved, diffs
