"""Benchmark the evaluation metrics: wall time and peak memory.

Usage::

    python scripts/bench_eval.py [--n 200000] [--classes 1000] [--dim 128]
                                 [--out bench_results/eval.json]

Runs leave-one-out ``retrieval_metrics`` on N random L2-normalised embeddings in C classes
(clustered around random class centres, so the metrics are not trivial), then
``verification_metrics`` on 6,000 and 1,000,000 random pairs. Prints a markdown table and
writes the numbers as JSON. Peak memory is the process' peak RSS (``resource.getrusage``),
which only grows: each row reports the peak reached by the end of that step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetrip.evaluation.knn import DEFAULT_CHUNK_SIZE  # noqa: E402
from facetrip.evaluation.retrieval import retrieval_metrics  # noqa: E402
from facetrip.evaluation.verification import verification_metrics  # noqa: E402

NOISE = 1.5  # noise norm relative to the unit class centre: same-class cosine ~ 1 / (1 + 1.5^2)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024 if sys.platform != "darwin" else usage / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, CPU seconds)``; CPU time shows contention from other jobs."""
    start, start_cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - start, cpu_seconds() - start_cpu


def make_embeddings(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``(n, dim)`` unit-norm embeddings and ``(n,)`` labels, ``n // classes`` items per class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=gen) % classes
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    noise = torch.randn(n, dim, generator=gen) * (NOISE / dim**0.5)
    emb = torch.nn.functional.normalize(centres[labels] + noise, dim=1)
    return emb, labels.numpy()


def make_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` distances and ``(n,)`` issame, half positive, overlapping distributions."""
    rng = np.random.default_rng(seed)
    issame = np.arange(n) % 2 == 0
    distances = rng.normal(np.where(issame, 0.8, 1.2), 0.15)
    return distances, issame


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every benchmark step; returns the JSON record."""
    rows: list[dict[str, Any]] = []
    load_before = list(os.getloadavg())  # other jobs on the machine inflate wall time
    emb, labels = make_embeddings(args.n, args.classes, args.dim, args.seed)
    base_mb = peak_rss_mb()
    retrieval, seconds, cpu = timed(
        lambda: retrieval_metrics(
            emb, labels, metric="cosine", chunk_size=args.chunk_size, device=args.device
        )
    )
    rows.append(
        {
            "step": f"retrieval_metrics N={args.n:,} C={args.classes:,} d={args.dim}",
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_rss_mb": peak_rss_mb(),
            "result": retrieval,
        }
    )
    for n_pairs in (6_000, 1_000_000):
        distances, issame = make_pairs(n_pairs, args.seed)
        verification, seconds, cpu = timed(lambda d=distances, s=issame: verification_metrics(d, s))
        rows.append(
            {
                "step": f"verification_metrics P={n_pairs:,}",
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mb": peak_rss_mb(),
                "result": verification,
            }
        )
    return {
        "n": args.n,
        "classes": args.classes,
        "dim": args.dim,
        "chunk_size": args.chunk_size,
        "device": args.device or "cpu",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "peak_rss_mb_before": base_mb,
        "steps": rows,
    }


def markdown(record: dict[str, Any]) -> str:
    """The steps as a markdown table."""
    lines = [
        "| step | wall time (s) | CPU time (s) | peak RSS (MB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in record["steps"]:
        lines.append(
            f"| {row['step']} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} "
            f"| {row['peak_rss_mb']:.0f} |"
        )
    retrieval = record["steps"][0]["result"]
    recall = ", ".join(f"R@{k}={v:.4f}" for k, v in retrieval["recall_at_k"].items())
    lines.append("")
    lines.append(f"load average (1, 5, 15 min) before: {record['load_average_before']}")
    lines.append(
        f"retrieval: {recall}, MAP@R={retrieval['map_at_r']:.4f}, "
        f"R-precision={retrieval['r_precision']:.4f}, queries={retrieval['n_queries']:,}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="number of embeddings")
    parser.add_argument("--classes", type=int, default=1_000, help="number of classes")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--device", default=None, help="e.g. cuda; default: cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_results/eval.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    record = run(args)
    print(markdown(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
