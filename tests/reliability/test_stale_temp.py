"""Temporary files and folders of writers killed mid-save are removed when a run starts; a live writer's stay."""

from __future__ import annotations

import subprocess
import sys

from gmat.training.checkpoint import remove_stale_temp, save_checkpoint
from gmat.training.config import parse_config
from gmat.training.loop import train
from training.conftest import tiny_config_dict


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(run_dir, pid):
    """What a save killed by a full disk leaves: a pointer's temp file, a checkpoint's and best/'s temp folders."""
    ckpts = run_dir / "checkpoints"
    paths = [
        ckpts / f".tmp-step_00000003-{pid}",
        ckpts / f".tmp-LATEST-{pid}",
        run_dir / f".tmp-best-{pid}",
        run_dir / f".tmp-metrics.jsonl-{pid}",
    ]
    paths[0].mkdir(parents=True)
    (paths[0] / "model.safetensors").write_bytes(b"\0" * 100)
    paths[1].write_text("step_00000003")
    paths[2].mkdir()
    paths[3].write_text("{}")
    return sorted(paths)


def test_train_removes_temp_files_of_dead_writers(tmp_path):
    run_dir = tmp_path / "run"
    planted = plant(run_dir, dead_pid())
    assert len(planted) == 4
    train(parse_config(tiny_config_dict(run_dir, steps=2, eval_every=0, save_every=0)))
    assert not list(run_dir.rglob(".tmp-*"))
    assert (run_dir / "checkpoints" / "LATEST").read_text().strip() == "step_00000002"


def test_temp_files_of_a_live_writer_are_kept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        planted = plant(tmp_path / "run", live.pid)
        dead = plant(tmp_path / "run" / "other", dead_pid())
        removed = remove_stale_temp(tmp_path / "run")
        assert sorted(removed) == dead
        assert all(p.exists() for p in planted)
        # a save next to a live writer's temporary folder leaves it alone too
        save_checkpoint(tmp_path / "run" / "checkpoints", 1, __import__("torch").nn.Linear(2, 2), {"step": 1})
        assert all(p.exists() for p in planted)
    finally:
        live.kill()
        live.wait()
    assert len(remove_stale_temp(tmp_path / "run")) == len(planted)
