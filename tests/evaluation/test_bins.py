"""``facetrip eval --bin``: .bin sets scored into metrics.json, the console table and the
report, exactly as the same pairs read from an LFW pairs file; a crafted pickle fails in one
line and runs nothing."""

import json
import os
import sys
from pathlib import Path

import pytest

from facetrip.cli import main
from facetrip.evaluation.evaluate import EvalRequest, PairProtocol, evaluate
from facetrip.metrics.pairs import read_pairs
from tests.data.encoded import encoded_image, write_bin
from tests.deploy.models import random_checkpoint

LFW = Path(os.environ.get("FACETRIP_LFW", Path(__file__).resolve().parents[3] / "shared/data/lfw"))


PAIRS_PER_FOLD = 60  #: same and different pairs taken from each of View 2's 10 folds


def _view2_subset(tmp_path):
    """The first ``PAIRS_PER_FOLD`` same and different pairs of each fold of pairs.txt, as a
    pairs file (10 folds), a folder of links to their images, and the ``.bin`` of their
    images in the file's order (insightface's lfw.bin layout)."""
    lines = (LFW / "pairs.txt").read_text().splitlines()
    per = int(lines[0].split()[1])
    kept = []
    for fold in range(10):
        block = lines[1 + 2 * per * fold: 1 + 2 * per * (fold + 1)]
        kept += block[:PAIRS_PER_FOLD] + block[per: per + PAIRS_PER_FOLD]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text(f"10\t{PAIRS_PER_FOLD}\n" + "\n".join(kept) + "\n")
    pairs = read_pairs(pairs_file)
    data = tmp_path / "lfw-subset"
    images = []
    for a, b in zip(pairs.path1, pairs.path2, strict=True):
        for rel in (a, b):
            link = data / rel
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(LFW / rel)
            images.append((LFW / rel).read_bytes())
    bin_path = write_bin(tmp_path / "lfw.bin", (images, pairs.issame.tolist()))
    return pairs_file, data, bin_path


def _facetrip(monkeypatch, capfd, *args):
    """``facetrip ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["facetrip", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        main()
    out = capfd.readouterr()
    return done.value.code or 0, out.out, out.err


@pytest.mark.slow
@pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason=f"no LFW at {LFW}")
def test_lfw_bin_scores_exactly_as_the_pairs_file(tmp_path, monkeypatch, capfd):
    pairs_file, data, bin_path = _view2_subset(tmp_path)
    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=32", "data.crop_fraction=0.6",
                             dim=16)
    code, _, err = _facetrip(monkeypatch, capfd, "eval", data, "--model", ckpt, "--pairs",
                             pairs_file, "--out", tmp_path / "files", "--device", "cpu",
                             "--no-report")
    assert code == 0, err
    code, out, err = _facetrip(monkeypatch, capfd, "eval", "--model", ckpt, "--bin", bin_path,
                               "--out", tmp_path / "bin", "--device", "cpu")
    assert code == 0, err
    from_files = json.loads((tmp_path / "files" / "metrics.json").read_text())["verification"]
    metrics = json.loads((tmp_path / "bin" / "metrics.json").read_text())
    from_bin = metrics["bins"]["lfw"]
    assert from_bin["n_pairs"] == from_files["n_pairs"] == 20 * PAIRS_PER_FOLD
    assert from_bin["folds"] == from_files["folds"] == 10
    assert abs(from_bin["accuracy"] - from_files["accuracy"]) <= 1e-9
    assert abs(from_bin["auc"] - from_files["auc"]) <= 1e-9
    assert from_bin["accuracy_std"] == pytest.approx(from_files["accuracy_std"], abs=1e-9)
    assert set(from_files) <= set(from_bin)  # the same fields as verification
    assert "verification" not in metrics and from_bin["skipped_pairs"] == 0
    assert ".bin verification sets" in out and "lfw" in out.splitlines()[-20:][0] + out
    assert f"{from_bin['accuracy']:.4f}" in out
    report = (tmp_path / "bin" / "report.html").read_text()
    assert "Verification sets (.bin)" in report and "only .bin sets" in report


def test_bins_beside_a_data_set_and_mistakes(tmp_path, monkeypatch, capfd):
    from facetrip.synth import synthesize

    synthesize(tmp_path / "data", identities=6, images_per_identity=4, size=32, seed=0,
               workers=1)
    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=16")
    images = [encoded_image(i) for i in range(40)]
    first = write_bin(tmp_path / "cfp_fp.bin", (images, [i % 2 == 0 for i in range(20)]))
    second = write_bin(tmp_path / "agedb_30.bin", (images[::-1], [i % 3 == 0 for i in range(20)]))
    result = evaluate(EvalRequest(ckpt, tmp_path / "data", bins=(first, second),
                                  protocol=PairProtocol(folds=2, pairs_per_fold=10),
                                  ks=(1,)))
    assert set(result.metrics["bins"]) == {"cfp_fp", "agedb_30"}
    assert result.metrics["verification"]["n_pairs"] == 20
    assert result.metrics["bins"]["cfp_fp"]["folds"] == 10
    code, _, err = _facetrip(monkeypatch, capfd, "eval", "--model", ckpt, "--bin",
                             f"{first},{second}", "--out", tmp_path / "e", "--device", "cpu",
                             "--no-report")
    assert code == 0, err
    assert set(json.loads((tmp_path / "e" / "metrics.json").read_text())["bins"]) == {
        "cfp_fp", "agedb_30"}

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    evil = write_bin(tmp_path / "evil.bin", (images[:2], [Evil()]))
    for args, message in [(("--model", ckpt, "--bin", evil), "refused (nothing in it was run)"),
                          (("--bin", first), "--bin needs --model"),
                          (("--model", ckpt, "--bin", first, "--pairs", tmp_path / "p.txt"),
                           "give DATA with --bin")]:
        code, _, err = _facetrip(monkeypatch, capfd, "eval", *args, "--out", tmp_path / "x")
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "pwned").exists()


def test_eval_of_a_rec_is_eval_of_its_folder(tmp_path):
    from facetrip.data.recordio import pack_identity_folder
    from facetrip.synth import synthesize

    synthesize(tmp_path / "data", identities=6, images_per_identity=4, size=32, seed=2,
               workers=1)
    rec = pack_identity_folder(tmp_path / "data", tmp_path / "rec" / "train.rec").rec
    ckpt = random_checkpoint(tmp_path / "c.pt", "data.image_size=16")
    protocol = PairProtocol(folds=2, pairs_per_fold=10)
    folder, packed = (evaluate(EvalRequest(ckpt, root, protocol=protocol, ks=(1, 2))).metrics
                      for root in (tmp_path / "data", rec))
    assert packed["verification"] == folder["verification"]
    assert packed["retrieval"] == folder["retrieval"]
    assert packed["dataset"]["images"] == 24 and packed["dataset"]["identities"] == 6
