"""Checkpoints: TrainState round trip, weights-only loading, refusal of foreign files."""

import pickle
import warnings

import pytest
import torch

from facetrip.config import Config, config_to_dict
from facetrip.errors import UserError
from facetrip.model import EmbeddingNet, ModelSpec
from facetrip.training.build import build_optimizer, build_schedule, build_scheduler
from facetrip.training.checkpoint import (
    checkpoint_dict,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from facetrip.training.state import TrainState


def _state(seed=0):
    torch.manual_seed(seed)
    cfg = Config()
    model = EmbeddingNet(ModelSpec(embedding_dim=8))
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, 5)
    return cfg, TrainState(model, optimizer, build_scheduler(optimizer, schedule),
                           schedule=schedule)


def _one_step(state):
    state.model.train()
    state.model(torch.randn(4, 3, 32, 32)).sum().backward()
    state.optimizer.step()
    state.scheduler.step()
    state.epoch, state.batch, state.step = 1, 3, 8
    state.best_accuracy, state.best_epoch = 0.75, 0


def test_the_whole_train_state_round_trips(tmp_path):
    cfg, state = _state()
    _one_step(state)
    save_checkpoint(checkpoint_dict(state, cfg, {"accuracy": 0.75}), tmp_path / "last.pt")
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"] == config_to_dict(cfg) and ckpt["val"] == {"accuracy": 0.75}
    _, fresh = _state(seed=1)
    fresh.load_state_dict(ckpt)
    assert (fresh.epoch, fresh.batch, fresh.step) == (1, 3, 8)
    assert (fresh.best_accuracy, fresh.best_epoch) == (0.75, 0)
    for a, b in zip(state.model.state_dict().values(), fresh.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert fresh.scheduler.state_dict() == state.scheduler.state_dict()
    assert fresh.optimizer.param_groups[0]["lr"] == state.optimizer.param_groups[0]["lr"]
    model, saved_cfg = model_from_checkpoint(ckpt)
    assert not model.training and saved_cfg == cfg


def test_weights_only_checkpoints_leave_out_the_optimiser(tmp_path):
    cfg, state = _state()
    save_checkpoint(checkpoint_dict(state, cfg, None), tmp_path / "best.pt", weights_only=True)
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert "optimizer" not in ckpt and "scheduler" not in ckpt and "model" in ckpt


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_corrupt_foreign_and_malicious_files_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="is not a facetrip checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": _Evil(), "model_spec": {}}, f, protocol=2)
    torch.save({"model": _Evil(), "model_spec": {}}, tmp_path / "evil-zip.pt")
    for name in ("evil.pt", "evil-zip.pt"):  # the legacy and the zip format
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # facetrip's own words, no torch warning
            with pytest.raises(UserError) as refused:
                load_checkpoint(tmp_path / name)
        message = str(refused.value)
        assert "\n" not in message and "weights_only" not in message
        assert message.startswith(f"{tmp_path / name} is not a facetrip checkpoint")
        assert message.endswith("it was refused and nothing in it was executed")
    assert not (tmp_path / "PWNED").exists()
