"""One vocabulary across commands: the workflow order of --help, --model wherever a model is
read, and the old spellings still working for now, each with one deprecation line (in-process)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from facetrip.cli import WORKFLOW, app
from facetrip.config import config_to_dict, load_config
from facetrip.io import atomic_torch_save
from facetrip.model import EmbeddingNet, ModelSpec
from facetrip.synth import synthesize
from tests.conftest import cli_result as run


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces") / "data"
    synthesize(root, identities=4, images_per_identity=3, size=24, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained checkpoint (any weights serve: these tests are about the options)."""
    spec = ModelSpec(embedding_dim=8)
    cfg = load_config(None, ["data.image_size=16", "model.embedding_dim=8"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    atomic_torch_save({"config": config_to_dict(cfg), "model_spec": spec.to_dict(),
                       "model": EmbeddingNet(spec).state_dict()}, path)
    return path


def test_help_lists_the_commands_in_workflow_order():
    code, out, _ = run("--help")
    listed = re.findall(r"^  (\w+)\s", out.split("Commands:")[1], re.MULTILINE)
    assert code == 0 and "<bool>" not in out
    assert listed == sorted(listed, key=WORKFLOW.index)
    assert listed[:2] == ["synth", "cache"] and listed[2] in ("align", "pack", "train")
    assert set(listed) == {info.name or info.callback.__name__.rstrip("_")
                           for info in app.registered_commands}


@pytest.mark.parametrize("command", ["eval", "export", "embed", "verify", "enroll", "identify"])
def test_every_command_that_reads_a_model_takes_model(command):
    code, out, _ = run(command, "--help")
    assert code == 0 and "--model" in out and "--checkpoint" not in out


def test_old_spellings_work_with_one_deprecation_line_each(faces, checkpoint, tmp_path):
    code, _, err = run("synth", tmp_path / "s", "--identities", 2,
                            "--images-per-identity", 2, "--size", 16, "--workers", 1)
    assert code == 0 and err.count("deprecated") == 1
    assert "warning: a positional OUT is deprecated, use --out" in err
    assert len(list((tmp_path / "s").rglob("*.png"))) == 4
    code, out, err = run("cache", faces, "--size", 16, "--out",
                              tmp_path / "c", "--workers", 0)
    assert code == 0 and "warning: --size is deprecated, use --image-size" in err
    assert "12 images of 4 identities, 16x16" in out
    old = ("eval", "--checkpoint", checkpoint, "--data", faces, "--metric", "cosine")
    new = ("eval", faces, "--model", checkpoint, "--distance", "cosine")
    results, errors = [], []
    for args, name in ((old, "old"), (new, "new")):
        code, _, err = run(*args, "--folds", 2, "--pairs-per-fold", 4,
                                "--k", "1,2", "--no-report", "--workers", 0,
                                "--out", tmp_path / name)
        assert code == 0, err
        errors.append([line for line in err.splitlines() if "deprecated" in line])
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert sorted(errors[0]) == ["warning: --checkpoint is deprecated, use --model",
                                 "warning: --data is deprecated, use DATA",
                                 "warning: --metric is deprecated, use --distance"]
    assert errors[1] == []
    assert results[0]["verification"] == results[1]["verification"]
    assert results[0]["options"]["metric"] == "cosine"


def test_both_spellings_at_once_are_refused(faces, checkpoint):
    code, _, err = run("eval", faces, "--model", checkpoint,
                            "--checkpoint", checkpoint)
    assert code == 2 and err.strip() == ("error: --checkpoint is the old name of --model: give "
                                         "one of them")


def test_lists_are_repeatable_and_comma_separated_alike(faces, checkpoint, tmp_path):
    metrics = []
    for ks in (["--k", "1,2"], ["--k", "1", "--k", "2"]):
        out_dir = tmp_path / str(len(ks))
        code, _, err = run("eval", faces, "--model", checkpoint,
                                *ks, "--folds", 2, "--pairs-per-fold", 4, "--no-report",
                                "--workers", 0, "--out", out_dir)
        assert code == 0, err
        metrics.append(json.loads((out_dir / "metrics.json").read_text()))
    assert metrics[0]["options"]["ks"] == metrics[1]["options"]["ks"] == [1, 2]
    assert np.isclose(metrics[0]["retrieval"]["recall_at_k"]["2"],
                      metrics[1]["retrieval"]["recall_at_k"]["2"])
