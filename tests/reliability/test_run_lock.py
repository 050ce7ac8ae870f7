"""One training process per run directory: a second ``gmat train`` fails at once, naming the holder."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from gmat.cli import main
from gmat.training.config import parse_config
from gmat.training.loop import train
from gmat.training.rundir import RunDirLockedError, run_dir_lock
from training.conftest import tiny_config_dict


def holder(run_dir):
    """A process that holds ``RUN_DIR/.lock`` as a running ``gmat train`` does (flock + its pid), until killed."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys, time
        os.makedirs({str(run_dir)!r}, exist_ok=True)
        fd = os.open(os.path.join({str(run_dir)!r}, ".lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{{os.getpid()}}\\n".encode())
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_train_on_a_busy_run_dir_fails_at_once_naming_dir_and_pid(tmp_path, caplog):
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(run_dir)))
    proc = holder(run_dir)
    try:
        t0 = time.perf_counter()
        with caplog.at_level(logging.ERROR):
            assert main(["train", str(config)]) == 2
        seconds = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and len(errors[0].splitlines()) == 1
    assert str(run_dir) in errors[0] and f"pid {proc.pid}" in errors[0]
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists()
    assert seconds < 10  # at once: before the task and model are built
    # the holder gone, the same command trains
    assert main(["train", str(config)]) == 0
    assert (run_dir / "results.json").is_file()


def test_lock_is_released_on_exit_and_on_error(tmp_path):
    config = parse_config(tiny_config_dict(tmp_path / "run", steps=2, eval_every=0, save_every=0))
    train(config)
    with run_dir_lock(tmp_path / "run"):  # free again
        with pytest.raises(RunDirLockedError):  # and exclusive, even within one process
            with run_dir_lock(tmp_path / "run"):
                pass
    (tmp_path / "run" / "checkpoints").mkdir(exist_ok=True)
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step_404\n")  # a broken pointer: resume fails
    with pytest.raises(Exception, match="step_404"):
        train(config, resume=True)
    with run_dir_lock(tmp_path / "run"):
        pass


def test_a_stale_lock_of_a_dead_pid_does_not_block(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pid = dead_pid()
    (run_dir / ".lock").write_text(f"{pid}\n")
    with caplog.at_level(logging.INFO, logger="gmat.training.rundir"):
        train(parse_config(tiny_config_dict(run_dir, steps=2, eval_every=0, save_every=0)))
    assert (run_dir / "results.json").is_file()
    assert any(f"pid {pid}" in r.getMessage() for r in caplog.records)


def test_run_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="run_dir"):
        train(parse_config(tiny_config_dict(tmp_path / "run", steps=2)))
