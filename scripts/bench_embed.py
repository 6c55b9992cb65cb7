"""Benchmark ``facetrip embed`` from JPEG files against the model's forward-only limit.

Usage::

    python scripts/bench_embed.py [--data ../shared/data/lfw] [--size 112] [--rounds 6]
                                  [--block 512] [--batch-size 256] [--workers N]
                                  [--out bench_results/embed.json]

ResNet-18 (128-d head, random weights: speed does not depend on them) at ``--size`` px with
LFW's ``crop_fraction`` 0.6, measures images/s of

  (a) the model alone: :meth:`Embedder.embed` (normalise + forward, inference mode) on
      ``uint8`` batches already in memory: the compute limit;
  (b) ``facetrip embed``: :func:`facetrip.deploy.embed_folder.embed_folder` on ``--block``
      JPEG files (decoding, crop and resize in the DataLoader workers, the same ``embed`` per
      batch, the rows streamed to a scratch file and the ``.npz`` written), worker start-up
      included;

and the ratio (b) / (a): overall (total images / total time) and per round (each (b) block
against the (a) block of its round). The two run in short blocks, alternating (a b b a ...),
in one process, so a change in the load of a shared machine hits both alike; the load
average is sampled around every block. Each (b) block takes the next ``--block`` files of the
dataset, so no file is read twice from the page cache in a warmer state than the first time
(LFW has 13,233). Uses LFW when present, else a synthetic set of 250 px JPEGs
(``facetrip.synth``, re-encoded). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetrip.cli.app import default_workers  # noqa: E402
from facetrip.deploy.embed_folder import embed_folder, list_images  # noqa: E402
from facetrip.deploy.embedder import load_embedder  # noqa: E402

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"


def synthetic_jpegs(root: Path, n_identities: int = 200, per_identity: int = 20) -> Path:
    """250 x 250 JPEG faces (LFW's size and format), from facetrip's generator."""
    from PIL import Image

    from facetrip.synth import synthesize

    png = root / "png"
    synthesize(png, n_identities, per_identity, 250, 0)
    out = root / "jpeg"
    for path in png.rglob("*.png"):
        target = out / path.relative_to(png).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").save(target, quality=90)
    return out


def checkpoint(path: Path, root: Path, size: int, crop_fraction: float) -> Path:
    from facetrip.config import config_to_dict, load_config
    from facetrip.model import EmbeddingNet, ModelSpec
    from facetrip.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = EmbeddingNet(ModelSpec("resnet18", "imagenet", 128))
    cfg = load_config(None, [f"data.root={root}", f"data.image_size={size}",
                             f"data.crop_fraction={crop_fraction}"])
    return save_checkpoint({"model": model.state_dict(), "model_spec": model.spec.to_dict(),
                            "config": config_to_dict(cfg)}, path)


def forward_block(embedder, batch: torch.Tensor, n_images: int) -> float:
    """Seconds to embed ``n_images`` as in-memory batches like ``batch``."""
    start, done = time.perf_counter(), 0
    while done < n_images:
        x = batch[: n_images - done]
        embedder.embed(x)
        done += len(x)
    return time.perf_counter() - start


def embed_block(embedder, root: Path, paths: list[str], out: Path, batch_size: int,
                workers: int) -> float:
    start = time.perf_counter()
    result = embed_folder(embedder, root, out, batch_size, workers, paths=paths)
    seconds = time.perf_counter() - start
    assert result.count == len(paths), result.skipped[:3]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=LFW)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--crop-fraction", type=float, default=0.6)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=512, help="images per block")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding workers (default: facetrip embed's default)")
    parser.add_argument("--out", type=Path, default=Path("bench_results/embed.json"))
    args = parser.parse_args()
    workers = default_workers(args.workers)

    tmp = tempfile.TemporaryDirectory()
    scratch = Path(tmp.name)
    root = args.data
    if not any(root.glob("*/*.jpg")):
        print(f"no dataset at {args.data}: synthesising 250 px JPEGs", file=sys.stderr)
        root = synthetic_jpegs(scratch / "synth")
    paths = list_images(root)
    need = args.block * (args.rounds + 1)
    if len(paths) < need:
        raise SystemExit(f"{root} has {len(paths)} images; need {need} (--rounds, --block)")
    step = len(paths) // need  # blocks spread over the whole dataset, no file read twice
    blocks = [paths[(r * args.block) * step : ((r + 1) * args.block) * step : step]
              for r in range(args.rounds + 1)]

    embedder = load_embedder(checkpoint(scratch / "c.pt", root, args.size,
                                        args.crop_fraction))
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size),
                          dtype=torch.uint8, generator=gen)
    # warm-up: one block of each (allocator, kernels, page cache of the first block)
    forward_block(embedder, batch, args.batch_size)
    embed_block(embedder, root, blocks[0], scratch / "e.npz", args.batch_size, workers)

    times = {"a": [], "b": []}
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = "ab" if r % 2 == 0 else "ba"
        for mode in order:
            if mode == "a":
                seconds = forward_block(embedder, batch, args.block)
            else:
                seconds = embed_block(embedder, root, blocks[r + 1], scratch / "e.npz",
                                      args.batch_size, workers)
            times[mode].append(seconds)
            loads.append(os.getloadavg()[0])
            print(f"  round {r + 1} {mode}: {args.block / seconds:.1f} img/s, "
                  f"load {loads[-1]:.2f}", file=sys.stderr, flush=True)
    ips = {m: args.block * len(t) / sum(t) for m, t in times.items()}
    paired = sorted(a / b for a, b in zip(times["a"], times["b"], strict=True))  # (b)/(a) img/s
    result = {
        "images_per_s": ips,
        "ratio": ips["b"] / ips["a"],
        "paired_ratio_median": float(statistics.median(paired)),
        "paired_ratio_range": [paired[0], paired[-1]],
        "block_seconds": times,
        "load_average": {"min": min(loads), "max": max(loads), "mean": sum(loads) / len(loads),
                         "samples": loads},
    }
    meta = {
        "dataset": str(root), "images": len(paths), "model": "resnet18, 128-d, imagenet stem",
        "image_size": args.size, "crop_fraction": args.crop_fraction,
        "batch_size": args.batch_size, "block": args.block, "rounds": args.rounds,
        "workers": workers, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "result": result}, indent=2) + "\n")
    load = result["load_average"]
    print(f"\nResNet-18 at {args.size} px, batch {args.batch_size}, {meta['cpus']} CPUs, "
          f"{meta['torch_threads']} torch threads, {workers} decoding worker(s), "
          f"{Path(root).name}, {args.rounds} rounds x {args.block} images\n")
    print("| (a) model alone, in-memory uint8 | (b) facetrip embed, JPEG files | (b) / (a) "
          "| load avg |")
    print("| --- | --- | --- | --- |")
    print(f"| {ips['a']:.1f} img/s | {ips['b']:.1f} img/s | {100 * result['ratio']:.0f}% "
          f"(rounds: median {100 * result['paired_ratio_median']:.0f}%, "
          f"{100 * paired[0]:.0f}-{100 * paired[-1]:.0f}%) "
          f"| {load['min']:.1f}-{load['max']:.1f} |")


if __name__ == "__main__":
    main()
