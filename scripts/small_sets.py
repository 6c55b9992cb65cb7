"""``configs/small.yaml`` on three small real sets cut from LFW, against eigenfaces and pixels.

Usage::

    python scripts/small_sets.py [--sets 3] [--train-people 30] [--test-people 10]
                                 [--config configs/small.yaml] [--set key=value ...]
                                 [--lfw ../shared/data/lfw] [--runs runs/small-sets]
                                 [--out bench_results/small_sets.json]

What a user with a few dozen people has, made from LFW's DevTrain people with 5 or more
images (at most the first 20 of each, so no one dominates): ``--sets`` disjoint sets of
``--train-people`` training and ``--test-people`` other people each (drawn with ``--seed``),
as folders of links under ``RUNS/set-N/{train,test}``. The test people's pairs are written as
an LFW ``pairs.txt`` (10 folds, each with as many same as different pairs, every pair
distinct; a fold's threshold is chosen on the other nine). Then, per set, what the user runs:

1. ``facetrip train --config CONFIG --set data.root=RUNS/set-N/train`` (nothing else: the
   config works out validation, batch and epoch sizes from the data), wall minutes measured;
2. ``facetrip eval RUNS/set-N/test --model RUN/best.pt --pairs RUNS/set-N/pairs.txt
   --baseline pixels,eigenfaces`` (eigenfaces fitted on the run's training images).

Prints a markdown table (one row per set and the mean) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
from runner import FACETRIP, LFW, run

FOLDS = 10
MAX_IMAGES = 20


def devtrain_people(lfw: Path, min_images: int) -> list[str]:
    """DevTrain names with at least ``min_images`` images, sorted."""
    lines = (lfw / "peopleDevTrain.txt").read_text().split("\n")[1:]
    rows = [line.split() for line in lines if line.strip()]
    return sorted(name for name, count in rows if int(count) >= min_images)


def link_people(lfw: Path, people: list[str], where: Path) -> dict[str, list[str]]:
    """``where/<name>/<file>`` links to the first ``MAX_IMAGES`` images of each person;
    returns name -> the linked file names."""
    files = {}
    for name in people:
        (where / name).mkdir(parents=True, exist_ok=True)
        files[name] = sorted(p.name for p in (lfw / name).iterdir())[:MAX_IMAGES]
        for file in files[name]:
            link = where / name / file
            if not link.exists():
                link.symlink_to((lfw / name / file).resolve())
    return files


def write_pairs(files: dict[str, list[str]], path: Path, rng: np.random.Generator,
                per_fold: int = 30) -> int:
    """An LFW-format ``pairs.txt`` of ``FOLDS`` folds, each ``n`` same then ``n`` different
    pairs (``n`` = ``per_fold``, or fewer when the people have fewer same pairs); every pair
    distinct. Returns ``n``."""
    def number(file: str) -> int:
        return int(Path(file).stem.rsplit("_", 1)[1])

    same = [(name, number(a), number(b)) for name, fs in files.items()
            for a, b in combinations(fs, 2)]
    images = [(name, number(f)) for name, fs in files.items() for f in fs]
    different = [(a[0], a[1], b[0], b[1]) for a, b in combinations(images, 2) if a[0] != b[0]]
    n = min(per_fold, len(same) // FOLDS)
    same_picks = rng.choice(len(same), size=n * FOLDS, replace=False)
    diff_picks = rng.choice(len(different), size=n * FOLDS, replace=False)
    lines = [f"{FOLDS} {n}"]
    for fold in range(FOLDS):
        block = slice(fold * n, (fold + 1) * n)
        lines += ["\t".join(map(str, same[i])) for i in same_picks[block]]
        lines += ["\t".join(map(str, different[i])) for i in diff_picks[block]]
    path.write_text("\n".join(lines) + "\n")
    return n


def cut_sets(args: argparse.Namespace) -> list[Path]:
    """``args.sets`` disjoint (train, test) sets of people under ``args.runs``."""
    people = devtrain_people(args.lfw, 5)
    size = args.train_people + args.test_people
    if len(people) < args.sets * size:
        sys.exit(f"only {len(people)} DevTrain people have 5+ images; {args.sets} sets of "
                 f"{size} need {args.sets * size}")
    rng = np.random.default_rng(args.seed)
    order = [people[i] for i in rng.permutation(len(people))]
    sets = []
    for s in range(args.sets):
        chosen = order[s * size:(s + 1) * size]
        where = args.runs / f"set-{s}"
        link_people(args.lfw, chosen[:args.train_people], where / "train")
        test = link_people(args.lfw, chosen[args.train_people:], where / "test")
        write_pairs(test, where / "pairs.txt", rng)
        sets.append(where)
    return sets




def score_set(where: Path, args: argparse.Namespace) -> dict:
    """Train the config on one set and score its test pairs with the baselines."""
    out = where / args.name
    cmd = FACETRIP + ["train", "--config", str(args.config), "--set",
                      f"data.root={where / 'train'}", "--out", str(out), "--overwrite"]
    for item in args.set:
        cmd += ["--set", item]
    seconds = run(cmd, out.with_suffix(".train.log"))
    load = os.getloadavg()
    run(FACETRIP + ["eval", str(where / "test"), "--model", str(out / "best.pt"), "--pairs",
                    str(where / "pairs.txt"), "--baseline", "pixels,eigenfaces",
                    "--no-report", "--out", str(out / "eval")], out.with_suffix(".eval.log"))
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    ver = metrics["verification"]
    base = {name: b["verification"]["accuracy"] for name, b in metrics["baselines"].items()}
    notes = [line for line in out.with_suffix(".train.log").read_text().splitlines()
             if line.startswith("note:")]
    return {"set": where.name, "train_minutes": round(seconds / 60, 2), "load": load,
            "model": ver["accuracy"], "model_std": ver["accuracy_std"], "auc": ver["auc"],
            "pixels": base["pixels"], "eigenfaces": base["eigenfaces"],
            "n_pairs": ver["n_pairs"], "notes": notes}


def table(results: list[dict]) -> str:
    lines = ["| set | model | eigenfaces | pixels | model - eigenfaces | training min |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['set']} ({r['n_pairs']} pairs) | {r['model']:.3f} | "
                     f"{r['eigenfaces']:.3f} | {r['pixels']:.3f} | "
                     f"{100 * (r['model'] - r['eigenfaces']):+.1f} | {r['train_minutes']:.1f} |")
    mean = {k: float(np.mean([r[k] for r in results]))
            for k in ("model", "eigenfaces", "pixels", "train_minutes")}
    lines.append(f"| mean | {mean['model']:.3f} | {mean['eigenfaces']:.3f} | "
                 f"{mean['pixels']:.3f} | {100 * (mean['model'] - mean['eigenfaces']):+.1f} | "
                 f"{mean['train_minutes']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=3)
    parser.add_argument("--train-people", type=int, default=30)
    parser.add_argument("--test-people", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="which people form the sets")
    parser.add_argument("--config", type=Path, default=Path("configs/small.yaml"))
    parser.add_argument("--set", action="append", default=[], help="extra key=value override")
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--runs", type=Path, default=Path("runs/small-sets"))
    parser.add_argument("--name", default="run", help="run folder inside each set's")
    parser.add_argument("--only", type=int, nargs="*", help="score only these sets (0-based)")
    parser.add_argument("--out", type=Path, default=Path("bench_results/small_sets.json"))
    args = parser.parse_args()
    if not (args.lfw / "peopleDevTrain.txt").is_file():
        sys.exit(f"no LFW at {args.lfw} (--lfw)")
    results = []
    for number, where in enumerate(cut_sets(args)):
        if args.only and number not in args.only:
            continue
        results.append(score_set(where, args))
        print(table(results[-1:]).splitlines()[2], flush=True)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": str(args.config), "overrides": args.set,
                                    "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
