"""A user's mistake is one line on stderr and exit code 2, never a traceback (in-process)."""

from __future__ import annotations

import sys

import pytest

from facetrip.cli import main
from facetrip.synth import synthesize
from tests.conftest import TINY_RUN, as_sets


def run_main(monkeypatch, capfd, *args) -> tuple[int, str]:
    """``facetrip ARGS`` through the console-script entry point: ``(exit code, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["facetrip", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code or 0, capfd.readouterr().err


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces") / "data"
    synthesize(root, identities=4, images_per_identity=3, size=24, seed=0, workers=1)
    return root


def _one_line(code: int, err: str, message: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.lr=-0.1", "optim.lr must be > 0"),
    ("sampler.k=1", "sampler.k must be >= 2"),
    ("data.image_size=0", "data.image_size must be >= 16"),
    ("data.image_size=50", "data.image_size must be a multiple of 8"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("loss.margin=-0.2", "loss.margin must be >= 0"),
    ("train.checkpoint_every=-1", "train.checkpoint_every must be >= 0"),
    ("sampler.p=4 sampler.k=4", "sampler.p x sampler.k = 16 images per batch, but the training "
                                "split has only 12"),
])
def test_absurd_config_values_name_the_key(monkeypatch, capfd, faces, tmp_path, override,
                                           message):
    sets = as_sets([f"data.root={faces}", *TINY_RUN, "data.val_fraction=0", "sampler.k=2",
                    "sampler.p=2", "data.workers=0"])
    code, err = run_main(monkeypatch, capfd, "train", *sets, *as_sets(override.split()),
                         "--out", tmp_path / "run")
    _one_line(code, err, message)


def test_a_run_directory_with_a_run_is_refused_unless_resume_or_overwrite(monkeypatch, capfd,
                                                                          faces, tmp_path):
    sets = as_sets([f"data.root={faces}", *TINY_RUN, "sampler.batches_per_epoch=1",
                    "data.workers=0"])
    out = tmp_path / "run"
    code, _ = run_main(monkeypatch, capfd, "train", *sets, "--out", out)
    assert code == 0
    code, err = run_main(monkeypatch, capfd, "train", *sets, "--out", out)
    _one_line(code, err, "already holds a run; pass --resume to continue it, --overwrite")
    code, err = run_main(monkeypatch, capfd, "train", *sets, "--out", out, "--resume",
                         "--set", "optim.lr=0.5")
    _one_line(code, err, "changed: optim.lr); start a new run with --out, or pass --force")
    code, err = run_main(monkeypatch, capfd, "train", *sets, "--out", out, "--overwrite")
    assert code == 0, err
    code, err = run_main(monkeypatch, capfd, "train", *sets, "--out", out, "--resume",
                         "--overwrite")
    _one_line(code, err, "--resume and --overwrite exclude each other")
    code, err = run_main(monkeypatch, capfd, "train", *sets, "--out", tmp_path / "new",
                         "--resume")  # killed before its first checkpoint: starts over
    assert code == 0 and "nothing to resume" in err and "starting from the first step" in err
    assert (tmp_path / "new" / "last.pt").is_file()


@pytest.mark.parametrize("line, message", [
    ("../outside 1 2", "identity '../outside' is not a folder name"),
    ("/etc 1 2", "identity '/etc' is not a folder name"),
    ("id0 1 2\nid0 2 1", "repeats line"),
])
def test_a_pairs_file_that_escapes_the_root_or_repeats_a_pair(monkeypatch, capfd, faces,
                                                              tmp_path, line, message):
    from facetrip.model import EmbeddingNet, ModelSpec
    from facetrip.training.checkpoint import save_checkpoint

    model = EmbeddingNet(ModelSpec(embedding_dim=4))
    ckpt = {"model": model.state_dict(), "model_spec": model.spec.to_dict(),
            "config": {"data": {"image_size": 16}}}
    save_checkpoint(ckpt, tmp_path / "m.pt")
    n_same = len(line.splitlines())
    different = "\n".join(f"id1 {i} id2 {i}" for i in range(1, n_same + 1))
    (tmp_path / "pairs.txt").write_text(f"{n_same}\n{line}\n{different}\n")
    code, err = run_main(monkeypatch, capfd, "eval", "--model", tmp_path / "m.pt",
                         faces, "--pairs", tmp_path / "pairs.txt",
                         "--out", tmp_path / "eval")
    _one_line(code, err, message)
