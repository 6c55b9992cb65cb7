"""Soak test of exact resume: kill -9 a short synthetic run at random points, resume it with
``facetrip train --resume``, and check every resumed run ends bit-identical to an
uninterrupted one.

    python scripts/soak_resume.py [--kills 20] [--seed 0] [--out bench_results/soak.json]

Each trial starts a fresh run (3 epochs x 6 steps, a checkpoint every 4 steps, validation
after each epoch), kills it with SIGKILL after a random step or, one time in four, half-way
through writing a checkpoint (``scripts/train_and_kill.py``), then resumes it through the
CLI. Identical means: the final weights, optimiser state and position equal the uninterrupted
run's, and ``metrics.jsonl`` holds the same rows (``images_per_s`` aside, a wall-clock rate).
Prints ``N/N identical`` and writes JSON. About 15 s a trial on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facetrip.io import atomic_write  # noqa: E402
from facetrip.synth import synthesize  # noqa: E402
from facetrip.training.checkpoint import load_checkpoint  # noqa: E402

STEPS_PER_EPOCH, EPOCHS = 6, 3
RUN = ["data.image_size=16", "sampler.p=2", "sampler.k=2", "model.embedding_dim=8",
       "train.device=cpu", "data.workers=0", f"train.epochs={EPOCHS}",
       f"sampler.batches_per_epoch={STEPS_PER_EPOCH}", "train.checkpoint_every=4",
       "data.val_fraction=0.34", "eval.folds=2", "eval.pairs_per_fold=4"]


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def facetrip_train(overrides: list[str], out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "facetrip", "train", *sets(overrides), "--out",
                    str(out), *extra], check=True, capture_output=True, text=True)


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lines]


def identical(a: Path, b: Path) -> tuple[bool, str]:
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    if (ca["epoch"], ca["batch"], ca["step"]) != (cb["epoch"], cb["batch"], cb["step"]):
        return False, "position differs"
    for key, value in cb["model"].items():
        if not torch.equal(ca["model"][key], value):
            return False, f"weights differ: {key}"
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(),
                      strict=True):
        if not all(torch.equal(sa[k], sb[k]) for k in sb):
            return False, "optimiser state differs"
    if rows(a) != rows(b):
        return False, "metrics.jsonl rows differ"
    return True, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthesize(work / "data", identities=12, images_per_identity=4, size=24, seed=3)
        overrides = RUN + [f"data.root={work / 'data'}"]
        tic = time.perf_counter()
        facetrip_train(overrides, work / "reference")
        trials = []
        for trial in range(args.kills):
            step = rng.randint(1, STEPS_PER_EPOCH * EPOCHS)
            where = "in-write" if step % 4 == 0 and rng.random() < 0.5 else "after-step"
            out = work / f"trial-{trial}"
            killed = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_and_kill.py"),
                                     str(out), str(step), where, *sets(overrides)],
                                    capture_output=True, text=True)
            resumed_from = load_checkpoint(out / "last.pt")["step"] if (
                out / "last.pt").exists() else None
            facetrip_train(overrides, out, "--resume")
            same, why = identical(out, work / "reference")
            trials.append({"kill_step": step, "where": where, "exit_code": killed.returncode,
                           "resumed_from_step": resumed_from, "identical": same, "why": why})
            print(f"trial {trial + 1:2d}: killed {where} at step {step:2d} (exit "
                  f"{killed.returncode}), resumed from step {resumed_from}: "
                  f"{'identical' if same else 'DIFFERENT: ' + why}", flush=True)
        seconds = time.perf_counter() - tic
    n_same = sum(t["identical"] for t in trials)
    print(f"{n_same}/{len(trials)} identical ({seconds:.0f} s)")
    if args.out is not None:
        result = {"kills": len(trials), "identical": n_same, "seconds": seconds,
                  "run": RUN, "trials": trials}
        atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    sys.exit(0 if n_same == len(trials) else 1)


if __name__ == "__main__":
    main()
