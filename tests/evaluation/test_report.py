"""The HTML report: self-contained, valid embedded PNGs, every section, robust to missing parts."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetrip.evaluation.evaluate import Evaluation, score_embeddings
from facetrip.evaluation.report import PNG_PREFIX, write_report
from facetrip.metrics.knn import knn
from facetrip.metrics.pairs import PairIndexList, generate_pairs

SECTIONS = ("summary", "roc", "distances", "training", "false-accepts", "false-rejects",
            "retrieval-failures")
GRIDS = SECTIONS[4:]
N_IDS, PER_ID = 6, 5


class _PageParser(HTMLParser):
    """Collects section ids, image sources, external references and examples per section."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.img_srcs: list[str] = []
        self.refs: list[str] = []
        self.examples: dict[str, int] = {}
        self.body_attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "section":
            self.sections.append(a.get("id") or "")
        elif tag == "img":
            self.img_srcs.append(a.get("src") or "")
        elif tag == "figure" and "ex" in (a.get("class") or "").split():
            sid = self.sections[-1]
            self.examples[sid] = self.examples.get(sid, 0) + 1
        elif tag == "body":
            self.body_attrs = a


def _parse(text: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(text)
    return parser


def _section_text(text: str, sid: str) -> str:
    return text.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def _write_images(root: Path, labels: np.ndarray, rng: np.random.Generator) -> list[str]:
    paths = []
    for i, label in enumerate(labels):
        rel = f"person_{label}/img_{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(40, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / rel)
        paths.append(rel)
    return paths


def _write_run(run_dir: Path) -> Path:
    run_dir.mkdir()
    rows = []
    for step in range(30):
        rows.append({"type": "step", "epoch": step // 15, "step": step, "loss": 1 / (1 + step),
                     "lr": 0.01, "images_per_s": 100.0, "active_fraction": 0.9 - step / 50,
                     "mean_d_ap": 0.5, "mean_d_an": 0.8 + step / 100, "frac_hard": 0.1})
        if step % 15 == 14:
            val = {"accuracy": 0.6 + step / 100, "accuracy_std": 0.02}
            rows.append({"type": "epoch", "epoch": step // 15, "step": step + 1, "val": val})
    lines = [json.dumps(r) for r in rows]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"type": "st')  # torn last line
    return run_dir


def _evaluation(emb: np.ndarray, labels: np.ndarray, pairs: PairIndexList, **context) -> Evaluation:
    metrics, distances = score_embeddings(emb, labels, pairs, "euclidean", ks=(1, 5))
    top1 = knn(emb, k=1, metric="euclidean")[1][:, 0].numpy()
    metrics.update(dataset={"root": "synthetic", "images": len(labels), "identities": N_IDS},
                   checkpoint="runs/x/best.pt",
                   options={"metric": "euclidean", "flip": False, "ks": [1, 5], "seed": 0})
    return Evaluation(metrics, distances, pairs, labels, top1, **context)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    """30 random images of 6 identities, weakly separated embeddings, a pixels baseline."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(N_IDS), PER_ID)
    paths = _write_images(tmp / "data", labels, rng)
    centers = rng.normal(size=(N_IDS, 8))
    emb = (centers[labels] * 0.6 + rng.normal(size=(len(labels), 8))).astype(np.float32)
    pairs = generate_pairs(labels, n_folds=2, pairs_per_fold=20, seed=0)
    ev = _evaluation(emb, labels, pairs, paths=paths, root=tmp / "data",
                     run_dir=_write_run(tmp / "run"))
    noise = rng.normal(size=emb.shape).astype(np.float32)
    scores, ev.baseline_distances["pixels"] = score_embeddings(noise, labels, pairs,
                                                               "euclidean", ks=(1, 5))
    ev.metrics["baselines"] = {"pixels": scores}
    return ev


@pytest.fixture(scope="module")
def report(evaluation: Evaluation, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(evaluation, tmp_path_factory.mktemp("out") / "sub" / "report.html",
                        max_examples=4)


def _check_self_contained(text: str) -> _PageParser:
    """No external reference; every <img> is a data-URI PNG that Pillow decodes."""
    page = _parse(text)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert all(r.startswith((PNG_PREFIX, "#")) for r in page.refs), page.refs
    assert text.count("<img") == len(page.img_srcs)
    for src in page.img_srcs:
        assert src.startswith(PNG_PREFIX)
        with Image.open(io.BytesIO(base64.b64decode(src[len(PNG_PREFIX):], validate=True))) as im:
            assert im.format == "PNG"
            im.load()
            assert im.width > 0 and im.height > 0
    assert tuple(page.sections) == SECTIONS
    return page


def test_report_is_self_contained_and_complete(report: Path) -> None:
    assert report.is_file() and report.name == "report.html"
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]  # no temp file left
    text = report.read_text(encoding="utf-8")
    page = _check_self_contained(text)
    summary = _section_text(text, "summary")
    for label in ("accuracy ± std", "AUC", "EER", "TAR @ FAR=0.1", "VAL @ FAR=0.01",
                  "Recall@1", "Recall@5", "precision@1", "R-precision", "MAP@R", "queries",
                  "<th>pixels</th>", "runs/x/best.pt", "synthetic", "n/a"):
        assert label in summary, label
    assert "validation accuracy 0.8900 (epoch 2)" in _section_text(text, "training")
    assert "Baselines on the same pairs: pixels" in _section_text(text, "roc")
    n_plots = 3  # ROC, histograms, training
    assert len(page.img_srcs) > n_plots  # thumbnails too
    for sid in GRIDS:
        assert page.examples.get(sid, 0) <= 4
    assert sum(page.examples.values()) > 0
    assert "person_" in text


def test_report_json_roundtrip_metrics_and_overwrite(evaluation: Evaluation,
                                                      tmp_path: Path) -> None:
    """Metrics reloaded from metrics.json have string keys; an existing report is replaced."""
    metrics = json.loads(json.dumps(evaluation.metrics))
    out = tmp_path / "report.html"
    out.write_text("old")
    write_report(replace(evaluation, metrics=metrics, run_dir=None), out, title="Round <trip>")
    text = out.read_text(encoding="utf-8")
    assert "<title>Round &lt;trip&gt;</title>" in text
    summary = _section_text(text, "summary")
    assert "TAR @ FAR=0.1" in summary and "Recall@5" in summary


def test_without_paths_or_run(evaluation: Evaluation, tmp_path: Path) -> None:
    ev = replace(evaluation, paths=None, root=None, run_dir=None)
    text = write_report(ev, tmp_path / "r.html").read_text(encoding="utf-8")
    page = _check_self_contained(text)
    assert len(page.img_srcs) == 2  # ROC and histograms only: no thumbnails, no training
    assert "no image path" in text and re.search(r'<div class="name">id \d+</div>', text)
    assert "training curves skipped" in _section_text(text, "training")


def test_unreadable_images_and_empty_run(evaluation: Evaluation, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for rel in evaluation.paths or []:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not an image")
    (tmp_path / "run").mkdir()
    ev = replace(evaluation, root=root, run_dir=tmp_path / "run")
    text = write_report(ev, tmp_path / "r.html").read_text(encoding="utf-8")
    page = _check_self_contained(text)
    assert len(page.img_srcs) == 2 and "unreadable" in text
    assert "curves skipped" in _section_text(text, "training")


def test_perfect_embeddings_show_none(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(N_IDS), PER_ID)
    rng = np.random.default_rng(1)
    emb = (np.eye(N_IDS)[labels] * 10 + rng.normal(scale=0.01, size=(len(labels), N_IDS)))
    pairs = generate_pairs(labels, n_folds=2, pairs_per_fold=20, seed=0)
    ev = _evaluation(emb.astype(np.float32), labels, pairs)
    text = write_report(ev, tmp_path / "r.html").read_text(encoding="utf-8")
    _check_self_contained(text)
    for sid in GRIDS:
        assert '<p class="note none">none</p>' in _section_text(text, sid), sid


def test_single_class_dataset(tmp_path: Path) -> None:
    """One identity: only same pairs, so AUC/EER/TAR are null and the ROC is undefined."""
    labels = np.zeros(8, dtype=np.int64)
    rng = np.random.default_rng(2)
    paths = _write_images(tmp_path / "data", labels, rng)
    emb = rng.normal(size=(8, 4)).astype(np.float32)
    i, j = np.triu_indices(8, k=1)
    pairs = PairIndexList(i.astype(np.int64), j.astype(np.int64), np.ones(i.size, bool),
                          np.zeros(i.size, np.int64))
    ev = _evaluation(emb, labels, pairs, paths=paths, root=tmp_path / "data")
    assert ev.metrics["verification"]["auc"] is None
    text = write_report(ev, tmp_path / "r.html").read_text(encoding="utf-8")
    _check_self_contained(text)
    assert "ROC curve undefined" in _section_text(text, "roc")
    assert re.search(r"<th>AUC</th><td[^>]*>n/a</td>", text)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    browser = _chromium()
    # CI installs chromium (.ci/run): there, a missing or broken browser is a failure
    give_up = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    if browser is None:
        give_up("no chromium / google-chrome installed")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.resolve().as_uri()]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        give_up("headless chromium did not finish in 90 s")
    if "<body" not in done.stdout:
        give_up(f"headless chromium rendered nothing: {done.stderr[-500:]}")
    body = _parse(done.stdout).body_attrs
    n_imgs = len(_parse(report.read_text(encoding="utf-8")).img_srcs)
    assert body.get("data-images") == f"{n_imgs}/{n_imgs}", body
    assert body.get("data-images-ok") == "true"
