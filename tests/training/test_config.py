from pathlib import Path

import pytest
import yaml

from gmat.training.config import apply_overrides, config_to_dict, load_config, parse_config

from .conftest import tiny_config_dict

REPO = Path(__file__).resolve().parents[2]


def test_roundtrip_and_types(tmp_path):
    config = parse_config(tiny_config_dict(tmp_path))
    assert config.train.lr == 3e-3 and config.model.num_memory_tokens == 2
    assert parse_config(config_to_dict(config)) == config
    with pytest.raises(AttributeError):
        config.train.lr = 1.0  # frozen


@pytest.mark.parametrize("section,key", [("train", "lrr"), ("model", "num_memory"), ("task", "lenght")])
def test_unknown_key_is_an_error_naming_it(tmp_path, section, key):
    data = tiny_config_dict(tmp_path)
    data[section][key] = 1
    with pytest.raises(ValueError, match=rf"{section}\.{key}"):
        parse_config(data)
    with pytest.raises(ValueError, match="bogus"):
        parse_config({**tiny_config_dict(tmp_path), "bogus": 1})


@pytest.mark.parametrize(
    "key,value",
    [("train.steps", "ten"), ("train.lr", "fast"), ("train.progress", 3), ("model.hidden_size", 1.5)],
)
def test_mistyped_value_is_an_error_naming_the_key(tmp_path, key, value):
    data = apply_overrides(tiny_config_dict(tmp_path), [f"{key}={value}"])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        parse_config(data)


def test_set_overrides_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# gmat train c.yaml\n" + yaml.safe_dump(tiny_config_dict(tmp_path / "r")))
    config = load_config(path, ["train.lr=3e-4", "model.num_memory_tokens=0", "train.schedule=linear"])
    assert config.train.lr == 3e-4 and config.model.num_memory_tokens == 0 and config.train.schedule == "linear"
    with pytest.raises(ValueError, match="key=value"):
        load_config(path, ["train.lr"])
    with pytest.raises(ValueError, match=r"train\.nope"):
        load_config(path, ["train.nope=1"])


def test_checked_in_configs_parse_and_document_their_command():
    paths = sorted((REPO / "configs").glob("*/*.yaml"))
    assert len({path.parent.name for path in paths}) >= 4
    for path in paths:
        relative = path.relative_to(REPO)
        first = path.read_text().splitlines()[0]
        assert first.startswith(f"# gmat train {relative.as_posix()}"), path
        config = load_config(path)
        assert config.run_dir == f"runs/{path.parent.name}/{path.stem}", path  # no two configs share a run
