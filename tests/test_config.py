from pathlib import Path

import pytest

from facetrip.config import Config, config_from_dict, config_to_dict, load_config, parse_overrides
from facetrip.errors import UserError


def test_defaults_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nmodel:\n  embedding_dim: 64\noptim:\n  lr: 1e-3\n")
    cfg = load_config(path, ["loss.margin=null", "data.mean=[0.1, 0.2, 0.3]", "optim.lr=0.5"])
    assert cfg.seed == 3 and cfg.model.embedding_dim == 64
    assert cfg.loss.margin is None and cfg.data.mean == [0.1, 0.2, 0.3]
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)


def test_int_is_accepted_where_float_is_declared():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.embeding_dim=3", "unknown config key 'model.embeding_dim'"),
        ("nosuch=1", "unknown config key 'nosuch'"),
        ("model.embedding_dim=abc", "config key 'model.embedding_dim': expected int"),
        ("model.embedding_dim=1.5", "expected int"),
        ("train.epochs=true", "expected int"),
        ("loss.mining=hardest", "config key 'loss.mining'"),
        ("data=3", "config section 'data' must be a mapping"),
        ("sampler.k=1", "sampler.k must be >= 2"),
        ("loss.margin_target=1.5", "loss.margin_target must be in (0, 1)"),
        ("model.pool_grid=0", "model.pool_grid must be >= 1"),
        ("data.augment_area=[0.5, 1.2]", "data.augment_area must be [min, max]"),
        ("data.augment_area=[0.9, 0.5]", "data.augment_area must be [min, max]"),
        ("data.erase_p=1.5", "data.erase_p must be in [0, 1]"),
        ("novalue", "--set expects key=value"),
    ],
)
def test_bad_keys_and_types_are_one_line_errors(override, fragment):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("sets, fragment", [
    (["loss.margin=null"], "needs a margin > 0"),
    (["loss.margin=0"], "needs a margin > 0"),
    (["loss.mining=semihard_all"], "does not apply to loss.mining=semihard_all"),
])
def test_an_adaptive_margin_needs_a_margin_to_adapt(sets, fragment):
    with pytest.raises(UserError, match=fragment):
        load_config(None, ["loss.margin_target=0.1", *sets])


@pytest.mark.parametrize("sets, fragment", [
    ([], "loss.neck needs loss.classifier"),
    (["loss.classifier=softmax", "model.head_bn=false"], "loss.neck needs model.head_bn=true"),
])
def test_the_neck_needs_a_classifier_and_the_head_batchnorm(sets, fragment):
    with pytest.raises(UserError, match=fragment):
        load_config(None, ["loss.neck=true", *sets])
    load_config(None, ["loss.neck=true", "loss.classifier=softmax"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.arch=resnet34", "loss.mining=batch_hard"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg and again != Config()


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    # make demo and the README use these files; a typo in one must fail here, not mid-demo
    cfg = load_config(path, ["data.root=somewhere"])
    assert cfg.train.epochs >= 1 and cfg.sampler.k >= 2
    assert cfg.sampler.p == "auto" or cfg.sampler.p >= 2  # auto: sized to the data
