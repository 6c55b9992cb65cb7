"""torch.export (.pt2): the network and facetrip's preprocessing in one ExportedProgram that
plain torch loads, with a dynamic batch axis, and that every --model command accepts."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from facetrip.deploy.embedder import load_embedder
from facetrip.deploy.export import ExportOptions, export_model
from facetrip.deploy.export_program import EXAMPLE_BATCH, load_program
from facetrip.errors import UserError
from tests.deploy.models import random_checkpoint
from tests.deploy.test_export import NORM, VARIANTS, _images, _reference

#: variant -> source size (H, W) of the program's uint8 input
CASES = {"centre-crop": (61, 80), "box": (50, 37), "grey": (24, 24)}

FRESH = textwrap.dedent("""
    import sys
    sys.modules["facetrip"] = None  # `import facetrip` now fails: nothing of it is used
    import torch
    cases = torch.load(sys.argv[1], weights_only=True)
    out = {}
    for name, (path, images) in cases.items():
        module = torch.export.load(path).module()
        out[name] = [module(images[:n]) for n in (1, len(images))]
    torch.save(out, sys.argv[2])
""")


def test_pt2_runs_in_plain_torch_without_facetrip_at_any_batch_size(tmp_path):
    cases, expected = {}, {}
    for variant, size in CASES.items():
        ckpt = random_checkpoint(tmp_path / f"{variant}.pt", *VARIANTS[variant], *NORM)
        result = export_model(ckpt, tmp_path / f"{variant}.pt2",
                              ExportOptions(onnx_source_size=size))  # the format: .pt2's
        assert result.parity["max_abs_diff"] <= 1e-5
        raw = _images([size], n=EXAMPLE_BATCH + 3, seed=7)[size]
        cases[variant] = (str(result.path), raw)
        expected[variant] = _reference(ckpt, raw)[1]
    torch.save(cases, tmp_path / "cases.pt")
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    proc = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "cases.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    for variant, want in expected.items():
        one, many = got[variant]
        assert one.shape == (1, 8) and many.shape == (EXAMPLE_BATCH + 3, 8)
        assert (many - want).abs().max() <= 1e-5, variant
        assert (one - want[:1]).abs().max() <= 1e-5, variant


def test_pt2_sidecar_and_embedder(tmp_path):
    from facetrip.synth import synthesize

    synthesize(tmp_path / "data", identities=2, images_per_identity=3, size=40, seed=0,
               workers=1)
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["centre-crop"], *NORM,
                             root=tmp_path / "data")
    result = export_model(ckpt, tmp_path / "m.pt2", ExportOptions(format="export"))
    meta = json.loads(result.sidecar.read_text())
    assert meta["format"] == "export" and meta["export"]["input_shape"] == ["batch", 3, 40, 40]
    assert meta["export"]["input_dtype"] == "uint8"
    assert result.parity["source"].startswith("images of the run's dataset")
    assert "torch.export.load" in meta["input"]
    files = sorted((tmp_path / "data").rglob("*.png"))
    program, checkpoint = load_embedder(result.path), load_embedder(ckpt)
    assert program.kind == "export" and program.fingerprint == checkpoint.fingerprint
    assert (torch.from_numpy(program.embed_files(files))
            - torch.from_numpy(checkpoint.embed_files(files))).abs().max() <= 1e-5
    synthesize(tmp_path / "big", identities=1, images_per_identity=1, size=48, seed=1,
               workers=1)
    other = next((tmp_path / "big").rglob("*.png"))
    with pytest.raises(UserError, match="this torch.export model takes 40x40"):
        program.embed_files([other])
    (tmp_path / "m.pt2").write_bytes(b"not a program")
    with pytest.raises(UserError, match="does not match"):  # the sidecar guards the file
        load_embedder(tmp_path / "m.pt2")
    with pytest.raises(UserError, match="cannot load torch.export program"):
        load_program(b"not a program")


def test_pt2_is_the_format_of_a_pt2_out_on_the_command_line(tmp_path, monkeypatch, capfd):
    from tests.conftest import cli_result

    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["full"])
    code, out, err = cli_result("export", "--model", ckpt, "--out",
                              tmp_path / "m.pt2", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "m.pt2.json").read_text())["format"] == "export"
    assert "parity: max |embedding difference|" in out
    from facetrip.synth import synthesize

    synthesize(tmp_path / "imgs", identities=2, images_per_identity=2, size=24, seed=0,
               workers=1)
    code, out, err = cli_result("embed", tmp_path / "imgs", "--model",
                              tmp_path / "m.pt2", "--out", tmp_path / "e.npz", "--workers", 0)
    assert code == 0, err
    assert "wrote 4 embeddings of dimension 8" in out


def test_a_model_trained_on_a_rec_exports_at_the_rec_images_size(tmp_path):
    from facetrip.data.recordio import pack_identity_folder
    from facetrip.synth import synthesize

    synthesize(tmp_path / "faces", identities=2, images_per_identity=3, size=40, seed=0,
               workers=1)
    rec = pack_identity_folder(tmp_path / "faces", tmp_path / "rec" / "train.rec").rec
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["centre-crop"], root=rec)
    result = export_model(ckpt, tmp_path / "m.pt2")
    meta = json.loads(result.sidecar.read_text())
    assert meta["export"]["input_shape"] == ["batch", 3, 40, 40]  # the .rec's, not 24 x 24
    assert result.parity["source"] == f"images of the run's dataset {rec}"
    assert result.parity["images"] == 6 and result.parity["max_abs_diff"] <= 1e-5
