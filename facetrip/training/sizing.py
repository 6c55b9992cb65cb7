"""``auto`` config values, worked out from the data set a run trains on.

Three settings depend on how many people and images a set has, and a small set (a few dozen
people) breaks the defaults sized for LFW: ``data.val_fraction`` (10% of 30 people is 3, too
few to choose a threshold on), ``sampler.p`` (32 identities per batch need 32 training
people) and ``sampler.batches_per_epoch`` (one pass over 250 images is two steps, so
validation and checkpoints would follow every other step). Set to ``auto`` (as
``configs/small.yaml`` does), each is resolved once, before the split, by the rules below;
the run saves the resolved numbers (config.yaml, checkpoints), so a resume and ``eval
--calibrate-held-out`` rebuild exactly the same split, and the console prints a note saying
what was chosen.

- ``data.val_fraction``: hold out about ``max(10% of the people with 2+ images, min(8, a
  quarter of them))`` people: 10% of a large set, 7 of 30, 8 of 60 (at most half).
- ``sampler.p``: ``min(32, training people, training images // sampler.k)``, rounded down to
  a multiple of the process count.
- ``sampler.batches_per_epoch``: one pass over the training images, but at least
  :data:`MIN_STEPS` steps.
"""

from __future__ import annotations

import dataclasses

from facetrip.config import AUTO, Config
from facetrip.data.index import (
    ImageFolderIndex,
    filter_min_images,
    read_identity_list,
    restrict_identities,
    split_identities,
)

MIN_STEPS = 20  #: steps in an ``auto`` epoch at the least
MAX_P = 32  #: identities per batch of an ``auto`` sampler.p at the most
MIN_HELD_OUT = 8  #: people an ``auto`` val_fraction holds out of a small set, at the most


def auto_val_fraction(multi_image_people: int) -> float:
    """``data.val_fraction: auto`` for a set with ``multi_image_people`` people of 2+ images."""
    n = multi_image_people
    if n < 4:
        return 0.0
    held_out = max(round(0.1 * n), min(MIN_HELD_OUT, n // 4))
    return min(0.5, held_out / n)


def auto_p(kept: ImageFolderIndex, k: int, world_size: int) -> int:
    """``sampler.p: auto`` for the training split ``kept``."""
    p = min(MAX_P, len(kept.classes), len(kept) // k)
    return max(2, p - p % world_size)


def auto_batches_per_epoch(images: int, p: int, k: int) -> int:
    """``sampler.batches_per_epoch: auto``: one pass over ``images``, at least MIN_STEPS."""
    return max(MIN_STEPS, images // (p * k))


def run_index(full: ImageFolderIndex, cfg: Config) -> ImageFolderIndex:
    """``full`` restricted to ``data.identities_file`` (when set): what a run splits."""
    d = cfg.data
    if not d.identities_file:
        return full
    return restrict_identities(full, read_identity_list(d.identities_file),
                               f"data.identities_file={d.identities_file}")


def size_for_data(full: ImageFolderIndex, cfg: Config, world_size: int = 1
                  ) -> tuple[Config, str]:
    """``(cfg with every auto value resolved for full, note)``: ``full`` is the scanned data
    set (before ``data.identities_file``); the note says what was chosen ('' when nothing in
    ``cfg`` is ``auto``)."""
    d, s = cfg.data, cfg.sampler
    if AUTO not in (d.val_fraction, s.p, s.batches_per_epoch):
        return cfg, ""
    index = run_index(full, cfg)
    chosen = []
    if d.val_fraction == AUTO:  # validation pairs need people with two images or more
        pair_images = max(2, d.min_images_per_identity)
        people = len(filter_min_images(index, pair_images).classes)
        d = dataclasses.replace(d, val_fraction=auto_val_fraction(people))
        chosen.append(f"data.val_fraction={d.val_fraction:.3g} (of {people} people with "
                      f"{pair_images}+ images)")
    train_idx, _ = split_identities(index, d.val_fraction, cfg.seed)
    kept = filter_min_images(train_idx, d.min_images_per_identity)  # what PK batches draw from
    if s.p == AUTO:
        s = dataclasses.replace(s, p=auto_p(kept, s.k, world_size))
    if s.batches_per_epoch == AUTO:
        s = dataclasses.replace(s, batches_per_epoch=auto_batches_per_epoch(len(kept), s.p, s.k))
    if cfg.sampler.p == AUTO:
        chosen.append(f"sampler.p={s.p} (of {len(kept.classes)} training people)")
    if cfg.sampler.batches_per_epoch == AUTO:
        chosen.append(f"sampler.batches_per_epoch={s.batches_per_epoch} ({len(kept)} "
                      f"training images, at least {MIN_STEPS} steps)")
    return dataclasses.replace(cfg, data=d, sampler=s), "auto: " + ", ".join(chosen)
