"""Small-budget MLM / compression runs on CPU (lean loop: the LM head scores only the labelled positions).

``python scripts/run_budget_experiments.py CONFIG.yaml [--set section.key=value ...]``
``python scripts/run_budget_experiments.py summarize`` (runs/{mlm,compression}/* → docs/results/*.json, plots)

The YAML has the sections of a ``gmat train`` run config (``run_dir``, ``task``, ``model``, ``train``), with
``task`` a ``gmat.tasks.mlm.MLMTaskSpec`` or ``gmat.tasks.compression.CompressionTaskSpec``. Writes
``RUN_DIR/metrics.jsonl``, ``RUN_DIR/results.json`` and the final weights in ``RUN_DIR/model`` (a
``save_pretrained`` folder that ``gmat eval mlm --model RUN_DIR/model`` reads). This exists because
``gmat train`` has no MLM / compression task yet; its loop computes the full ``(B, L, V)`` logits, which costs
about 5x more on CPU than scoring only the masked positions.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from gmat.tasks.compression import CompressionTask, CompressionTaskSpec, build_compression_model
from gmat.tasks.mlm import (
    IGNORE_INDEX,
    MLMMetrics,
    MLMTask,
    MLMTaskSpec,
    build_mlm_model,
    outside_chunk_flags,
)

logger = logging.getLogger("budget")

MODEL_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "num_memory_tokens",
    "attention_pattern",
    "chunk_size",
    "attention_window",
    "attn_backend",
    "num_encoder_layers",
    "num_bottleneck_layers",
    "num_decoder_layers",
)
TRAIN_DEFAULTS = {
    "steps": 200,
    "batch_size": 8,
    "lr": 1e-3,
    "warmup_steps": 20,
    "min_lr_ratio": 0.1,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "eval_every": 100,
    "eval_batch_size": 8,
    "log_every": 10,
    "seed": 0,
    "num_threads": 1,
    "train_label_fraction": 1.0,
}


def load(path: str, overrides: list[str]) -> dict:
    """Read a YAML run config, apply ``section.key=value`` overrides, refuse unknown keys."""
    data = yaml.safe_load(Path(path).read_text())
    for item in overrides:
        key, _, raw = item.partition("=")
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(raw)
    unknown = set(data.get("model", {})) - set(MODEL_KEYS)
    unknown |= {f"train.{k}" for k in set(data.get("train", {})) - set(TRAIN_DEFAULTS)}
    if unknown - {"train"}:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    return data


def build(data: dict):
    """Build the task and the model of a config (the same builders a ``gmat train`` hook would call)."""
    t = dict(data["task"])
    # GmatConfig's defaults for keys a config leaves out (BERT's dropout 0.1 included)
    settings = {
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "num_hidden_layers": 2,
        "chunk_size": None,
        "attention_window": None,
        "attn_backend": "auto",
        "num_memory_tokens": 0,
        "attention_pattern": "chunked",
        **data.get("model", {}),
    }
    settings = argparse.Namespace(**settings)
    if t.get("name", "mlm") == "mlm":
        task = MLMTask(MLMTaskSpec(**t), progress=False)
        return task, build_mlm_model(settings, task)
    task = CompressionTask(CompressionTaskSpec(**t), progress=False)
    return task, build_compression_model(settings, task)


def scored_logits(model, batch: dict, select: torch.Tensor) -> torch.Tensor:
    """(N, V) logits of the selected positions only."""
    if hasattr(model, "gmat"):
        hidden = model.gmat(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return model.cls(hidden[select])
    memory = model.memory_for(
        batch["input_ids"],
        batch["attention_mask"],
        batch.get("context_ids"),
        batch.get("context_attention_mask"),
    )
    if model.config.decoder_input == "content_free":
        hidden = model.decode(memory, None, batch["attention_mask"], length=batch["input_ids"].shape[1])
    else:
        hidden = model.decode(memory, batch["input_ids"], batch["attention_mask"])
    return model.cls(hidden[select])


@torch.no_grad()
def evaluate(model, task, batch_size: int, split: str = "eval") -> dict:
    """Metrics of ``model`` on ``split`` (MLM: grouped by the outside-chunk split)."""
    model.eval()
    counts = torch.zeros(4, dtype=torch.float64)
    groups = MLMMetrics()
    chunk = getattr(task.spec, "split_chunk_size", None)
    for batch in task.iter_eval(batch_size, split=split):
        select = batch["labels"] != IGNORE_INDEX
        logits = scored_logits(model, batch, select)
        counts += task.metric_counts(logits, batch["labels"][select]) if not isinstance(task, MLMTask) else 0
        if isinstance(task, MLMTask):
            outside = outside_chunk_flags(batch["input_ids"], batch["labels"], chunk)
            groups.update(logits, batch["labels"][select], outside[select])
    model.train()
    if isinstance(task, MLMTask):
        return groups.compute()
    return task.compute_metrics(counts)


def main() -> None:
    """Train one config, evaluate it every ``eval_every`` steps, save the model and ``results.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[])
    parser.add_argument(
        "--evaluate",
        choices=("eval", "test"),
        default=None,
        help="do not train: evaluate RUN_DIR/model on this split and write RUN_DIR/eval-SPLIT.json",
    )
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s")
    data = load(args.config, args.overrides)
    tc = {**TRAIN_DEFAULTS, **data.get("train", {})}
    torch.set_num_threads(tc["num_threads"])
    if args.evaluate:
        from transformers import AutoModelForMaskedLM

        from gmat.modeling.compression import GmatForCompression

        run_dir = Path(data["run_dir"])
        task, fresh = build(data)
        cls = GmatForCompression if isinstance(fresh, GmatForCompression) else AutoModelForMaskedLM
        model = cls.from_pretrained(run_dir / "model")
        metrics = evaluate(model, task, tc["eval_batch_size"], split=args.evaluate)
        out = {
            "split": args.evaluate,
            "eval_examples": len(task.eval_indices(args.evaluate)),
            "metrics": metrics,
        }
        (run_dir / f"eval-{args.evaluate}.json").write_text(json.dumps(out, indent=2) + "\n")
        logger.info("%s", out)
        return
    torch.manual_seed(tc["seed"])
    run_dir = Path(data["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    task, model = build(data)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc["lr"],
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < tc["warmup_steps"]:
            return (step + 1) / tc["warmup_steps"]
        p = min(1.0, (step - tc["warmup_steps"]) / max(1, tc["steps"] - tc["warmup_steps"]))
        return tc["min_lr_ratio"] + (1 - tc["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    log = open(run_dir / "metrics.jsonl", "w")
    rng = np.random.default_rng(tc["seed"])
    logger.info("%s: %.2fM params, %d steps x %d", run_dir, n_params / 1e6, tc["steps"], tc["batch_size"])
    t0 = time.perf_counter()
    model.train()
    running = []
    for step in range(1, tc["steps"] + 1):
        bs = tc["batch_size"]
        batch = task.batch("train", range((step - 1) * bs, step * bs))
        select = batch["labels"] != IGNORE_INDEX
        if tc["train_label_fraction"] < 1.0:  # score a random subset of labelled positions (cheaper head)
            select &= torch.from_numpy(rng.random(select.shape) < tc["train_label_fraction"])
        logits = scored_logits(model, batch, select)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"][select])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % tc["log_every"] == 0:
            rec = {
                "step": step,
                "split": "train",
                "loss": float(np.mean(running)),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            running = []
            log.write(json.dumps(rec) + "\n")
            log.flush()
            logger.info("%s", rec)
        if (tc["eval_every"] and step % tc["eval_every"] == 0) or step == tc["steps"]:
            metrics = evaluate(model, task, tc["eval_batch_size"])
            rec = {
                "step": step,
                "split": "eval",
                "metrics": metrics,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            logger.info("%s", rec)
    train_seconds = time.perf_counter() - t0
    model.save_pretrained(run_dir / "model")
    results = {
        "run_dir": str(run_dir),
        "steps": tc["steps"],
        "batch_size": tc["batch_size"],
        "tokens_seen": tc["steps"]
        * tc["batch_size"]
        * (task.window if hasattr(task, "window") else task.spec.seq_len),
        "num_parameters": n_params,
        "train_seconds": round(train_seconds, 1),
        "num_threads": tc["num_threads"],
        "eval": metrics,
        "config": data,
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log.close()


# ---- summary: docs/results/*.json rows and plots from the run folders ----------------------------------
def _row(run_dir: Path, kind: str) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    cfg = res["config"]
    m, t = cfg.get("model", {}), cfg["task"]
    pattern = m.get("attention_pattern", "chunked")
    length = t["seq_len"] if t.get("name") != "compressed_context" else t["context_len"] + t["seq_len"]
    row = {
        "setting": run_dir.name,
        "num_memory": int(m.get("num_memory_tokens", 0)),
        "pattern": pattern,
        "chunk_size": m.get("chunk_size") if pattern == "chunked" else None,
        "window": m.get("attention_window") if pattern == "window" else None,
        "length": int(length),
        "split": "valid",
        "eval_examples": int(t.get("eval_size", 0)),
        "metrics": res["eval"],
        "budget": (
            f"CPU, 1 thread (shared 2-core machine), from scratch, "
            f"{res['steps']} steps x {res['batch_size']} "
            f"examples ({res['tokens_seen']} tokens), {res['train_seconds'] / 60:.0f} min"
        ),
        "steps": res["steps"],
        "batch_size": res["batch_size"],
        "tokens_seen": res["tokens_seen"],
        "train_seconds": res["train_seconds"],
        "num_parameters": res["num_parameters"],
        "command": f"python scripts/run_budget_experiments.py configs/{kind}/{run_dir.name}.yaml",
    }
    test_file = run_dir / "eval-test.json"
    if test_file.is_file():  # evaluated once, after all runs (--evaluate test)
        test = json.loads(test_file.read_text())
        row["test_metrics"] = test["metrics"]
        row["test_examples"] = test["eval_examples"]
    if kind == "compression":
        row["task"] = t["name"]
        if t["name"] == "reconstruction":
            row["compression_ratio"] = t["seq_len"] / max(row["num_memory"], 1)
        else:
            row["context_mode"] = t["context_mode"]
    return row


def summarize(out_dir: Path = Path("docs/results")) -> None:
    """Collect finished runs under runs/mlm and runs/compression into JSON rows and plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    for kind in ("mlm", "compression"):
        runs = sorted(p for p in Path("runs", kind).glob("*") if (p / "results.json").is_file())
        rows = [_row(p, kind) for p in runs]
        (out_dir / f"{kind}.json").write_text(json.dumps(rows, indent=2) + "\n")
        if not runs:
            continue
        fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.8))
        for p in runs:
            recs = [
                json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines() if line.strip()
            ]
            tr = [r for r in recs if r["split"] == "train"]
            ev = [r for r in recs if r["split"] == "eval"]
            ax_train.plot([r["step"] for r in tr], [r["loss"] for r in tr], label=p.name)
            key = (
                (lambda r: r["metrics"]["all"]["loss"]) if kind == "mlm" else (lambda r: r["metrics"]["loss"])
            )
            ax_eval.plot([r["step"] for r in ev], [key(r) for r in ev], "o-", label=p.name)
        ax_train.set(xlabel="step", ylabel="train loss (nats / scored token)", title=f"{kind}: training loss")
        ax_eval.set(xlabel="step", ylabel="validation loss", title=f"{kind}: validation loss")
        ax_train.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"{kind}-curves.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["summarize"]:
        summarize()
    else:
        main()
