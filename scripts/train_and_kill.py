"""Train with facetrip's library and die by SIGKILL at a chosen point (fault injection).

    python scripts/train_and_kill.py OUT STEP WHERE --set KEY=VALUE ...

WHERE is ``after-step`` (killed right after optimiser step STEP) or ``in-write`` (killed
half-way through writing the checkpoint of step STEP: its temporary file is left half
written). Used by ``tests/training/test_resume.py`` and ``scripts/soak_resume.py``, which then
resume with ``facetrip train --resume`` and compare with an uninterrupted run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import facetrip.training.checkpoint as checkpoint  # noqa: E402
from facetrip.config import load_config  # noqa: E402
from facetrip.io import atomic_write  # noqa: E402
from facetrip.training.hooks import TrainHooks  # noqa: E402
from facetrip.training.train import train  # noqa: E402


def die(*_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("step", type=int)
    parser.add_argument("where", choices=["after-step", "in-write"])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    hooks = None
    if args.where == "in-write":
        real = checkpoint.atomic_torch_save

        def half_then_die(f) -> None:
            f.write(b"PK half a checkpoint")
            f.flush()
            die()

        def torn(obj, path):
            if obj.get("step") == args.step and "step-" in Path(path).name:
                atomic_write(path, half_then_die)
            return real(obj, path)

        checkpoint.atomic_torch_save = torn
    else:
        class DieAtStep(TrainHooks):
            def step(self, log) -> None:
                if log.step == args.step:
                    die()

        hooks = DieAtStep()
    train(load_config(None, args.sets), args.out, hooks=hooks)


if __name__ == "__main__":
    main()
