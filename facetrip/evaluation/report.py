"""A self-contained HTML evaluation report: ``report.html`` beside ``metrics.json``.

One file, no external resource: CSS is inline and every figure or thumbnail is a PNG data URI,
so the page opens from disk in any browser (it needs no JavaScript; a tiny inline script only
records on ``<body data-images-ok>`` whether every image decoded, for automated checks).

Sections: provenance and headline metrics (one column per baseline), ROC curve (log FAR axis,
EER marked), same/different distance histograms with the threshold, training curves from the
run's ``metrics.jsonl`` when known, and image grids of the worst false accepts, worst false
rejects and failed top-1 retrievals.

This module decides *what* is shown (which pairs are the worst errors, which queries failed,
the figures) and hands plain data to the Jinja2 template ``templates/report.html.j2``
(autoescaped, shipped as package data), which decides *how* it is laid out. The metrics
table is :func:`facetrip.evaluation.table.metric_rows`, the one the CLI prints. Figures use
:class:`matplotlib.figure.Figure` directly (Agg rendering, no pyplot state). Nothing here
prints.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from facetrip.evaluation.table import bin_columns, columns, metric_rows, protocol_notes
from facetrip.evaluation.table import fmt as _fmt
from facetrip.io import atomic_write
from facetrip.metrics.verification import roc_curve
from facetrip.training.metrics_log import RunLog, read_run_log

if TYPE_CHECKING:  # annotations only: no import-time dependency on the eval workflow
    from facetrip.evaluation.evaluate import Evaluation

THUMB_PX = 96
FIG_DPI = 90
PNG_PREFIX = "data:image/png;base64,"
TEMPLATE = "report.html.j2"

#: ``(section id, navigation label)`` in page order
NAV = (("summary", "Summary"), ("roc", "ROC"), ("distances", "Distances"),
       ("training", "Training"), ("false-accepts", "False accepts"),
       ("false-rejects", "False rejects"), ("retrieval-failures", "Retrieval failures"))


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
    context = {
        "title": title,
        "nav": NAV,
        "provenance": _provenance(ev.metrics),
        "metrics": (_table(ev.metrics, _pairs_name(ev.metrics))
                    if "verification" in ev.metrics else None),
        "bins": _bins_table(ev.metrics),
        "also": [dict(_table(m, Path(name).name), name=f"Also scored: {name}")
                 for name, m in (ev.metrics.get("also") or {}).items()],
        "roc": _roc_block(ev),
        "distances": _distance_block(ev),
        "training": _training_block(ev.run_dir),
        "grids": _grids(ev, max(0, int(max_examples))),
    }
    return _environment().get_template(TEMPLATE).render(context)


# --------------------------------------------------------------------------- page helpers


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    """The Jinja2 environment of the packaged templates: autoescaped, undefined names fail."""
    return Environment(
        loader=PackageLoader("facetrip.evaluation", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


@dataclass(frozen=True)
class _Block:
    """A figure (PNG data URI) and/or a one-line note; either may be missing."""

    img: str | None = None
    note: str | None = None


def _png_uri(data: bytes) -> str:
    return PNG_PREFIX + base64.b64encode(data).decode("ascii")


def _figure_uri(fig: Figure) -> str:
    """``fig`` rendered to a PNG data URI (Agg, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    return _png_uri(buf.getvalue())


# --------------------------------------------------------------------------- summary


def _table(metrics: dict, pairs_name: str | None) -> dict:
    """One metrics table of the page: column names, rows and the notes read with it."""
    names, sources = columns(metrics)
    return {"names": names, "rows": metric_rows(sources),
            "notes": protocol_notes(metrics, pairs_name)}


def _bins_table(metrics: dict) -> dict | None:
    """The ``.bin`` sets' table (a column per set), or None without any."""
    if not metrics.get("bins"):
        return None
    names, sources = bin_columns(metrics)
    return {"names": names, "rows": metric_rows(sources), "notes": [
        "each .bin set's consecutive images form its pairs, scored in 10 folds with the "
        "threshold chosen on the other nine, as in the published tables"]}


def _pairs_name(metrics: dict) -> str | None:
    pairs_file = (metrics.get("dataset") or {}).get("pairs_file")
    return Path(pairs_file).name if pairs_file else None


def _provenance(metrics: dict) -> list[tuple[str, str]]:
    """Dataset, checkpoint and options as ``(key, value)`` rows."""
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
    return rows


# --------------------------------------------------------------------------- ROC, distances


def _verification(ev: Evaluation) -> dict:
    return ev.metrics.get("verification") or {}


def _roc_block(ev: Evaluation) -> _Block:
    """ROC curve on a log FAR axis with the EER point, or a note when it is undefined."""
    issame = np.asarray(ev.pairs.issame, dtype=bool)
    if not issame.size:
        return _Block(note="No pairs of a data set were scored (only .bin sets).")
    roc = roc_curve(ev.distances, issame)
    if roc is None:
        return _Block(note="ROC curve undefined: the pairs contain only one class "
                           "(same or different).")
    n_neg = int((~issame).sum())
    floor = 0.5 / n_neg
    baselines = {name: roc_curve(d, issame) for name, d in ev.baseline_distances.items()}
    fig = _roc_figure(roc, _verification(ev).get("eer"), floor, baselines)
    extra = f" Baselines on the same pairs: {', '.join(baselines)}." if baselines else ""
    note = (f"False accept rate on a log scale; points with FAR = 0 are drawn at the left "
            f"edge ({floor:.2g} = 0.5 / {n_neg} different pairs).{extra}")
    return _Block(img=_figure_uri(fig), note=note)


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


def _distance_block(ev: Evaluation) -> _Block:
    """Overlaid same/different distance histograms with the threshold line."""
    d = np.asarray(ev.distances, dtype=float)
    same = np.asarray(ev.pairs.issame, dtype=bool)
    finite = np.isfinite(d)
    if not finite.any():
        return _Block(note="No pair distances.")
    threshold = _verification(ev).get("threshold")
    return _Block(img=_figure_uri(_histogram_figure(d[finite], same[finite], threshold)))


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


def _training_block(run_dir: Path | None) -> _Block:
    """Training curves from ``run_dir/metrics.jsonl`` with a summary, or a one-line note."""
    if run_dir is None:
        return _Block(note="No training run is known for these embeddings; "
                           "training curves skipped.")
    path = Path(run_dir) / "metrics.jsonl"
    try:
        log = read_run_log(path)
    except OSError:
        return _Block(note=f"No readable {path}; curves skipped.")
    if not log.steps and not log.epochs:
        return _Block(note=f"{path} has no rows; curves skipped.")
    return _Block(img=_figure_uri(_training_figure(log)), note=_training_summary(log, path))


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

    def cell(self, i: int) -> _Cell:
        """One image (or a placeholder saying why there is none) with the identity name."""
        uri = self.uri(i)
        reason = None
        if uri is None:
            reason = "no image path" if self.path(i) is None or self.root is None else "unreadable"
        return _Cell(uri=uri, name=self.name(i), tip=self.path(i) or f"item {i}", reason=reason)


@dataclass(frozen=True)
class _Cell:
    """One thumbnail of a grid: ``uri`` (None: a placeholder showing ``reason``), identity
    ``name`` below it, the item's path as ``tip``."""

    uri: str | None
    name: str
    tip: str
    reason: str | None


@dataclass(frozen=True)
class _Example:
    """Two items shown side by side (a pair, or a query and its nearest item)."""

    a: int
    b: int
    caption: str


@dataclass(frozen=True)
class _Shown:
    """An example as the template draws it."""

    cells: tuple[_Cell, _Cell]
    caption: str


@dataclass(frozen=True)
class _Grid:
    """An image-grid section: ``total`` errors of this kind, ``examples`` of them shown."""

    id: str
    heading: str
    total: int
    blurb: str
    examples: list[_Shown]


def _grids(ev: Evaluation, max_examples: int) -> list[_Grid]:
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
          blurb: str) -> _Grid:
    """A section of side-by-side image pairs (the template shows "none" when ``total == 0``)."""
    shown = [_Shown((thumbs.cell(e.a), thumbs.cell(e.b)), e.caption) for e in examples]
    return _Grid(sid, heading, int(total), blurb, shown)
