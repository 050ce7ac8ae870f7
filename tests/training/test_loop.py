import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from gmat.training.checkpoint import latest_checkpoint
from gmat.training.config import parse_config
from gmat.training.loop import lr_multiplier, train

from .conftest import tiny_config_dict


def _train_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "eval"]


def test_lr_schedule_warms_up_then_decays():
    kw = dict(warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    cos = [lr_multiplier(s, schedule="cosine", **kw) for s in range(20)]
    assert cos[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(cos[3:], cos[4:])) and cos[-1] > 0.1
    assert lr_multiplier(20, schedule="linear", **kw) == pytest.approx(0.1)
    assert lr_multiplier(12, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_multiplier(12, schedule="constant", **kw) == 1.0


def test_loss_falls_on_a_tiny_task(tiny_config):
    config = tiny_config(steps=60, lr=1e-2, warmup_steps=5, eval_every=0, save_every=0, log_every=10)
    results = train(config)
    tmp = Path(config.run_dir)
    losses, _ = _train_losses(tmp)
    assert losses[-1] < 0.7 * math.log(4), losses
    assert results["eval"]["accuracy"] > 0.5
    assert (tmp / "results.json").is_file()  # curves.png is drawn by `gmat train` (tests/training/test_cli_training.py)
    assert latest_checkpoint(tmp / "checkpoints").name == "step_00000060"
    assert (tmp / "best" / "model.safetensors").is_file()


def test_resume_reproduces_the_uninterrupted_losses(tmp_path):
    # dropout and gradient accumulation on, so RNG state and micro-batch position must both be restored
    extra = dict(steps=7, save_every=2, grad_accum_steps=2)
    data = tiny_config_dict(tmp_path / "straight", **extra)
    data["model"]["hidden_dropout_prob"] = 0.1
    straight = parse_config(data)
    train(straight)
    stopped = parse_config({**data, "run_dir": str(tmp_path / "stopped")})
    first = train(stopped, stop_after=3)  # stops at step 3, between two save_every checkpoints
    assert not first["finished"] and first["steps_done"] == 3
    train(stopped, resume=True)
    a, eval_a = _train_losses(tmp_path / "straight")
    b, eval_b = _train_losses(tmp_path / "stopped")
    assert len(a) == 7 and a == b  # bit-identical
    assert eval_a == eval_b


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, data):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    train(parse_config(data))


def test_two_gloo_processes_match_one_process(tmp_path):
    extra = dict(steps=4, batch_size=8, eval_every=2, save_every=0, device="cpu")
    one = tiny_config_dict(tmp_path / "one", **extra)
    train(parse_config(one))
    two = tiny_config_dict(tmp_path / "two", **extra)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), two), nprocs=2, join=True, start_method="spawn")
    a, eval_a = _train_losses(tmp_path / "one")
    b, eval_b = _train_losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    assert [e["accuracy"] for e in eval_a] == [e["accuracy"] for e in eval_b]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2
    assert not (tmp_path / "two" / "metrics.jsonl.rank1").exists()


@pytest.mark.parametrize("name,metric", [("majority_tagging", "f1"), ("lookup", "accuracy")])
def test_token_tasks_train_and_evaluate(tmp_path, name, metric):
    data = tiny_config_dict(tmp_path, steps=2, eval_every=0, save_every=0)
    data["task"] = {"name": name, "seq_len": 32, "eval_size": 16, "num_pairs": 2, "num_queries": 2}
    results = train(parse_config(data))
    assert results["metric"] == metric and 0.0 <= results["eval"][metric] <= 1.0


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    plain = tiny_config_dict(tmp_path / "plain", steps=3, eval_every=0, save_every=0)
    ckpt = tiny_config_dict(tmp_path / "ckpt", steps=3, eval_every=0, save_every=0, gradient_checkpointing=True)
    train(parse_config(plain))
    train(parse_config(ckpt))
    a, _ = _train_losses(tmp_path / "plain")
    b, _ = _train_losses(tmp_path / "ckpt")
    assert b == pytest.approx(a, rel=1e-5)
