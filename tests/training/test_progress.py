"""The progress bar shows the metric only once it has been evaluated."""

import json
from pathlib import Path

from gmat.training.loop import train


def test_progress_bar_shows_a_dash_until_the_first_evaluation(tiny_config, capsys):
    # eval_every=0: the only evaluation comes after the last step's postfix, so the bar never has a metric
    train(tiny_config(progress=True, eval_every=0, log_every=1, save_every=0))
    err = capsys.readouterr().err
    assert "accuracy=-" in err and "accuracy=0.000" not in err


def test_progress_bar_shows_the_last_evaluated_metric(tiny_config, capsys):
    config = tiny_config(progress=True, eval_every=2, log_every=1, steps=4, save_every=0)
    train(config)
    records = [json.loads(line) for line in (Path(config.run_dir) / "metrics.jsonl").read_text().splitlines()]
    at_step_2 = next(r["accuracy"] for r in records if r["split"] == "eval" and r["step"] == 2)
    assert f"accuracy={at_step_2:.3f}" in capsys.readouterr().err  # the final bar: set at step 4, before its eval
