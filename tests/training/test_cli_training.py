import json

import pytest
import yaml

from gmat.cli import main
from gmat.commands import demo

from .conftest import tiny_config_dict


@pytest.mark.parametrize("command", ["demo", "train", "eval"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: gmat " + command in capsys.readouterr().out


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text("# gmat train tiny.yaml\n" + yaml.safe_dump(tiny_config_dict(run_dir)))
    assert main(["train", str(config), "--set", "train.steps=4", "train.eval_every=2"]) == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"] == 4
    assert (run_dir / "curves.png").stat().st_size > 0  # the command draws the curves of a finished run
    assert main(["train", str(config), "--set", "train.steps=4", "--resume"]) == 0  # already done: no-op
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--split", "test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test" and 0.0 <= out["metrics"]["accuracy"] <= 1.0
    assert main(["eval", str(config), "--checkpoint", "latest"]) == 0  # a config resolves to its run_dir


def test_train_rejects_an_unknown_key_by_name(tmp_path, caplog):
    config = tmp_path / "bad.yaml"
    data = tiny_config_dict(tmp_path / "run")
    data["train"]["learning_rate"] = 0.1
    config.write_text(yaml.safe_dump(data))
    assert main(["train", str(config)]) == 2
    assert "train.learning_rate" in caplog.text
    assert main(["train", str(config), "--set", "train.learning_rate=0.1", "model.M=3"]) == 2


def test_eval_of_a_corrupted_checkpoint_names_the_file(tmp_path, caplog):
    run_dir = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(run_dir, steps=2)))
    assert main(["train", str(config)]) == 0
    weights = run_dir / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["eval", str(run_dir)]) == 2
    assert str(weights) in caplog.text


def test_demo_with_a_tiny_budget_writes_results_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_TASK", dict(demo.DEMO_TASK, seq_len=64, eval_size=16))
    monkeypatch.setattr(demo, "DEMO_MODEL", dict(demo.DEMO_MODEL, chunk_size=16))
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "2", "--no-progress"]) == 0
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert results["task"] == "majority"
    assert [(r["name"], r["num_memory"], r["pattern"]) for r in results["runs"]] == [
        ("chunked M=0", 0, "chunked"),
        ("GMAT M=8", 8, "chunked"),
    ]
    for run in results["runs"]:
        assert set(run) == {"name", "num_memory", "pattern", "accuracy", "train_seconds"}
        assert isinstance(run["accuracy"], float) and isinstance(run["train_seconds"], float)
    assert (tmp_path / "d" / "accuracy.png").is_file()
    assert "GMAT M=8" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path):
    """The README's first command: GMAT >= 0.9 accuracy and >= 0.3 above chunked M=0 (takes minutes)."""
    results = demo.run_demo(tmp_path / "demo", progress=False)
    chunked, gmat = (r["accuracy"] for r in results["runs"])
    assert gmat >= 0.9 and gmat - chunked >= 0.3, results
