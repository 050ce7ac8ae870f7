"""Which checkpoint is "best" is the user's choice (metric and direction); train.steps=0 evaluates only."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from gmat.cli import main
from gmat.training.config import parse_config
from gmat.training.loop import train

from .conftest import strict_json, strict_jsonl, tiny_config_dict, write_config


def test_best_by_the_lowest_eval_loss(tmp_path):
    config = parse_config(
        tiny_config_dict(tmp_path / "run", steps=8, eval_every=2, lr=1e-2, best_metric="loss", best_mode="min")
    )
    results = train(config)
    evals = [r for r in strict_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "eval"]
    lowest = min(evals, key=lambda r: r["loss"])
    assert results["best"] == {"step": lowest["step"], "metric": "loss", "mode": "min", "value": lowest["loss"]}
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text()) == results["best"]


def test_the_default_direction_follows_the_metric_and_mlm_picks_by_loss():
    from gmat.tasks.mlm import MLMTask
    from gmat.training.config import TrainSettings
    from gmat.training.loop import _best_choice

    mlm = SimpleNamespace(metric_name=MLMTask.metric_name, best_metric=MLMTask.best_metric)
    assert _best_choice(TrainSettings(), mlm) == ("mlm_loss", "min")
    classifier = SimpleNamespace(metric_name="accuracy")
    assert _best_choice(TrainSettings(), classifier) == ("accuracy", "max")
    assert _best_choice(TrainSettings(best_metric="perplexity"), classifier) == ("perplexity", "min")
    assert _best_choice(TrainSettings(best_metric="loss", best_mode="max"), classifier) == ("loss", "max")


def test_a_best_metric_the_task_does_not_report_is_a_one_line_error(tmp_path, caplog):
    config, _ = write_config(tmp_path, steps=4, eval_every=2, best_metric="bleu")
    assert main(["train", str(config)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "train.best_metric='bleu'" in errors[0] and "accuracy" in errors[0], errors


def test_a_bad_best_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="train.best_mode must be 'max' or 'min'"):
        parse_config(tiny_config_dict("unused", best_mode="up"))


def test_steps_0_evaluates_the_initial_model_only(tmp_path):
    config, run_dir = write_config(tmp_path, steps=0)
    assert main(["train", str(config)]) == 0
    results = strict_json((run_dir / "results.json").read_text())
    assert results["steps_done"] == 0 and results["best"] is None
    assert 0.0 <= results["eval"]["accuracy"] <= 1.0
    assert not (run_dir / "best").exists() and not list((run_dir / "checkpoints").glob("step_*"))
    assert [r["split"] for r in strict_jsonl(run_dir / "metrics.jsonl")] == ["eval"]
