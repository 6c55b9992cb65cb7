"""Training that survives: kill -9 anywhere, SIGTERM, non-finite steps, unreadable checkpoints.

Every interrupted run here is resumed with ``facetrip train --resume`` and must end with the
weights of the uninterrupted run, bit for bit (CPU), and the same ``metrics.jsonl`` step rows
(``images_per_s`` aside: it is a wall-clock rate).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facetrip.errors import UserError
from facetrip.synth import synthesize
from facetrip.training.checkpoint import load_checkpoint
from facetrip.training.loop import StepOptions, TrainingDiverged, train_one_epoch
from facetrip.training.state import TrainState
from tests.conftest import TINY_RUN, as_sets, run_cli

pytestmark = pytest.mark.slow

#: 2 epochs of 5 steps, a checkpoint every 2 steps (so kills land between checkpoints too)
RUN = [*TINY_RUN, "train.epochs=2", "sampler.batches_per_epoch=5", "train.checkpoint_every=2",
       "data.workers=0", "data.val_fraction=0.34", "eval.folds=2", "eval.pairs_per_fold=4"]

KILLER = Path(__file__).resolve().parents[2] / "scripts" / "train_and_kill.py"


def _train_and_kill(out, step: int, where: str, sets: list[str]) -> None:
    child = subprocess.run([sys.executable, str(KILLER), str(out), str(step), where,
                            *as_sets(sets)], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces") / "data"
    synthesize(root, identities=12, images_per_identity=4, size=24, seed=3, workers=1)
    return root


@pytest.fixture(scope="module")
def reference(faces, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_cli("train", *as_sets(RUN + [f"data.root={faces}"]), "--out", out)
    return out


def _steps(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]


def _same_weights(a, b) -> None:
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert (ca["epoch"], ca["batch"], ca["step"]) == (cb["epoch"], cb["batch"], cb["step"])
    for key, value in cb["model"].items():
        assert torch.equal(ca["model"][key], value), key
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(),
                      strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sb)


@pytest.mark.parametrize("kill_step, in_write", [(3, False), (6, False), (4, True), (5, False)],
                         ids=["mid-epoch-1", "mid-epoch-2", "during-checkpoint-write",
                              "at-epoch-end-before-validation"])
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_run(faces, reference, tmp_path,
                                                                 kill_step, in_write):
    out = tmp_path / "run"
    sets = RUN + [f"data.root={faces}"]
    _train_and_kill(out, kill_step, "in-write" if in_write else "after-step", sets)
    resumed = run_cli("train", *as_sets(sets), "--out", out, "--resume")
    assert "resuming" in resumed.stdout
    _same_weights(out, reference)
    assert _steps(out) == _steps(reference)


def test_sigterm_writes_a_checkpoint_and_exits_143_then_resumes(faces, tmp_path):
    # one epoch of bigger images; the signal goes as soon as the progress bar shows a step
    # done (metrics.jsonl rows reach the file only in 8 kB blocks), so it lands mid-run
    sets = [*TINY_RUN, f"data.root={faces}", "data.image_size=64", "sampler.batches_per_epoch=20",
            "train.checkpoint_every=1000", "data.workers=0"]
    run_cli("train", *as_sets(sets), "--out", tmp_path / "ref")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "facetrip", "train", *as_sets(sets),
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    shown = ""
    while "epoch 1" not in shown:
        char = proc.stderr.read(1)
        assert char, f"the run ended before its first step was shown: {shown}"
        shown += char
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = shown + err
    assert proc.returncode == 143, err
    assert "SIGTERM: stopped at step" in err and "--resume" in err and "Traceback" not in err
    stopped = load_checkpoint(out / "last.pt")
    assert 1 <= stopped["step"] < 20 and stopped["batch"] == stopped["step"]
    run_cli("train", *as_sets(sets), "--out", out, "--resume")
    _same_weights(out, tmp_path / "ref")
    assert _steps(out) == _steps(tmp_path / "ref")


def test_a_newest_checkpoint_that_cannot_be_read_falls_back_to_the_previous(faces, reference,
                                                                           tmp_path):
    out, sets = tmp_path / "run", RUN + [f"data.root={faces}"]
    _train_and_kill(out, 5, "after-step", sets)
    newest = sorted((out / "checkpoints").glob("step-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated (a disk that lied)
    resumed = run_cli("train", *as_sets(sets), "--out", out, "--resume")
    assert f"cannot read checkpoint {newest}" in resumed.stderr
    assert "resuming from the previous checkpoint" in resumed.stderr
    _same_weights(out, reference)


def _toy_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return TrainState(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))


def test_a_non_finite_step_is_skipped_before_the_update_and_counted():
    state = _toy_state()
    batches = [(torch.randn(4, 3), torch.tensor([0, 0, 1, 1])) for _ in range(4)]
    calls = []

    def loss_fn(emb, labels):
        calls.append(1)
        loss = emb.pow(2).mean()
        return (loss * float("nan") if len(calls) == 2 else loss), {}

    weights = []
    rows = []

    def on_step(s):
        weights.append(state.model.weight.detach().clone())
        rows.append(s)

    train_one_epoch(state, loss_fn, batches, StepOptions(torch.device("cpu")), on_step=on_step)
    assert torch.equal(weights[0], weights[1])  # step 2 changed nothing
    assert not torch.equal(weights[1], weights[2])
    assert rows[1].loss is None and rows[1].stats == {"skipped": 1.0}
    assert state.step == 4 and state.skipped_steps == 1 and state.bad_steps == 0

    def nan_grad(emb, labels):  # a finite loss (0) whose gradient is NaN: d sqrt(x) at 0
        return (emb.pow(2).sum() * 0).sqrt(), {}

    before = [p.detach().clone() for p in state.model.parameters()]
    momentum = [v.clone() for v in state.optimizer.state_dict()["state"][0].values()]
    with pytest.raises(TrainingDiverged, match="not finite in 3 steps in a row"):
        train_one_epoch(state, nan_grad, batches, StepOptions(torch.device("cpu")),
                        max_bad_steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))
    after = list(state.optimizer.state_dict()["state"][0].values())
    assert all(torch.equal(a, b) for a, b in zip(momentum, after, strict=True))
    assert state.bad_steps == 3 and state.skipped_steps == 4


def test_a_diverging_run_stops_with_exit_code_3_and_one_line(faces, tmp_path):
    done = run_cli("train", *as_sets(RUN + [f"data.root={faces}", "optim.lr=1e38",
                                            "train.max_bad_steps=1"]),
                   "--out", tmp_path / "run", ok=False)
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not finite" in errors[0] and "Traceback" not in done.stderr


def test_a_full_disk_keeps_the_previous_checkpoint(faces, tmp_path, monkeypatch):
    import facetrip.training.checkpoint as ck
    from facetrip.config import load_config
    from facetrip.training.train import train

    real, calls = ck.atomic_torch_save, []

    def full_disk(obj, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        return real(obj, path)

    monkeypatch.setattr(ck, "atomic_torch_save", full_disk)
    cfg = load_config(None, RUN + [f"data.root={faces}"])
    with pytest.raises(UserError, match="the disk is full"):
        train(cfg, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["step-000000002.pt"]


def test_resume_is_exact_with_the_head_the_neck_the_memory_the_margin_and_the_average_on(
        faces, tmp_path):
    sets = RUN + [f"data.root={faces}", "loss.classifier=arcface", "loss.classifier_weight=0.5",
                  "loss.memory=12", "loss.memory_start=2", "loss.margin_target=0.9",
                  "train.ema=0.9", "loss.neck=true"]
    run_cli("train", *as_sets(sets), "--out", tmp_path / "ref")
    _train_and_kill(tmp_path / "run", 3, "after-step", sets)
    resumed = run_cli("train", *as_sets(sets), "--out", tmp_path / "run", "--resume")
    assert "resuming" in resumed.stdout
    _same_weights(tmp_path / "run", tmp_path / "ref")
    steps = _steps(tmp_path / "run")
    assert steps == _steps(tmp_path / "ref")
    rows = [r for r in steps if r["type"] == "step"]
    assert all("cls_loss" in r for r in rows)
    assert [r["memory_size"] for r in rows[:3]] == [0.0, 0.0, 8.0]  # 4 images a step, start 2
    margins = [r["margin"] for r in rows]
    assert margins[0] == 0.2 and len(set(margins)) > 3  # it moved, and the resume followed it
    a, b = (load_checkpoint(p / "last.pt") for p in (tmp_path / "run", tmp_path / "ref"))
    for part in ("classifier", "memory", "margin", "ema"):
        for key, value in b[part].items():
            assert torch.equal(a[part][key], value), (part, key)
    best = load_checkpoint(tmp_path / "ref" / "best.pt")
    assert not {"classifier", "memory", "margin", "ema"} & set(best)  # training only
