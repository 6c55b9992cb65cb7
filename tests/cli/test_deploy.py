"""export, verify, enroll, identify and embed through the CLI (in-process), from an exported
file alone; every user mistake one line and exit code 2."""

from __future__ import annotations

import builtins
import json
import shutil
import sys

import numpy as np
import pytest

from facetrip.cli import main
from tests.deploy.models import random_checkpoint, trained_run


def run_main(monkeypatch, capfd, *args) -> tuple[int, str, str]:
    """``facetrip ARGS`` through the console-script entry point: ``(code, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["facetrip", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capfd.readouterr()
    return done.value.code or 0, captured.out, captured.err


def _one_line(code: int, err: str, message: str) -> None:
    """One ``error:`` line on stderr besides any progress bar that had started (what a
    terminal shows of each ``\\n``-terminated line is the text after its last ``\\r``)."""
    assert code == 2, err
    shown = [line.rsplit("\r", 1)[-1].strip() for line in err.strip().split("\n")]
    lines = [line for line in shown if line and "img/s" not in line and "img [" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp() / "deploy-trained")


@pytest.fixture(scope="module")
def alone(run, tmp_path_factory):
    """The trained checkpoint exported (ONNX, uint8 input) by the CLI and copied, with its
    sidecar, into a folder of its own."""
    mp = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("export")
    mp.setattr(sys, "argv", ["facetrip", "export", "--model", str(run.checkpoint),
                             "--out", str(out / "m.onnx"), "--device", "cpu"])
    with pytest.raises(SystemExit) as done:
        main()
    mp.undo()
    assert not done.value.code
    home = tmp_path_factory.mktemp("alone")
    for name in ("m.onnx", "m.onnx.json"):
        shutil.copy(out / name, home / name)
    return home / "m.onnx"


@pytest.fixture
def no_checkpoints(monkeypatch):
    """Fail any attempt to read a training checkpoint."""
    import facetrip.training.checkpoint as ck

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was read")

    monkeypatch.setattr(ck, "load_checkpoint", refuse)


def test_export_prints_parity_and_calibration(alone):
    meta = json.loads(alone.with_name("m.onnx.json").read_text())
    assert meta["format"] == "onnx" and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["calibration"]["pairs"] == 200 and meta["calibration"]["in_sample"]


def test_verify_from_the_exported_file_alone(monkeypatch, capfd, run, alone, no_checkpoints):
    a, b = run.test / "id_00000" / "00.png", run.test / "id_00001" / "00.png"
    code, out, _ = run_main(monkeypatch, capfd, "verify", a, a, "--model", alone)
    assert code == 0 and out.startswith("same person: euclidean distance 0.0000 < threshold")
    assert "best accuracy on 200 pairs of" in out
    code, out, _ = run_main(monkeypatch, capfd, "verify", a, b, "--model", alone,
                            "--threshold", "0.0001", "--json")
    answer = json.loads(out)
    assert code == 1 and answer["same"] is False and answer["threshold_source"] == "--threshold"
    assert answer["distance"] > 0.0001 and answer["threshold"] == 0.0001
    code, out, _ = run_main(monkeypatch, capfd, "verify", a, b, "--model", alone, "--far",
                            "1e-2", "--json")
    assert code in (0, 1) and json.loads(out)["threshold_source"].startswith("FAR 0.01")


def test_enroll_identify_embed_from_the_exported_file_alone(monkeypatch, capfd, run, alone,
                                                            tmp_path, no_checkpoints):
    code, out, err = run_main(monkeypatch, capfd, "enroll", run.test, "--model", alone,
                              "--out", tmp_path / "g.npz", "--workers", 0)
    assert code == 0 and "enrolled 10 identities (60 images)" in out, err
    probe = run.test / "id_00004" / "03.png"
    code, out, _ = run_main(monkeypatch, capfd, "identify", probe, probe, "--gallery",
                            tmp_path / "g.npz", "--top-k", 3, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2
    assert rows[0]["identity"] == "id_00004" and rows[0]["known"]  # the model the gallery names
    assert [m["identity"] for m in rows[0]["matches"]][0] == "id_00004"
    assert len(rows[0]["matches"]) == 3 and rows[0]["matches"][0]["image"] == "id_00004/03.png"
    code, out, _ = run_main(monkeypatch, capfd, "identify", probe, "--gallery",
                            tmp_path / "g.npz", "--model", alone, "--threshold", "-1")
    assert code == 0 and out.startswith(f"{probe}: unknown (nearest id_00004 at")
    code, out, _ = run_main(monkeypatch, capfd, "embed", run.test, "--model", alone, "--out",
                            tmp_path / "e.npy", "--workers", 0)
    assert code == 0 and np.load(tmp_path / "e.npy").shape == (60, 32)
    assert len((tmp_path / "e.npy.paths.txt").read_text().splitlines()) == 60


def test_user_mistakes_are_one_line(monkeypatch, capfd, run, alone, tmp_path):
    image = run.test / "id_00000" / "00.png"
    (tmp_path / "x.jpg").write_text("not an image")
    code, _, err = run_main(monkeypatch, capfd, "verify", image, tmp_path / "x.jpg",
                            "--model", alone)
    _one_line(code, err, "x.jpg: not an image")
    code, _, err = run_main(monkeypatch, capfd, "verify", image, image, "--model",
                            tmp_path / "none.onnx")
    _one_line(code, err, "model not found")
    # a sidecar that does not match its model
    shutil.copy(alone, tmp_path / "m.onnx")
    sidecar = json.loads(alone.with_name("m.onnx.json").read_text())
    sidecar["file_sha256"] = "0" * 64
    (tmp_path / "m.onnx.json").write_text(json.dumps(sidecar))
    code, _, err = run_main(monkeypatch, capfd, "verify", image, image, "--model",
                            tmp_path / "m.onnx")
    _one_line(code, err, "does not match")
    (tmp_path / "m.onnx.json").unlink()
    code, _, err = run_main(monkeypatch, capfd, "embed", run.test, "--model",
                            tmp_path / "m.onnx", "--out", tmp_path / "e.npz")
    _one_line(code, err, "has no sidecar")
    code, _, err = run_main(monkeypatch, capfd, "verify", image, image, "--model", alone,
                            "--far", "1e-4")
    _one_line(code, err, "no calibrated threshold at FAR 0.0001")
    # a gallery of zero identities
    (tmp_path / "g" / "someone").mkdir(parents=True)
    (tmp_path / "g" / "someone" / "a.png").write_bytes(b"")
    code, _, err = run_main(monkeypatch, capfd, "enroll", tmp_path / "g", "--model", alone,
                            "--out", tmp_path / "g.npz", "--workers", 0)
    _one_line(code, err, "a gallery of zero identities")
    # a gallery searched with another model
    code, _, _ = run_main(monkeypatch, capfd, "enroll", run.test, "--model", alone, "--out",
                          tmp_path / "g.npz", "--workers", 0)
    assert code == 0
    other = random_checkpoint(tmp_path / "other.pt", "data.image_size=32", dim=32)
    code, _, err = run_main(monkeypatch, capfd, "identify", image, "--gallery",
                            tmp_path / "g.npz", "--model", other)
    _one_line(code, err, "was enrolled with another model")
    code, _, err = run_main(monkeypatch, capfd, "identify", tmp_path / "x.jpg", "--gallery",
                            tmp_path / "g.npz")
    _one_line(code, err, "x.jpg: not an image")
    code, _, err = run_main(monkeypatch, capfd, "identify", image, "--gallery",
                            tmp_path / "none.npz")
    _one_line(code, err, "gallery not found")


def test_onnx_export_without_the_extra(monkeypatch, capfd, tmp_path):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime", "onnxscript"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=16", dim=4)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    code, _, err = run_main(monkeypatch, capfd, "export", "--model", ckpt, "--out",
                            tmp_path / "m.onnx")
    _one_line(code, err, "pip install 'facetrip[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_the_old_checkpoint_option_still_works_with_a_deprecation(monkeypatch, capfd, run,
                                                                  tmp_path):
    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=32", dim=4)
    warning = "warning: --checkpoint is deprecated, use --model"
    code, out, err = run_main(monkeypatch, capfd, "export", "--checkpoint", ckpt, "--out",
                              tmp_path / "m.safetensors")
    assert code == 0 and warning in err.splitlines(), err
    assert json.loads((tmp_path / "m.safetensors.json").read_text())["format"] == "safetensors"
    code, out, err = run_main(monkeypatch, capfd, "embed", run.test, "--checkpoint", ckpt,
                              "--out", tmp_path / "e.npy", "--workers", 0)
    assert code == 0 and warning in err.splitlines(), err
    assert np.load(tmp_path / "e.npy").shape == (60, 4)
    code, _, err = run_main(monkeypatch, capfd, "embed", run.test, "--model", ckpt,
                            "--checkpoint", ckpt, "--out", tmp_path / "e.npy")
    _one_line(code, err, "--checkpoint is the old name of --model: give one of them")
    code, _, err = run_main(monkeypatch, capfd, "export", "--out", tmp_path / "m.pt")
    _one_line(code, err, "missing option --model")


def test_identify_ranks_without_a_threshold(monkeypatch, capfd, run, tmp_path):
    """A model without calibration ranks; the verdict needs a threshold."""
    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=32", dim=8)
    code, _, err = run_main(monkeypatch, capfd, "enroll", run.test, "--model", ckpt, "--out",
                            tmp_path / "g.npz", "--workers", 0, "--device", "cpu")
    assert code == 0, err
    probe = run.test / "id_00002" / "01.png"
    code, out, _ = run_main(monkeypatch, capfd, "identify", probe, "--gallery",
                            tmp_path / "g.npz", "--top-k", 2, "--json", "--device", "cpu")
    row = json.loads(out)
    assert code == 0 and row["known"] is None and row["identity"] is None
    assert row["threshold"] is None and row["threshold_source"] is None
    assert row["matches"][0] == {"identity": "id_00002", "distance": pytest.approx(0, abs=1e-3),
                                 "image": "id_00002/01.png"}  # an enrolled image is itself
    assert len(row["matches"]) == 2 and row["matches"][1]["identity"] != "id_00002"
    code, out, _ = run_main(monkeypatch, capfd, "identify", probe, "--gallery",
                            tmp_path / "g.npz", "--top-k", 2)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"{probe}: nearest id_00002 (distance 0.0")
    assert lines[1].startswith("  1. id_00002  0.0") and lines[2].startswith("  2. ")
    assert lines[3].startswith("no threshold: the ranking only")
    code, out, _ = run_main(monkeypatch, capfd, "identify", probe, "--gallery",
                            tmp_path / "g.npz", "--threshold", "0.5", "--json")
    row = json.loads(out)
    assert row["known"] is True and row["identity"] == "id_00002"
    assert (row["threshold"], row["threshold_source"]) == (0.5, "--threshold")
    code, _, err = run_main(monkeypatch, capfd, "identify", probe, "--gallery",
                            tmp_path / "g.npz", "--far", "1e-2")
    _one_line(code, err, "this model has no calibration")
