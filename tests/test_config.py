"""Typed configuration: defaults in one place, errors that name the key."""
from pathlib import Path

import pytest

from transformer.config import Config, ConfigError, load_config


def test_defaults_are_the_paper_base_model():
    config = Config()
    assert (config.model.d_model, config.model.n_heads, config.model.d_ff) == (512, 8, 2048)
    assert config.train.adam_eps == 1e-9 and config.train.warmup_steps == 4000


def test_yaml_scientific_notation_loads_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  adam_eps: 1e-9\n  lr_factor: 2\n")
    config = load_config(path)
    assert isinstance(config.train.adam_eps, float) and config.train.adam_eps == 1e-9
    assert isinstance(config.train.lr_factor, float)


def test_dotted_overrides():
    config = load_config("configs/tiny.yaml", ["model.d_model=64", "train.max_minutes=0.5", "model.norm=pre"])
    assert config.model.d_model == 64 and config.train.max_minutes == 0.5 and config.model.norm == "pre"


@pytest.mark.parametrize("overrides, names", [
    (["model.d_modl=3"], ["model.d_modl", "d_model"]),
    (["modle.d_model=3"], ["modle", "model"]),
    (["model.d_model=big"], ["model.d_model", "integer"]),
    (["model.norm=middle"], ["model.norm", "post", "pre"]),
    (["train.compile=maybe"], ["train.compile"]),
    (["d_model=3"], ["'d_model'", "section.key"]),
    (["model.n_heads=3"], ["model.d_model", "model.n_heads"]),
    (["train.save_every=0"], ["train.save_every", "at least 1"]),
])
def test_bad_keys_and_values_are_named(overrides, names):
    with pytest.raises(ConfigError) as error:
        load_config("configs/tiny.yaml", overrides)
    for name in names:
        assert name in str(error.value)


def test_unknown_key_in_a_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  warmup: 10\n")
    with pytest.raises(ConfigError, match="train.warmup"):
        load_config(path)


def test_missing_file_is_named():
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config("configs/nope.yaml")


def test_every_shipped_config_loads():
    for name in ["base", "big", "multi30k", "multi30k_en_de", "tiny", "wmt14_en_de"]:
        load_config(f"configs/{name}.yaml")


def test_every_shipped_grid_builds_each_variant_and_changes_only_what_it_names():
    from transformer.ablation import load_grid

    grids = sorted(Path("configs/ablations").glob("*.yaml"))
    assert {g.stem for g in grids} >= {"what_if", "table3", "depth"}
    for path in grids:
        grid = load_grid(path)
        base = grid.config({}).to_dict()
        for name, changes in grid.variants.items():
            config = grid.config(changes).to_dict()
            differ = {f"{section}.{key}" for section in base for key in base[section]
                      if base[section][key] != config[section][key]}
            assert differ == set(changes), (path, name)
