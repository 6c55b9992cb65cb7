"""Benchmark the data pipeline against the model: is the model the only bottleneck?

Usage::

    python scripts/bench_data.py [--data ../shared/data/lfw] [--sizes 112 64] [--steps 2]
                                 [--rounds 6] [--workers N] [--out bench_results/data.json]

For ResNet-18 (facetrip's default model, loss and optimiser) at each size, batch 128 (PK 32 x 4),
measures training images/s of

  (a) the model alone on in-memory tensors: forward + backward + mining + optimiser step on a
      batch that is already normalised and in memory: the compute limit;
  (b) facetrip train steps from the JPEG files (``load_data``: decode, crop, resize and
      augment in the DataLoader workers, normalise in the step);
  (c) the same from the decoded cache (``data.cache``);
  (d) a plain torchvision ``ImageFolder`` + PIL transforms + ``DataLoader`` pipeline, as a user
      would write it (centre crop, resize, flip, colour jitter, to tensor, normalise),
      through the same training step (labels replaced by a PK layout so the step costs the
      same);
  (e) facetrip train steps from a RecordIO ``.rec`` of the same images (``facetrip pack``,
      the JPEG bytes unchanged: decoding in the DataLoader workers, as (b));

each as a ratio to (a) (and (e) to (c), the issue's target: a ``.rec`` at >= 90% of the
decoded cache): overall (total images / total time) and per round (each block against
the (a) block of the same round; their median and range show the noise). All steps go through
``facetrip.training.loop.train_one_epoch``. The modes run in short blocks, interleaved (a b c d
a b c d ...), in one process, so a change in the load of a shared machine hits all of them
alike; each block starts with one untimed step (iterator start, worker start-up, prefetch) and
then times ``--steps`` steps. Also reports each loader's own throughput without the model (same
worker count), the load average and the cache build time. Uses LFW when present, else a
synthetic set (``facetrip.synth``). Workers use the default count unless ``--workers``.
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import torch
import torchvision
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetrip.config import Config, load_config  # noqa: E402
from facetrip.training.build import resolve_workers  # noqa: E402
from facetrip.training.loop import StepLog, train_one_epoch  # noqa: E402
from facetrip.training.train import prepare_run  # noqa: E402

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
P, K = 32, 4
MODES = {
    "a": "model alone, in-memory tensors",
    "b": "facetrip, JPEG files",
    "c": "facetrip, decoded cache",
    "d": "ImageFolder + PIL + DataLoader",
    "e": "facetrip, RecordIO .rec",
}


class Limited:
    """The first ``n`` batches of a loader, as one epoch (a fresh iterator each time)."""

    def __init__(self, loader: Iterable, n: int, labels: torch.Tensor | None = None) -> None:
        self.loader, self.n, self.labels = loader, n, labels

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        try:
            for images, labels in itertools.islice(it, self.n):
                yield images, (self.labels if self.labels is not None else labels)
        finally:
            del it  # shuts down non-persistent workers


def plain_torchvision_loader(root: Path, size: int, crop: int | None, workers: int,
                             pin: bool) -> torch.utils.data.DataLoader:
    """What a user writes from the torchvision tutorials (v1 transforms on PIL images)."""
    steps = ([T.CenterCrop(crop)] if crop else []) + [
        T.Resize((size, size)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1),
        T.ToTensor(),
        T.Normalize([0.5] * 3, [0.5] * 3),
    ]
    dataset = torchvision.datasets.ImageFolder(str(root), transform=T.Compose(steps))
    return torch.utils.data.DataLoader(dataset, batch_size=P * K, shuffle=True,
                                       num_workers=workers, pin_memory=pin, drop_last=True)


def loader_only(loader: Iterable, transform=None, n: int = 3) -> float:
    """Images/s of iterating ``loader`` (plus the batch transform) without the model."""
    it = iter(loader)
    next(it)  # start-up
    start, count = time.perf_counter(), 0
    for images, _ in itertools.islice(it, n):
        if transform is not None:
            images = transform(images)
        count += len(images)
    elapsed = time.perf_counter() - start
    del it
    return count / elapsed


def bench_size(cfg: Config, root: Path, crop: int | None, steps: int, rounds: int,
               cache_dir: Path, rec: Path) -> dict:
    per_block = steps + 1
    cfg.sampler.batches_per_epoch = per_block
    cfg.train.device = "cpu"
    run = prepare_run(cfg, cache_dir.parent / "run-jpeg", overwrite=True)
    cached = copy.deepcopy(cfg)
    cached.data.cache = str(cache_dir)
    tic = time.perf_counter()
    data_cache = prepare_run(cached, cache_dir.parent / "run-cache",
                             overwrite=True).data  # builds the cache on first use
    cache_seconds = time.perf_counter() - tic
    packed = copy.deepcopy(cfg)
    packed.data.root = str(rec)
    data_rec = prepare_run(packed, cache_dir.parent / "run-rec", overwrite=True).data
    data_jpeg, state, loss_fn = run.data, run.state, run.loss_fn
    plain = plain_torchvision_loader(root, cfg.data.image_size, crop,
                                     resolve_workers(cfg.data.workers), pin=False)
    pk_labels = torch.arange(P).repeat_interleave(K)
    first_images, first_labels = next(iter(data_cache.train_loader))
    in_memory = data_cache.normalize(first_images)
    loaders = {
        "a": (Limited([(in_memory, first_labels)] * per_block, per_block), None),
        "b": (data_jpeg.train_loader, data_jpeg.normalize),
        "c": (data_cache.train_loader, data_cache.normalize),
        "d": (Limited(plain, per_block, pk_labels), None),
        "e": (data_rec.train_loader, data_rec.normalize),
    }
    pipeline = {
        "b": loader_only(data_jpeg.train_loader, data_jpeg.normalize),
        "c": loader_only(data_cache.train_loader, data_cache.normalize),
        "d": loader_only(Limited(plain, 4)),
        "e": loader_only(data_rec.train_loader, data_rec.normalize),
    }
    times: dict[str, list[float]] = {m: [] for m in MODES}
    block_ips: dict[str, list[float]] = {m: [] for m in MODES}
    options = {m: replace(run.options, batch_transform=transform)
               for m, (_, transform) in loaders.items()}
    train_one_epoch(state, loss_fn, Limited(loaders["a"][0], 2), options["a"])  # warm-up
    loads = [os.getloadavg()[0]]
    for r in range(rounds):
        for mode, (loader, _) in loaders.items():
            if hasattr(getattr(loader, "batch_sampler", None), "set_epoch"):
                loader.batch_sampler.set_epoch(r)
            logs: list[StepLog] = []
            state.epoch, state.batch = r, 0
            train_one_epoch(state, loss_fn, loader, options[mode], on_step=logs.append)
            seconds = [s.images / s.images_per_s for s in logs[1:]]  # per timed step
            times[mode] += seconds
            block_ips[mode].append(len(seconds) * P * K / sum(seconds))
            loads.append(os.getloadavg()[0])
            print(f"  {cfg.data.image_size}px round {r + 1} {mode}: "
                  f"{block_ips[mode][-1]:.1f} img/s, load {loads[-1]:.2f}",
                  file=sys.stderr, flush=True)
    ips = {m: len(t) * P * K / sum(t) for m, t in times.items()}
    # each round's block against the (a) block run just before it: robust to load drift
    paired = {m: sorted(b / a for a, b in zip(block_ips["a"], block_ips[m])) for m in MODES}
    rec_to_cache = sorted(e / c for c, e in zip(block_ips["c"], block_ips["e"]))
    return {
        "rec_to_cache": ips["e"] / ips["c"],
        "rec_to_cache_rounds": {"median": float(statistics.median(rec_to_cache)),
                                "range": [rec_to_cache[0], rec_to_cache[-1]]},
        "image_size": cfg.data.image_size,
        "images_per_s": ips,
        "ratio_to_a": {m: ips[m] / ips["a"] for m in MODES},
        "paired_ratio_median": {m: float(statistics.median(v)) for m, v in paired.items()},
        "paired_ratio_range": {m: [v[0], v[-1]] for m, v in paired.items()},
        "block_images_per_s": block_ips,
        "step_seconds": times,
        "pipeline_only_images_per_s": pipeline,
        "cache_build_seconds": cache_seconds,
        "train_images": data_jpeg.train_images,
        "load_average": {"min": min(loads), "max": max(loads), "mean": sum(loads) / len(loads)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=LFW)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 64])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=6, help="blocks per mode")
    parser.add_argument("--workers", type=int, default=None,
                        help="data.workers (default: facetrip's default)")
    parser.add_argument("--precision", default=None, help="train.precision (default: auto)")
    parser.add_argument("--cache-dir", type=Path, default=Path("bench_results/cache"))
    parser.add_argument("--out", type=Path, default=Path("bench_results/data.json"))
    args = parser.parse_args()

    tmp = None
    root, crop_fraction = args.data, 0.6
    if not (root / "pairs.txt").is_file() and not any(root.glob("*/*.jpg")):
        from facetrip.synth import synthesize

        tmp = tempfile.TemporaryDirectory()
        root, crop_fraction = Path(tmp.name) / "synth", 1.0
        print(f"no dataset at {args.data}: synthesising one in {root}", file=sys.stderr)
        synthesize(root, 400, 20, 128, 0)
    from facetrip.data.recordio import pack_identity_folder

    tic = time.perf_counter()
    packed = pack_identity_folder(root, args.cache_dir / "rec" / f"{root.name}.rec",
                                  overwrite=True)
    pack_seconds = time.perf_counter() - tic
    results = []
    for size in args.sizes:
        sets = [f"data.root={root}", f"data.image_size={size}", "data.val_fraction=0",
                f"data.crop_fraction={crop_fraction}", f"sampler.p={P}", f"sampler.k={K}"]
        if args.workers is not None:
            sets.append(f"data.workers={args.workers}")
        if args.precision is not None:
            sets.append(f"train.precision={args.precision}")
        cfg = load_config(None, sets)
        crop = int(round(250 * crop_fraction)) if crop_fraction < 1 else None  # LFW: 250 px
        results.append(bench_size(cfg, root, crop, args.steps, args.rounds,
                                  args.cache_dir / f"{root.name}-{size}", packed.rec))
    meta = {
        "dataset": str(root), "batch": P * K, "model": "resnet18 (facetrip default config)",
        "workers": resolve_workers(cfg.data.workers), "precision": cfg.train.precision,
        "channels_last": cfg.train.channels_last, "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "steps_per_block": args.steps, "rounds": args.rounds,
        "rec": {"path": str(packed.rec), "images": packed.images, "bytes": packed.bytes,
                "pack_seconds": pack_seconds},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")

    print(f"\nResNet-18, batch {P * K}, {meta['cpus']} CPUs, "
          f"{meta['torch_threads']} torch threads, "
          f"data.workers={meta['workers']}, {Path(meta['dataset']).name}\n")
    print("| size | " + " | ".join(f"({m}) {name}" for m, name in MODES.items())
          + " | load avg |")
    print("| --- " * (len(MODES) + 2) + "|")
    for r in results:
        cells = [f"{r['images_per_s']['a']:.1f} img/s"] + [
            f"{r['images_per_s'][m]:.1f} img/s = {100 * r['ratio_to_a'][m]:.0f}% "
            f"(rounds: median {100 * r['paired_ratio_median'][m]:.0f}%, "
            f"{100 * r['paired_ratio_range'][m][0]:.0f}-{100 * r['paired_ratio_range'][m][1]:.0f}%)"
            for m in "bcde"
        ]
        load = r["load_average"]
        print(f"| {r['image_size']} px | " + " | ".join(cells)
              + f" | {load['min']:.1f}-{load['max']:.1f} |")
    print("\nloader alone (no model): " + "; ".join(
        f"{r['image_size']} px: " + ", ".join(
            f"({m}) {v:.0f} img/s" for m, v in r["pipeline_only_images_per_s"].items())
        for r in results))
    print("(e) .rec vs (c) decoded cache: " + "; ".join(
        f"{r['image_size']} px {100 * r['rec_to_cache']:.0f}% (rounds: median "
        f"{100 * r['rec_to_cache_rounds']['median']:.0f}%, "
        f"{100 * r['rec_to_cache_rounds']['range'][0]:.0f}-"
        f"{100 * r['rec_to_cache_rounds']['range'][1]:.0f}%)" for r in results))
    print(f"pack: {packed.images} images, {packed.bytes / 2**20:.0f} MiB in {pack_seconds:.1f} s")
    print("cache build: " + ", ".join(
        f"{r['image_size']} px {r['cache_build_seconds']:.1f} s" for r in results)
        + f"\nwritten to {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
