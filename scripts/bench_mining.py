"""Benchmark facetrip's triplet mining modes against pytorch-metric-learning (pml).

For every mode, batch size B and images per identity K, time forward + backward of the loss
(median of a few repeats after a warm-up) and its peak memory, each run in its own child
process with a time limit (and, on CPU, an address-space cap), so that a run that blows up is
reported as "OOM / >60 s" instead of taking the benchmark down.

Pairs compared (margin 0.2, L2-normalised random embeddings, D = 128, the same inputs for both):

* ``semihard_all`` vs ``TripletMarginMiner(type_of_triplets="semihard")`` + ``TripletMarginLoss``
* ``batch_hard`` vs ``BatchHardMiner`` + ``TripletMarginLoss(reducer=MeanReducer())``
* ``batch_all`` vs ``TripletMarginLoss`` (default ``AvgNonZeroReducer``)
* ``semihard`` and ``all``: facetrip only.

Before timing a pair, a child computes both losses and the benchmark stops unless they agree
to 1e-5 (relative).  pml runs whose ``B^3`` float32 tensor would exceed 16 GB are skipped.

Peak memory: on CPU, growth of the child's peak resident set size over its size before the
run (``/proc/self/clear_refs`` resets the peak); on CUDA, ``torch.cuda.max_memory_allocated``
growth.  CPU children are forked from this process once torch is imported (no compute has run
in the parent), which avoids paying the import for each run; CUDA children are spawned.

Usage::

    python scripts/bench_mining.py [--quick] [--out bench_results/mining.json] \\
        [--device cpu|cuda] [--repeats 3] [--timeout 60] [--threads N] \\
        [--sizes B ...] [--ks K ...] [--modes MODE ...]

On a CPU shared with other busy processes, torch's default thread count makes every operator
wait for a descheduled worker thread and the timings mostly measure the other processes;
``--threads 1`` then gives stable numbers (the JSON records the load average and CPU times).

Needs ``pip install pytorch-metric-learning`` (the ``bench`` extra) for the pml columns.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetrip.loss.triplet import triplet_loss  # noqa: E402

MODES = ("semihard", "semihard_all", "batch_hard", "batch_all", "all")
WITH_PML = ("semihard_all", "batch_hard", "batch_all")
FULL_SIZES = (128, 512, 1024, 2048, 4096, 8192)
QUICK_SIZES = (128, 512)
PER_IDENTITY = (4, 32)
QUICK_PER_IDENTITY = (4,)
DIM = 128
MARGIN = 0.2
PML_CUBE_LIMIT_BYTES = 16e9
AGREEMENT_RTOL = 1e-5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="B in (128, 512) and K = 4 only")
    parser.add_argument("--out", type=Path, default=Path("bench_results/mining.json"))
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per run (child)")
    parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (overrides --quick)")
    parser.add_argument("--ks", type=int, nargs="+", help="K values (default 4 and 32)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--mem-cap-gb", type=float, default=12.0, help="CPU address-space cap per child, GB"
    )
    return parser.parse_args(argv)


# ------------------------------------------------------------------------- in the children


def make_inputs(batch: int, per_identity: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * 1000 + per_identity)
    emb = F.normalize(torch.randn(batch, DIM, generator=gen), dim=1)
    labels = torch.arange(batch) // per_identity
    return emb.to(device), labels.to(device)


def make_loss(library: str, mode: str) -> Any:
    """``loss(embeddings, labels) -> scalar`` for facetrip or its pml equivalent."""
    if library == "facetrip":
        return lambda e, y: triplet_loss(e, y, mining=mode, margin=MARGIN)
    from pytorch_metric_learning import losses, miners, reducers

    if mode == "semihard_all":
        miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
        semihard_loss = losses.TripletMarginLoss(margin=MARGIN)
        return lambda e, y: semihard_loss(e, y, miner(e, y))
    if mode == "batch_hard":
        hard_miner = miners.BatchHardMiner()
        mean_loss = losses.TripletMarginLoss(margin=MARGIN, reducer=reducers.MeanReducer())
        return lambda e, y: mean_loss(e, y, hard_miner(e, y))
    if mode == "batch_all":
        return losses.TripletMarginLoss(margin=MARGIN)
    raise ValueError(f"no pml equivalent for {mode}")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_run(loss_fn: Any, emb: torch.Tensor, labels: torch.Tensor, device: str) -> dict:
    x = emb.clone().requires_grad_()
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    loss = loss_fn(x, labels)
    loss.backward()
    synchronize(device)
    return {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "loss": float(loss.detach()),
    }


def rss_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process, from ``/proc/self/status``."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory growth of this process from ``start()`` to ``peak_mb()``."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass  # a fresh child: its peak so far is its import-time size anyway
        self.baseline = rss_bytes("VmRSS")

    def peak_mb(self) -> float:
        if self.device == "cuda":
            peak = torch.cuda.max_memory_allocated()
        else:
            try:
                peak = rss_bytes("VmHWM")
            except OSError:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, peak - self.baseline) / 2**20


def cap_address_space(gigabytes: float) -> None:
    """Let this (CPU) child grow by at most ``gigabytes`` of virtual memory."""
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = current + int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def measure_child(job: dict, conn: Any) -> None:
    """Child: time one library on one configuration and send a result dict."""
    torch.set_num_threads(job["threads"])
    try:
        if job["device"] == "cpu":
            cap_address_space(job["mem_cap_gb"])
        emb, labels = make_inputs(job["batch"], job["k"], job["device"])
        loss_fn = make_loss(job["library"], job["mode"])
        memory = PeakMemory(job["device"])
        memory.start()
        began = time.perf_counter()
        warmup = timed_run(loss_fn, emb, labels, job["device"])
        runs = []
        while len(runs) < job["repeats"]:
            if runs and time.perf_counter() - began > job["timeout"] / 2:
                break  # slow configuration: fewer repeats rather than a time-out
            runs.append(timed_run(loss_fn, emb, labels, job["device"]))
        conn.send(
            {
                "status": "ok",
                "ms": 1e3 * statistics.median(r["wall"] for r in runs),
                "cpu_ms": 1e3 * statistics.median(r["cpu"] for r in runs),
                "peak_mb": memory.peak_mb(),
                "loss": warmup["loss"],
                "repeats": len(runs),
            }
        )
    except (MemoryError, RuntimeError) as err:
        status = "oom" if _looks_like_oom(err) else "error"
        conn.send({"status": status, "detail": str(err)[:200]})


def agreement_child(job: dict, conn: Any) -> None:
    """Child: both losses on the same inputs, forward only."""
    torch.set_num_threads(job["threads"])
    try:
        if job["device"] == "cpu":
            cap_address_space(job["mem_cap_gb"])
        emb, labels = make_inputs(job["batch"], job["k"], job["device"])
        with torch.no_grad():
            ours = float(make_loss("facetrip", job["mode"])(emb, labels))
            theirs = float(make_loss("pml", job["mode"])(emb, labels))
        conn.send({"status": "ok", "facetrip": ours, "pml": theirs})
    except (MemoryError, RuntimeError) as err:
        conn.send({"status": "oom" if _looks_like_oom(err) else "error", "detail": str(err)[:200]})


def _looks_like_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "memory" in text or "alloc" in text


# ------------------------------------------------------------------------- in the parent


def run_child(target: Any, job: dict) -> dict:
    """Run ``target(job, conn)`` in a child with a time limit; its result or a failure."""
    context = mp.get_context("spawn" if job["device"] == "cuda" else "fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(job, sender))
    child.start()
    sender.close()
    if not receiver.poll(job["timeout"]):
        child.kill()
        child.join()
        return {"status": "timeout"}
    try:
        result = receiver.recv()
    except EOFError:  # died without a word: killed (out of memory) or crashed
        result = None
    child.join()
    if result is None:
        status = "oom" if child.exitcode is not None and child.exitcode < 0 else "error"
        return {"status": status, "detail": f"exit code {child.exitcode}"}
    return result


def check_agreement(job: dict) -> None:
    result = run_child(agreement_child, job)
    if result["status"] != "ok":
        print(f"  agreement check {job['mode']} B={job['batch']}: {result['status']}")
        return
    ours, theirs = result["facetrip"], result["pml"]
    if abs(ours - theirs) > AGREEMENT_RTOL * max(abs(theirs), 1e-12):
        raise SystemExit(
            f"{job['mode']} B={job['batch']} K={job['k']}: facetrip {ours!r} != pml {theirs!r}"
        )


def pml_skip_reason(batch: int) -> str | None:
    cube = 4.0 * batch**3
    if cube > PML_CUBE_LIMIT_BYTES:
        return f"skipped (B³ = {cube / 1e9:.0f} GB)"
    return None


def benchmark(args: argparse.Namespace) -> list[dict]:
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    ks = args.ks or (QUICK_PER_IDENTITY if args.quick else PER_IDENTITY)
    records = []
    for batch in sizes:
        for k in ks:
            for mode in args.modes:
                job = {
                    "mode": mode, "batch": batch, "k": k, "device": args.device,
                    "repeats": args.repeats, "timeout": args.timeout,
                    "mem_cap_gb": args.mem_cap_gb, "threads": torch.get_num_threads(),
                }
                record = {"mode": mode, "B": batch, "K": k, "pml": None}
                if mode in WITH_PML:
                    record["pml"] = pml_result(job)
                record["facetrip"] = run_child(measure_child, {**job, "library": "facetrip"})
                record["speedup"] = speedup(record)
                records.append(record)
                print(table_row(record), flush=True)
    return records


def pml_result(job: dict) -> dict:
    reason = pml_skip_reason(job["batch"])
    if reason:
        return {"status": "skipped", "detail": reason}
    check_agreement(job)
    return run_child(measure_child, {**job, "library": "pml"})


def speedup(record: dict) -> float | None:
    ours, theirs = record["facetrip"], record["pml"]
    if theirs and theirs["status"] == "ok" and ours["status"] == "ok":
        return theirs["ms"] / ours["ms"]
    return None


HEADER = (
    "| mode | B | K | facetrip ms | facetrip peak MB | pml ms | pml peak MB | speed-up |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(record: dict) -> str:
    ours, theirs = record["facetrip"], record["pml"]
    ours_ms, ours_mb = cells(ours)
    theirs_ms, theirs_mb = cells(theirs) if theirs else ("—", "—")
    ratio = f"{record['speedup']:.1f}x" if record["speedup"] else "—"
    return (
        f"| {record['mode']} | {record['B']} | {record['K']} | {ours_ms} | {ours_mb} | "
        f"{theirs_ms} | {theirs_mb} | {ratio} |"
    )


def cells(result: dict) -> tuple[str, str]:
    if result["status"] == "ok":
        return f"{result['ms']:.1f}", f"{result['peak_mb']:.0f}"
    if result["status"] == "skipped":
        return result["detail"], "—"
    if result["status"] in ("timeout", "oom"):
        return "OOM / >60 s", "—"
    return f"error: {result.get('detail', '')[:40]}", "—"


def environment(args: argparse.Namespace) -> dict:
    try:
        import pytorch_metric_learning

        pml_version = pytorch_metric_learning.__version__
    except ImportError:
        pml_version = None
    return {
        "device": args.device,
        "cuda_device": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_note": "other processes may share the cores: see load_average_*",
        "torch": torch.__version__,
        "pytorch_metric_learning": pml_version,
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
        "dim": DIM,
        "margin": MARGIN,
        "repeats": args.repeats,
        "timeout_s": args.timeout,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # inherited by forked children, passed to spawned
    try:
        import pytorch_metric_learning  # noqa: F401  (imported before forking children)
    except ImportError:
        raise SystemExit("pip install pytorch-metric-learning (the 'bench' extra)") from None
    env = environment(args)
    print(f"device={args.device} threads={env['torch_threads']} load={env['load_average_start']}")
    print(HEADER, flush=True)
    began = time.perf_counter()
    records = benchmark(args)
    env["load_average_end"] = os.getloadavg()
    env["total_s"] = time.perf_counter() - began
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "results": records}, indent=2))
    print(f"\n{len(records)} rows in {env['total_s']:.0f} s, written to {args.out}")


if __name__ == "__main__":
    main()
