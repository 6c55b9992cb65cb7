"""The official LFW View 2 protocol (6,000 pairs) through ``facetrip eval``; skipped without LFW."""

import json
import os
from pathlib import Path

import pytest
import torch

from facetrip.config import config_to_dict, load_config
from facetrip.io import atomic_torch_save as atomic_save
from facetrip.model import EmbeddingNet, ModelSpec
from tests.conftest import run_cli

LFW = Path(os.environ.get("FACETRIP_LFW", Path(__file__).resolve().parents[3] / "shared/data/lfw"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason=f"no LFW at {LFW}")]


def test_official_pairs_all_resolve_and_are_scored(tmp_path):
    spec = ModelSpec(embedding_dim=16)
    cfg = load_config(None, ["data.image_size=32", "data.crop_fraction=0.6",
                             "model.embedding_dim=16"])
    torch.manual_seed(0)
    ckpt = {"config": config_to_dict(cfg), "model_spec": spec.to_dict(),
            "model": EmbeddingNet(spec).state_dict()}
    atomic_save(ckpt, tmp_path / "untrained.pt")
    run_cli("eval", LFW, "--model", tmp_path / "untrained.pt",
            "--pairs", LFW / "pairs.txt", "--out", tmp_path / "eval", "--device", "cpu",
            "--no-report")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    ver = metrics["verification"]
    assert ver["n_pairs"] == 6000 and ver["folds"] == 10
    assert ver["n_same"] == ver["n_different"] == 3000
    assert metrics["dataset"]["images"] == 13233 and metrics["dataset"]["identities"] == 5749
    # the seeded untrained network's scores (torch 2.14, one thread): near chance; the
    # tolerance (30 of the 6,000 pairs) absorbs other CPUs' rounding, not another model
    assert ver["accuracy"] == pytest.approx(0.5735, abs=0.005)
    assert ver["auc"] == pytest.approx(0.6019, abs=0.005)
