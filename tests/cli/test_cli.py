"""End to end through the CLI (in-process, as the console script runs it): synth -> train ->
resume -> eval -> embed -> export; one run of ``python -m facetrip`` in a process of its own."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from facetrip.config import load_config
from facetrip.data.index import scan_identity_folder
from facetrip.errors import UserError
from facetrip.evaluation.evaluate import held_out_calibration
from facetrip.metrics.pairs import generate_pairs
from facetrip.training.build import split_for_training
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint
from facetrip.training.hooks import TrainHooks
from facetrip.training.train import train
from tests.conftest import TINY_CLI as TINY
from tests.conftest import as_sets as _sets
from tests.conftest import run_cli, run_cli_process
from tests.metrics.references import brute_best_threshold, brute_kfold

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    run_cli("synth", "--out", data, "--identities", 16, "--images-per-identity", 5, "--size", 32,
            "--workers", 1)
    out = run_cli("train", *_sets(TINY + [f"data.root={data}"]), "--out", root / "run")
    return root, data, out


def test_train_writes_a_complete_run(tiny_run):
    root, data, out = tiny_run
    run = root / "run"
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["type"] == "step"]
    epochs = [r for r in rows if r["type"] == "epoch"]
    assert len(epochs) == 2 and len(steps) >= 2
    for key in ("loss", "lr", "images_per_s", "active_fraction", "mean_d_ap", "mean_d_an"):
        assert all(np.isfinite(r[key]) for r in steps), key
    # by hand: the last epoch's model (last.pt) on the run's validation pairs, k-fold
    val = epochs[-1]["val"]
    held_out, pairs = _validation_pairs(data)
    emb = _embeddings(run / "last.pt", data, root / "val-e.npz")
    d = _distances(emb, held_out, pairs.idx1, pairs.idx2)
    accuracy = brute_kfold(d, pairs.issame, pairs.fold)
    assert val["accuracy"] == pytest.approx(np.mean(accuracy), abs=1e-6)
    assert val["accuracy_std"] == pytest.approx(np.std(accuracy), abs=1e-6)
    assert val["auc"] == pytest.approx(roc_auc_score(pairs.issame, -d), abs=1e-6)
    assert f"epoch 2: val accuracy {val['accuracy']:.4f}" in out.stdout


def test_an_interrupted_run_resumes_exactly(tiny_run, tmp_path):
    root, data, _ = tiny_run
    sets = _sets(TINY + [f"data.root={data}"])
    cfg = load_config(None, TINY + [f"data.root={data}"])

    class Interrupt(TrainHooks):
        def epoch_end(self, epoch, val):
            raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "r", hooks=Interrupt())
    refused = run_cli("train", *sets, "--out", tmp_path / "r", ok=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    changed = run_cli("train", *sets, "--set", "seed=1", "--out", tmp_path / "r", "--resume",
                      ok=False)
    assert changed.returncode == 2 and "changed: seed" in changed.stderr
    run_cli("train", *sets, "--out", tmp_path / "r", "--resume")
    a = load_checkpoint(tmp_path / "r" / "last.pt")
    b = load_checkpoint(root / "run" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    rows = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == len((root / "run" / "metrics.jsonl").read_text().splitlines())


def test_eval_embed_export_round_trip(tiny_run, tmp_path):
    root, data, _ = tiny_run
    ckpt = root / "run" / "best.pt"
    run_cli("eval", "--model", ckpt, data, "--out", tmp_path / "eval",
            "--baseline", "pixels", "--device", "cpu", "--pairs-per-fold", 20, "--folds", 4)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())

    run_cli("embed", data, "--model", ckpt, "--out", tmp_path / "e.npz", "--device", "cpu")
    npz = np.load(tmp_path / "e.npz")
    assert npz["embeddings"].shape == (80, 16) and npz["embeddings"].dtype == np.float32
    assert npz["paths"][0] == "id_00000/00.png" and npz["labels"].max() == 15
    # by hand: the drawn pairs (4 folds of 20, seed 0) scored k-fold on the model's embeddings
    # and on raw pixels (each image standardised and L2-normalised)
    full = scan_identity_folder(data)
    pairs = generate_pairs(full.labels, n_folds=4, pairs_per_fold=20, seed=0)
    pixels = {p: _pixels(data / p) for p in full.paths}
    for m, emb in ((metrics, _embeddings(ckpt, data, tmp_path / "e.npz")),
                   (metrics["baselines"]["pixels"], pixels)):
        d = _distances(emb, full, pairs.idx1, pairs.idx2)
        accuracy = brute_kfold(d, pairs.issame, pairs.fold)
        ver = m["verification"]
        assert ver["n_pairs"] == 80 and ver["protocol"] == "k-fold" and "threshold" in ver
        assert ver["accuracy"] == pytest.approx(np.mean(accuracy), abs=1e-6)
        assert ver["accuracy_std"] == pytest.approx(np.std(accuracy), abs=1e-6)
        assert ver["auc"] == pytest.approx(roc_auc_score(pairs.issame, -d), abs=1e-6)
        assert set(m["retrieval"]["recall_at_k"]) == {"1", "2", "4", "8", "16"}

    run_cli("export", "--model", ckpt, "--out", tmp_path / "m.pt")
    sidecar = json.loads((tmp_path / "m.pt.json").read_text())
    assert sidecar["input_size"] == 32 and sidecar["embedding_dim"] == 16
    with warnings.catch_warnings():  # torch >= 2.9 calls TorchScript deprecated
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(tmp_path / "m.pt"))
    model, _ = model_from_checkpoint(load_checkpoint(ckpt))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)
    raw = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    assert scripted.preprocess(raw).shape == (2, 3, 32, 32)


def test_eval_scores_an_embeddings_file(tiny_run, tmp_path):
    root, data, _ = tiny_run
    ckpt = root / "run" / "best.pt"
    run_cli("embed", data, "--model", ckpt, "--out", tmp_path / "e.npz", "--device", "cpu")
    run_cli("eval", "--embeddings", tmp_path / "e.npz", "--out", tmp_path / "ev",
            "--pairs-per-fold", 20, "--folds", 4, "--k", "1,3", "--no-report")
    from_npz = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    run_cli("eval", "--model", ckpt, data, "--out", tmp_path / "ec",
            "--pairs-per-fold", 20, "--folds", 4, "--k", "1,3", "--no-report", "--device", "cpu")
    from_images = json.loads((tmp_path / "ec" / "metrics.json").read_text())
    for key in ("accuracy", "accuracy_std", "threshold", "auc", "eer", "n_pairs"):
        assert from_npz["verification"][key] == pytest.approx(from_images["verification"][key])
    for key in ("precision_at_1", "r_precision", "map_at_r", "n_queries"):
        assert from_npz["retrieval"][key] == pytest.approx(from_images["retrieval"][key])
    assert from_npz["retrieval"]["recall_at_k"] == from_images["retrieval"]["recall_at_k"]
    bad = run_cli("eval", "--embeddings", tmp_path / "e.npz", "--model", ckpt, ok=False)
    assert bad.returncode == 2
    assert "either --model (a checkpoint) with DATA, or --embeddings" in bad.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--set", "model.embeding_dim=3"], "unknown config key 'model.embeding_dim'"),
        (["train", "--set", "train.epochs=many"], "config key 'train.epochs': expected int"),
        (["train", "--set", "data.root=/nonexistent/x"], "dataset directory not found"),
        (["eval", "--model", "/nonexistent.pt", "."], "checkpoint not found"),
        (["synth", "--out", "/proc/x", "--identities", "0"], "identities"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # train's default --out is ./runs/default
    proc = run_cli(*args, ok=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_python_m_facetrip_is_the_command_in_a_process_of_its_own(tmp_path):
    # the process boundary itself: the exit code the shell sees, nothing else on stderr (no
    # warning printed while importing), and a completed command's output
    proc = run_cli_process("train", "--set", "model.embeding_dim=3", ok=False)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: unknown config key 'model.embeding_dim'"), proc.stderr
    done = run_cli_process("synth", tmp_path / "d", "--identities", 2,
                           "--images-per-identity", 1, "--size", 16, "--workers", 1)
    assert done.stdout == f"wrote 2 images of 2 identities to {tmp_path / 'd'}\n"


def test_empty_dataset_and_non_image_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train's default --out is ./runs/default
    (tmp_path / "empty").mkdir()
    proc = run_cli("train", "--set", f"data.root={tmp_path / 'empty'}", ok=False)
    assert proc.returncode == 2 and "no identities found" in proc.stderr


def _lfw_named_copy(data, dest):
    """``data/<id>/NN.png`` as LFW names ``dest/<id>/<id>_%04d.png`` (symlinks)."""
    for folder in sorted(data.iterdir()):
        (dest / folder.name).mkdir(parents=True)
        for i, image in enumerate(sorted(folder.iterdir()), start=1):
            (dest / folder.name / f"{folder.name}_{i:04d}.png").symlink_to(image)
    return dest


def _view1(path, ids):
    """A View 1 pairs file: 4 same pairs and 4 different pairs among ``ids``."""
    same = [f"{ids[i]}\t1\t{2 + i % 3}" for i in range(4)]
    diff = [f"{ids[i]}\t{1 + i % 5}\t{ids[-1 - i]}\t{1 + (i + 2) % 5}" for i in range(4)]
    path.write_text("\n".join(["4", *same, *diff]) + "\n")
    return path


def _validation_pairs(data):
    """The run's held-out identities (the split of its config) and its validation pairs."""
    cfg = load_config(None, TINY + [f"data.root={data}"])
    _, _, val = split_for_training(scan_identity_folder(data), cfg)
    return val, generate_pairs(val.labels, n_folds=cfg.eval.folds,
                               pairs_per_fold=cfg.eval.pairs_per_fold, seed=cfg.seed)


def _embeddings(ckpt, data, npz_path) -> dict[str, np.ndarray]:
    """``{relative path: embedding}`` of every image of ``data`` (``facetrip embed``, reusing
    ``npz_path`` when it is there already)."""
    if not npz_path.is_file():
        run_cli("embed", data, "--model", ckpt, "--out", npz_path, "--device", "cpu")
    npz = np.load(npz_path)
    return {str(p): e for p, e in zip(npz["paths"], npz["embeddings"])}


def _pixels(path) -> np.ndarray:
    """The raw-pixel baseline of one image by hand: flattened, standardised, unit length."""
    x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).ravel()
    x = (x - x.mean()) / x.std(ddof=1)
    return x / np.linalg.norm(x)


def _distances(emb, index, a, b) -> np.ndarray:
    """Euclidean distances of the pairs ``(a[i], b[i])`` of ``index``'s images."""
    return np.array([np.linalg.norm(emb[index.paths[i]] - emb[index.paths[j]])
                     for i, j in zip(a, b)])


def test_eval_calibrates_on_the_runs_held_out_identities(tiny_run, tmp_path):
    root, data, _ = tiny_run
    ckpt = root / "run" / "best.pt"
    out = run_cli("eval", "--model", ckpt, data, "--out", tmp_path / "ev",
                  "--calibrate-held-out", "--device", "cpu", "--k", "1,2", "--folds", "2",
                  "--pairs-per-fold", "20", "--no-report")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ver = m["verification"]
    # by hand: the run's held-out identities from its config, their validation pairs, the
    # best threshold on them, applied to the drawn pairs
    cfg = load_config(None, TINY + [f"data.root={data}"])
    full = scan_identity_folder(data)
    val, val_pairs = _validation_pairs(data)
    emb = _embeddings(ckpt, data, tmp_path / "e.npz")
    best = brute_best_threshold(_distances(emb, val, val_pairs.idx1, val_pairs.idx2),
                           val_pairs.issame)
    test = generate_pairs(full.labels, n_folds=2, pairs_per_fold=20, seed=0)
    d_test = _distances(emb, full, test.idx1, test.idx2)
    assert ver["protocol"] == "calibrated" and ver["calibration"]["n_pairs"] == 20
    assert ver["accuracy"] == pytest.approx(np.mean((d_test < best) == test.issame), abs=1e-6)
    assert ver["calibration"]["n_pairs"] == load_checkpoint(ckpt)["val"]["n_pairs"]
    people = m["calibration_identities"]
    assert people["identities"] == len(val.classes) and people["seen_in_training"] == 0
    # the drawn pairs are of every identity of data.root, the held-out ones among them
    shared = {val.classes[c] for c in val.labels} & {full.classes[c] for c in full.labels[
        np.concatenate([test.idx1, test.idx2])]}
    assert shared and people["shared_with_scored"] == len(shared)
    assert "held-out identities" in m["dataset"]["calibration_pairs"]
    assert "thresholds chosen on 20 calibration pairs (the run's validation pairs" in out.stdout
    assert f"OVERLAP (calibration): {len(shared)} people are in both" in out.stdout
    assert "were in the model's training run, whose" not in out.stdout
    with pytest.raises(UserError, match="validated on 99 pairs in 2 folds, this data gives 20"):
        held_out_calibration(cfg, full, {"n_pairs": 99, "folds": 2})
    elsewhere = run_cli("eval", "--model", ckpt, _lfw_named_copy(
        data, tmp_path / "copy"), "--calibrate-held-out", "--device", "cpu", ok=False)
    assert elsewhere.returncode == 2 and "evaluate its data.root" in elsewhere.stderr


def test_eval_calibrates_on_other_pairs_and_flags_in_sample_scores(tiny_run, tmp_path):
    root, data, _ = tiny_run
    ckpt = root / "run" / "best.pt"
    lfw = _lfw_named_copy(data, tmp_path / "lfw")
    ids = sorted(p.name for p in lfw.iterdir())
    cal = _view1(tmp_path / "pairsDevTrain.txt", ids[:8])
    test = _view1(tmp_path / "pairsDevTest.txt", ids[8:])
    out = run_cli("eval", "--model", ckpt, lfw, "--out", tmp_path / "ev",
                  "--pairs", test, "--calibration-pairs", cal, "--also-pairs", test,
                  "--baseline", "pixels,eigenfaces", "--device", "cpu", "--k", "1,2")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ver = m["verification"]
    assert ver["protocol"] == "calibrated" and ver["calibration"]["n_pairs"] == 8
    # by hand: embeddings, the calibration pairs' best threshold, the test pairs' accuracy
    run_cli("embed", lfw, "--model", ckpt, "--out", tmp_path / "e.npz", "--device", "cpu")
    npz = np.load(tmp_path / "e.npz")
    where = {str(p): i for i, p in enumerate(npz["paths"])}

    def distances(pairs_file):
        d = []
        for line in pairs_file.read_text().splitlines()[1:]:
            t = line.split("\t")
            (a, i), (b, j) = ((t[0], t[1]), (t[0], t[2])) if len(t) == 3 else \
                ((t[0], t[1]), (t[2], t[3]))
            ea = npz["embeddings"][where[f"{a}/{a}_{int(i):04d}.png"]]
            eb = npz["embeddings"][where[f"{b}/{b}_{int(j):04d}.png"]]
            d.append(float(np.linalg.norm(ea - eb)))
        return np.array(d)

    same = np.repeat([True, False], 4)
    d_cal, d_test = distances(cal), distances(test)
    best = brute_best_threshold(d_cal, same)
    assert ver["accuracy"] == pytest.approx(np.mean((d_test < best) == same), abs=1e-6)
    assert set(m["baselines"]) == {"pixels", "eigenfaces"}
    # eigenfaces fitted on the run's training split (its config's, of its data.root)
    _, trained_on, _ = split_for_training(scan_identity_folder(data), load_config(
        None, TINY + [f"data.root={data}"]))
    fit = m["options"]["eigenfaces_fit"]
    assert (fit["root"], fit["identities"], fit["images"]) == (str(data), 12, 60)
    assert len(trained_on.classes) == 12 and len(trained_on) == 60
    assert m["pair_identities"] == {"identities": 8, "seen_in_training": 8}
    also = m["also"][str(test)]
    assert also["verification"]["protocol"] == "in-sample"
    assert set(also["baselines"]) == {"pixels", "eigenfaces"}
    assert "IN-SAMPLE" in out.stdout and "OVERLAP: 8 of the 8 people" in out.stdout
    trained = len(set(ids[:8]) & set(trained_on.classes))  # trained on, not validated
    assert 0 < trained < 8 and m["calibration_identities"]["seen_in_training"] == trained
    assert f"OVERLAP (calibration): {trained} of the 8 people" in out.stdout
    assert "thresholds chosen on 8 calibration pairs" in out.stdout
    report = (tmp_path / "ev" / "report.html").read_text()
    assert "IN-SAMPLE" in report and "Also scored" in report
