from pathlib import Path

import pytest

from thermorl.config import Config, dump_config, field_help, load_config
from thermorl.errors import ConfigError


def test_defaults_validate_and_roundtrip_through_yaml(tmp_path):
    config = load_config()
    path = tmp_path / "c.yaml"
    dump_config(config, path)
    assert load_config(path) == config


def test_yaml_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  group_size: 4\ntemperature:\n  controller: ead\n  ead:\n    form: code\n")
    config = load_config(path, ["algorithm.lr=3e-5", "train.steps=7", "temperature.tampo.candidates=[0.5, 1]"])
    assert config.rollout.group_size == 4
    assert config.temperature.controller == "ead" and config.temperature.ead.form == "code"
    assert config.algorithm.lr == 3e-5 and config.train.steps == 7
    assert config.temperature.tampo.candidates == [0.5, 1.0]


@pytest.mark.parametrize(
    "override, field",
    [
        ("rollout.group_size=1", "rollout.group_size"),
        ("temperature.fixed.temperature=0", "temperature.fixed.temperature"),
        ("temperature.fixed.temperature=-1", "temperature.fixed.temperature"),
        ("train.steps=ten", "train.steps"),
        ("train.stepz=10", "train.stepz"),
        ("algorithm.loss_aggregation=mean", "algorithm.loss_aggregation"),
        ("algorithm.epsilon=1.5", "algorithm.epsilon"),
        ("temperature.controller=magic", "temperature.controller"),
        ("log.tensorboard=3", "log.tensorboard"),
        ("algorithm.lr=.nan", "algorithm.lr"),
        ("algorithm.lr_schedule=linear", "algorithm.lr_schedule"),
        ("algorithm.warmup_steps=-1", "algorithm.warmup_steps"),
        ("task.num_operands=1", "task.num_operands"),
        ("task.operations=+/", "task.operations"),
        ("task.operations=++", "task.operations"),
        ("algorithm.top_entropy_fraction=0", "algorithm.top_entropy_fraction"),
        ("algorithm.top_entropy_fraction=1.5", "algorithm.top_entropy_fraction"),
        ("temperature.tampo.candidates=[0.5]", "temperature.tampo.candidates"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_unreadable_and_non_mapping_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_has_help():
    rows = field_help(Config)
    assert len(rows) > 40
    assert all(help_text for _, help_text, _ in rows), [name for name, h, _ in rows if not h]


def test_an_unknown_key_with_a_newline_is_reported_on_one_line():
    # found by the hypothesis test in test_properties.py: the raw key split the message in two
    with pytest.raises(ConfigError, match=r"unknown config key '0\\n0' \(known: ") as err:
        load_config(None, ["0\n0=0"])
    assert "\n" not in str(err.value)


def test_every_shipped_recipe_loads_and_validates():
    """examples/*.yaml (thermorl configs; accelerate's own configs aside) load with every key known and valid."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    recipes = [p for p in sorted(examples.glob("*.yaml")) if not p.name.startswith("accelerate_")]
    assert len(recipes) >= 4
    for recipe in recipes:
        config = load_config(recipe, [])
        assert config.train.steps > 0, recipe.name
    multi_gpu = load_config(examples / "math_1.5b.yaml", [])
    assert multi_gpu.rollout.engine == "vllm" and multi_gpu.train.micro_batch_rows > 0
    assert multi_gpu.algorithm.num_minibatches == 1  # one optimizer step per rollout: one forward per step
