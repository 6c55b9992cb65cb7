"""Ordinary photos: does a model trained on aligned crops see a face pasted anywhere in a
cluttered frame as it sees the original photo?

Usage::

    python scripts/photos_check.py --model RUN/best.pt [--data ../shared/data/lfw]
                                   [--pairs ../shared/data/lfw/pairsDevTest.txt] [--n 100]
                                   [--out bench_results/photos.json]

For the first ``--n`` same-person pairs (a, b) of ``--pairs``, pastes photo a at a random
scale (0.6-1.1x) and position into a 400 x 300 frame of random coloured rectangles and
compares, with the model's own preprocessing (what ``facetrip verify`` runs):

  d0       distance(a, b), both aligned (the model records alignment);
  aligned  distance(frame, b), both aligned: should be d0 within 0.1;
  no-align distance(frame, b) with ``--no-align`` (both centre-cropped as if crops).

Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetrip.deploy.embedder import load_embedder  # noqa: E402
from facetrip.metrics.pairs import read_pairs  # noqa: E402
from tests.deploy.test_photos import cluttered_frame  # noqa: E402

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=LFW)
    parser.add_argument("--pairs", type=Path, default=LFW / "pairsDevTest.txt")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_results/photos.json"))
    args = parser.parse_args()
    embedder = load_embedder(args.model)
    aligned = embedder.loader
    if aligned.align is None:
        sys.exit(f"{args.model} does not record an alignment (train with data.align)")
    plain = aligned.with_align(None)
    listed = read_pairs(args.pairs)
    same = [(a, b) for a, b, s in zip(listed.path1, listed.path2, listed.issame) if s][: args.n]
    rng = np.random.default_rng(args.seed)

    def dist(loader, x, y):
        a, b = (embedder.embed(loader.load(p)[None]).numpy()[0] for p in (x, y))
        return float(np.linalg.norm(a - b))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (first, second) in enumerate(same):
            a, b = args.data / first, args.data / second
            scale = float(rng.uniform(0.6, 1.1))
            side = round(250 * scale)
            left, top = int(rng.integers(0, 400 - side)), int(rng.integers(0, 300 - side))
            frame = Path(tmp) / f"{i}.jpg"
            cluttered_frame(a, scale, left, top, i).save(frame, quality=95)
            d0 = dist(aligned, a, b)
            rows.append({"pair": [first, second], "scale": round(scale, 3), "d0": d0,
                         "aligned": dist(aligned, frame, b), "no_align": dist(plain, frame, b)})
    err_a = np.array([abs(r["aligned"] - r["d0"]) for r in rows])
    err_p = np.array([abs(r["no_align"] - r["d0"]) for r in rows])
    summary = {
        "model": str(args.model), "pairs": len(rows),
        "aligned_abs_diff": {"median": float(np.median(err_a)), "p95": float(np.quantile(
            err_a, 0.95)), "max": float(err_a.max()), "within_0.1": float((err_a < 0.1).mean())},
        "no_align_abs_diff": {"median": float(np.median(err_p)), "p95": float(np.quantile(
            err_p, 0.95)), "max": float(err_p.max()), "within_0.1": float((err_p < 0.1).mean())},
        "rows": rows,
    }
    print("| |d - d0| | median | p95 | max | within 0.1 |\n|---|---|---|---|---|")
    for key, label in (("aligned_abs_diff", "aligned"), ("no_align_abs_diff", "--no-align")):
        s = summary[key]
        print(f"| {label} | {s['median']:.3f} | {s['p95']:.3f} | {s['max']:.3f} | "
              f"{s['within_0.1']:.0%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
