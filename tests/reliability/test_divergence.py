"""A diverged run must fail loudly: skipped non-finite steps, a stop with exit 1, no NaN model kept as best."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from gmat.cli import main
from gmat.tasks.mlm import masked_token_counts
from gmat.tasks.synthetic import SyntheticTask, TaskSpec
from gmat.training.config import parse_config
from gmat.training.loop import train

from .conftest import strict_json, strict_jsonl, tiny_config_dict, write_config


def test_a_diverged_run_stops_with_exit_1_and_keeps_no_nan_model(tmp_path, caplog):
    # lr = 1e6: the first step blows the weights up, every later loss is NaN
    config, run_dir = write_config(tmp_path, steps=12, lr=1e6, warmup_steps=0, max_nonfinite_steps=3)
    assert main(["train", str(config)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("gmat train: training diverged"), errors
    assert "train.max_nonfinite_steps=3" in errors[0]
    rows = strict_jsonl(run_dir / "metrics.jsonl")  # valid JSON: no bare NaN
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["step"] < 12  # stopped early
    assert sum(r["skipped_steps"] for r in train_rows) == 3
    results = strict_json((run_dir / "results.json").read_text())
    assert results["diverged"] and not results["finished"] and results["skipped_steps"] == 3
    assert results["best"] is None and not (run_dir / "best").exists()  # the NaN model is never "best"


def test_a_nonfinite_step_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    calls = {"train": 0}
    real = SyntheticTask.forward_loss

    def nan_on_second_step(self, model, batch):
        out, loss = real(self, model, batch)
        if model.training:
            calls["train"] += 1
            if calls["train"] == 2:  # step 2 (one micro-batch per step)
                loss = loss * float("nan")
        return out, loss

    monkeypatch.setattr(SyntheticTask, "forward_loss", nan_on_second_step)
    config = parse_config(tiny_config_dict(tmp_path / "run", steps=5, eval_every=0, save_every=0))
    results = train(config)
    assert results["finished"] and results["skipped_steps"] == 1
    rows = {r["step"]: r for r in strict_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"}
    assert rows[2]["skipped_steps"] == 1 and rows[2]["loss"] is None and rows[2]["nonfinite"] == ["grad_norm"]
    assert all(math.isfinite(rows[s]["loss"]) and rows[s]["skipped_steps"] == 0 for s in (1, 3, 4, 5))
    assert math.isfinite(results["eval"]["loss"]) and results["best"] is not None


def test_nan_logits_are_wrong_not_class_0():
    task = SyntheticTask(TaskSpec(name="majority", seq_len=16, num_symbols=4))
    logits = torch.full((3, 4), float("nan"))
    logits[2] = torch.tensor([5.0, 0.0, 0.0, 0.0])
    counts = task.metric_counts(logits, torch.tensor([0, 0, 0]))
    assert counts.tolist() == [1.0, 3.0, 0.0, 0.0]  # only the finite row is right
    tagging = SyntheticTask(TaskSpec(name="majority_tagging", seq_len=16, num_symbols=4))
    logits = torch.full((1, 4, 2), float("nan"))
    tp, fp, fn, tn = tagging.metric_counts(logits, torch.tensor([[0, 1, 0, -100]])).tolist()
    assert (tp, tn) == (0.0, 0.0) and (fp, fn) == (2.0, 1.0)  # every NaN position is an error
    mlm_logits = torch.full((2, 3, 5), float("nan"))
    labels = torch.tensor([[0, -100, 0], [-100, -100, 0]])
    loss_sum, correct, tokens, _ = masked_token_counts(mlm_logits, labels).tolist()
    assert correct == 0.0 and tokens == 3.0 and math.isnan(loss_sum)


def test_json_files_write_null_and_a_flag_for_nonfinite_values():
    from gmat.training import safe_json

    text = safe_json.dumps({"step": 1, "loss": float("nan"), "eval": {"f1": float("inf")}, "ok": 0.5})
    assert strict_json(text) == {
        "step": 1,
        "loss": None,
        "eval": {"f1": None},
        "ok": 0.5,
        "nonfinite": ["loss", "eval.f1"],
    }


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, data, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    calls = {"train": 0}
    real = SyntheticTask.forward_loss

    def nan_loss_on_rank_1(self, model, batch):
        out, loss = real(self, model, batch)
        if model.training:
            calls["train"] += 1
            if rank == 1 and calls["train"] == 2:  # a NaN loss *value* on one rank; its gradients stay finite
                loss = loss + float("nan") * loss.detach()
        return out, loss

    SyntheticTask.forward_loss = nan_loss_on_rank_1
    torch.set_num_threads(1)
    from gmat.tasks import registry

    model_holder = {}
    real_create = registry.create_task

    def create_and_remember(settings):
        task = real_create(settings)
        real_build = task.build_model

        def build(settings):
            model_holder["model"] = real_build(settings)
            return model_holder["model"]

        task.build_model = build
        return task

    import gmat.training.loop as loop

    loop.create_task = create_and_remember
    results = train(parse_config(data))
    weights = torch.cat([p.detach().flatten() for p in model_holder["model"].parameters()])
    torch.save({"weights": weights, "skipped": results["skipped_steps"]}, out_dir / f"rank{rank}.pt")


def test_ddp_ranks_take_the_same_skip_decision(tmp_path):
    data = tiny_config_dict(tmp_path / "two", steps=4, eval_every=0, save_every=0, device="cpu")
    mp.start_processes(_ddp_worker, args=(2, _free_port(), data, tmp_path), nprocs=2, join=True, start_method="spawn")
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a["skipped"] == b["skipped"] == 1
    assert torch.equal(a["weights"], b["weights"])  # one rank stepping alone would split the replicas


def test_training_diverged_is_raised_by_the_library(tmp_path):
    from gmat.training.loop import TrainingDiverged

    config = parse_config(tiny_config_dict(tmp_path / "run", steps=8, lr=1e6, warmup_steps=0, max_nonfinite_steps=1))
    with pytest.raises(TrainingDiverged, match="1 consecutive steps"):
        train(config)
