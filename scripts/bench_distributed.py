"""Images/s of 1 and 2 training processes (gloo, CPU) on the same global batch, and the share
of the step spent in the all-gather of global mining.

    python scripts/bench_distributed.py [--size 32] [--p 16] [--k 4] [--steps 6] [--rounds 3]
                                        [--out bench_results/distributed.json]

Each configuration trains ResNet-18 (facetrip's EmbeddingNet, fp32, channels-last) on a
global PK batch of P x K in-memory images with batch-all triplet mining: one process with
all the CPU threads, and two processes (one thread each) under DistributedDataParallel with
``loss.scope=global`` (each rank's anchors mined against the all-gathered batch) and
``local``. The configurations run interleaved in rounds, so a change in the machine's load
hits all of them alike. "all_gather" is the time spent in the gather of embeddings and labels
and in the backward all-reduce of their gradient (timed inside the step); DDP's own gradient
all-reduce is part of the rest. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetrip.io import atomic_write  # noqa: E402
from facetrip.loss import TripletLoss  # noqa: E402
from facetrip.model import EmbeddingNet, ModelSpec  # noqa: E402
from facetrip.training import distributed as fdist  # noqa: E402


class _Timed:
    """Accumulates the seconds spent in AllGather's forward and backward and the label gather."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self) -> None:
        forward, backward = fdist.AllGather.forward, fdist.AllGather.backward
        gather_labels = fdist.all_gather_labels

        def timed(fn):
            def run(*args):
                tic = time.perf_counter()
                out = fn(*args)
                self.seconds += time.perf_counter() - tic
                return out
            return run

        fdist.AllGather.forward = staticmethod(timed(forward))
        fdist.AllGather.backward = staticmethod(timed(backward))
        fdist.all_gather_labels = timed(gather_labels)


def _worker(rank: int, world: int, scope: str, args: argparse.Namespace, init: str,
            out: str) -> None:
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                                world_size=world)
    timer = _Timed()
    timer.wrap()
    torch.manual_seed(0)
    model = EmbeddingNet(ModelSpec()).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    batch = args.p * args.k // world
    images = torch.randn(batch, 3, args.size, args.size).contiguous(
        memory_format=torch.channels_last)
    labels = (torch.arange(args.p // world) + rank * (args.p // world)).repeat_interleave(args.k)
    loss_fn = TripletLoss(mining="batch_all", margin=0.2)
    if world > 1 and scope == "global":
        loss_fn = fdist.GlobalTripletLoss(loss_fn)
    times = []
    for step in range(args.steps + 1):  # the first step is a warm-up
        timer.seconds = 0.0
        tic = time.perf_counter()
        loss, _ = loss_fn(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append((time.perf_counter() - tic, timer.seconds))
    if world > 1:
        dist.barrier()
    if rank == 0:
        torch.save(times, out)
    if world > 1:
        dist.destroy_process_group()


def run_config(world: int, scope: str, args: argparse.Namespace) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        mp.spawn(_worker, args=(world, scope, args, os.path.join(tmp, "init"), out),
                 nprocs=world, join=True)
        return torch.load(out, weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configs = {"1 process": (1, "local"), "2 processes, global mining": (2, "global"),
               "2 processes, local mining": (2, "local")}
    steps: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name, (world, scope) in configs.items():
            steps[name] += run_config(world, scope, args)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1} {name}: done, load {loads[-1]:.2f}", file=sys.stderr)
    batch = args.p * args.k
    rows = {}
    for name, values in steps.items():
        step_s = statistics.median(t for t, _ in values)
        gather_s = statistics.median(g for _, g in values)
        rows[name] = {"images_per_s": batch / step_s, "step_ms": 1e3 * step_s,
                      "all_gather_ms": 1e3 * gather_s, "all_gather_share": gather_s / step_s}
    base = rows["1 process"]["images_per_s"]
    print(f"\nResNet-18, {args.size} px, global batch {args.p} x {args.k} = {batch}, "
          f"batch-all mining, gloo on {os.cpu_count()} CPU cores, load "
          f"{min(loads):.1f}-{max(loads):.1f}; median of {args.rounds} x {args.steps} steps\n")
    print("| configuration | images/s | vs 1 process | step ms | all_gather ms | share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {row['images_per_s']:.1f} | {row['images_per_s'] / base:.2f}x | "
              f"{row['step_ms']:.0f} | {row['all_gather_ms']:.1f} | "
              f"{100 * row['all_gather_share']:.1f}% |")
    if args.out is not None:
        atomic_write(args.out, json.dumps({"args": vars(args) | {"out": str(args.out)},
                                           "load": loads, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
