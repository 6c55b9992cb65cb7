"""The one metrics table: rows of headline metrics, a column per model or baseline.

:func:`metric_rows` decides what is shown and how each value is written; the CLI prints the
rows as fixed-width text (:func:`format_text`), the HTML report as a table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Row = tuple[str, "list[str] | None"]
"""``(label, one cell per source)``; ``cells is None`` marks a group heading."""


def columns(metrics: dict) -> tuple[list[str], list[dict]]:
    """``(names, sources)``: the model's metrics and then each baseline's."""
    baselines = metrics.get("baselines") or {}
    return ["model", *baselines], [metrics, *baselines.values()]


def fmt(value: Any, digits: int = 4) -> str:
    """A metric value for display: ``n/a`` for None/NaN, ints as is, floats rounded."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"
    return str(value)


def _num_key(key: Any) -> float:
    """A far/k dict key as a number (keys are floats/ints in memory, strings from JSON)."""
    try:
        return float(key)
    except (TypeError, ValueError):
        return math.nan


def _lookup(d: dict | None, key: float) -> Any:
    """``d[key]`` matching keys numerically; None when absent."""
    if not isinstance(d, dict):
        return None
    for k, v in d.items():
        if _num_key(k) == key:
            return v
    return None


def _keys(sources: Sequence[dict], section: str, field: str) -> list[float]:
    """Union of the numeric keys of ``source[section][field]`` over all sources, sorted."""
    found = {
        _num_key(k)
        for s in sources
        for k in ((s.get(section) or {}).get(field) or {})
    }
    return sorted(k for k in found if math.isfinite(k))


def metric_rows(sources: Sequence[dict]) -> list[tuple[str, list[str] | None]]:
    """``(label, one cell per source)`` rows; ``cells is None`` marks a group heading.

    ``sources`` as from :func:`columns`; cells are display strings (:func:`fmt`), not markup."""
    ver = [s.get("verification") or {} for s in sources]
    ret = [s.get("retrieval") or {} for s in sources]
    protocol = ver[0].get("protocol", "k-fold") if ver else "k-fold"
    accuracy, fitted = {"k-fold": ("accuracy ± std", "held out"),
                        "calibrated": ("accuracy (calibrated threshold)", "calibrated"),
                        "in-sample": ("accuracy (IN-SAMPLE threshold)", "in-sample")}[protocol]
    rows: list[tuple[str, list[str] | None]] = [("Verification", None)]
    rows.append((accuracy, [_pm(v.get("accuracy"), v.get("accuracy_std")) for v in ver]))
    for key, label in (("threshold", "threshold (same iff d < t)"), ("auc", "AUC"),
                       ("eer", "EER")):
        rows.append((label, [fmt(v.get(key)) for v in ver]))
    for far in reversed(_keys(sources, "verification", "tar_at_far")):
        rows.append((f"TAR @ FAR={far:g}", [fmt(_lookup(v.get("tar_at_far"), far)) for v in ver]))
    for far in reversed(_keys(sources, "verification", "val_at_far")):
        rows.append((f"VAL @ FAR={far:g} ({fitted})",
                     [_val_cell(_lookup(v.get("val_at_far"), far)) for v in ver]))
    rows.append(("pairs (same / different)", [
        f"{fmt(v.get('n_pairs'))} ({fmt(v.get('n_same'))} / {fmt(v.get('n_different'))})"
        for v in ver
    ]))
    rows.append(("folds", [fmt(v.get("folds")) for v in ver]))
    if not any(ret):
        return rows
    rows.append(("Retrieval (leave one out)", None))
    for k in _keys(sources, "retrieval", "recall_at_k"):
        rows.append((f"Recall@{k:g}", [fmt(_lookup(r.get("recall_at_k"), k)) for r in ret]))
    for key, label in (("precision_at_1", "precision@1"), ("r_precision", "R-precision"),
                       ("map_at_r", "MAP@R"), ("n_queries", "queries"),
                       ("n_excluded", "excluded (no other item of the class)")):
        rows.append((label, [fmt(r.get(key)) for r in ret]))
    return rows


def _pm(mean: Any, std: Any) -> str:
    if mean is None:
        return "n/a"
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def protocol_notes(metrics: dict, pairs_name: str | None = None) -> list[str]:
    """Sentences that say how to read one protocol's verification figures: where the
    thresholds came from (an in-sample warning when they were fitted on the scored pairs) and
    whether the pairs' people were in the model's training run."""
    ver = metrics.get("verification") or {}
    what = pairs_name or "these pairs"
    cal = (metrics.get("dataset") or {}).get("calibration_pairs")
    notes = []
    if ver.get("protocol") == "in-sample":
        notes.append(f"IN-SAMPLE: {what} form a single fold and no calibration pairs were "
                     "given, so the threshold was chosen on the very pairs it scores: accuracy "
                     "and VAL are optimistic (give --calibration-pairs FILE of other people)")
    elif ver.get("protocol") == "calibrated":
        n = (ver.get("calibration") or {}).get("n_pairs")
        notes.append(f"thresholds chosen on {n} calibration pairs ({cal or 'another file'}) "
                     f"and applied unchanged to {what}")
    cal_people = metrics.get("calibration_identities") or {}
    if cal_people.get("seen_in_training"):
        notes.append(f"OVERLAP (calibration): {cal_people['seen_in_training']} of the "
                     f"{cal_people['identities']} people in the calibration pairs were in the "
                     "model's training run, whose distances it has pulled together: the "
                     "thresholds are tight for unseen people")
    if cal_people.get("shared_with_scored"):
        notes.append(f"OVERLAP (calibration): {cal_people['shared_with_scored']} people are in "
                     f"both the calibration pairs and {what}: the thresholds were chosen on "
                     "some of the people they score")
    people = metrics.get("pair_identities") or {}
    seen = people.get("seen_in_training")
    if seen:
        notes.append(f"OVERLAP: {seen} of the {people['identities']} people in {what} were in "
                     "the model's training run: this is not a test on unseen identities")
    elif seen == 0:
        notes.append(f"none of the {people['identities']} people in {what} was in the "
                     "model's training run")
    return notes


def _val_cell(entry: Any) -> str:
    """``val ± std (FAR far)`` of one ``val_at_far`` entry, or n/a."""
    if not isinstance(entry, dict) or entry.get("val") is None:
        return "n/a"
    return f"{_pm(entry.get('val'), entry.get('val_std'))} (FAR {fmt(entry.get('far'))})"


def bin_columns(metrics: dict) -> tuple[list[str], list[dict]]:
    """``(names, sources)`` of the ``.bin`` sets' table: a column per set, its verification
    metrics as a source's ``verification``."""
    bins = metrics.get("bins") or {}
    return list(bins), [{"verification": scores} for scores in bins.values()]


def format_bins(metrics: dict) -> str:
    """The ``.bin`` sets' table as fixed-width text (see :func:`format_text`)."""
    return _text(*bin_columns(metrics))


def format_text(metrics: dict) -> str:
    """The table as fixed-width text, group headings as their own lines (the numbers of pairs
    and queries are rows of the table)."""
    return _text(*columns(metrics))


def _text(names: list[str], sources: list[dict]) -> str:
    """Rows of :func:`metric_rows` as fixed-width text, a column per name."""
    rows = metric_rows(sources)
    width = max(len(label) for label, _ in rows) + 2
    cell = max(12, *(len(c) + 2 for _, cells in rows if cells for c in cells))
    lines = [f"{'metric':<{width}}" + "".join(f"{n:>{cell}}" for n in names)]
    for label, cells in rows:
        lines.append(label if cells is None
                     else f"{label:<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
    return "\n".join(lines)
