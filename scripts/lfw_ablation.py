"""The LFW lever ablation: each lever against ``configs/lfw.yaml`` on the same data and seed.

Usage::

    python scripts/lfw_ablation.py [--rows baseline cosface ...] [--row 'name key=v key=v']
                                   [--epochs 12] [--seeds 0 1] [--runs runs/ablation]
                                   [--lfw ../shared/data/lfw] [--out bench_results/ablation.json]

Every row is what a user runs, through the CLI, one after the other (never two at once):

1. ``facetrip train --config configs/lfw.yaml --set seed=S [--set train.epochs=E] <row's sets>``
   on the DevTrain people (wall minutes measured around the command);
2. ``facetrip eval LFW --model RUN/best.pt --pairs pairsDevTest.txt --calibrate-held-out --flip``:
   DevTest accuracy at the threshold chosen on the run's held-out DevTrain people, AUC,
   TAR@FAR=1e-2 (all with flip averaging, as ``make lfw``);
3. the deploy path: ``facetrip embed`` (no flip) on the DevTest people's folders, and those
   embeddings' DevTest accuracy by 10-fold cross-validation: the 500 same and 500 different
   pairs are dealt to 10 folds of 50 + 50 in file order, each fold scored at the threshold
   chosen on the other nine (``verification_metrics``, the k-fold code of eval).

A run directory that already holds ``best.pt`` and ``train_minutes.json`` is not trained
again (so a table can be extended row by row). Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner import FACETRIP, LFW, run  # noqa: E402

from facetrip.metrics.pairs import read_pairs, resolve_pairs  # noqa: E402
from facetrip.metrics.verification import verification_metrics  # noqa: E402

#: name -> (--set overrides on top of configs/lfw.yaml, what the lever is)
ROWS: dict[str, tuple[list[str], str]] = {
    "baseline": ([], "configs/lfw.yaml as it is"),
    "cosface": (["loss.classifier=cosface"], "+ CosFace identity head (s 30, m 0.35), weight 1"),
    "arcface": (["loss.classifier=arcface"], "+ ArcFace identity head (s 30, m 0.5), weight 1"),
    "softmax": (["loss.classifier=softmax"], "+ normalised-softmax identity head (s 30)"),
    "memory": (["loss.memory=2048"], "+ cross-batch memory of 2,048 embeddings"),
    "ema": (["train.ema=0.999"], "+ weight EMA 0.999 (validation, best.pt)"),
    "batch_hard_soft": (["loss.mining=batch_hard", "loss.margin=null"],
                        "batch-hard mining, soft margin"),
    "margin_0.4": (["loss.margin=0.4"], "batch-all, margin 0.4"),
    "margin_target_0.1": (["loss.margin_target=0.1"],
                          "a margin that grows from 0.2 to keep 10% of the triplets active"),
    "margin_target_0.2": (["loss.margin_target=0.2"],
                          "a margin that grows from 0.2 to keep 20% of the triplets active"),
    "softmax_w0.1": (["loss.classifier=softmax", "loss.classifier_weight=0.1"],
                     "+ normalised-softmax identity head (s 30), weight 0.1"),
    "memory_start258": (["loss.memory=2048", "loss.memory_start=258"],
                        "+ cross-batch memory of 2,048 from step 258 (epoch 7 of 12)"),
    "cosface_neck": (["loss.classifier=cosface", "loss.neck=true"],
                     "+ CosFace head (s 30, m 0.35), weight 1, after the head's BatchNorm, "
                     "the triplet loss before it (BNNeck)"),
    "softmax_w0.1_neck": (["loss.classifier=softmax", "loss.classifier_weight=0.1",
                           "loss.neck=true"],
                          "+ normalised-softmax head (s 30), weight 0.1, with the BNNeck"),
    "pool_grid2": (["model.pool_grid=2"],
                   "+ the last 2x2 feature map flattened into the head (no global average pool)"),
    "erase_0.5": (["data.erase_p=0.5"],
                  "+ random erasing at p 0.5 (Bag of Tricks) instead of 0.25"),
    "area_0.6": (["data.augment_area=[0.6, 1.0]"],
                 "+ random resized crops of 60-100% of the area instead of 80-100%"),
    "wd_0.05": (["optim.weight_decay=0.05"],
                "+ AdamW weight decay 0.05 instead of 5e-4 (decoupled: 5e-4 barely decays)"),
    "singletons": (["data.min_images_per_identity=1"],
                   "+ the 2,573 single-image DevTrain people (augmented copies as positives)"),
    "size_80": (["data.image_size=80", "data.cache=runs/lfw-cache-80"], "80 px input"),
    "small_stem": (["model.stem=small"], "3x3/1 stem, no max-pool (4x the compute)"),
}


def devtest_folder(lfw: Path, pairs_file: Path, where: Path) -> Path:
    """A folder of links to the identity folders DevTest's pairs use (embed reads only them)."""
    pairs = read_pairs(pairs_file)
    where.mkdir(parents=True, exist_ok=True)
    for name in sorted({p.split("/")[0] for p in pairs.path1 + pairs.path2}):
        link = where / name
        if not link.exists():
            link.symlink_to((lfw / name).resolve(), target_is_directory=True)
    return where


def interleaved_folds(issame: np.ndarray, n_folds: int) -> np.ndarray:
    """``(P,)`` fold ids: each class (same / different) dealt to the folds in file order, so
    every fold holds an equal share of both (DevTest lists its 500 same pairs first)."""
    folds = np.empty(issame.size, dtype=np.int64)
    for value in (True, False):
        where = np.flatnonzero(issame == value)
        folds[where] = np.arange(where.size) * n_folds // max(where.size, 1)
    return folds


def deploy_cv(npz: Path, pairs_file: Path, n_folds: int = 10) -> dict:
    """10-fold cross-validated DevTest accuracy of ``facetrip embed``'s embeddings."""
    data = np.load(npz)
    pairs = read_pairs(pairs_file)
    idx1, idx2 = resolve_pairs(pairs, [str(p) for p in data["paths"]])
    emb = data["embeddings"]
    distances = np.linalg.norm(emb[idx1] - emb[idx2], axis=1)
    issame = np.asarray(pairs.issame, dtype=bool)
    ver = verification_metrics(distances, issame, folds=interleaved_folds(issame, n_folds))
    return {"accuracy": ver["accuracy"], "accuracy_std": ver["accuracy_std"],
            "auc": ver["auc"], "folds": ver["folds"]}


def score_row(name: str, sets: list[str], seed: int, args: argparse.Namespace) -> dict:
    """Train (unless done), eval and embed one row for one seed."""
    out = args.runs / f"{name}-s{seed}"
    devtest = args.lfw / "pairsDevTest.txt"
    timing = out / "train_minutes.json"
    if not ((out / "best.pt").is_file() and timing.is_file()):
        overrides = [f"seed={seed}", f"data.root={args.lfw}",
                     f"data.identities_file={args.lfw / 'peopleDevTrain.txt'}"]
        overrides += [f"train.epochs={args.epochs}"] if args.epochs else []
        cmd = FACETRIP + ["train", "--config", "configs/lfw.yaml", "--out", str(out),
                          "--overwrite"]
        for item in overrides + sets:
            cmd += ["--set", item]
        args.runs.mkdir(parents=True, exist_ok=True)
        seconds = run(cmd, args.runs / f"{name}-s{seed}.train.log")
        timing.write_text(json.dumps({"minutes": seconds / 60, "load": os.getloadavg()}) + "\n")
    minutes = json.loads(timing.read_text())["minutes"]
    cache = yaml.safe_load((out / "config.yaml").read_text())["data"]["cache"]
    run(FACETRIP + ["eval", str(args.lfw), "--model", str(out / "best.pt"), "--pairs",
                    str(devtest), "--calibrate-held-out", "--flip", "--no-report",
                    *(["--cache", cache] if cache else []), "--out", str(out / "eval")],
        out / "eval.log")
    ver = json.loads((out / "eval" / "metrics.json").read_text())["verification"]
    folder = devtest_folder(args.lfw, devtest, args.runs / "devtest-people")
    run(FACETRIP + ["embed", str(folder), "--model", str(out / "best.pt"), "--out",
                    str(out / "devtest.npz")], out / "embed.log")
    return {"row": name, "seed": seed, "sets": sets, "train_minutes": round(minutes, 1),
            "devtest_accuracy": ver["accuracy"], "auc": ver["auc"],
            "tar_at_far_1e-2": (ver.get("tar_at_far") or {}).get("0.01"),
            "deploy_cv": deploy_cv(out / "devtest.npz", devtest)}


def parse_rows(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    rows = [(name, ROWS[name][0]) for name in args.rows]
    for spec in args.row:
        name, *sets = spec.split()
        rows.append((name, sets))
    return rows


def table(results: list[dict]) -> str:
    lines = ["| row | seed | DevTest acc (held-out thr., flip) | AUC | TAR@FAR=1e-2 | "
             "DevTest 10-fold CV (embed, no flip) | training min |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        tar = r["tar_at_far_1e-2"]
        lines.append(
            f"| {r['row']} | {r['seed']} | {r['devtest_accuracy']:.3f} | {r['auc']:.3f} | "
            f"{'' if tar is None else f'{tar:.3f}'} | {r['deploy_cv']['accuracy']:.3f} ± "
            f"{r['deploy_cv']['accuracy_std']:.3f} | {r['train_minutes']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", default=[], choices=sorted(ROWS))
    parser.add_argument("--row", action="append", default=[],
                        help="a row of your own: 'name key=value key=value'")
    parser.add_argument("--epochs", type=int, default=0, help="0: the config's (80)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--out", type=Path, default=Path("bench_results/ablation.json"))
    args = parser.parse_args()
    if not (args.lfw / "pairsDevTest.txt").is_file():
        sys.exit(f"no LFW at {args.lfw} (--lfw)")
    rows = parse_rows(args) or [("baseline", [])]
    results = []
    for name, sets in rows:
        for seed in args.seeds:
            results.append(score_row(name, sets, seed, args))
            print(table(results[-1:]).splitlines()[-1], flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"epochs": args.epochs or 80, "results": results},
                                           indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
