"""Is ``facetrip train`` on a GPU at >= 90% of the model-alone limit?

Usage::

    python scripts/bench_gpu_train.py [--identities 2000] [--images-per-identity 8]
                                      [--warmup 10] [--steps 40] [--workers N] [--work DIR]
                                      [--out bench_results/gpu_train.json]
    python scripts/bench_gpu_train.py --smoke   # the whole script on the CPU, tiny sizes

Configuration: ResNet-50 (``model.arch=resnet50``), 112 px input, bf16 autocast,
channels-last, batch 512 (``sampler.p=128 sampler.k=4``), batch-all triplet loss, AdamW,
reading the decoded cache. Steps:

  1. ``facetrip synth`` a face set (128 px, one process per core) and ``facetrip cache`` it at
     112 px, both timed (``--work DIR`` keeps them; a second run reuses them).
  2. (a) the model alone: forward (autocast) + triplet loss + backward + AdamW step on one
     batch from the cache, normalised, channels-last and already on the GPU; the model, loss
     and optimiser are facetrip's own (``training.build``). A CUDA event is recorded after
     every step and there is no synchronisation in between, so a step's time is the GPU
     interval between two consecutive events; median over ``--steps`` after ``--warmup``.
     (b) facetrip's step on the same in-memory batch (``training.loop.train_one_epoch``: adds
     the per-step loss read-back, finite-gradient check, schedule and step log): the loop
     without the loader. (c) ``facetrip train`` as a user runs it: the CLI in a subprocess with
     ``--set`` overrides, ``data.val_fraction=0``, one epoch of ``--warmup + --steps``
     batches, ``data.workers`` = CPU cores - 1 (at most 16), ``train.checkpoint_every=0``
     (the epoch-end checkpoint comes after the last timed step); its rate is read from the
     ``images_per_s`` of ``metrics.jsonl``'s step rows after the first ``--warmup`` steps:
     images / seconds over those steps (the loader may deliver unevenly) and the median step.
  3. Prints a markdown table (images/s, ratios to (a)), the GPU and versions, and the
     insightface reference point; writes JSON (``--out``).

Neither (a) nor facetrip sets ``cudnn.benchmark``. Without CUDA (and without ``--smoke``) it
exits with code 2. ``--smoke``: ResNet-18, 32 px, batch 16, fp32 on the CPU, a few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facetrip.config import load_config  # noqa: E402
from facetrip.training.loop import StepLog, train_one_epoch  # noqa: E402
from facetrip.training.train import prepare_run  # noqa: E402

INSIGHTFACE = "insightface reports ~760 img/s per V100 for ResNet-50 at 112 px, fp16"
FULL = dict(arch="resnet50", size=112, synth_size=128, p=128, k=4, precision="bf16")
SMOKE = dict(arch="resnet18", size=32, synth_size=48, p=4, k=4, precision="fp32")


def facetrip_cli(*args: str, log: Path | None = None) -> tuple[float, str]:
    """Run ``python -m facetrip ARGS``; returns (seconds, stdout). Fails loudly with the tail."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "facetrip", *args], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).replace("\r", "\n").splitlines()[-15:])
        sys.exit(f"facetrip {args[0]} failed (exit {proc.returncode}):\n{tail}")
    return seconds, proc.stdout


def step_seconds(step, n: int, device: torch.device) -> list[float]:
    """Run ``step()`` ``n + 1`` times; the time of the last ``n`` (GPU intervals on CUDA)."""
    if device.type != "cuda":
        stamps = [time.perf_counter()]
        for _ in range(n):
            step()
            stamps.append(time.perf_counter())
        return [b - a for a, b in zip(stamps, stamps[1:])]
    events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    step()
    events[0].record()
    for event in events[1:]:
        step()
        event.record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) / 1000 for a, b in zip(events, events[1:])]


def bench_in_memory(sets: list[str], work: Path, device: torch.device, warmup: int,
                    steps: int) -> dict:
    """(a) the model alone and (b) facetrip's step, on one batch already on the device; both
    from facetrip's own prepared run (data, model, loss, optimiser)."""
    run = prepare_run(load_config(None, sets + ["data.workers=0"]), work, overwrite=True)
    images, labels = next(iter(run.data.train_loader))  # the cache is up to date: opened
    images = run.data.normalize(images.to(device)).contiguous(memory_format=torch.channels_last)
    labels = labels.to(device)
    model, optimizer, loss_fn = run.state.model, run.state.optimizer, run.loss_fn
    dtype = run.options.autocast_dtype
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            embeddings = model(images)
        loss, _ = loss_fn(embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    alone = step_seconds(step, steps, device)

    n = warmup + steps
    logs: list[StepLog] = []
    train_one_epoch(run.state, loss_fn, [(images, labels)] * n,
                    replace(run.options, batch_transform=None),
                    on_step=logs.append)
    loop = [s.images / s.images_per_s for s in logs[warmup:]]
    batch = len(labels)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"batch": batch, "model_alone_step_s": alone, "facetrip_step_s": loop,
            "model_alone_images_per_s": batch / statistics.median(alone),
            "facetrip_step_images_per_s": batch / statistics.median(loop),
            "peak_gpu_memory_gib": memory}


def bench_train(sets: list[str], run_dir: Path, warmup: int, batch: int) -> dict:
    """(c) ``facetrip train`` in a subprocess; its rate from metrics.jsonl."""
    seconds, stdout = facetrip_cli("train", *(a for s in sets for a in ("--set", s)),
                                   "--out", str(run_dir), "--overwrite",
                                   log=run_dir.parent / "train.log")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = sorted((r for r in rows if r.get("type") == "step"), key=lambda r: r["step"])
    timed = [r["images_per_s"] for r in steps[warmup:]]
    note = next((line for line in stdout.splitlines() if line.startswith("decoded cache")), "")
    return {"train_seconds": seconds, "steps": len(steps), "timed_steps": len(timed),
            "step_images_per_s": timed,
            "images_per_s": len(timed) * batch / sum(batch / v for v in timed),
            "median_step_images_per_s": statistics.median(timed), "cache_note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=None, help="synth (default 2000)")
    parser.add_argument("--images-per-identity", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 40)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data.workers (default: CPU cores - 1, at most 16)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the data set, cache and run here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench_results/gpu_train.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the whole script")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("bench_gpu_train: needs a CUDA GPU (none found); --smoke runs it on the CPU",
              file=sys.stderr)
        raise SystemExit(2)
    c = SMOKE if args.smoke else FULL
    device = torch.device("cpu" if args.smoke else "cuda")
    identities = args.identities or (40 if args.smoke else 2000)
    warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 10)
    steps = args.steps or (4 if args.smoke else 40)
    cpus = os.cpu_count() or 2
    workers = args.workers if args.workers is not None else min(16, max(1, cpus - 1))

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench_gpu_train-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    faces, cache = work / "faces", work / f"cache-{c['size']}"
    synth_s = cache_s = None
    if not (faces / ".done").is_file():
        synth_s, _ = facetrip_cli("synth", "--out", str(faces), "--identities", str(identities),
                                  "--images-per-identity", str(args.images_per_identity),
                                  "--size", str(c["synth_size"]), "--overwrite")
        (faces / ".done").touch()
        print(f"synth: {identities} x {args.images_per_identity} images in {synth_s:.1f} s "
              f"({cpus} CPUs)", file=sys.stderr, flush=True)
    cache_s, _ = facetrip_cli("cache", str(faces), "--image-size", str(c["size"]),
                              "--out", str(cache), "--workers", str(workers))  # reuses it
    print(f"cache: {cache_s:.1f} s", file=sys.stderr, flush=True)

    sets = [f"data.root={faces}", f"data.cache={cache}", f"data.image_size={c['size']}",
            "data.val_fraction=0", f"data.workers={workers}", f"model.arch={c['arch']}",
            f"sampler.p={c['p']}", f"sampler.k={c['k']}", "loss.mining=batch_all",
            "optim.name=adamw", f"train.precision={c['precision']}", "train.channels_last=true",
            f"train.device={device.type}", "train.epochs=1", "train.checkpoint_every=0",
            f"sampler.batches_per_epoch={warmup + steps}"]
    mem = bench_in_memory(sets, work / "in-memory", device, warmup, steps)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the model of (a, b) is gone: leave the GPU to (c)
    print(f"model alone: {mem['model_alone_images_per_s']:.0f} img/s, facetrip step in memory: "
          f"{mem['facetrip_step_images_per_s']:.0f} img/s", file=sys.stderr, flush=True)
    run = bench_train(sets, work / "run", warmup, c["p"] * c["k"])
    print(f"facetrip train: {run['images_per_s']:.0f} img/s", file=sys.stderr, flush=True)

    limit = mem["model_alone_images_per_s"]
    ratio = {"facetrip_step": mem["facetrip_step_images_per_s"] / limit,
             "facetrip_train": run["images_per_s"] / limit,
             "facetrip_train_median_step": run["median_step_images_per_s"] / limit}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    meta = {"device": gpu or platform.machine(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cpus": cpus, "workers": workers, "smoke": args.smoke, "sets": sets,
            "warmup_steps": warmup, "timed_steps": steps,
            "dataset_images": identities * args.images_per_identity,
            "synth_seconds": synth_s, "cache_seconds": cache_s, "reference": INSIGHTFACE}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "in_memory": mem, "train": run,
                                    "ratio_to_model_alone": ratio}, indent=2) + "\n")

    print(f"\n{c['arch']}, {c['size']} px, {c['precision']}, channels-last, batch "
          f"{c['p'] * c['k']}, batch-all triplet, AdamW; {meta['device']}, torch "
          f"{torch.__version__}, {cpus} CPUs, data.workers={workers}; "
          f"{steps} timed steps after {warmup}\n")
    print("| | images/s | ratio to (a) |\n| --- | --- | --- |")
    print(f"| (a) model alone (in-memory batch on the {device.type}) | {limit:.0f} | 100% |")
    print(f"| (b) facetrip step, in-memory batch | {mem['facetrip_step_images_per_s']:.0f} | "
          f"{100 * ratio['facetrip_step']:.1f}% |")
    print(f"| (c) facetrip train (CLI, decoded cache) | {run['images_per_s']:.0f} "
          f"(median step {run['median_step_images_per_s']:.0f}) | "
          f"{100 * ratio['facetrip_train']:.1f}% |")
    verdict = "yes" if ratio["facetrip_train"] >= 0.9 else "NO"
    print(f"\nfacetrip train >= 90% of the model-alone limit: {verdict}")
    print(f"reference: {INSIGHTFACE}; (a) here is {limit / 760:.1f}x that")
    print(("synth reused" if synth_s is None else f"synth {synth_s:.1f} s")
          + f", cache {cache_s:.1f} s, train subprocess {run['train_seconds']:.1f} s "
          f"({run['cache_note'] or 'no cache note'})"
          + (f", peak GPU memory (a, b) {mem['peak_gpu_memory_gib']:.1f} GiB"
             if mem["peak_gpu_memory_gib"] is not None else "")
          + f"\nwritten to {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
