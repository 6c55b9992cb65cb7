"""``auto`` config values: worked out from the data once, saved resolved, kept on resume."""

import pytest
import torch

from facetrip.config import config_from_dict, load_config, resume_config
from facetrip.data.index import filter_min_images, split_identities
from facetrip.data.source import scan_dataset
from facetrip.errors import UserError
from facetrip.synth import synthesize
from facetrip.training.build import load_data
from facetrip.training.sizing import (
    auto_batches_per_epoch,
    auto_p,
    auto_val_fraction,
    size_for_data,
)

CPU = torch.device("cpu")
AUTO = ("data.val_fraction=auto", "sampler.p=auto", "sampler.batches_per_epoch=auto")


@pytest.fixture(scope="module")
def thirty(tmp_path_factory):
    """30 people x 6 images: a small set, as configs/small.yaml is for."""
    root = tmp_path_factory.mktemp("thirty") / "data"
    synthesize(root, identities=30, images_per_identity=6, size=24, seed=0, workers=1)
    return root


@pytest.mark.parametrize("people, held_out", [(3, 0), (4, 1), (12, 3), (30, 7), (60, 8),
                                              (100, 10), (1180, 118)])
def test_the_held_out_share_is_a_tenth_of_a_large_set_and_a_few_people_of_a_small_one(
        people, held_out):
    assert round(auto_val_fraction(people) * people) == held_out


def test_p_and_the_epoch_follow_the_training_split(thirty):
    kept = filter_min_images(split_identities(scan_dataset(thirty), 7 / 30, 0)[0], 2)
    assert len(kept.classes) == 23 and len(kept) == 138
    assert auto_p(kept, 4, 1) == 23  # every training person in each batch
    assert auto_p(kept, 4, 2) == 22  # a multiple of the processes
    assert auto_p(kept, 40, 1) == 3  # no more people than the images can fill
    assert auto_batches_per_epoch(138, 23, 4) == 20  # one pass is 1 step: 20 at the least
    assert auto_batches_per_epoch(50_000, 32, 4) == 390  # one pass


def test_auto_is_resolved_before_the_split_and_said(thirty, tiny_config):
    data = load_data(tiny_config(thirty, *AUTO), CPU)
    cfg = data.config
    assert (cfg.data.val_fraction, cfg.sampler.p, cfg.sampler.batches_per_epoch) == (
        pytest.approx(7 / 30), 23, 20)
    assert len(data.val_index.classes) == 7 and data.train_identities == 23
    assert len(data.sampler) == 20
    assert data.sizing_note == (
        "auto: data.val_fraction=0.233 (of 30 people with 2+ images), sampler.p=23 (of 23 "
        "training people), sampler.batches_per_epoch=20 (138 training images, at least 20 "
        "steps)")
    fixed = load_data(tiny_config(thirty, "data.val_fraction=0.2", "sampler.p=4"), CPU)
    assert fixed.sizing_note == "" and fixed.config.sampler.p == 4


def test_only_the_keys_set_to_auto_change(thirty, tiny_config):
    cfg = tiny_config(thirty, "data.val_fraction=0.2", "sampler.p=auto")
    resolved, note = size_for_data(scan_dataset(thirty), cfg)
    assert resolved.data.val_fraction == 0.2 and resolved.sampler.batches_per_epoch is None
    assert resolved.sampler.p == 24 and note == "auto: sampler.p=24 (of 24 training people)"
    assert cfg.sampler.p == "auto"  # the caller's config is left as it was


def test_a_resume_with_auto_takes_the_saved_values_and_other_changes_still_count():
    saved = config_from_dict({"data": {"val_fraction": 0.25}, "sampler": {"p": 23}})
    wanted = load_config(None, list(AUTO[:2]))
    cfg, changed = resume_config(saved, wanted)
    assert changed == [] and cfg.sampler.p == 23 and cfg.data.val_fraction == 0.25
    with pytest.raises(UserError, match=r"changed: sampler\.p"):
        resume_config(saved, load_config(None, ["data.val_fraction=0.25", "sampler.p=8"]))


@pytest.mark.parametrize("item, message", [("sampler.p=1", "sampler.p must be >= 2"),
                                           ("data.val_fraction=1.5", "val_fraction must be"),
                                           ("sampler.p=many", "expected int | 'auto'")])
def test_bad_values_are_still_refused(item, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [item])
