"""The training workflow: the run directory it keeps, what it refuses, what resume may change."""

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from facetrip.config import changed_keys, load_config, resume_config
from facetrip.errors import UserError
from facetrip.training.checkpoint import load_checkpoint
from facetrip.training.hooks import TrainHooks
from facetrip.training.loop import TrainingDiverged
from facetrip.training.metrics_log import read_run_log
from facetrip.training.train import fit, prepare_run, train
from tests.conftest import TINY_RUN, as_sets


@pytest.fixture
def faces(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        for j in range(3):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            path = tmp_path / "data" / f"id{i}" / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return tmp_path / "data"


def test_a_run_writes_its_directory_and_refuses_to_overwrite_it(faces, tmp_path, tiny_config):
    cfg = tiny_config(faces, "sampler.batches_per_epoch=2", "train.epochs=2", "data.workers=0")
    result = train(cfg, tmp_path / "run")
    assert result.steps == 4 and result.best_accuracy is None  # no validation split
    log = read_run_log(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in log.steps] == [1, 2, 3, 4]
    assert [r["epoch"] for r in log.epochs] == [0, 1]
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (last["epoch"], last["batch"], last["step"]) == (2, 0, 4)
    assert "optimizer" not in load_checkpoint(tmp_path / "run" / "best.pt")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(cfg, tmp_path / "run")
    again = train(cfg, tmp_path / "run", overwrite=True)
    assert again.steps == 4 and len(read_run_log(tmp_path / "run" / "metrics.jsonl").steps) == 4


def test_resume_keeps_the_saved_config_and_names_every_changed_key(tiny_config, tmp_path):
    saved = tiny_config(tmp_path)
    longer = tiny_config(tmp_path, "train.epochs=5")
    resumed, changed = resume_config(saved, longer)
    assert resumed.train.epochs == 5 and changed == ["train.epochs"]
    other = tiny_config(tmp_path, "optim.lr=0.5", "seed=3", "train.epochs=5")
    assert changed_keys(tiny_config(tmp_path), other) == ["optim.lr", "train.epochs", "seed"]
    with pytest.raises(UserError, match=r"changed: optim.lr, seed\);.*--force"):
        resume_config(tiny_config(tmp_path), other)
    forced, changed = resume_config(tiny_config(tmp_path), other, force=True)
    assert forced.optim.lr == 0.5 and changed == ["optim.lr", "train.epochs", "seed"]


def test_tensorboard_scalars_mirror_the_metrics_rows_and_a_resumed_run_continues_them(
        faces, tmp_path, tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(faces, "sampler.batches_per_epoch=2", "train.epochs=2", "data.workers=0",
                      "train.tensorboard=true", "data.val_fraction=0")
    train(cfg, tmp_path / "run")
    log = read_run_log(tmp_path / "run" / "metrics.jsonl")

    def scalars(tag):
        events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
        return [(e.step, e.value) for e in events.Scalars(tag)]

    for key in ("loss", "lr", "active_fraction", "mean_d_ap", "mean_d_an", "images_per_s"):
        expected = [(r["step"], r[key]) for r in log.steps]
        assert [s for s, _ in scalars(f"train/{key}")] == [s for s, _ in expected]
        np.testing.assert_allclose([v for _, v in scalars(f"train/{key}")],
                                   [v for _, v in expected], rtol=1e-6)
    # continue the same run two more epochs: the event files then hold steps 1..8 once each
    longer = load_config(tmp_path / "run" / "config.yaml", ["train.epochs=4"])
    train(longer, tmp_path / "run", resume=True)
    assert [s for s, _ in scalars("train/loss")] == list(range(1, 9))


def test_tensorboard_without_the_package_is_a_user_error(faces, tmp_path, tiny_config,
                                                         monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = tiny_config(faces, "sampler.batches_per_epoch=1", "train.tensorboard=true",
                      "data.workers=0")
    with pytest.raises(UserError, match=r"pip install 'facetrip\[tensorboard\]'"):
        train(cfg, tmp_path / "run")


class _Heard(TrainHooks):
    def __init__(self):
        self.resumed_info = None

    def resumed(self, info):
        self.resumed_info = info


def test_extending_a_finished_run_restarts_its_schedule_from_the_first_new_step(
        faces, tmp_path, tiny_config):
    lr = 0.01
    cfg = tiny_config(faces, "sampler.batches_per_epoch=2", "train.epochs=3", "data.workers=0",
                      "optim.warmup_epochs=0", f"optim.lr={lr}", "optim.min_lr=0.001")
    train(cfg, tmp_path / "run")
    first = read_run_log(tmp_path / "run" / "metrics.jsonl").steps
    assert first[-1]["lr"] == pytest.approx(0.001 + 0.009 * (1 + math.cos(math.pi * 5 / 6)) / 2)
    heard = _Heard()
    longer = load_config(tmp_path / "run" / "config.yaml", ["train.epochs=6"])
    train(longer, tmp_path / "run", resume=True, hooks=heard)
    rows = read_run_log(tmp_path / "run" / "metrics.jsonl").steps
    assert [r["lr"] for r in rows[:6]] == [r["lr"] for r in first]  # the past is unchanged
    # steps 7..12: a warm restart at optim.lr, cosine down to min_lr at the new end
    want = [0.001 + 0.009 * (1 + math.cos(math.pi * i / 6)) / 2 for i in range(6)]
    np.testing.assert_allclose([r["lr"] for r in rows[6:]], want, rtol=1e-9)
    assert heard.resumed_info.schedule == ("the learning rate restarts at 0.01 at step 6 and "
                                           "decays (cosine) to 0.001 at step 12")
    # resuming the extended run again changes nothing: its checkpoint holds the schedule
    again = _Heard()
    train(load_config(tmp_path / "run" / "config.yaml", ["train.epochs=6"]), tmp_path / "run",
          resume=True, hooks=again)
    assert again.resumed_info.schedule == ""


def test_weights_that_become_non_finite_stop_the_run_before_anything_is_saved(
        faces, tmp_path, tiny_config):
    cfg = tiny_config(faces, "sampler.batches_per_epoch=2", "train.epochs=3", "data.workers=0",
                      "optim.lr=1e30", "optim.warmup_epochs=0")
    with pytest.raises(TrainingDiverged, match="weights are not finite after the update of "
                                               "step 1"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_a_run_whose_last_step_was_skipped_does_not_end_as_done(faces, tmp_path, tiny_config):
    cfg = tiny_config(faces, "sampler.batches_per_epoch=2", "train.epochs=2", "data.workers=0")
    run = prepare_run(cfg, tmp_path / "run")
    real, calls = run.loss_fn, []

    def nan_on_the_last_step(embeddings, labels):
        calls.append(1)
        loss, stats = real(embeddings, labels)
        return (loss * float("nan") if len(calls) == 4 else loss), stats

    run.loss_fn = nan_on_the_last_step
    with pytest.raises(TrainingDiverged, match="last 1 steps were skipped"):
        fit(run)
    last = load_checkpoint(tmp_path / "run" / "last.pt")  # the epoch's checkpoint: finite
    assert last["step"] == 4 and all(t.isfinite().all() for t in last["model"].values()
                                     if t.is_floating_point())


def test_the_cli_exits_3_and_never_says_done_for_a_diverged_run(faces, tmp_path, monkeypatch,
                                                                 capfd):
    from facetrip.cli import main

    args = [f"data.root={faces}", *TINY_RUN, "sampler.batches_per_epoch=2", "train.epochs=3",
            "data.workers=0", "optim.lr=1e30", "optim.warmup_epochs=0"]
    monkeypatch.setattr(sys, "argv", ["facetrip", "train", *as_sets(args),
                                      "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as done:
        main()
    out, err = capfd.readouterr()
    assert done.value.code == 3 and "done" not in out
    assert err.strip().splitlines()[-1] == (
        "error: the weights are not finite after the update of step 1 (learning rate 1e+30): "
        "the run diverged; lower optim.lr or set train.grad_clip; no checkpoint was written")


def test_the_weight_average_follows_its_definition_and_best_pt_holds_it(faces, tmp_path,
                                                                          tiny_config):
    cfg = tiny_config(faces, "sampler.batches_per_epoch=3", "train.epochs=1", "data.workers=0",
                      "train.ema=0.5", "train.checkpoint_every=1", "train.keep_checkpoints=5")
    train(cfg, tmp_path / "run")
    saved = [load_checkpoint(tmp_path / "run" / "checkpoints" / f"step-{s:09d}.pt")
             for s in (1, 2, 3)]
    name = "embed.weight"
    raw = [c["model"][name] for c in saved]
    want = raw[0]  # the first update copies the weights, each later one moves halfway
    for w in raw[1:]:
        want = 0.5 * want + 0.5 * w
    torch.testing.assert_close(saved[-1]["ema"][f"module.{name}"], want, rtol=1e-6, atol=1e-7)
    assert not torch.equal(want, raw[-1])  # an average that differs from the last weights
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert "ema" not in best
    for key, value in best["model"].items():
        assert torch.equal(value, saved[-1]["ema"][f"module.{key}"]), key


# --------------------------------------------------------------------------- the field's formats


def test_train_sees_exactly_the_identities_and_images_of_another_writers_rec(
        tmp_path, tiny_config, monkeypatch, capfd):
    from tests.conftest import cli_result
    from tests.data.encoded import insightface_set

    (tmp_path / "ms1m").mkdir()
    rec, images = insightface_set(tmp_path / "ms1m" / "train.rec", min_images=2)
    cfg = tiny_config(rec, "sampler.batches_per_epoch=2", "data.workers=1")
    run = prepare_run(cfg, tmp_path / "lib")
    assert run.data.index.classes == [str(i) for i in range(200)]
    assert sorted(map(int, run.data.index.paths)) == sorted(images)
    assert run.data.index.skipped == [] and run.data.train_images == len(images)
    code, out, err = cli_result("train", "--out", tmp_path / "cli",
                              *as_sets([f"data.root={rec}", *TINY_RUN, "data.workers=1",
                                        "sampler.batches_per_epoch=2"]))
    assert code == 0, err
    assert f"train: {len(images)} images of 200 identities; no validation split" in out


def test_training_from_a_packed_rec_is_training_from_its_folder(tmp_path, tiny_config):
    from facetrip.data.recordio import pack_identity_folder
    from facetrip.synth import synthesize

    synthesize(tmp_path / "faces", identities=10, images_per_identity=4, size=24, seed=3,
               workers=1)
    rec = pack_identity_folder(tmp_path / "faces", tmp_path / "rec" / "train.rec").rec
    runs = {}
    for name, root in (("folder", tmp_path / "faces"), ("rec", rec)):
        cfg = tiny_config(root, "sampler.batches_per_epoch=3", "data.workers=1",
                          "data.val_fraction=0.4", "eval.folds=2", "eval.pairs_per_fold=4")
        runs[name] = (train(cfg, tmp_path / name), load_checkpoint(tmp_path / name / "last.pt"))
    (folder, a), (packed, b) = runs["folder"], runs["rec"]
    assert folder.last_val == packed.last_val and folder.last_val is not None
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_val_bins_are_scored_every_epoch_and_best_follows_their_mean(tmp_path, faces,
                                                                      tiny_config):
    from tests.data.encoded import encoded_image, write_bin

    images = [encoded_image(i, "PNG", 24) for i in range(24)]
    sets = [write_bin(tmp_path / f"{name}.bin", (images[i::1], [j % 2 == 0 for j in range(12)]))
            for i, name in enumerate(["lfw", "cfp_fp"])]
    sets[1] = write_bin(sets[1], (images[::-1], [j % 3 == 0 for j in range(12)]))
    bins = f"train.val_bins=[{sets[0]}, {sets[1]}]"
    with pytest.raises(UserError, match="train.best_metric=bins needs train.val_bins"):
        tiny_config(faces, "train.best_metric=bins")
    cfg = tiny_config(faces, bins, "train.best_metric=bins", "train.epochs=3",
                      "data.workers=0", "sampler.batches_per_epoch=1", "optim.lr=0.05")
    heard = []

    class Hooks(TrainHooks):
        def bins_scored(self, epoch, scores):
            heard.append((epoch, scores))

    result = train(cfg, tmp_path / "run", hooks=Hooks())
    rows = read_run_log(tmp_path / "run" / "metrics.jsonl").epochs
    assert [sorted(r["bins"]) for r in rows] == [["cfp_fp", "lfw"]] * 3
    assert all(r["bins"]["lfw"]["folds"] == 10 and r["bins"]["lfw"]["n_pairs"] == 12
               for r in rows)
    means = [np.mean([b["accuracy"] for b in r["bins"].values()]) for r in rows]
    assert result.best_epoch == int(np.argmax(means)) and result.best_accuracy == max(means)
    assert [e for e, _ in heard] == [0, 1, 2]
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == result.best_epoch + 1


def test_a_refused_run_leaves_no_run_directory_and_rows_are_readable_at_once(
        faces, tmp_path, tiny_config):
    with pytest.raises(UserError, match="dataset directory not found"):
        train(tiny_config(tmp_path / "absent"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    rows = []

    class Tail(TrainHooks):
        def step(self, log):  # what a reader of metrics.jsonl sees right after each step
            rows.append(len(read_run_log(tmp_path / "run" / "metrics.jsonl").steps))

    train(tiny_config(faces, "sampler.batches_per_epoch=3", "data.workers=0"), tmp_path / "run",
          hooks=Tail())
    assert rows == [1, 2, 3]
