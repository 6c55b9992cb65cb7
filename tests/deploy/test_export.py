"""facetrip export: TorchScript, ONNX and safetensors files that embed as the checkpoint does,
checked for parity before they are written, with one sidecar for all."""

import builtins
import json

import numpy as np
import pytest
import torch
from PIL import Image

import facetrip
from facetrip.data.transforms import Normalize, Preprocess
from facetrip.deploy import export as export_mod
from facetrip.deploy.embedder import load_embedder
from facetrip.deploy.export import (
    FORMATS,
    PARITY_LIMIT,
    ExportOptions,
    export_model,
    format_of,
    reference_embeddings,
)
from facetrip.deploy.torchscript import load_torchscript
from facetrip.errors import UserError
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint
from tests.deploy.models import random_checkpoint

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.5, 0.2]
NORM = [f"data.mean={MEAN}", f"data.std={STD}"]
VARIANTS = {
    "full": ["data.image_size=24"],
    "centre-crop": ["data.image_size=24", "data.crop_fraction=0.7"],
    "box": ["data.image_size=24", "data.crop_box=[0.1, 0.2, 0.8, 0.95]"],
    "grey": ["data.image_size=24", "data.crop_fraction=0.9", "data.grayscale=true"],
}


def _images(sizes, n=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {hw: torch.randint(0, 256, (n, 3, *hw), dtype=torch.uint8, generator=gen)
            for hw in sizes}


def _reference(ckpt_path, raw):
    model, cfg = model_from_checkpoint(load_checkpoint(ckpt_path))
    d = cfg.data
    pre = Preprocess(d.image_size, d.crop_fraction,
                     tuple(d.crop_box) if d.crop_box else None, d.grayscale)
    return pre, reference_embeddings(model, pre, d.mean, d.std, list(raw))


@pytest.mark.parametrize("variant", ["centre-crop", "box", "grey"])
def test_torchscript_preprocess_and_embeddings_match_the_checkpoint(tmp_path, variant):
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS[variant], *NORM)
    result = export_model(ckpt, tmp_path / "m.pt", ExportOptions("torchscript"))
    assert result.parity["max_abs_diff"] <= PARITY_LIMIT
    assert result.parity["source"].startswith("synthetic")  # the run's dataset is absent
    module = load_torchscript(result.path)
    for (h, w), raw in _images([(50, 37), (24, 24), (61, 80)]).items():
        pre, expected = _reference(ckpt, raw)
        ours = Normalize(MEAN, STD)(torch.stack([pre(img) for img in raw]))
        theirs = module.preprocess(raw)
        assert theirs.shape == (3, 3, 24, 24)
        assert torch.allclose(theirs, ours, atol=1e-5), (h, w)
        with torch.no_grad():
            got = module.embed(raw)
        assert (got - expected).abs().max() <= 1e-4, (h, w)


def test_grey_preprocess_gives_equal_channels(tmp_path):
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["grey"])
    module = load_torchscript(export_model(ckpt, tmp_path / "m.pt").path)
    x = module.preprocess(torch.randint(0, 256, (1, 3, 20, 20), dtype=torch.uint8))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


@pytest.mark.parametrize("variant, source", [("box", "given"), ("grey", "run")])
def test_onnx_uint8_graph_does_the_whole_preprocessing(tmp_path, variant, source):
    from facetrip.deploy.onnx_export import onnx_session
    from facetrip.synth import synthesize

    if source == "run":  # the input size and the parity images come from the run's dataset
        synthesize(tmp_path / "data", identities=3, images_per_identity=2, size=40, seed=0,
                   workers=1)
        ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS[variant], *NORM,
                                 root=tmp_path / "data")
        result = export_model(ckpt, tmp_path / "m.onnx", ExportOptions("onnx"))
        assert result.parity["source"].startswith("images of the run's dataset")
        assert result.parity["images"] == 6
        size = (40, 40)
    else:
        ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS[variant], *NORM)
        size = (61, 80)
        result = export_model(ckpt, tmp_path / "m.onnx",
                              ExportOptions("onnx", onnx_source_size=size))
        assert result.parity["source"].startswith("synthetic")
    meta = json.loads(result.sidecar.read_text())
    assert meta["onnx"]["input_shape"] == ["batch", 3, *size] and meta["onnx"]["opset"] == 18
    assert meta["onnx"]["input_dtype"] == "uint8" and meta["parity"]["max_abs_diff"] <= 1e-4
    session = onnx_session(str(result.path))
    for n in (1, 5):  # the batch axis is dynamic
        raw = _images([size], n=n, seed=n)[size]
        _, expected = _reference(ckpt, raw)
        got = session.run(None, {"images": raw.numpy()})[0]
        assert got.shape == (n, 8) and np.abs(got - expected.numpy()).max() <= 1e-4


def test_safetensors_round_trips_bit_exactly(tmp_path):
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["box"], *NORM, dim=16)
    result = export_model(ckpt, tmp_path / "m.safetensors", ExportOptions("safetensors"))
    assert result.parity["max_abs_diff"] == 0.0
    loaded = facetrip.load_model(result.path)
    original = load_checkpoint(ckpt)["model"]
    assert set(loaded.state_dict()) == set(original)
    for key, value in loaded.state_dict().items():
        assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key
    assert loaded.spec.embedding_dim == 16 and not loaded.training


def test_one_sidecar_schema_for_every_format(tmp_path):
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["box"], *NORM)
    metas = {}
    for fmt, name in (("torchscript", "m.pt"), ("onnx", "m.onnx"),
                      ("safetensors", "m.safetensors")):
        result = export_model(ckpt, tmp_path / name, ExportOptions(fmt, onnx_input="float"))
        metas[fmt] = json.loads(result.sidecar.read_text())
    for fmt, meta in metas.items():
        assert meta["format"] == fmt and meta["facetrip_version"] == facetrip.__version__
        assert meta["architecture"] == "resnet18" and meta["input_size"] == 24
        assert meta["colour_order"] == "RGB" and meta["crop_box"] == [0.1, 0.2, 0.8, 0.95]
        assert meta["mean"] == MEAN and meta["std"] == STD and meta["embedding_dim"] == 8
        assert meta["distance"] == "euclidean" and meta["calibration"] is None
    # the fingerprint is the weights' and preprocessing's, the same for every format
    assert len({m["fingerprint"] for m in metas.values()}) == 1
    assert len({m["file_sha256"] for m in metas.values()}) == 3
    other = random_checkpoint(tmp_path / "o.pt", *VARIANTS["box"], *NORM, seed=1)
    sidecar = export_model(other, tmp_path / "o.safetensors", ExportOptions("safetensors")).sidecar
    assert json.loads(sidecar.read_text())["fingerprint"] != metas["onnx"]["fingerprint"]
    # the float-input ONNX graph: normalised (B, 3, S, S) in
    from facetrip.deploy.onnx_export import onnx_session

    assert metas["onnx"]["onnx"]["input_shape"] == ["batch", 3, 24, 24]
    raw = _images([(50, 37)], n=4)[(50, 37)]
    pre, expected = _reference(ckpt, raw)
    x = Normalize(MEAN, STD)(torch.stack([pre(img) for img in raw])).numpy()
    got = onnx_session(str(tmp_path / "m.onnx")).run(None, {"input": x})[0]
    assert np.abs(got - expected.numpy()).max() <= 1e-4


def test_the_format_comes_from_the_suffix():
    assert {name: format_of(f"m{f.suffix}") for name, f in FORMATS.items()} == {
        name: name for name in FORMATS}
    assert format_of("model.bin") == format_of("model") == "torchscript"


def test_a_checkpoint_describes_itself_as_its_exports_do(tmp_path):
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["grey"], *NORM)
    sidecar = json.loads(export_model(ckpt, tmp_path / "m.safetensors").sidecar.read_text())
    meta = load_embedder(ckpt).meta
    assert meta["format"] == "checkpoint" and sidecar["format"] == "safetensors"
    shared = set(meta) - {"format", "calibration"}
    assert len(shared) == 14 and {k: meta[k] for k in shared} == {k: sidecar[k] for k in shared}


def test_a_parity_failure_writes_nothing(tmp_path, monkeypatch):
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["full"])
    honest = export_mod.reference_embeddings
    monkeypatch.setattr(export_mod, "reference_embeddings",
                        lambda *a: honest(*a) + 2 * PARITY_LIMIT)
    with pytest.raises(UserError, match="parity check failed.*limit 0.0001.*nothing written"):
        export_model(ckpt, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.pt.json").exists()


def test_onnx_without_the_extra_names_it(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    ckpt = random_checkpoint(tmp_path / "c.pt", *VARIANTS["full"])
    with pytest.raises(UserError, match=r"onnx extra.*pip install 'facetrip\[onnx\]'"):
        export_model(ckpt, tmp_path / "m.onnx", ExportOptions("onnx"))


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), ("onnx", ".onnx"),
                                         ("safetensors", ".safetensors")])
def test_a_grid_pooled_head_exports_and_embeds_as_the_checkpoint(tmp_path, fmt, suffix):
    # 64 px through the /32 trunk leaves a 2x2 map: the head reads all four cells
    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=64", *NORM, pool_grid=2)
    result = export_model(ckpt, tmp_path / f"m{suffix}", ExportOptions(fmt))
    assert result.parity["max_abs_diff"] <= 1e-4
    assert json.loads(result.sidecar.read_text())["model_spec"]["pool_grid"] == 2
    files = []
    for i, img in enumerate(_images([(64, 64)], n=2)[(64, 64)]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(files[-1])
    expected = load_embedder(ckpt).embed_files(files)
    got = load_embedder(result.path).embed_files(files)
    assert np.abs(got - expected).max() <= 1e-4
