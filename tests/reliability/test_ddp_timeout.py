"""A stopped rank cannot hold a data-parallel job forever: the others end after ``train.ddp_timeout_s``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from gmat.training.config import parse_config
from training.conftest import tiny_config_dict

SRC = str(Path(__file__).resolve().parents[2] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], tmp_path: Path) -> list[subprocess.Popen]:
    """Two gloo ranks, as torchrun would start them."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
        }
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
        p.wait()


def test_ddp_timeout_must_be_positive(tmp_path):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="train.ddp_timeout_s"):
            parse_config(tiny_config_dict(tmp_path, ddp_timeout_s=bad))
    assert parse_config(tiny_config_dict(tmp_path)).train.ddp_timeout_s > 0


def test_a_stopped_rank_ends_the_collective_with_a_message_naming_the_setting(tmp_path):
    # the process group of init_distributed and the collectives of the loop, without a model: rank 1 stops
    # itself (SIGSTOP) after one all-reduce; rank 0's next all-reduce must end after the timeout
    script = textwrap.dedent("""
        import os, signal, sys, time
        import torch
        from gmat.training.distributed import all_reduce_sum, collective_timeout, init_distributed
        info = init_distributed("cpu", timeout_s=2.0)
        x = all_reduce_sum(torch.ones(1), info)
        if info.rank == 1:
            os.kill(os.getpid(), signal.SIGSTOP)
        t0 = time.perf_counter()
        try:
            with collective_timeout(info, 2.0):
                all_reduce_sum(torch.ones(1), info)
        except Exception as err:
            print(f"after {time.perf_counter() - t0:.1f} s: {type(err).__name__}: {err}", flush=True)
            os._exit(3)
        print("no timeout", flush=True)
    """)
    procs = launch([sys.executable, "-c", script], tmp_path)
    try:
        rc = procs[0].wait(timeout=60)
    finally:
        finish(procs)
    out = (tmp_path / "rank0.log").read_text()
    assert rc == 3, out
    assert "DistributedTimeoutError" in out and "train.ddp_timeout_s=2" in out, out
    waited = float(out.split("after ")[1].split(" s")[0])
    assert 1.5 <= waited < 15, out


@pytest.mark.slow
def test_gmat_train_with_a_stopped_rank_exits_naming_the_setting(tmp_path):
    # the real command: two ranks train; once rank 0 has logged a step, rank 1 is stopped
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    data = tiny_config_dict(run_dir, steps=100000, eval_every=0, save_every=0, log_every=1, ddp_timeout_s=3)
    data["train"]["device"] = "cpu"
    config.write_text(yaml.safe_dump(data))
    procs = launch([sys.executable, "-m", "gmat.cli", "train", str(config)], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text().strip()):
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "rank0.log").read_text()
            time.sleep(0.2)
        assert (run_dir / ".lock").read_text().strip() == str(procs[0].pid)  # rank 0 holds the lock, alone
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        rc = procs[0].wait(timeout=60)
        waited = time.monotonic() - t0
    finally:
        finish(procs)
    out = (tmp_path / "rank0.log").read_text()
    assert rc == 1, out
    assert "train.ddp_timeout_s=3" in out and "Traceback" not in out, out
    assert waited < 30, out


def test_every_rank_stops_at_once_when_rank_0_is_refused_the_run_dir_lock(tmp_path):
    # another run holds the lock: rank 0 is refused, and rank 1 must not wait train.ddp_timeout_s (600 s) for it
    from gmat.training.rundir import run_dir_lock

    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    data = tiny_config_dict(run_dir, steps=5, eval_every=0, save_every=0, ddp_timeout_s=600)
    data["train"]["device"] = "cpu"
    config.write_text(yaml.safe_dump(data))
    with run_dir_lock(run_dir):
        procs = launch([sys.executable, "-m", "gmat.cli", "train", str(config)], tmp_path)
        try:
            codes = [p.wait(timeout=120) for p in procs]
        finally:
            finish(procs)
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in (0, 1)]
    assert codes == [2, 2], logs  # a refused lock is a usage error (exit 2), as for one process
    assert f"pid {os.getpid()}" in logs[0] and "Traceback" not in logs[0], logs[0]
    assert "rank 0 was refused the run directory's lock; rank 1 stops too" in logs[1], logs[1]
    assert not (run_dir / "metrics.jsonl").exists()
