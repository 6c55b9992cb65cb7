"""Benchmark ``facetrip align`` on LFW against the detector alone on the same images.

Usage::

    python scripts/bench_align.py [--data ../shared/data/lfw] [--limit 0] [--workers N]
                                  [--out bench_results/align.json]

Takes ``--limit`` LFW images spread over the whole set (every k-th file; 0: all 13,233) and
measures images/s of

  (a) the detector alone: :meth:`Detector.detect` (MTCNN's P/R/O-net passes and their
      bookkeeping) on batches of images already decoded in memory, in ``--workers``
      processes of one thread each, as ``facetrip align`` runs it: the compute limit;
  (b) ``facetrip align`` as a user runs it (a fresh process: start-up, listing, JPEG
      decoding, detection, fit, warp, PNG encoding, atomic writes, align.jsonl);

in the order a, b, a (the limit is their mean, so a change in the load of a shared machine
hits both alike). Each is also measured in CPU seconds (the processes' user + system time),
which another user's load on a shared machine disturbs far less than wall time: the CPU ratio
is detector-alone CPU seconds / align CPU seconds for the same images. Then it re-detects
the landmarks on a sample of the crops, each framed in a grey border half a crop wide, and
reports their median distance to the template. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetrip.alignment.crop import AlignSpec  # noqa: E402
from facetrip.alignment.detect import Detector, choose_face  # noqa: E402
from facetrip.alignment.template import template  # noqa: E402
from facetrip.data.align import default_workers  # noqa: E402
from facetrip.data.decode import decode_rgb  # noqa: E402
from facetrip.data.index import list_dataset  # noqa: E402

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
BATCH = 32


def pick_images(root: Path, limit: int) -> list[str]:
    """``limit`` image paths (relative) spread over the data set; all when ``limit`` is 0."""
    files = [f.path for f in list_dataset(root)[0] if f.identity is not None]
    if limit <= 0 or limit >= len(files):
        return files
    step = len(files) / limit
    return [files[int(i * step)] for i in range(limit)]


def link_tree(root: Path, paths: list[str], into: Path) -> Path:
    """The chosen images as an identity-folder tree of symbolic links."""
    for rel in paths:
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        (into / rel).symlink_to(root / rel)
    return into


def _detect_share(images: list[torch.Tensor], spec: AlignSpec, start: mp.Barrier,
                  times: mp.Queue) -> None:
    torch.set_num_threads(1)
    detector = Detector(spec.min_face)
    detector.detect(images[:2])  # warm up
    start.wait()
    began, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(images), BATCH):
        detector.detect(images[i:i + BATCH])
    times.put((began, time.perf_counter(), time.process_time() - cpu))


def detector_alone(images: list[torch.Tensor], spec: AlignSpec, workers: int
                   ) -> tuple[float, float]:
    """``(images/s, CPU seconds)`` of MTCNN on decoded images in ``workers`` one-thread
    processes (fork)."""
    ctx = mp.get_context("fork")
    start, times = ctx.Barrier(workers), ctx.Queue()
    shares = [images[w::workers] for w in range(workers)]
    procs = [ctx.Process(target=_detect_share, args=(share, spec, start, times))
             for share in shares]
    for p in procs:
        p.start()
    spans = [times.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(e for _, e, _ in spans) - min(b for b, _, _ in spans)
    return len(images) / wall, sum(c for _, _, c in spans)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def align_cli(tree: Path, out: Path, workers: int) -> tuple[float, float, str]:
    """``(images/s, CPU seconds, its summary line)`` of ``facetrip align`` end to end (a
    fresh process; its CPU time includes its workers')."""
    began, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, "-m", "facetrip", "align", str(tree), "--out",
                           str(out), "--workers", str(workers)], capture_output=True,
                          text=True, check=True)
    seconds, cpu = time.perf_counter() - began, _children_cpu() - cpu
    count = sum(1 for _ in tree.rglob("*.jpg"))
    return count / seconds, cpu, proc.stdout.strip().splitlines()[-1]


def redetect_error(out: Path, sample: int) -> float:
    """Median distance (px) of landmarks re-detected on ``sample`` crops to the template."""
    crops = sorted(out.rglob("*.png"))
    crops = crops[:: max(1, len(crops) // sample)][:sample]
    detector, points = Detector(), template(112)
    errors = []
    for i in range(0, len(crops), BATCH):
        framed = []
        for path in crops[i:i + BATCH]:
            frame = torch.full((3, 224, 224), 128, dtype=torch.uint8)
            frame[:, 56:168, 56:168] = decode_rgb(path)
            framed.append(frame)
        for faces in detector.detect(framed):
            face = choose_face(faces, 224, 224)
            if face is not None:
                errors.extend(np.linalg.norm(face.landmarks - 56 - points, axis=1))
    return float(np.median(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=LFW)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench_results/align.json"))
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"LFW not found at {args.data} (--data)")
    spec = AlignSpec()
    paths = pick_images(args.data, args.limit)
    images = [decode_rgb(args.data / p) for p in paths]
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        tree = link_tree(args.data, paths, Path(tmp) / "photos")
        runs = [detector_alone(images, spec, args.workers)]
        load.append(os.getloadavg()[0])
        align_rate, align_cpu, summary = align_cli(tree, Path(tmp) / "aligned", args.workers)
        load.append(os.getloadavg()[0])
        runs.append(detector_alone(images, spec, args.workers))
        load.append(os.getloadavg()[0])
        aligned = sum(1 for _ in (Path(tmp) / "aligned").rglob("*.png"))
        error = redetect_error(Path(tmp) / "aligned", args.sample)
    alone = [rate for rate, _ in runs]
    limit, alone_cpu = statistics.mean(alone), statistics.mean(cpu for _, cpu in runs)
    result = {
        "images": len(paths), "workers": args.workers, "batch": BATCH,
        "min_face": spec.min_face, "detector_alone_img_s": [round(r, 2) for r in alone],
        "align_img_s": round(align_rate, 2), "ratio": round(align_rate / limit, 3),
        "detector_alone_cpu_s": [round(cpu, 1) for _, cpu in runs],
        "align_cpu_s": round(align_cpu, 1), "cpu_ratio": round(alone_cpu / align_cpu, 3),
        "faces_found": aligned, "found_share": round(aligned / len(paths), 4),
        "redetect_median_px": round(error, 3), "align_summary": summary,
        "loadavg_1min": load, "cpus": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
    }
    print("| measure | value |\n|---|---|")
    print(f"| images (workers) | {len(paths)} ({args.workers}) |")
    print(f"| detector alone, img/s (a, a') | {alone[0]:.1f}, {alone[1]:.1f} |")
    print(f"| facetrip align, img/s | {align_rate:.1f} |")
    print(f"| align / detector alone (wall) | {align_rate / limit:.1%} |")
    print(f"| CPU s: detector alone (a, a'), align | "
          f"{', '.join(f'{cpu:.0f}' for _, cpu in runs)}, {align_cpu:.0f} |")
    print(f"| align / detector alone (per CPU second) | {alone_cpu / align_cpu:.1%} |")
    print(f"| face found | {aligned} / {len(paths)} ({aligned / len(paths):.2%}) |")
    print(f"| re-detected landmarks to template, median | {error:.2f} px |")
    print(f"| load average (1 min) | {', '.join(f'{v:.2f}' for v in load)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
