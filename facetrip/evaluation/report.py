"""A self-contained HTML evaluation report: ``report.html`` beside ``metrics.json``.

One file, no external resource: CSS is inline and every figure or thumbnail is a PNG data URI,
so the page opens from disk in any browser (it needs no JavaScript; a tiny inline script only
records on ``<body data-images-ok>`` whether every image decoded, for automated checks).

Sections: provenance and headline metrics (one column per baseline), ROC curve (log FAR axis,
EER marked), same/different distance histograms with the threshold, training curves from the
run's ``metrics.jsonl`` when known, and image grids of the worst false accepts, worst false
rejects and failed top-1 retrievals. Figures use :class:`matplotlib.figure.Figure` directly
(Agg rendering, no pyplot state). Nothing here prints.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from facetrip.evaluation.table import fmt as _fmt
from facetrip.evaluation.table import metric_rows
from facetrip.evaluation.verification import roc_curve
from facetrip.io import atomic_write
from facetrip.training.run import RunLog, read_metrics

if TYPE_CHECKING:  # annotations only: no import-time dependency on the eval workflow
    from facetrip.evaluation.evaluate import Evaluation

THUMB_PX = 96
FIG_DPI = 90
PNG_PREFIX = "data:image/png;base64,"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
  margin:0 auto;max-width:1120px;padding:16px 24px 48px;background:#fff}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:0 0 8px}
section{border-top:1px solid #ddd;padding:16px 0 8px}
nav a{margin-right:14px;color:#2a5db0;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 10px}
th,td{border:1px solid #d5d5d5;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.group th{background:#e6ebf2;text-align:left}
.note{color:#666;margin:4px 0}.plot{max-width:100%;height:auto;display:block}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure.ex{margin:0;border:1px solid #d5d5d5;border-radius:4px;padding:6px;background:#fafafa}
.pair{display:flex;gap:6px}.cell{width:96px;text-align:center;font-size:12px}
.cell img,.ph{width:96px;height:96px;object-fit:contain;background:#eee;display:block}
.ph{display:flex;align-items:center;justify-content:center;color:#888;font-size:11px}
.name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
figcaption{font-size:12px;text-align:center;margin-top:4px}
code{background:#f3f3f3;padding:0 3px}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
  document.body.setAttribute("data-images-ok", ok === imgs.length ? "true" : "false");
});
"""


# --------------------------------------------------------------------------- public API


def write_report(
    evaluation: Evaluation,
    out: str | Path,
    title: str = "facetrip evaluation",
    max_examples: int = 12,
) -> Path:
    """Write the HTML report of ``evaluation`` to ``out`` atomically and return its path.

    The page is written to a temporary file in the same directory, then renamed over ``out``,
    so a reader never sees a partial report. The parent directory is created if needed.

    Args:
        evaluation: what ``facetrip eval`` computed (metrics, pair distances, top-1, ...).
        out: the ``.html`` file to write.
        title: page title and heading.
        max_examples: at most this many examples per image grid.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(evaluation, title=title, max_examples=max_examples)
    atomic_write(out, page)
    return out


def render_report(
    evaluation: Evaluation, title: str = "facetrip evaluation", max_examples: int = 12
) -> str:
    """The report of ``evaluation`` as one self-contained HTML string (see :func:`write_report`)."""
    ev = evaluation
    sections = [
        _summary_section(ev),
        _roc_section(ev),
        _distance_section(ev),
        _training_section(ev.run_dir),
        *_example_sections(ev, max(0, int(max_examples))),
    ]
    return _page(title, "\n".join(sections))


# --------------------------------------------------------------------------- page helpers


def _page(title: str, body: str) -> str:
    """The HTML document around ``body``."""
    nav = " ".join(
        f'<a href="#{sid}">{label}</a>'
        for sid, label in (("summary", "Summary"), ("roc", "ROC"), ("distances", "Distances"),
                           ("training", "Training"), ("false-accepts", "False accepts"),
                           ("false-rejects", "False rejects"),
                           ("retrieval-failures", "Retrieval failures"))
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n"
        f"<script>{_SCRIPT}</script>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n<nav>{nav}</nav>\n{body}\n</body>\n</html>\n"
    )


def _section(sid: str, heading: str, content: str) -> str:
    return f'<section id="{sid}">\n<h2>{_esc(heading)}</h2>\n{content}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_uri(data: bytes) -> str:
    return PNG_PREFIX + base64.b64encode(data).decode("ascii")


def _figure_img(fig: Figure, alt: str) -> str:
    """``<img>`` of ``fig`` rendered to PNG (Agg, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    return f'<img class="plot" src="{_png_uri(buf.getvalue())}" alt="{_esc(alt)}">'


# --------------------------------------------------------------------------- summary


def _summary_section(ev: Evaluation) -> str:
    """Provenance and the headline-metrics table."""
    content = _provenance(ev.metrics) + _metrics_table(ev.metrics)
    return _section("summary", "Summary", content)


def _provenance(metrics: dict) -> str:
    """Dataset, checkpoint and options as a small key/value table."""
    rows: list[tuple[str, str]] = []
    dataset = metrics.get("dataset")
    if isinstance(dataset, dict):
        rows += [(f"dataset {k}", _fmt(v)) for k, v in dataset.items() if v is not None]
    rows.append(("checkpoint", _fmt(metrics.get("checkpoint") or None)))
    options = metrics.get("options")
    if isinstance(options, dict):
        rows += [(f"option {k}", _fmt(v)) for k, v in options.items()]
    skipped = metrics.get("skipped")
    if skipped:
        rows.append(("skipped images", str(len(skipped))))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table class=\"prov\">{body}</table>\n"


def _metrics_table(metrics: dict) -> str:
    """Headline metrics; a column for the model and one per baseline."""
    baselines = metrics.get("baselines") or {}
    names = ["model", *baselines]
    sources = [metrics, *baselines.values()]
    head = "".join(f"<th>{_esc(n)}</th>" for n in ["metric", *names])
    body = []
    for label, cells in metric_rows(sources):
        if cells is None:
            body.append(f'<tr class="group"><th colspan="{len(names) + 1}">{_esc(label)}</th></tr>')
        else:
            tds = "".join(f'<td class="num">{_esc(c)}</td>' for c in cells)
            body.append(f"<tr><th>{_esc(label)}</th>{tds}</tr>")
    return f'<table class="metrics"><tr>{head}</tr>{"".join(body)}</table>'


# --------------------------------------------------------------------------- ROC, distances


def _verification(ev: Evaluation) -> dict:
    return ev.metrics.get("verification") or {}


def _roc_section(ev: Evaluation) -> str:
    """ROC curve on a log FAR axis with the EER point, or a note when it is undefined."""
    issame = np.asarray(ev.pairs.issame, dtype=bool)
    roc = roc_curve(ev.distances, issame) if issame.size else None
    if roc is None:
        return _section("roc", "ROC curve", _note(
            "ROC curve undefined: the pairs contain only one class (same or different)."))
    n_neg = int((~issame).sum())
    floor = 0.5 / n_neg
    baselines = {name: roc_curve(d, issame) for name, d in ev.baseline_distances.items()}
    fig = _roc_figure(roc, _verification(ev).get("eer"), floor, baselines)
    img = _figure_img(fig, "ROC curve")
    extra = f" Baselines on the same pairs: {', '.join(baselines)}." if baselines else ""
    note = _note(f"False accept rate on a log scale; points with FAR = 0 are drawn at the left "
                 f"edge ({floor:.2g} = 0.5 / {n_neg} different pairs).{extra}")
    return _section("roc", "ROC curve", img + note)


def _roc_figure(roc: dict, eer: float | None, floor: float,
                baselines: dict[str, dict] | None = None) -> Figure:
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    fpr = np.maximum(np.asarray(roc["fpr"], dtype=float), floor)
    ax.plot(fpr, roc["tpr"], color="C0", lw=1.8, label="model")
    for i, (name, base) in enumerate((baselines or {}).items()):
        base_fpr = np.maximum(np.asarray(base["fpr"], dtype=float), floor)
        ax.plot(base_fpr, base["tpr"], "--", color=f"C{i + 1}", lw=1.4, label=name)
    chance = np.logspace(math.log10(floor), 0, 100)
    ax.plot(chance, chance, ":", color="grey", lw=1, label="chance")
    if eer is not None and math.isfinite(eer):
        ax.plot([max(eer, floor)], [1 - eer], "o", color="C3", ms=7, label=f"EER = {eer:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _distance_section(ev: Evaluation) -> str:
    """Overlaid same/different distance histograms with the threshold line."""
    d = np.asarray(ev.distances, dtype=float)
    same = np.asarray(ev.pairs.issame, dtype=bool)
    finite = np.isfinite(d)
    if not finite.any():
        return _section("distances", "Pair distances", _note("No pair distances."))
    threshold = _verification(ev).get("threshold")
    fig = _histogram_figure(d[finite], same[finite], threshold)
    return _section("distances", "Pair distances", _figure_img(fig, "distance histograms"))


def _histogram_figure(d: np.ndarray, same: np.ndarray, threshold: float | None) -> Figure:
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    edges = np.histogram_bin_edges(d, bins=int(np.clip(np.sqrt(d.size), 10, 60)))
    for mask, label, color in ((same, "same identity", "C2"), (~same, "different", "C3")):
        if mask.any():
            ax.hist(d[mask], bins=edges, density=True, alpha=0.45, color=color,
                    label=f"{label} ({int(mask.sum())} pairs)")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold = {threshold:.4f}")
    ax.set_xlabel("pair distance")
    ax.set_ylabel("density")
    ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    return fig


# --------------------------------------------------------------------------- training


def _training_section(run_dir: Path | None) -> str:
    """Training curves from ``run_dir/metrics.jsonl``, or a one-line note."""
    heading = "Training"
    if run_dir is None:
        return _section("training", heading, _note(
            "No training run is known for these embeddings; training curves skipped."))
    path = Path(run_dir) / "metrics.jsonl"
    try:
        log = read_metrics(path)
    except OSError:
        return _section("training", heading, _note(f"No readable {path}; curves skipped."))
    if not log.steps and not log.epochs:
        return _section("training", heading, _note(f"{path} has no rows; curves skipped."))
    summary = _note(_training_summary(log, path))
    img = _figure_img(_training_figure(log), "training curves")
    return _section("training", heading, summary + img)


def _training_summary(log: RunLog, path: Path) -> str:
    vals = [(e["epoch"], e["val"]["accuracy"]) for e in log.epochs
            if isinstance(e.get("val"), dict) and e["val"].get("accuracy") is not None]
    text = f"{path}: {len(log.steps)} steps, {len(log.epochs)} epochs"
    if vals:
        epoch, acc = max(vals, key=lambda t: t[1])
        text += f"; best validation accuracy {acc:.4f} (epoch {int(epoch) + 1})"
    return text + "."


def _series(rows: list[dict], key: str, x_key: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of the rows where both are finite numbers."""
    xs, ys = [], []
    for row in rows:
        x, y = row.get(x_key), row.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return np.asarray(xs), np.asarray(ys)


def _smooth(y: np.ndarray) -> np.ndarray:
    """Trailing moving average (window ~ len/50, at most 1000); same length as ``y``."""
    w = int(np.clip(y.size // 50, 1, 1000))
    if w == 1:
        return y
    c = np.cumsum(np.concatenate(([0.0], y)))
    lo = np.maximum(np.arange(1, y.size + 1) - w, 0)
    return (c[1:] - c[lo]) / (np.arange(1, y.size + 1) - lo)


def _thin(x: np.ndarray, y: np.ndarray, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point so that at most ~``max_points`` are drawn (long runs plot quickly)."""
    k = max(1, -(-x.size // max_points))
    return x[::k], y[::k]


def _training_figure(log: RunLog) -> Figure:
    fig = Figure(figsize=(11, 6.6), layout="constrained")
    ax_loss, ax_active, ax_dist, ax_val = fig.subplots(2, 2).ravel()
    x, y = _series(log.steps, "loss")
    if y.size:
        ax_loss.plot(*_thin(x, y), color="C0", alpha=0.3, lw=0.8, label="per step")
        ax_loss.plot(*_thin(x, _smooth(y)), color="C0", lw=1.8, label="smoothed")
        ax_loss.legend(loc="best")
    _decorate(ax_loss, "triplet loss", "step")
    for key, label in (("active_fraction", "active triplets"), ("frac_hard", "hard (d_an < d_ap)"),
                       ("frac_semihard", "semi-hard")):
        x, y = _series(log.steps, key)
        if y.size:
            ax_active.plot(*_thin(x, _smooth(y)), lw=1.4, label=label)
    _decorate(ax_active, "fraction of triplets (smoothed)", "step", legend=True)
    for key, label in (("mean_d_ap", "mean d(anchor, positive)"),
                       ("mean_d_an", "mean d(anchor, negative)")):
        x, y = _series(log.steps, key)
        if y.size:
            ax_dist.plot(*_thin(x, _smooth(y)), lw=1.4, label=label)
    _decorate(ax_dist, "mean distances (smoothed)", "step", legend=True)
    _val_axes(ax_val, log.epochs)
    return fig


def _val_axes(ax: Any, epochs: list[dict]) -> None:
    """Validation accuracy per epoch (± std across folds)."""
    pts = [(int(e["epoch"]) + 1, e["val"]["accuracy"], e["val"].get("accuracy_std") or 0.0)
           for e in epochs
           if isinstance(e.get("val"), dict) and isinstance(e.get("epoch"), int)
           and isinstance(e["val"].get("accuracy"), (int, float))]
    if pts:
        ep, acc, std = (np.asarray(v, dtype=float) for v in zip(*pts))
        ax.errorbar(ep, acc, yerr=std, marker="o", capsize=3, color="C2")
    else:
        ax.text(0.5, 0.5, "no validation during training", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _decorate(ax, "validation accuracy", "epoch")


def _decorate(ax: Any, title: str, xlabel: str, legend: bool = False) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)


# --------------------------------------------------------------------------- image grids


class _Thumbnails:
    """Item thumbnails as PNG data URIs, loaded lazily and cached per item index."""

    def __init__(self, paths: Sequence[str] | None, root: Path | None, labels: np.ndarray):
        self.paths = paths
        self.root = Path(root) if root is not None else None
        self.labels = labels
        self._cache: dict[int, str | None] = {}

    def path(self, i: int) -> str | None:
        if self.paths is None or not 0 <= i < len(self.paths):
            return None
        return str(self.paths[i])

    def name(self, i: int) -> str:
        """Identity name: the first component of the item's path, else its label."""
        p = self.path(i)
        parts = PurePosixPath(p.replace("\\", "/")).parts if p else ()
        if len(parts) > 1:
            return parts[0]
        return f"id {self.labels[i]}" if 0 <= i < len(self.labels) else f"item {i}"

    def uri(self, i: int) -> str | None:
        if i not in self._cache:
            self._cache[i] = self._load(i)
        return self._cache[i]

    def _load(self, i: int) -> str | None:
        p = self.path(i)
        if p is None or self.root is None:
            return None
        try:
            with Image.open(self.root / p) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMB_PX, THUMB_PX))
                buf = io.BytesIO()
                im.save(buf, format="PNG")
        except Exception:  # any missing or undecodable file: a placeholder, never fatal
            return None
        return _png_uri(buf.getvalue())

    def cell(self, i: int) -> str:
        """One image (or placeholder) with the identity name below."""
        uri = self.uri(i)
        name = self.name(i)
        tip = _esc(self.path(i) or f"item {i}")
        if uri is None:
            reason = "no image path" if self.path(i) is None or self.root is None else "unreadable"
            pic = f'<div class="ph">{reason}</div>'
        else:
            pic = f'<img src="{uri}" alt="{_esc(name)}">'
        return f'<div class="cell" title="{tip}">{pic}<div class="name">{_esc(name)}</div></div>'


@dataclass
class _Example:
    a: int
    b: int
    caption: str


def _example_sections(ev: Evaluation, max_examples: int) -> list[str]:
    """The three grids: false accepts, false rejects, failed top-1 retrievals."""
    labels = np.asarray(ev.labels)
    thumbs = _Thumbnails(ev.paths, ev.root, labels)
    threshold = _verification(ev).get("threshold")
    d = np.asarray(ev.distances, dtype=float)
    same = np.asarray(ev.pairs.issame, dtype=bool)
    idx1, idx2 = np.asarray(ev.pairs.idx1), np.asarray(ev.pairs.idx2)
    if threshold is None:
        fa = fr = np.zeros(0, dtype=np.int64)
    else:
        fa = np.flatnonzero(~same & (d < threshold))
        fa = fa[np.argsort(d[fa], kind="stable")]
        fr = np.flatnonzero(same & (d >= threshold))
        fr = fr[np.argsort(-d[fr], kind="stable")]
    t = _fmt(threshold)
    fa_ex = [_Example(int(idx1[p]), int(idx2[p]), f"d = {d[p]:.4f}") for p in fa[:max_examples]]
    fr_ex = [_Example(int(idx1[p]), int(idx2[p]), f"d = {d[p]:.4f}") for p in fr[:max_examples]]
    top1 = np.asarray(ev.top1).reshape(-1).astype(np.int64)
    failed = _failed_retrievals(labels, top1)
    rt_ex = [_Example(int(q), int(top1[q]), "query → nearest")
             for q in _spread(failed, max_examples)]
    return [
        _grid("false-accepts", "Worst false accepts", thumbs, fa_ex, fa.size,
              f"Different-identity pairs with distance < threshold {t}: {fa.size}; "
              f"showing the {len(fa_ex)} closest."),
        _grid("false-rejects", "Worst false rejects", thumbs, fr_ex, fr.size,
              f"Same-identity pairs with distance ≥ threshold {t}: {fr.size}; "
              f"showing the {len(fr_ex)} farthest."),
        _grid("retrieval-failures", "Failed top-1 retrievals", thumbs, rt_ex, failed.size,
              f"Queries whose nearest other item has another identity: {failed.size} "
              f"(queries without another item of their class are not counted); showing "
              f"{len(rt_ex)}, spread over the list (query left, retrieved item right)."),
    ]


def _failed_retrievals(labels: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """Queries (with another item of their class) whose top-1 neighbour has another label."""
    n = min(labels.size, top1.size)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    nn = top1[:n].astype(np.int64)
    valid = (nn >= 0) & (nn < labels.size) & (nn != np.arange(n))
    has_mate = counts[codes.reshape(-1)[:n]] > 1
    wrong = np.zeros(n, dtype=bool)
    wrong[valid] = labels[nn[valid]] != labels[:n][valid]
    return np.flatnonzero(wrong & has_mate)


def _spread(items: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` elements of ``items``, evenly spread (all of them when few)."""
    if items.size <= k:
        return items
    if k <= 0:
        return items[:0]
    return items[np.unique(np.round(np.linspace(0, items.size - 1, k)).astype(np.int64))]


def _grid(sid: str, heading: str, thumbs: _Thumbnails, examples: list[_Example], total: int,
          blurb: str) -> str:
    """A section of side-by-side image pairs; "none" when there are no such errors."""
    if total == 0:
        return _section(sid, heading, '<p class="note none">none</p>')
    figs = "".join(
        f'<figure class="ex"><div class="pair">{thumbs.cell(e.a)}{thumbs.cell(e.b)}</div>'
        f"<figcaption>{_esc(e.caption)}</figcaption></figure>"
        for e in examples
    )
    return _section(sid, heading, _note(blurb) + f'<div class="grid">{figs}</div>')
