"""Shared fixtures: the smallest configs that still train, and running the real CLI (in this
process, or in a fresh one where the process boundary is what a test checks)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from facetrip.cli import main
from facetrip.config import Config, load_config

# The tests' tensors are tiny: a second intra-op thread only adds synchronisation, and on a
# shared or loaded machine it costs several times the work (a 10-step run: 3.8 s on one thread,
# 16 s on two, with other processes busy). One thread here and in every child process (the CLI
# in a process of its own, the kill-9 script, torchrun's ranks), unless set already.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

#: A library run that takes a second: 16 px, 2 x 2 batches, no validation, CPU, no workers.
TINY_RUN = ["data.image_size=16", "data.val_fraction=0", "sampler.p=2", "sampler.k=2",
            "model.embedding_dim=4", "train.device=cpu", "train.epochs=1"]

#: An end-to-end CLI run with validation (16 identities x 5 images of 32 px).
TINY_CLI = ["data.image_size=32", "data.val_fraction=0.25", "sampler.p=4", "sampler.k=4",
            "model.embedding_dim=16", "eval.pairs_per_fold=10", "eval.folds=2",
            "train.epochs=2", "optim.lr=0.001"]


def as_sets(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [a for item in overrides for a in ("--set", item)]


@pytest.fixture
def tiny_config() -> Callable[..., Config]:
    """``tiny_config(root, *overrides)``: :data:`TINY_RUN` on the dataset ``root``."""

    def make(root, *overrides: str) -> Config:
        return load_config(None, [f"data.root={root}", *TINY_RUN, *overrides])

    return make


def run_cli(*args, ok: bool = True) -> subprocess.CompletedProcess:
    """``facetrip ARGS`` through the console-script entry point (:func:`facetrip.cli.main`) in
    this process, with its own stdin/stdout/stderr and a fresh ``facetrip`` log handler, as a
    new process would have; with ``ok``, assert exit code 0. An exception that ``main`` lets
    through (a traceback, for a user) propagates."""
    argv = ["facetrip", *map(str, args)]
    logger = logging.getLogger("facetrip")
    handlers, level = logger.handlers[:], logger.level
    logger.handlers = []  # main() adds one on the streams below
    saved_argv, sys.argv = sys.argv, argv
    try:
        with CliRunner().isolation() as (out, err, _):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code or 0
                if not isinstance(code, int):  # SystemExit("message"): printed, exit 1
                    print(code, file=sys.stderr)
                    code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            proc = subprocess.CompletedProcess(argv, code, out.getvalue().decode(),
                                               err.getvalue().decode())
    finally:
        sys.argv = saved_argv
        logger.handlers, logger.level = handlers, level
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_result(*args) -> tuple[int, str, str]:
    """:func:`run_cli` without the exit-code check: ``(exit code, stdout, stderr)``."""
    proc = run_cli(*args, ok=False)
    return proc.returncode, proc.stdout, proc.stderr


def run_cli_process(*args, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m facetrip ARGS`` in a fresh process (as a user runs it), for tests where the
    process boundary is the point (signals, torchrun, the module entry point); with ``ok``,
    assert exit code 0."""
    proc = subprocess.run([sys.executable, "-m", "facetrip", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


LFW = Path(os.environ.get("FACETRIP_LFW",
                          Path(__file__).resolve().parents[2] / "shared/data/lfw"))
#: LFW identity folders with a few clear images each (the alignment tests)
PEOPLE = ("AJ_Cook", "Aaron_Peirsol", "Abdullah_Gul")


@pytest.fixture(scope="session")
def lfw() -> Path:
    """The LFW folder (skips where it is absent; CI has it)."""
    if not (LFW / "AJ_Cook").is_dir():
        pytest.skip(f"LFW not found at {LFW} (set FACETRIP_LFW)")
    return LFW


@pytest.fixture
def lfw_photos(lfw: Path, tmp_path: Path) -> Path:
    """An identity-folder tree of 5 LFW photos (links, not copies): 1 + 2 + 2 images."""
    root = tmp_path / "photos"
    for person, n in zip(PEOPLE, (1, 2, 2)):
        (root / person).mkdir(parents=True)
        for path in sorted((lfw / person).glob("*.jpg"))[:n]:
            (root / person / path.name).symlink_to(path)
    return root
