"""--resume continues the same run: a changed config that breaks exactness is refused unless allowed."""

from __future__ import annotations

import pytest
import yaml

from gmat.cli import main
from gmat.training.loop import lr_multiplier

from .conftest import strict_jsonl, write_config


@pytest.fixture
def stopped_run(tmp_path):
    """A tiny run (lr 3e-3, 6 steps) stopped after 2 steps with a checkpoint."""
    config, run_dir = write_config(tmp_path, save_every=2)
    assert main(["train", str(config), "--stop-after", "2"]) == 0
    return config, run_dir


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize(
    "override,key,old,new",
    [
        ("train.lr=0.1", "train.lr", "0.003", "0.1"),
        ("train.batch_size=4", "train.batch_size", "8", "4"),
        ("task.seed=7", "task.seed", "0", "7"),
    ],
)
def test_a_change_that_breaks_exactness_is_refused_naming_key_and_values(stopped_run, caplog, override, key, old, new):
    config, run_dir = stopped_run
    before = (run_dir / "config.yaml").read_text()
    caplog.clear()
    assert main(["train", str(config), "--resume", "--set", override]) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and f"{key}: {old} -> {new}" in errors[0], errors
    assert "--allow-config-change" in errors[0]
    assert (run_dir / "config.yaml").read_text() == before  # the stored config still says what the run did


def test_a_longer_run_and_another_cadence_resume_without_a_flag(stopped_run):
    config, run_dir = stopped_run
    assert main(["train", str(config), "--resume", "--set", "train.steps=8", "train.eval_every=4"]) == 0
    assert [r["step"] for r in strict_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"] == list(range(1, 9))


def test_allow_config_change_logs_keeps_the_old_config_and_applies_the_new_lr(stopped_run, caplog):
    config, run_dir = stopped_run
    caplog.clear()
    assert main(["train", str(config), "--resume", "--allow-config-change", "--set", "train.lr=0.1"]) == 0
    assert "train.lr changed from 0.003 to 0.1" in caplog.text
    assert yaml.safe_load((run_dir / "config.prev-1.yaml").read_text())["train"]["lr"] == 0.003
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 0.1
    rows = {r["step"]: r for r in strict_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"}
    # the lr logged at step s is the one used for it, from the schedule at index s - 1 (warm-up 2, 6 steps)
    schedule = dict(warmup_steps=2, total_steps=6, schedule="cosine", min_lr_ratio=0.1)
    assert rows[2]["lr"] == pytest.approx(0.003 * lr_multiplier(1, **schedule))
    assert rows[3]["lr"] == pytest.approx(0.1 * lr_multiplier(2, **schedule))  # not the optimizer's saved lr
