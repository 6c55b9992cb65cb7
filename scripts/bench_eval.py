"""Benchmark the evaluation: the metric functions and the ``facetrip eval`` users run.

Usage::

    python scripts/bench_eval.py [--n 200000] [--classes 1000] [--dim 128]
                                 [--metric euclidean] [--no-cli]
                                 [--out bench_results/eval.json]

Runs leave-one-out ``retrieval_metrics`` on N random L2-normalised embeddings in C classes
(clustered around random class centres, so the metrics are not trivial), then
``verification_metrics`` on 6,000 and 1,000,000 random pairs. Then, end to end, what a user
runs: the same embeddings are written to an npz in a temporary folder and
``facetrip eval --embeddings FILE --out DIR`` runs as a child process (default options: the
report is written too); its wall time, CPU time and peak RSS are measured (``os.wait4``), its
``metrics.json`` is checked against the in-process ``retrieval_metrics`` result, and the ratio
of its wall time to ``retrieval_metrics`` alone is printed. ``--metric`` (default euclidean,
as ``facetrip eval``) is used for both. Prints a markdown table and writes the numbers as
JSON. Peak memory of the in-process steps is the process' peak RSS (``resource.getrusage``),
which only grows: each row reports the peak reached by the end of that step.

Wall times mean little on a machine other jobs are using: the load average is recorded
before and after, and CPU times show how much of the machine each step had.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetrip.metrics.knn import DEFAULT_CHUNK_SIZE  # noqa: E402
from facetrip.metrics.retrieval import retrieval_metrics  # noqa: E402
from facetrip.metrics.verification import verification_metrics  # noqa: E402

NOISE = 1.5  # noise norm relative to the unit class centre: same-class cosine ~ 1 / (1 + 1.5^2)
#: ``facetrip eval --embeddings`` on 200,000 x 128 must stay under these on 2 CPU cores
TARGET_SECONDS, TARGET_RSS_MB = 120.0, 3 * 1024.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024 if sys.platform != "darwin" else usage / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadSampler:
    """The 1-minute load average, sampled every ``period`` seconds while in the ``with`` block.

    It counts the benchmark's own threads too (about ``torch.get_num_threads()`` while it
    computes): on an otherwise idle 2-CPU machine it approaches 2, not 0.
    """

    def __init__(self, period: float = 2.0):
        self.period, self.samples = period, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {"mean": sum(self.samples) / len(self.samples), "max": max(self.samples)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float, dict[str, float]]:
    """``(fn(), wall seconds, CPU seconds, load average during)``; CPU time and the load
    show contention from other jobs."""
    start, start_cpu = time.perf_counter(), cpu_seconds()
    with LoadSampler() as load:
        out = fn()
    return out, time.perf_counter() - start, cpu_seconds() - start_cpu, load.summary()


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
    retrieval, seconds, cpu, load = timed(
        lambda: retrieval_metrics(
            emb, labels, metric=args.distance, chunk_size=args.chunk_size, device=args.device
        )
    )
    rows.append(
        {
            "step": f"retrieval_metrics N={args.n:,} C={args.classes:,} d={args.dim} "
                    f"{args.distance}",
            "seconds": seconds,
            "cpu_seconds": cpu,
            "load_during": load,
            "peak_rss_mb": peak_rss_mb(),
            "result": retrieval,
        }
    )
    for n_pairs in (6_000, 1_000_000):
        distances, issame = make_pairs(n_pairs, args.seed)
        verification, seconds, cpu, load = timed(
            lambda d=distances, s=issame: verification_metrics(d, s)
        )
        rows.append(
            {
                "step": f"verification_metrics P={n_pairs:,}",
                "seconds": seconds,
                "cpu_seconds": cpu,
                "load_during": load,
                "peak_rss_mb": peak_rss_mb(),
                "result": verification,
            }
        )
    cli = None if args.no_cli else run_cli(emb, labels, args.distance)
    if cli is not None:
        cli["matches_retrieval_metrics"] = cli["metrics"]["retrieval"] == json.loads(
            json.dumps(retrieval)  # the same JSON round trip as metrics.json
        )
        cli["ratio_to_retrieval_metrics"] = cli["seconds"] / rows[0]["seconds"]
        rows.append(
            {
                "step": f"facetrip eval --embeddings (end to end, child process) "
                f"N={args.n:,} {args.distance}",
                "seconds": cli["seconds"],
                "cpu_seconds": cli["cpu_seconds"],
                "load_during": cli["load_during"],
                "peak_rss_mb": cli["peak_rss_mb"],
                "result": cli["metrics"]["retrieval"],
            }
        )
    return {
        "n": args.n,
        "classes": args.classes,
        "dim": args.dim,
        "metric": args.distance,
        "chunk_size": args.chunk_size,
        "device": args.device or "cpu",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "peak_rss_mb_before": base_mb,
        "steps": rows,
        "cli": None if cli is None else {k: v for k, v in cli.items() if k != "metrics"},
    }


def facetrip_command() -> list[str]:
    """The ``facetrip`` console script of this interpreter's environment, else ``-m``."""
    script = Path(sys.executable).with_name("facetrip")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "facetrip"]


def run_cli(emb: torch.Tensor, labels: np.ndarray, metric: str) -> dict[str, Any]:
    """``facetrip eval --embeddings`` on ``emb`` as a child process: wall and CPU time, peak
    RSS (``ru_maxrss`` of that child, from ``os.wait4``), the load average around it and the
    ``metrics.json`` it wrote."""
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        npz = Path(tmp) / "embeddings.npz"
        np.savez(npz, embeddings=emb.numpy().astype(np.float32), labels=labels)
        out = Path(tmp) / "eval"
        command = [
            *facetrip_command(),
            "eval",
            "--embeddings",
            str(npz),
            "--out",
            str(out),
            "--distance",
            metric,
        ]
        load_before = list(os.getloadavg())
        start = time.perf_counter()
        with open(Path(tmp) / "log.txt", "w+") as log, LoadSampler() as load:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            seconds = time.perf_counter() - start
            log.seek(0)
            output = log.read()
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{output}")
        metrics = json.loads((out / "metrics.json").read_text())
        report_bytes = (out / "report.html").stat().st_size
    rss = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return {
        "command": " ".join(["facetrip", *command[command.index("eval") :]]),
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": rss,
        "report_bytes": report_bytes,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "load_during": load.summary(),
        "metrics": metrics,
    }


def markdown(record: dict[str, Any]) -> str:
    """The steps as a markdown table."""
    lines = [
        "| step | wall time (s) | CPU time (s) | peak RSS (MB) | load during (mean / max) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in record["steps"]:
        load = row["load_during"]
        lines.append(
            f"| {row['step']} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} "
            f"| {row['peak_rss_mb']:.0f} | {load['mean']:.2f} / {load['max']:.2f} |"
        )
    retrieval = record["steps"][0]["result"]
    recall = ", ".join(f"R@{k}={v:.4f}" for k, v in retrieval["recall_at_k"].items())
    lines.append("")
    lines.append(
        f"load average (1, 5, 15 min) before: {record['load_average_before']}, "
        f"after: {record['load_average_after']}"
    )
    cli = record.get("cli")
    if cli is not None:
        ok_time, ok_rss = cli["seconds"] < TARGET_SECONDS, cli["peak_rss_mb"] < TARGET_RSS_MB
        lines.append(
            f"end to end: `{cli['command']}` {cli['seconds']:.1f} s wall, "
            f"{cli['cpu_seconds']:.1f} s CPU, peak RSS {cli['peak_rss_mb']:.0f} MB; "
            f"{cli['ratio_to_retrieval_metrics']:.2f} x retrieval_metrics alone; "
            f"load average before {cli['load_average_before']}, "
            f"after {cli['load_average_after']}"
        )
        lines.append(
            f"targets: < {TARGET_SECONDS:.0f} s {'met' if ok_time else 'MISSED'}, "
            f"< {TARGET_RSS_MB:.0f} MB {'met' if ok_rss else 'MISSED'}; metrics.json retrieval "
            f"{'matches' if cli['matches_retrieval_metrics'] else 'DIFFERS FROM'} "
            "retrieval_metrics"
        )
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
    parser.add_argument(
        "--distance",
        default="euclidean",
        choices=["euclidean", "cosine"],
        help="for retrieval_metrics and facetrip eval (whose default is euclidean)",
    )
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument(
        "--no-cli", action="store_true", help="skip the end-to-end facetrip eval run"
    )
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
