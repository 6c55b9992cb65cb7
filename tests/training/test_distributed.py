"""Training on several processes (gloo on CPU): sharded PK batches, global mining equal to
one process on the same global batch, and a 2-process ``facetrip train`` that resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facetrip.data.sampler import PKSampler, SeededBatchSampler
from facetrip.loss import TripletLoss
from facetrip.loss.classifier import IdentityClassifier, JointLoss
from facetrip.loss.memory import CrossBatchMemory, MemoryTripletLoss
from facetrip.synth import synthesize
from facetrip.training.checkpoint import load_checkpoint
from tests.conftest import TINY_RUN, as_sets, run_cli_process

MODES = [("semihard", 0.2), ("semihard_all", 0.2), ("batch_hard", 0.2), ("batch_all", 0.2),
         ("all", 0.2), ("batch_hard", None), ("batch_all", None)]


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_gets_whole_identities_and_the_union_is_the_single_process_batch(world):
    labels = np.repeat(np.arange(13), [2, 5, 3, 6, 4, 4, 7, 2, 3, 5, 6, 3, 4])
    single = SeededBatchSampler(PKSampler(labels, 4, 3, batches_per_epoch=7, seed=2), seed=2)
    shards = [SeededBatchSampler(PKSampler(labels, 4, 3, batches_per_epoch=7, seed=2), seed=2,
                                 rank=r, world_size=world) for r in range(world)]
    for s in (single, *shards):
        s.set_epoch(3, start_batch=1)
    for whole, *parts in zip(single, *shards, strict=True):
        idx = [[i for i, _ in part] for part in parts]
        assert sum(idx, []) == [i for i, _ in whole]
        ids = [set(labels[i].tolist()) for i in idx]
        assert all(len(ids[a] & ids[b]) == 0 for a in range(world) for b in range(a))
        assert all(len(i) == 4 // world * 3 for i in idx)
        seeds = [{s for _, s in part} for part in parts]
        assert all(len(s) == 1 for s in seeds) and len(set.union(*seeds)) == world
    with pytest.raises(ValueError, match="cannot be split evenly over 3 ranks"):
        SeededBatchSampler(PKSampler(labels, 4, 3), rank=0, world_size=3)


def _global_batch(seed: int = 0, out: int = 5):
    """16 inputs of 6 features in the PK layout (4 identities x 4) and a linear model to
    ``out`` features (10 for the neck: the triplet loss's 5, then the head's 5)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(4)
    model = torch.nn.Linear(6, out).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(out, 6, generator=gen, dtype=torch.float64))
        model.bias.copy_(torch.randn(out, generator=gen, dtype=torch.float64))
    return x, labels, model


def _head() -> IdentityClassifier:
    torch.manual_seed(7)  # the same head on every rank and in the single process
    return IdentityClassifier(5, 4, "arcface", scale=8.0).double()


def _memory_steps(make_loss, wrap, rows) -> list[tuple]:
    """Two steps with a cross-batch memory of 24 (the second mines against the first's
    global batch): ``[(loss, weight grad, memory size)]`` per step."""
    memory = CrossBatchMemory(24, 5)
    out = []
    for seed in (0, 1):
        x, labels, model = _global_batch(seed)
        wrapped = wrap(model)  # held until after backward: DDP reduces in its hooks
        loss, stats = make_loss(memory)(wrapped(x[rows]), labels[rows])
        loss.backward()
        out.append((float(loss.detach()), model.weight.grad.clone(), stats["memory_size"]))
    return out


def _one_step(rank: int, world: int, init_file: str, out: str) -> None:
    from facetrip.training.distributed import GlobalClassifierLoss, GlobalTripletLoss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    results = {}
    for mining, margin in MODES:
        x, labels, model = _global_batch()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        share = x.shape[0] // world
        rows = slice(rank * share, (rank + 1) * share)
        loss_fn = GlobalTripletLoss(TripletLoss(mining=mining, margin=margin))
        loss, stats = loss_fn(ddp(x[rows]), labels[rows])
        loss.backward()
        results[f"{mining}-{margin}"] = (float(loss), model.weight.grad.clone(),
                                         model.bias.grad.clone(), stats["n_triplets"],
                                         stats["n_candidates"], stats["active_fraction"])
    for neck in (False, True):
        x, labels, model = _global_batch(out=10 if neck else 5)
        head = _head()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss_fn = JointLoss(GlobalTripletLoss(TripletLoss(mining="batch_all")),
                            GlobalClassifierLoss(head), 0.5, neck)
        loss, stats = loss_fn(ddp(x[rows]), labels[rows])
        loss.backward()
        results[f"classifier-{neck}"] = (float(loss), model.weight.grad.clone(),
                                         model.bias.grad.clone(), head.weight.grad.clone(),
                                         stats["cls_loss"])
    results["memory"] = _memory_steps(
        lambda memory: GlobalTripletLoss(TripletLoss(mining="batch_all"), memory),
        lambda model: torch.nn.parallel.DistributedDataParallel(model), rows)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_one_step_of_global_mining_equals_one_process_on_the_global_batch(tmp_path):
    out = tmp_path / "ranks.pt"
    mp.spawn(_one_step, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=True)
    for mining, margin in MODES:
        x, labels, model = _global_batch()
        loss, stats = TripletLoss(mining=mining, margin=margin)(model(x), labels)
        loss.backward()
        got_loss, w_grad, b_grad, n, candidates, active = results[f"{mining}-{margin}"]
        assert got_loss == pytest.approx(float(loss.detach()), abs=1e-5), mining
        assert n == stats["n_triplets"] and candidates == stats["n_candidates"]
        # the global active share: an adaptive margin moves alike on every rank
        assert active == pytest.approx(stats["active_fraction"], abs=1e-12), mining
        assert torch.allclose(w_grad, model.weight.grad, atol=1e-5), mining
        assert torch.allclose(b_grad, model.bias.grad, atol=1e-5), mining
        assert model.weight.grad.abs().max() > 1e-6  # a gradient that could differ
    # the identity-classification head beside global mining, without and with the neck
    # (the triplet loss on the first 5 outputs, the head on the last 5): one process's step
    for neck in (False, True):
        x, labels, model = _global_batch(out=10 if neck else 5)
        head = _head()
        loss, stats = JointLoss(TripletLoss(mining="batch_all"), head, 0.5, neck)(model(x),
                                                                                   labels)
        loss.backward()
        got_loss, w_grad, b_grad, head_grad, cls_loss = results[f"classifier-{neck}"]
        assert got_loss == pytest.approx(float(loss.detach()), abs=1e-9)
        assert cls_loss == pytest.approx(stats["cls_loss"], abs=1e-9)
        assert torch.allclose(w_grad, model.weight.grad, atol=1e-9)
        assert torch.allclose(b_grad, model.bias.grad, atol=1e-9)
        assert torch.allclose(head_grad, head.weight.grad, atol=1e-9)
        assert head.weight.grad.abs().max() > 1e-6
    # the cross-batch memory holds the global batches: its second step mines against the
    # first step's global batch on every rank, as one process does
    single = _memory_steps(lambda memory: MemoryTripletLoss(TripletLoss(mining="batch_all"),
                                                            memory),
                           lambda model: model, slice(None))
    for (got, got_grad, got_used), (want, want_grad, want_used) in zip(
            results["memory"], single, strict=True):
        assert got == pytest.approx(want, abs=1e-5) and got_used == want_used
        assert torch.allclose(got_grad, want_grad, atol=1e-5)
    assert [used for *_, used in single] == [0.0, 16.0]


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path):
    synthesize(tmp_path / "data", identities=8, images_per_identity=4, size=24, seed=5,
               workers=1)
    sets = as_sets([f"data.root={tmp_path / 'data'}", *TINY_RUN, "sampler.p=4",
                    "sampler.batches_per_epoch=4", "train.epochs=3", "data.workers=0",
                    "train.checkpoint_every=2"])
    run_cli_process("train", *sets, "--nproc", 2, "--out", tmp_path / "ref", timeout=600)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "facetrip", "train", *sets, "--nproc", "2",
                             "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((out / "checkpoints").glob("step-*6.pt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, at once
    proc.wait(timeout=60)
    newest = load_checkpoint(out / "last.pt")
    assert 6 <= newest["step"] < 12 and "rng_ranks" in newest
    resumed = run_cli_process("train", *sets, "--nproc", 2, "--out", out, "--resume",
                              timeout=600)
    assert "resuming" in resumed.stdout
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert a["step"] == b["step"] == 12
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key


@pytest.mark.slow
def test_two_processes_shard_a_rec_as_they_shard_its_folder(tmp_path):
    from facetrip.data.recordio import pack_identity_folder

    synthesize(tmp_path / "data", identities=8, images_per_identity=4, size=24, seed=6,
               workers=1)
    rec = pack_identity_folder(tmp_path / "data", tmp_path / "rec" / "train.rec").rec
    for name, root in (("folder", tmp_path / "data"), ("rec", rec)):
        sets = as_sets([f"data.root={root}", *TINY_RUN, "sampler.p=4",
                        "sampler.batches_per_epoch=3", "data.workers=1"])
        out = run_cli_process("train", *sets, "--nproc", 2, "--out", tmp_path / name, timeout=600)
        assert "train: 32 images of 8 identities" in out.stdout
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("folder", "rec"))
    assert a["step"] == b["step"] == 3
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
