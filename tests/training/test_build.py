"""Config -> objects: identity lists, validation pairs sized to what the data can supply."""

import numpy as np
import pytest
import torch

from facetrip.config import load_config
from facetrip.errors import UserError
from facetrip.synth import synthesize
from facetrip.training.build import (
    build_model,
    draw_validation_pairs,
    load_data,
    run_validation_pairs,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces") / "data"
    synthesize(root, identities=16, images_per_identity=5, size=24, seed=0, workers=1)
    return root


def _balanced(pairs, folds, per_fold):
    assert len(pairs) == folds * per_fold and np.unique(pairs.fold).size == folds
    assert pairs.issame.sum() == len(pairs) // 2


def test_a_request_the_held_out_identities_cannot_meet_is_sized_down_with_a_note(
        faces, tiny_config):
    # 4 held-out identities x 5 images: 2 per fold, 10 same pairs each, 20 per fold at most
    data = load_data(tiny_config(faces, "data.val_fraction=0.25", "eval.folds=2",
                                 "eval.pairs_per_fold=400"), CPU)
    assert data.val_note.startswith("validation: the held-out identities supply 2 folds x 40")
    _balanced(data.val_pairs, 2, 40)
    data = load_data(tiny_config(faces, "data.val_fraction=0.25", "eval.folds=10"), CPU)
    assert "supply 2 folds" in data.val_note and data.val_loader is not None
    met = load_data(tiny_config(faces, "data.val_fraction=0.25", "eval.folds=2",
                                "eval.pairs_per_fold=10"), CPU)
    assert met.val_note == "" and len(met.val_pairs) == 20


def test_the_validation_pairs_are_rebuilt_from_the_config_alone(faces, tiny_config):
    cfg = tiny_config(faces, "data.val_fraction=0.25", "eval.folds=2", "eval.pairs_per_fold=10",
                      "seed=3")
    data = load_data(cfg, CPU)
    val, pairs, note = run_validation_pairs(cfg)
    assert val.paths == data.val_index.paths and note == data.val_note
    for name in ("idx1", "idx2", "issame", "fold"):
        np.testing.assert_array_equal(getattr(pairs, name), getattr(data.val_pairs, name))
    trained = set(data.index.classes) - set(val.classes)
    assert trained and not trained & {val.classes[c] for c in val.labels[pairs.idx1]}
    with pytest.raises(UserError, match="held out no identities"):
        run_validation_pairs(tiny_config(faces, "data.val_fraction=0"))


def test_no_validation_when_not_even_two_folds_can_be_formed():
    labels = np.array([0, 0, 1, 2])  # one identity with a same pair
    pairs, note = draw_validation_pairs(labels, 10, 600, seed=0)
    assert pairs is None and "cannot form 2 folds" in note


def test_an_identity_list_restricts_training_before_the_split(faces, tiny_config, tmp_path):
    names = tmp_path / "people.txt"  # LFW's people format: count line, then name count
    names.write_text("3\nid_00000\t5\nid_00003\t5\nid_00007\t5\n")
    data = load_data(tiny_config(faces, f"data.identities_file={names}"), CPU)
    assert data.index.classes == ["id_00000", "id_00003", "id_00007"]
    assert data.train_identities == 3
    plain = tmp_path / "names.txt"
    plain.write_text("id_00001\n\nid_00002\n")
    assert load_data(tiny_config(faces, f"data.identities_file={plain}"),
                     CPU).index.classes == ["id_00001", "id_00002"]
    plain.write_text("id_00001\nnobody\nghost\n")
    with pytest.raises(UserError, match=r"2 identities are not folders of .*'nobody', 'ghost'"):
        load_data(tiny_config(faces, f"data.identities_file={plain}"), CPU)


def test_trunk_weights_that_do_not_fit_are_refused_unless_not_strict(tmp_path, tiny_config):
    import torchvision

    from facetrip.training.build import build_model

    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.weight"]  # a key the trunk needs
    state["extra.weight"] = torch.zeros(3)  # and one it does not know
    torch.save(state, tmp_path / "w.pth")
    strict = tiny_config(tmp_path, f"model.pretrained={tmp_path / 'w.pth'}")
    with pytest.raises(UserError, match=r"1 trunk keys missing \(layer4.1.bn2.weight\); "
                                        r"1 unexpected \(extra.weight\).*pretrained_strict"):
        build_model(strict)
    lenient = tiny_config(tmp_path, f"model.pretrained={tmp_path / 'w.pth'}",
                          "model.pretrained_strict=false")
    model = build_model(lenient)
    assert torch.equal(model.trunk.conv1.weight, state["conv1.weight"])


def test_init_from_starts_from_a_checkpoints_whole_network(tmp_path):
    from facetrip.config import config_to_dict
    from facetrip.io import atomic_torch_save

    cfg = load_config(None, ["model.embedding_dim=8"])
    torch.manual_seed(1)
    source = build_model(cfg)
    with torch.no_grad():
        source.embed.weight.mul_(3.0)  # unlike any fresh initialisation
    path = tmp_path / "best.pt"
    atomic_torch_save({"config": config_to_dict(cfg), "model_spec": source.spec.to_dict(),
                       "model": source.state_dict()}, path)
    started = build_model(load_config(None, ["model.embedding_dim=8",
                                             f"model.init_from={path}"]))
    for (name, a), b in zip(started.state_dict().items(), source.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    resumed = build_model(load_config(None, ["model.embedding_dim=8",
                                             f"model.init_from={path}"]), initial=False)
    assert not torch.equal(resumed.embed.weight, source.embed.weight)  # a resume loads its own
    with pytest.raises(UserError, match=r"^model.init_from=.* holds another network: "
                                        r"model.embedding_dim=8 there, 16 here$"):
        build_model(load_config(None, ["model.embedding_dim=16", f"model.init_from={path}"]))
    with pytest.raises(UserError, match=r"holds another network: "
                                        r"model.pool_grid=1 there, 2 here$"):
        build_model(load_config(None, ["model.embedding_dim=8", "model.pool_grid=2",
                                       f"model.init_from={path}"]))
    gridded = tmp_path / "grid.pt"  # the spec leaves pool_grid out at 1, not the check
    grid_cfg = load_config(None, ["model.embedding_dim=8", "model.pool_grid=2"])
    atomic_torch_save({"config": config_to_dict(grid_cfg), "model_spec":
                       build_model(grid_cfg).spec.to_dict(), "model": {}}, gridded)
    with pytest.raises(UserError, match=r"holds another network: "
                                        r"model.pool_grid=2 there, 1 here$"):
        build_model(load_config(None, ["model.embedding_dim=8", f"model.init_from={gridded}"]))
    with pytest.raises(UserError, match="checkpoint not found"):
        build_model(load_config(None, [f"model.init_from={tmp_path / 'absent.pt'}"]))
    with pytest.raises(UserError, match="model.pretrained .* or model.init_from .*not both"):
        load_config(None, [f"model.init_from={path}", f"model.pretrained={path}"])


def test_people_with_one_image_train_when_min_images_per_identity_is_1(tmp_path, tiny_config):
    root = tmp_path / "data"
    synthesize(root, identities=6, images_per_identity=1, size=24, seed=0, workers=1)
    with pytest.raises(UserError, match="only 0 training identities have at least 2 images"):
        load_data(tiny_config(root), CPU)
    data = load_data(tiny_config(root, "data.min_images_per_identity=1"), CPU)
    assert (data.train_identities, data.train_images, data.dropped_identities) == (6, 6, 0)
    data.sampler.set_epoch(0)
    images, labels = next(iter(data.train_loader))
    assert labels.tolist()[0] == labels.tolist()[1] != labels.tolist()[2]  # K copies of one
    assert not torch.equal(images[0], images[1])  # ... each augmented its own way
    with pytest.raises(UserError, match="min_images_per_identity must be >= 1"):
        tiny_config(root, "data.min_images_per_identity=0")
