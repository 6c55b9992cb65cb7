"""The slow, obviously correct triple loop the loss tests compare against."""

from __future__ import annotations


def loop_triplets(
    dist: list[list[float]],
    lab: list[int],
    ref_lab: list[int],
    self_row: list[int],
    mining_mode: str,
    margin: float | None,
) -> tuple[list[tuple[int, int, int]], int]:
    """The (anchor, reference, reference) triplets a mode averages, and its candidate count."""
    m = 0.0 if margin is None else margin
    refs = range(len(ref_lab))
    chosen, candidates = [], 0
    for a in range(len(lab)):
        pos = [p for p in refs if ref_lab[p] == lab[a] and p != self_row[a]]
        neg = [n for n in refs if ref_lab[n] != lab[a]]
        if not pos or not neg:
            continue
        if mining_mode == "batch_hard":
            p = max(pos, key=lambda j: (dist[a][j], -j))
            chosen.append((a, p, min(neg, key=lambda j: (dist[a][j], j))))
            candidates += 1
            continue
        for p in pos:
            if mining_mode == "semihard":
                far = [n for n in neg if dist[a][n] > dist[a][p]]
                n = (
                    min(far, key=lambda j: (dist[a][j], j))
                    if far
                    else max(neg, key=lambda j: (dist[a][j], -j))
                )
                chosen.append((a, p, n))
                candidates += 1
                continue
            for n in neg:
                d_ap, d_an = dist[a][p], dist[a][n]
                positive_hinge = margin is None or d_ap > d_an - m
                in_window = d_an - m < d_ap < d_an
                if mining_mode == "semihard_all":
                    candidates += in_window
                    if in_window:
                        chosen.append((a, p, n))
                else:
                    candidates += 1
                    if mining_mode == "all" or positive_hinge:
                        chosen.append((a, p, n))
    return chosen, candidates
