"""One GPU window of research runs: reading comprehension first, then MLM; the reports go to ``--out``.

Fed by the folder of ``scripts/gpu_research_inputs.py`` (MiniLM, SQuAD, corpus token caches). Every run is the
one training loop (``gmat.training.loop.train``) in a child process with its own hard timeout, writing into
``--work`` (outside ``--out``) with checkpoints off. After every finished run the report files are rewritten
in ``--out`` (6 files, none in a subfolder; with log.txt 7 of the 8 the device returns):

    research.json  everything: environment, plans, probes, the sizing, every run, the paired differences, verdicts
    summary.md     the tables and the verdicts, for a reader
    rc.json, rc-table.md, rc-f1-by-distance.png   scripts/rc_report.py's rows, with ΔF1 vs chunked M=0 ± 2 SE
    mlm.json       MLM rows: loss overall / outside_chunk / chunk_only, Δ vs chunked M=0, memory-swap Δ
    (log.txt is the console log, written by scripts/gpu_research.sh)

Parts, each with its own deadline (``--seconds``), failing soft (a failed run is recorded, the rest go on):

* ``rc``: converted MiniLM at L=4096 (the inputs' model: raw MiniLM, or MiniLM tuned on short SQuAD documents
  with its span head, whose runs take ``tuned_lr`` and other questions). A 40-step probe of GMAT chunked M=64
  measures seconds per step and the fixed cost of a run; the steps are then sized so that the 512-token window
  baseline (dense, question in
  every window, same tokens per step), chunked M=0 (C=512), GMAT chunked M=64 and, if the budget leaves at least
  ``target_steps`` for four runs, M=16 train on the same questions (one pass: steps x batch) for the same steps.
  The verdict checks the baseline's dev F1 >= 50 (below: the budget was too small to conclude anything).
* ``mlm``: from scratch at L=4096, chunked C=256, M=0 vs M=64, two seeds, sized by a probe the same way. The
  final model of each run is scored in-process on every validation example with ``evaluate_mlm`` (same masks
  for every run: paired), and with swapped memory; the verdict checks that chunked M=0 is at least 1.5 nats
  below the unigram entropy of the same masked tokens (the entropy of their empirical distribution: no
  context-free predictor has a lower loss on them).

    python scripts/gpu_research.py --inputs gpu-inputs --out OUT --parts rc --seconds 330
    python scripts/gpu_research.py --plan tiny --device cpu --in-process ...   # the CPU dry run of the tests
"""

import argparse
import dataclasses
import gzip
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rc_report  # a sibling script, like experiment_runs
import yaml
from experiment_runs import mean_two_se

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
TOKEN_CACHE_MLM = "mlm_token_cache"
REPORT_FILES = ("research.json", "summary.md", "rc.json", "rc-table.md", "rc-f1-by-distance.png", "mlm.json")
# featurising one more training question (long mode, L=4096) took 2.5 ms on the 2-core CPU VM; counted at 3 ms
FEATURIZE_S_PER_QUESTION = 0.003
SAFETY = 1.15  # steps are sized for this many times the probe's seconds per step
WINDOWS_STEP_FACTOR = 1.25  # the window baseline's step, assumed at most this many long steps (same tokens)

logger = logging.getLogger("gpu_research")


# ---- plans -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RCPlan:
    """Sizes of the RC part (steps come from the probe, between ``min_steps`` and ``max_steps``)."""

    length: int = 4096
    chunk_size: int = 512
    window_length: int = 512
    stride: int = 128
    memories: tuple[int, ...] = (0, 64, 16)  # the last runs only if four runs still get target_steps
    batch_size: int = 16  # long features per step; the window baseline takes length / window_length times as many
    lr: float = 3e-4  # on CPU, 5e-4 beat 1e-4 after 100 steps (F1 8.6 vs 6.1, one run each)
    seed: int = 0  # task.seed: which training / dev questions, and their order
    # Stage 1 (docs/gpu-research.md, "A SQuAD-tuned init"): MiniLM first learns span extraction on short documents
    # (tune_length tokens, one window per question, the model keeping window_length positions), then every run
    # of the comparison starts from it (exported to BERT, converted with the run's M, pattern and L, span head
    # included). On the CPU VM this recipe (configs/rc/squad-short-minilm.yaml) reached dev F1 36.9 / 53.6 / 59.8 /
    # 62.7 / 64.1 after 100 / 200 / 300 / 400 / 500 steps of 16. 0 steps: the runs start from the inputs' model.
    tune_steps: int = 500
    tune_length: int = 256
    tune_lr: float = 3e-4
    tune_eval_questions: int = 500
    # From a tuned init (the stage's, or inputs whose model has a span head): a lower lr, so the runs adapt the
    # tuned encoder to long documents rather than retrain it (a choice, not measured), and other training
    # questions than the tuning's (task.seed 0).
    tuned_lr: float = 1e-4
    tuned_seed: int = 1
    eval_questions: int = 1000
    # The first H200 run's 20-step probe measured 0.445 s per step over steps 5-20 while the runs then averaged
    # 0.19-0.27 s per step, and its 200-question evaluation scaled to 1000 predicted 26 s where the runs spent
    # ~11 s on loading and evaluation together; so the probe runs longer, is timed over its second half, and
    # evaluates the runs' own 1000 questions (nothing extrapolated).
    probe_steps: int = 40
    probe_eval_questions: int = 1000
    target_steps: int = 600
    min_steps: int = 20
    max_steps: int = 4000
    distance_chunk_size: int = 128
    precision: str = "auto"


@dataclass(frozen=True)
class MLMPlan:
    """Sizes of the MLM part (steps come from the probe).

    ``init``: ``"minilm"`` converts the inputs' model (MiniLM: it must be a plain encoder, not a QA-tuned one)
    with each run's M and pattern, a fresh MLM head, ``pretrained_lr``; ``"scratch"`` builds the sizes below with
    ``lr``. On CPU, converted MiniLM learnt context at L=1024 within 300 steps of 4 examples (valid loss 5.6-5.7,
    ~1.4 nats below the unigram model; docs/results-mlm.md) where every from-scratch model stayed within 0.7.
    """

    init: str = "minilm"
    pretrained_lr: float = 1e-4  # the CPU MiniLM runs' (configs/mlm/minilm-*.yaml)
    length: int = 4096
    chunk_size: int = 256
    memories: tuple[int, ...] = (0, 64)
    seeds: tuple[int, ...] = (0, 1)
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    batch_size: int = 8
    lr: float = 1e-3
    probe_steps: int = 40
    min_steps: int = 20
    max_steps: int = 20000
    eval_batch_size: int = 8
    eval_size: int = 16  # examples of the loop's own evaluation; the paired one scores every validation example
    paired_seed: int = 1234
    precision: str = "auto"


PLANS = {
    "h200": (RCPlan(), MLMPlan()),
    "tiny": (  # the CPU dry run: the same code path with a tiny BERT, hand-made SQuAD and a tiny corpus
        RCPlan(
            length=96,
            chunk_size=32,
            window_length=48,
            stride=16,
            memories=(0, 4, 2),
            batch_size=2,
            lr=1e-3,
            eval_questions=0,
            probe_steps=3,
            probe_eval_questions=0,
            target_steps=2,
            min_steps=2,
            max_steps=3,
            tune_steps=2,
            tune_length=32,
            tune_eval_questions=0,
        ),
        MLMPlan(
            length=64,
            chunk_size=16,
            memories=(0, 4),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            batch_size=2,
            probe_steps=3,
            min_steps=2,
            max_steps=3,
            eval_batch_size=4,
            eval_size=4,
        ),
    ),
}


# ---- a task over ready token caches (the GPU machine has the caches, not the corpus) ----------------------
def _token_cache_task_classes() -> tuple[type, type]:
    """``(settings, task)`` of MLM over token-cache folders; built on demand (no import-time side effects)."""
    from gmat.data.corpus import PackedExamples, TokenCache
    from gmat.tasks.mlm import MLMTask, MLMTaskSpec, evaluate_mlm

    @dataclass(frozen=True)
    class TokenCacheMLMSettings(MLMTaskSpec):
        """``MLMTaskSpec`` whose ``train_data`` / ``eval_data`` name token-cache folders (meta.json, tokens.bin).

        Attributes:
            paired_batch_size: examples per batch of the paired final scoring (>= 2: the memory swap).
            paired_seed: masking seed of the paired final scoring.
        """

        name: str = TOKEN_CACHE_MLM
        paired_batch_size: int = 8
        paired_seed: int = 1234

        def __post_init__(self) -> None:
            if self.name != TOKEN_CACHE_MLM:
                raise ValueError(f"task.name must be {TOKEN_CACHE_MLM!r}, got {self.name!r}")
            if self.paired_batch_size < 2:
                raise ValueError(f"task.paired_batch_size must be >= 2, got {self.paired_batch_size}")
            base = {f.name: getattr(self, f.name) for f in dataclasses.fields(MLMTaskSpec)}
            MLMTaskSpec(**{**base, "name": "mlm"})  # MLM's own range checks

    class TokenCacheMLMTask(MLMTask):
        """``MLMTask`` reading token caches; its final evaluation also writes the paired scoring to ``out_dir``.

        ``out_dir/paired.json`` (and ``paired-swap.json`` for a model with memory) are ``evaluate_mlm`` results
        with per-example counts on every validation example, the masks a function of ``paired_seed`` only.
        """

        Settings = TokenCacheMLMSettings

        def examples(self, split: str) -> Any:
            if split not in self._packed:
                folder = {"train": self.spec.train_data, "eval": self.spec.eval_data, "test": self.spec.test_data}
                self._packed[split] = PackedExamples(TokenCache(folder[split]), self.spec.seq_len)
            return self._packed[split]

        def evaluate(self, model: Any, *, out_dir: Path | None = None, **kwargs: Any) -> dict[str, Any]:
            metrics = super().evaluate(model, out_dir=out_dir, **kwargs)
            if out_dir is not None:  # the final evaluation
                out_dir.mkdir(parents=True, exist_ok=True)
                was_training = model.training
                swaps = (False, True) if model.config.num_memory_tokens else (False,)
                for swap in swaps:
                    result = evaluate_mlm(
                        model,
                        self.examples("eval").cache,
                        length=self.spec.seq_len,
                        batch_size=self.spec.paired_batch_size,
                        split_chunk_size=self.spec.split_chunk_size,
                        seed=self.spec.paired_seed,
                        mlm_probability=self.spec.mlm_probability,
                        device=str(kwargs["device"]),
                        per_example=True,
                        memory_swap=swap,
                    )
                    (out_dir / f"paired{'-swap' if swap else ''}.json").write_text(json.dumps(result) + "\n")
                model.train(was_training)
            return metrics

    return TokenCacheMLMSettings, TokenCacheMLMTask


def train_one(config_path: Path) -> int:
    """Train one run config with the one loop (the child process of every run)."""
    from gmat.tasks.registry import register_task
    from gmat.training.config import load_config
    from gmat.training.loop import train

    settings, task = _token_cache_task_classes()
    register_task(TOKEN_CACHE_MLM, task, settings)
    train(load_config(config_path))
    return 0


# ---- running ------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """Where runs go and how they are started."""

    work: Path
    device: str
    in_process: bool

    def run(self, part: str, name: str, config: dict, timeout_s: float) -> dict:
        """Train ``config`` as ``WORK/runs/PART/NAME``; return a record (``status``, ``seconds``, ``run_dir``)."""
        run_dir = self.work / "runs" / part / name
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        config = {**config, "run_dir": str(run_dir)}
        cfg = run_dir.parent / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        record: dict[str, Any] = {"name": name, "run_dir": str(run_dir), "timeout_s": round(timeout_s, 1)}
        logger.info("%s/%s: start (timeout %.0f s, %d steps)", part, name, timeout_s, config["train"]["steps"])
        t0 = time.perf_counter()
        log_path = run_dir.parent / f"{name}.log"
        try:
            if self.in_process:
                train_one(cfg)
            else:
                paths = [str(REPO / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
                with open(log_path, "w") as log:
                    subprocess.run(
                        [sys.executable, str(Path(__file__).resolve()), "train-one", str(cfg)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        timeout=timeout_s,
                        check=True,
                    )
        except subprocess.TimeoutExpired:
            record["error"] = f"killed at its timeout of {timeout_s:.0f} s"
        except subprocess.CalledProcessError as err:
            record["error"] = f"exit status {err.returncode}"
        except Exception as err:  # noqa: BLE001 - in-process: record and go on, as a failed child would
            logger.exception("%s/%s", part, name)
            record["error"] = f"{type(err).__name__}: {err}"
        record["seconds"] = round(time.perf_counter() - t0, 1)
        results = run_dir / "results.json"
        if "error" not in record and results.is_file():
            record["status"] = "finished"
            record["results"] = json.loads(results.read_text())
        else:
            record["status"] = "failed"
            record.setdefault("error", "no results.json")
            tail = log_path.read_text().splitlines()[-15:] if log_path.is_file() else []
            record["log_tail"] = tail
            logger.warning("%s/%s: FAILED (%s)\n%s", part, name, record["error"], "\n".join(tail))
        if record["status"] == "finished":
            ev = record["results"]["eval"]
            shown = {k: round(v, 3) for k, v in ev.items() if isinstance(v, float)}
            logger.info(
                "%s/%s: finished in %.0f s (train %.0f s): %s",
                part,
                name,
                record["seconds"],
                record["results"]["train_seconds"],
                shown,
            )
        return record


def probe_timing(record: dict, probe_steps: int) -> dict:
    """Seconds per steady step (metrics.jsonl, over the second half), the fixed and the evaluation cost."""
    rows = [json.loads(x) for x in (Path(record["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in rows if r["split"] == "train"}
    first = max(1, probe_steps // 2)
    s_step = (elapsed[probe_steps] - elapsed[first]) / max(1, probe_steps - first)
    res = record["results"]
    eval_s = res["wall_seconds"] - res["train_seconds"]
    fixed_s = max(0.0, record["seconds"] - probe_steps * s_step - eval_s)
    return {
        "s_per_step": round(s_step, 4),
        "fixed_s": round(fixed_s, 1),
        "eval_s": round(eval_s, 1),
        "first_step_s": round(elapsed[1], 2),
        "run_s": record["seconds"],
    }


def run_probe(
    part: dict, runner: Runner, part_name: str, name: str, deadline: float, steps: int, config: dict
) -> dict | None:
    """Run a part's probe and record it in ``part``; its timing, or None (``part`` then says it failed)."""
    probe = part["probe"] = runner.run(part_name, name, config, timeout_s=max(30.0, deadline - time.time()))
    if probe["status"] != "finished":
        part["status"] = "failed: the probe did not finish"
        return None
    part["probe_timing"] = probe_timing(probe, steps)
    return part["probe_timing"]


# ---- the RC part ----------------------------------------------------------------------------------------------
def is_tuned(inputs: dict) -> bool:
    """Whether the inputs' model carries a trained span head (a ``gmat export bert`` of a QA model)."""
    return str(inputs.get("model_architecture")).endswith("ForQuestionAnswering")


def tune_on_short_squad(plan: RCPlan, inputs: Path, runner: Runner, deadline: float, part: dict) -> Path | None:
    """Stage 1: MiniLM learns SQuAD on short documents; the BERT export every run starts from, or None (failed)."""
    config = rc_config(
        plan,
        inputs,
        runner.device,
        name="MiniLM tuned on short SQuAD",
        memory=0,
        windows=True,
        steps=plan.tune_steps,
        train_questions=plan.tune_steps * plan.batch_size,
        eval_questions=plan.tune_eval_questions,
        log_every=max(1, plan.tune_steps // 50),
    )
    short = {"length": plan.tune_length, "window_length": plan.tune_length, "stride": plan.tune_length // 4}
    config["task"].update(short, max_length=plan.window_length, seed=0)
    config["train"].update(
        batch_size=plan.batch_size,
        eval_batch_size=2 * plan.batch_size,
        lr=plan.tune_lr,
        save_checkpoints=True,
        save_every=plan.tune_steps,
        keep_checkpoints=1,
    )
    record = part["tuning"] = runner.run("rc", "tune-short-squad", config, timeout_s=max(30.0, deadline - time.time()))
    if record["status"] != "finished":
        part["status"] = "failed: the short-SQuAD tuning did not finish"
        return None
    from gmat.modeling.export import export_bert

    return export_bert(Path(record["run_dir"]) / "best", runner.work / "rc-init")


def rc_config(
    plan: RCPlan,
    inputs: Path,
    device: str,
    *,
    name: str,
    memory: int,
    windows: bool,
    steps: int,
    train_questions: int,
    eval_questions: int,
    log_every: int,
    init: Path | None = None,
) -> dict:
    """A run config of the comparison (the window baseline: dense over windows, ``length/window`` x the batch).

    ``init``: the checkpoint the model starts from (default: the inputs' model).
    """
    per_step = plan.length // plan.window_length if windows else 1
    model: dict[str, Any] = {"num_memory_tokens": memory, "attention_pattern": "dense" if windows else "chunked"}
    if not windows:
        model["chunk_size"] = plan.chunk_size
    return {
        "name": name,
        "task": {
            "name": "rc",
            "pretrained": str(init or inputs / "minilm"),
            "train_file": str(inputs / "squad" / "train.json.gz"),
            "eval_file": str(inputs / "squad" / "dev.json.gz"),
            "length": plan.length,
            "train_questions": train_questions,
            "eval_questions": eval_questions,
            "featurization": "windows" if windows else "long",
            "window_length": plan.window_length,
            "stride": plan.stride,
            "distance_chunk_size": plan.distance_chunk_size,
            "seed": plan.seed,
        },
        "model": model,
        "train": {
            "steps": steps,
            "batch_size": plan.batch_size * per_step,
            "lr": plan.lr,
            "warmup_steps": max(1, steps // 10),
            "schedule": "linear",
            "min_lr_ratio": 0.0,
            "weight_decay": 0.01,
            "beta2": 0.999,
            "eval_every": 0,
            "eval_batch_size": plan.batch_size * per_step,
            "log_every": log_every,
            "seed": 0,
            "device": device,
            "precision": plan.precision,
            "save_checkpoints": False,
            "progress": False,
        },
    }


def rc_runs(plan: RCPlan) -> list[tuple[str, int, bool]]:
    """``(name, M, windows)`` in running order: the baseline (the budget check) first, M=16 last."""
    return [("bert512-windows", 0, True)] + [(f"chunked-m{m}", m, False) for m in plan.memories]


def size_steps(
    available_s: float,
    timing: dict,
    *,
    long_runs: int,
    window_runs: int,
    per_step_questions: int,
    eval_s: float,
    min_steps: int,
    max_steps: int,
) -> int:
    """Steps for every run so that all of them end within ``available_s`` (see the module docstring)."""
    runs = long_runs + window_runs
    per_step = timing["s_per_step"] * SAFETY * (long_runs + WINDOWS_STEP_FACTOR * window_runs)
    per_step += runs * per_step_questions * FEATURIZE_S_PER_QUESTION
    steps = (available_s - runs * (timing["fixed_s"] + eval_s)) / max(per_step, 1e-9)
    return int(min(max_steps, max(min_steps, math.floor(steps))))


def run_rc(plan: RCPlan, inputs: Path, runner: Runner, deadline: float, state: dict, report: Any) -> None:
    """The RC part: probe, size the steps, run the comparison; ``state["parts"]["rc"]`` records it all."""
    part = state["parts"]["rc"] = {"status": "running", "plan": dataclasses.asdict(plan), "runs": []}
    report()
    init, tuned = inputs / "minilm", is_tuned(state.get("inputs", {}))
    if plan.tune_steps and not tuned:
        init = tune_on_short_squad(plan, inputs, runner, deadline, part)
        report()
        if init is None:
            return
        tuned = True
    if tuned:
        plan = dataclasses.replace(plan, lr=plan.tuned_lr, seed=plan.tuned_seed)
    part.update(init=str(init), plan=dataclasses.asdict(plan))
    timing = run_probe(
        part,
        runner,
        "rc",
        "probe-chunked-m64",
        deadline,
        plan.probe_steps,
        rc_config(
            plan,
            inputs,
            runner.device,
            name="probe GMAT chunked M=64",
            memory=max(plan.memories),
            windows=False,
            steps=plan.probe_steps,
            train_questions=plan.probe_steps * plan.batch_size,
            eval_questions=plan.probe_eval_questions,
            log_every=1,
            init=init,
        ),
    )
    if timing is None:
        return
    scale = plan.eval_questions / plan.probe_eval_questions if plan.probe_eval_questions else 1.0
    eval_s = timing["eval_s"] * (scale if plan.eval_questions else 1.0)
    runs = rc_runs(plan)
    available = deadline - time.time() - 10
    common = {
        "per_step_questions": plan.batch_size,
        "eval_s": eval_s,
        "min_steps": plan.min_steps,
        "max_steps": plan.max_steps,
    }
    steps = size_steps(available, timing, long_runs=len(runs) - 1, window_runs=1, **common)
    if steps < plan.target_steps and len(plan.memories) > 2:  # drop M=16 rather than starve the comparison
        runs = runs[:-1]
        steps = size_steps(available, timing, long_runs=len(runs) - 1, window_runs=1, **common)
    part["sizing"] = {
        "available_s": round(available, 1),
        "steps": steps,
        "runs": [r[0] for r in runs],
        "train_questions": steps * plan.batch_size,
        "eval_s_estimate": round(eval_s, 1),
    }
    logger.info("rc: %d steps for %s (%.0f s left)", steps, [r[0] for r in runs], available)
    report()
    for name, memory, windows in runs:
        left = deadline - time.time()
        if left < 20:
            part["runs"].append({"name": name, "status": "skipped: the part's deadline passed"})
            continue
        predicted = (
            timing["fixed_s"]
            + eval_s
            + steps * timing["s_per_step"] * (WINDOWS_STEP_FACTOR if windows else 1.0)
            + steps * plan.batch_size * FEATURIZE_S_PER_QUESTION
        )
        label = "BERT-512 windows" if windows else (f"GMAT chunked M={memory}" if memory else "chunked M=0")
        config = rc_config(
            plan,
            inputs,
            runner.device,
            name=label,
            memory=memory,
            windows=windows,
            steps=steps,
            train_questions=steps * plan.batch_size,
            eval_questions=plan.eval_questions,
            log_every=max(1, steps // 50),
            init=init,
        )
        part["runs"].append(runner.run("rc", name, config, timeout_s=min(left, 1.5 * predicted + 30)))
        report()
    part["status"] = "done"


def rc_report_rows(part: dict, out: Path) -> list[dict]:
    """Write rc.json, rc-table.md and the plot from the finished runs (``scripts/rc_report.py``)."""
    finished = [
        r
        for r in part.get("runs", [])
        if r.get("status") == "finished" and (Path(r["run_dir"]) / "results.json").is_file()
    ]
    if not finished:
        return []
    rows = rc_report.write_rc_report([r["run_dir"] for r in finished], out / "rc.json", out / "rc-f1-by-distance.png")
    base = next((r for r in finished if r["name"] == "chunked-m0"), None)
    if base is not None:
        base_q = rc_report.per_question(Path(base["run_dir"]))
        for row in rows:
            if row["run_dir"] != base["run_dir"]:
                mine = rc_report.per_question(Path(row["run_dir"]))
                row["vs_chunked_m0"] = {m: rc_report.paired_difference(mine, base_q, m) for m in ("f1", "em")}
    for row in rows:
        row["run_dir"] = Path(row["run_dir"]).name  # the machine's folder is gone afterwards
    (out / "rc.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "rc-table.md").write_text(rc_report.markdown(rows))
    return rows


def rc_verdict(rows: list[dict]) -> str:
    """Whether the 512-window baseline learnt SQuAD (dev F1 >= 50): else nothing can be concluded."""
    base = next((r for r in rows if r["run_dir"] == "bert512-windows"), None)
    if base is None:
        return "the 512-window baseline did not finish: nothing can be concluded"
    if base["f1"] >= 50:
        return f"the 512-window baseline reached dev F1 {base['f1']:.1f} >= 50: the budget learns SQuAD"
    return (
        f"the 512-window baseline reached dev F1 {base['f1']:.1f} < 50: the budget was too small to conclude "
        "anything about memory"
    )


# ---- the MLM part ---------------------------------------------------------------------------------------------
def unpack_caches(inputs: Path, work: Path) -> dict[str, Path]:
    """Unpack ``corpus/<split>/tokens.bin.gz`` into ``WORK/corpus/<split>/`` (a token cache folder)."""
    folders = {}
    for split in ("train", "valid"):
        src, dst = inputs / "corpus" / split, work / "corpus" / split
        if not (dst / "meta.json").is_file():
            dst.mkdir(parents=True, exist_ok=True)
            with gzip.open(src / "tokens.bin.gz", "rb") as fh, open(dst / "tokens.bin", "wb") as out:
                shutil.copyfileobj(fh, out)
            shutil.copyfile(src / "doc_offsets.npy", dst / "doc_offsets.npy")
            shutil.copyfile(src / "meta.json", dst / "meta.json")
        folders[split] = dst
    return folders


def unigram_entropy(train: Path, valid: Path, plan: MLMPlan) -> dict:
    """Unigram baselines on exactly the masked tokens of the paired scoring (same masks as ``evaluate_mlm``).

    ``entropy``: the entropy of the empirical distribution of those tokens, in nats (the lowest loss a
    context-free predictor can have on them); ``train_unigram_loss``: the loss of an add-one unigram model
    estimated on the training tokens.
    """
    from gmat.data.corpus import PackedExamples, TokenCache
    from gmat.tasks.mlm import IGNORE_INDEX, mask_tokens

    cache = TokenCache(valid)
    packed = PackedExamples(cache, plan.length)
    targets = []
    for i in range(len(packed)):
        _, labels = mask_tokens(
            packed[i], np.random.default_rng([plan.paired_seed, i]), special=cache.special, vocab_size=cache.vocab_size
        )
        targets.append(labels[labels != IGNORE_INDEX])
    t = np.concatenate(targets)
    counts = np.bincount(t, minlength=cache.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    train_counts = np.bincount(np.asarray(TokenCache(train).tokens), minlength=cache.vocab_size) + 1.0
    train_p = train_counts / train_counts.sum()
    return {
        "entropy": float(-(p * np.log(p)).sum()),
        "train_unigram_loss": float(-np.log(train_p[t]).mean()),
        "masked_tokens": int(t.size),
        "examples": len(packed),
    }


def mlm_config(
    plan: MLMPlan,
    inputs: Path,
    caches: dict[str, Path],
    device: str,
    *,
    name: str,
    memory: int,
    seed: int,
    steps: int,
    log_every: int,
) -> dict:
    """An MLM run config over the token caches (``TOKEN_CACHE_MLM``), checkpoints off (``plan.init``)."""
    model: dict[str, Any] = {"num_memory_tokens": memory, "attention_pattern": "chunked", "chunk_size": plan.chunk_size}
    task: dict[str, Any] = {}
    if plan.init == "minilm":
        task["pretrained"] = str(inputs / "minilm")
    else:
        model.update(
            hidden_size=plan.hidden_size,
            num_hidden_layers=plan.num_hidden_layers,
            num_attention_heads=plan.num_attention_heads,
            intermediate_size=plan.intermediate_size,
        )
    return {
        "name": name,
        "task": {
            "name": TOKEN_CACHE_MLM,
            "train_data": str(caches["train"]),
            "eval_data": str(caches["valid"]),
            "tokenizer": str(inputs / "minilm"),
            "seq_len": plan.length,
            "split_chunk_size": plan.chunk_size,
            "eval_size": plan.eval_size,
            "seed": seed,
            "paired_batch_size": plan.eval_batch_size,
            "paired_seed": plan.paired_seed,
            **task,
        },
        "model": model,
        "train": {
            "steps": steps,
            "batch_size": plan.batch_size,
            "lr": plan.pretrained_lr if plan.init == "minilm" else plan.lr,
            "warmup_steps": max(1, steps // 20),
            "schedule": "cosine",
            "eval_every": 0,
            "eval_batch_size": plan.eval_batch_size,
            "log_every": log_every,
            "seed": seed,
            "device": device,
            "precision": plan.precision,
            "save_checkpoints": False,
            "progress": False,
        },
    }


def run_mlm(plan: MLMPlan, inputs: Path, runner: Runner, deadline: float, state: dict, report: Any) -> None:
    """The MLM part: unigram yardstick, probe, size the steps, M=0 / M=64 per seed; recorded in ``state``."""
    part = state["parts"]["mlm"] = {"status": "running", "plan": dataclasses.asdict(plan), "runs": []}
    inputs_info = state.get("inputs", {})
    if plan.init == "minilm" and is_tuned(inputs_info):
        raise ValueError(
            f"the inputs' model is a {inputs_info['model_architecture']} (tuned for RC), not MiniLM: build the inputs "
            f"with --model minilm for the MLM part, or pass --mlm-init scratch"
        )
    caches = unpack_caches(inputs, runner.work)
    part["unigram"] = unigram_entropy(caches["train"], caches["valid"], plan)
    part["corpus_tokens"] = {s: json.loads((f / "meta.json").read_text())["num_tokens"] for s, f in caches.items()}
    report()
    timing = run_probe(
        part,
        runner,
        "mlm",
        "probe-m64",
        deadline,
        plan.probe_steps,
        mlm_config(
            plan,
            inputs,
            caches,
            runner.device,
            name="probe chunked M=64",
            memory=max(plan.memories),
            seed=0,
            steps=plan.probe_steps,
            log_every=1,
        ),
    )
    if timing is None:
        return
    runs = [(s, m) for s in plan.seeds for m in plan.memories]  # paired by seed: a partial finish keeps a pair
    available = deadline - time.time() - 10
    common = {
        "window_runs": 0,
        "per_step_questions": 0,
        "eval_s": timing["eval_s"],
        "min_steps": plan.min_steps,
        "max_steps": plan.max_steps,
    }
    steps = size_steps(available, timing, long_runs=len(runs), **common)
    if steps <= plan.min_steps and len(plan.seeds) > 1:  # one seed with a budget that learns beats two that don't
        runs = [(plan.seeds[0], m) for m in plan.memories]
        steps = size_steps(available, timing, long_runs=len(runs), **common)
    part["sizing"] = {
        "available_s": round(available, 1),
        "steps": steps,
        "runs": runs,
        "tokens_per_run": steps * plan.batch_size * plan.length,
    }
    logger.info("mlm: %d steps for %s (%.0f s left)", steps, runs, available)
    report()
    for seed, memory in runs:
        name = f"chunked-m{memory}-seed{seed}"
        left = deadline - time.time()
        if left < 20:
            part["runs"].append({"name": name, "status": "skipped: the part's deadline passed"})
            continue
        predicted = timing["fixed_s"] + timing["eval_s"] + steps * timing["s_per_step"]
        config = mlm_config(
            plan,
            inputs,
            caches,
            runner.device,
            name=f"chunked C={plan.chunk_size} M={memory}",
            memory=memory,
            seed=seed,
            steps=steps,
            log_every=max(1, steps // 50),
        )
        record = runner.run("mlm", name, config, timeout_s=min(left, 1.5 * predicted + 30))
        record.update(memory=memory, seed=seed)
        part["runs"].append(record)
        report()
    part["status"] = "done"


def _paired(a: dict, b: dict, group: str) -> dict:
    """Mean over examples of (loss of a - loss of b) per masked token of ``group``, ± 2 SE (same masks)."""
    diffs = [
        (c[group][0] - b["per_example"][i][group][0]) / c[group][2]
        for i, c in a["per_example"].items()
        if c[group][2] and b["per_example"][i][group][2]
    ]
    return {**mean_two_se(diffs), "examples": len(diffs)}


def mlm_rows(part: dict) -> list[dict]:
    """One row per finished run: the paired scoring, Δ vs chunked M=0 of the same seed, the memory-swap Δ."""
    finished = [
        r
        for r in part.get("runs", [])
        if r.get("status") == "finished" and (Path(r["run_dir"]) / "eval" / "paired.json").is_file()
    ]
    paired = {}
    for r in finished:
        eval_dir = Path(r["run_dir"]) / "eval"
        paired[r["name"]] = {
            x: json.loads((eval_dir / f"paired{x}.json").read_text())
            for x in ("", "-swap")
            if (eval_dir / f"paired{x}.json").is_file()
        }
    rows = []
    for r in finished:
        own = paired[r["name"]][""]
        row = {
            "setting": r["name"],
            "num_memory": r["memory"],
            "seed": r["seed"],
            "length": own["length"],
            "split_chunk_size": own["split_chunk_size"],
            "eval_examples": own["num_examples"],
            "metrics": own["metrics"],
            "steps": r["results"]["steps_done"],
            "train_seconds": r["results"]["train_seconds"],
            "hardware": r["results"]["hardware"],
            "num_parameters": r["results"]["num_parameters"],
        }
        base = paired.get(f"chunked-m0-seed{r['seed']}", {}).get("")
        if r["memory"] and base is not None:
            row["vs_chunked_m0"] = {g: _paired(own, base, g) for g in ("all", "outside_chunk", "chunk_only")}
        if "-swap" in paired[r["name"]]:
            row["memory_swap"] = {g: _paired(paired[r["name"]]["-swap"], own, g) for g in ("all", "outside_chunk")}
        rows.append(row)
    return rows


def mlm_verdict(part: dict, rows: list[dict]) -> str:
    """Whether chunked M=0 is at least 1.5 nats below the unigram entropy of the same masked tokens."""
    base = [r for r in rows if r["num_memory"] == 0]
    if not base or "unigram" not in part:
        return "no chunked M=0 run finished: nothing can be concluded"
    h = part["unigram"]["entropy"]
    loss = min(r["metrics"]["all"]["loss"] for r in base)
    ok = h - loss >= 1.5
    where = f"{h - loss:.2f} nats below" if h >= loss else f"{loss - h:.2f} nats above"
    return f"chunked M=0 dev loss {loss:.3f} is {where} the unigram entropy {h:.3f} of the same masked tokens: " + (
        "the baseline learns context (>= 1.5)"
        if ok
        else "less than 1.5, the budget was too small to conclude anything about memory"
    )


# ---- reports --------------------------------------------------------------------------------------------------
def _fmt(d: dict | None) -> str:
    return "–" if d is None else f"{d['mean']:+.3f} ± {d['two_se']:.3f}"


def summary_markdown(state: dict, rc_rows: list[dict], mlm: list[dict]) -> str:
    """summary.md: per part its status, verdict, probe and sizing, failed runs, and the tables."""
    env, given = state["environment"], state.get("inputs", {})
    lines = [
        "# GPU research runs",
        "",
        f"Hardware: {env.get('gpu', '?')}; torch {env.get('torch')}, transformers "
        f"{env.get('transformers')}, triton {env.get('triton')}, python {env.get('python')}.",
        "",
        f"RC init: {given.get('model_architecture')} from {given.get('model_source')} "
        f"({given.get('model_note') or 'no note'}).",
        "",
    ]
    for name in ("rc", "mlm"):
        part = state["parts"].get(name)
        if part is None:
            lines += [f"## {name}: not run in this window", ""]
            continue
        lines += [f"## {name}: {part['status']}", "", f"**Verdict:** {part.get('verdict', '–')}", ""]
        if "tuning" in part:
            tuning = part["tuning"]
            score = tuning.get("results", {}).get("eval", {})
            lines += [
                f"Short-SQuAD stage: {tuning['status']} in {tuning.get('seconds')} s, dev EM {score.get('em')} / "
                f"F1 {score.get('f1')} on {score.get('count')} questions; the runs start from `{part.get('init')}`.",
                "",
            ]
        if "probe_timing" in part:
            lines += [f"Probe: {json.dumps(part['probe_timing'])}; sizing: {json.dumps(part.get('sizing'))}", ""]
        for r in part.get("runs", []):
            if r.get("status") != "finished":
                lines.append(f"- {r['name']}: {r.get('status')} {r.get('error', '')}")
        lines.append("")
        if name == "rc" and rc_rows:
            lines += [rc_report.markdown(rc_rows)]
    if mlm:
        u = state["parts"]["mlm"].get("unigram", {})
        lines += [
            f"Unigram entropy of the {u.get('masked_tokens')} masked dev tokens: {u.get('entropy', 0):.3f} "
            f"nats; an add-one unigram model of the training tokens scores {u.get('train_unigram_loss', 0):.3f}.",
            "",
            "| run | M | seed | loss | acc | outside_chunk loss | chunk_only loss | Δ loss vs M=0 | "
            "Δ outside_chunk | Δ chunk_only | swap Δ | swap Δ outside | steps |",
            "|---" * 13 + "|",
        ]
        for r in mlm:
            m, d, s = r["metrics"], r.get("vs_chunked_m0", {}), r.get("memory_swap", {})
            lines.append(
                f"| {r['setting']} | {r['num_memory']} | {r['seed']} | {m['all']['loss']:.3f} | "
                f"{m['all']['accuracy']:.2%} | {m['outside_chunk']['loss']:.3f} | {m['chunk_only']['loss']:.3f} | "
                f"{_fmt(d.get('all'))} | {_fmt(d.get('outside_chunk'))} | {_fmt(d.get('chunk_only'))} | "
                f"{_fmt(s.get('all'))} | {_fmt(s.get('outside_chunk'))} | {r['steps']} |"
            )
    return "\n".join(lines) + "\n"


def _compact(record: dict) -> dict:
    """A run record without the bulky parts of results.json (the config stays)."""
    out = {k: v for k, v in record.items() if k != "results"}
    if "results" in record:
        res = record["results"]
        ev = {k: v for k, v in res["eval"].items() if k != "by_distance"}
        out["results"] = {
            **{
                k: res[k]
                for k in ("steps_done", "train_seconds", "wall_seconds", "num_parameters", "hardware", "config")
            },
            "eval": ev,
        }
    return out


def write_reports(state: dict, out: Path) -> None:
    """Rewrite every report file in ``out`` from ``state`` and the finished runs."""
    out.mkdir(parents=True, exist_ok=True)
    rc_rows = rc_report_rows(state["parts"]["rc"], out) if "rc" in state["parts"] else []
    mlm = mlm_rows(state["parts"]["mlm"]) if "mlm" in state["parts"] else []
    if "rc" in state["parts"]:
        state["parts"]["rc"]["verdict"] = rc_verdict(rc_rows)
    if "mlm" in state["parts"]:
        state["parts"]["mlm"]["verdict"] = mlm_verdict(state["parts"]["mlm"], mlm)
        (out / "mlm.json").write_text(json.dumps(mlm, indent=2) + "\n")
    compact = json.loads(json.dumps(state))
    for part in compact["parts"].values():
        part["runs"] = [_compact(r) for r in part.get("runs", [])]
        for key in ("probe", "tuning"):
            if key in part:
                part[key] = _compact(part[key])
    (out / "research.json").write_text(json.dumps(compact, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(state, rc_rows, mlm))


def environment(device: str) -> dict:
    """The hardware and versions the runs ran on."""
    import torch
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    return {
        "gpu": gpu,
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "git_sha": os.environ.get("GMAT_GIT_SHA", "unknown"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the asked parts; rewrite the reports after every run. Exit 2 on unusable arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train-one"]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        return train_one(Path(argv[1]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", default=str(REPO / "gpu-inputs"), help="folder of scripts/gpu_research_inputs.py")
    p.add_argument("--out", required=True, help="report folder (only the report files are written there)")
    p.add_argument("--work", default="/tmp/gmat-research", help="run folders (outside --out)")
    p.add_argument("--parts", default="rc,mlm", help="comma-separated, in order: rc, mlm")
    p.add_argument("--seconds", type=float, default=330, help="deadline of each part, from its start")
    p.add_argument("--plan", choices=sorted(PLANS), default="h200")
    p.add_argument(
        "--rc-tune-steps", type=int, default=None, help="steps of the short-SQuAD stage (0: none; default: the plan's)"
    )
    p.add_argument(
        "--mlm-init", choices=("minilm", "scratch"), default=None, help="MLM models' start (default: the plan's)"
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--in-process", action="store_true", help="train in this process (no per-run timeout)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    inputs, out, work = Path(args.inputs), Path(args.out), Path(args.work)
    parts = [x for x in args.parts.split(",") if x]
    if not parts or set(parts) - {"rc", "mlm"}:
        p.error(f"--parts must name rc and/or mlm, got {args.parts!r}")
    if not (inputs / "inputs.json").is_file():
        p.error(f"--inputs {inputs}: no inputs.json (run scripts/gpu_research_inputs.py and carry the folder)")
    if out.resolve() == work.resolve() or out.resolve() in work.resolve().parents:
        p.error(f"--work {work} must lie outside --out {out}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: CUDA is not available")
    previous = out / "research.json"
    state = json.loads(previous.read_text()) if previous.is_file() else {"parts": {}}
    state["environment"] = environment(args.device)
    state["inputs"] = json.loads((inputs / "inputs.json").read_text())
    state["inputs"].pop("files", None)
    runner = Runner(work, args.device, args.in_process)
    rc_plan, mlm_plan = PLANS[args.plan]
    if args.rc_tune_steps is not None:
        rc_plan = dataclasses.replace(rc_plan, tune_steps=args.rc_tune_steps)
    if args.mlm_init:
        mlm_plan = dataclasses.replace(mlm_plan, init=args.mlm_init)

    def report() -> None:
        try:
            write_reports(state, out)
        except Exception:  # noqa: BLE001 - a report that cannot be written must not stop the runs
            logger.exception("writing the reports failed")

    for name in parts:
        deadline = time.time() + args.seconds
        try:
            if name == "rc":
                run_rc(rc_plan, inputs, runner, deadline, state, report)
            else:
                run_mlm(mlm_plan, inputs, runner, deadline, state, report)
        except Exception as err:  # noqa: BLE001 - fail soft: the next part still runs
            logger.exception("%s failed", name)
            state["parts"].setdefault(name, {"runs": []})["status"] = f"failed: {type(err).__name__}: {err}"
        report()
        logger.info("%s: %s", name, state["parts"][name].get("verdict"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
