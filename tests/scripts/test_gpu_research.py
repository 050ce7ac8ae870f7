"""scripts/gpu_research*.{py,sh}: the CPU dry run of the GPU research runs (tiny BERT, hand-made SQuAD, tiny corpus).

The inputs script builds the folder, the driver runs both parts through the same code as on the GPU (probe,
sizing, runs, paired reports) with the ``tiny`` plan in-process, and the report folder must obey the device's
limits on what comes back.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from repo_scripts import ROOT, load_script

WORDS = [f"w{i}" for i in range(40)] + ["the", "capital", "of", "is", "paris", "what", "who", "king", "?", "."]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@pytest.fixture(scope="module")
def inputs_module():
    return load_script("scripts/gpu_research_inputs.py")


@pytest.fixture(scope="module")
def driver():
    return load_script("scripts/gpu_research.py")


def _filler(seed: int, n: int) -> str:
    return " ".join(f"w{(seed * 7 + k * 3) % 40}" for k in range(n)) + " ."


def _squad(n_articles: int, offset: int) -> dict:
    """Articles of 4 paragraphs; every paragraph holds one planted question (answer 'paris' or a filler word)."""
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(4):
            key = f"w{(a + p + offset) % 40}"
            text = f"{_filler(a + p, 8)} the capital of {key} is paris . {_filler(a * p + 1, 8)}"
            qas = [
                {
                    "id": f"{offset}-{a}-{p}",
                    "question": f"what is the capital of {key} ?",
                    "answers": [{"text": "paris", "answer_start": text.index("paris")}],
                }
            ]
            paragraphs.append({"context": text, "qas": qas})
        data.append({"title": f"t{a}", "paragraphs": paragraphs})
    return {"version": "1.1", "data": data}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT with its tokenizer, SQuAD train / dev files and a corpus, in the shapes the script reads."""
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("sources")
    model = root / "bert"
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).save_pretrained(model)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(model)
    (root / "train.json").write_text(json.dumps(_squad(4, 0)))
    (root / "dev.json").write_text(json.dumps(_squad(2, 7)))
    rng = random.Random(0)
    for split, docs in (("train", 40), ("valid", 6)):
        lines = [json.dumps({"text": " ".join(rng.choices(WORDS, k=30 + d % 7))}) for d in range(docs)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "model": model,
        "squad_train": root / "train.json",
        "squad_dev": root / "dev.json",
        "corpus_train": root / "train.jsonl",
        "corpus_valid": root / "valid.jsonl",
    }


def test_inputs_folder_fits_the_limit_and_cuts_the_training_corpus(inputs_module, sources, tmp_path: Path) -> None:
    whole = inputs_module.build_inputs(tmp_path / "a", limit_bytes=60 * 2**20, **sources)
    assert whole["train_corpus_complete"] and whole["corpus_documents"] == {"train": 40, "valid": 6}
    assert set(whole["files"]) >= {
        "minilm/model.safetensors",
        "minilm/tokenizer.json",
        "squad/dev.json.gz",
        "squad/train.json.gz",
        "corpus/train/tokens.bin.gz",
        "corpus/valid/meta.json",
    }
    # the training tokens take what the limit leaves: a limit just above the rest keeps some, not all, documents
    train = {k: v["bytes"] for k, v in whole["files"].items() if k.startswith("corpus/train/")}
    rest = whole["repository_bytes"] + whole["inputs_bytes"] - sum(train.values())
    limit = rest + 64 * 1024 + train["corpus/train/tokens.bin.gz"] // 2
    cut = inputs_module.build_inputs(tmp_path / "b", limit_bytes=limit, **sources)
    assert not cut["train_corpus_complete"] and 0 < cut["corpus_documents"]["train"] < 40
    assert cut["repository_bytes"] + cut["inputs_bytes"] <= limit
    # fp16 weights, and a token file that unpacks to exactly the tokens meta.json counts
    from safetensors.torch import load_file

    assert all(v.dtype != torch.float32 for v in load_file(str(tmp_path / "a/minilm/model.safetensors")).values())


def test_dry_run_writes_the_reports_within_the_device_limits(driver, inputs_module, sources, tmp_path: Path) -> None:
    inputs, out, work = tmp_path / "inputs", tmp_path / "out", tmp_path / "work"
    inputs_module.build_inputs(inputs, limit_bytes=60 * 2**20, **sources)
    args = [
        "--inputs",
        str(inputs),
        "--out",
        str(out),
        "--work",
        str(work),
        "--plan",
        "tiny",
        "--device",
        "cpu",
        "--in-process",
        "--seconds",
        "300",
    ]
    assert driver.main([*args, "--parts", "rc"]) == 0
    assert driver.main([*args, "--parts", "mlm"]) == 0  # a second call keeps the first part's results
    state = json.loads((out / "research.json").read_text())
    rc, mlm = state["parts"]["rc"], state["parts"]["mlm"]
    assert rc["status"] == "done" and mlm["status"] == "done"
    assert mlm["plan"]["init"] == "minilm"  # the MLM models start from the inputs' (tiny) BERT
    # RC stage 1: the tiny BERT tuned on short documents, exported; every run starts from it with the tuned plan
    assert rc["tuning"]["status"] == "finished" and rc["init"] == str(work / "rc-init")
    init = json.loads((work / "rc-init" / "config.json").read_text())
    assert init["architectures"] == ["BertForQuestionAnswering"]  # the span head travels on
    assert rc["plan"]["lr"] == rc["plan"]["tuned_lr"] and rc["plan"]["seed"] == rc["plan"]["tuned_seed"]
    assert all(r["results"]["config"]["task"]["pretrained"] == rc["init"] for r in rc["runs"])
    assert rc["probe_timing"]["s_per_step"] > 0 and rc["sizing"]["steps"] == 3
    # every run finished, with checkpoints off, its folder under --work
    assert [r["name"] for r in rc["runs"]] == ["bert512-windows", "chunked-m0", "chunked-m4", "chunked-m2"]
    assert [r["name"] for r in mlm["runs"]] == [f"chunked-m{m}-seed{s}" for s in (0, 1) for m in (0, 4)]
    for r in rc["runs"] + mlm["runs"]:
        assert r["status"] == "finished", r
        run_dir = Path(r["run_dir"])
        assert work in run_dir.parents and not (run_dir / "checkpoints").exists() and not (run_dir / "best").exists()
    # RC: rows with the paired difference to chunked M=0 and a verdict on the baseline's F1
    rows = json.loads((out / "rc.json").read_text())
    assert [r["run_dir"] for r in rows] == ["bert512-windows", "chunked-m0", "chunked-m4", "chunked-m2"]
    assert rows[0]["pattern"] == "dense-windows" and rows[2]["num_memory"] == 4 and rows[2]["length"] == 96
    assert "vs_chunked_m0" in rows[2] and "vs_chunked_m0" not in rows[1]
    assert rows[2]["vs_chunked_m0"]["f1"]["questions"] == rows[1]["eval_questions"] == 8
    assert "512-window baseline reached dev F1" in rc["verdict"]
    # MLM: paired on the same masked tokens, the swap control for memory models, the unigram yardstick
    m = json.loads((out / "mlm.json").read_text())
    assert [r["setting"] for r in m] == [r["name"] for r in mlm["runs"]]
    assert set(m[1]["vs_chunked_m0"]) == {"all", "outside_chunk", "chunk_only"} and "memory_swap" in m[1]
    assert "vs_chunked_m0" not in m[0] and "memory_swap" not in m[0]
    assert m[0]["metrics"]["all"]["tokens"] == m[1]["metrics"]["all"]["tokens"] == mlm["unigram"]["masked_tokens"]
    assert 0 < mlm["unigram"]["entropy"] < mlm["unigram"]["train_unigram_loss"]
    assert "unigram entropy" in mlm["verdict"]
    summary = (out / "summary.md").read_text()
    assert "## rc: done" in summary and "## mlm: done" in summary and "Δ outside_chunk" in summary
    assert "Short-SQuAD stage: finished" in summary
    # what comes back from the device: at most 8 files (log.txt is the 7th), 16 MiB each, no deeper than OUT/a/b
    files = [f for f in out.rglob("*") if f.is_file()]
    assert sorted(f.name for f in files) == sorted(driver.REPORT_FILES)
    assert len(files) + 1 <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in files)
    assert all(len(f.relative_to(out).parts) <= 3 and NAME.match(f.name) for f in files)


def test_driver_rejects_bad_arguments_naming_the_flag(driver, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        driver.main(["--inputs", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert err.value.code == 2 and "--inputs" in capsys.readouterr().err
    (tmp_path / "inputs.json").write_text("{}")
    with pytest.raises(SystemExit) as err:
        driver.main(
            [
                "--inputs",
                str(tmp_path),
                "--out",
                str(tmp_path),
                "--work",
                str(tmp_path / "o" / "w"),
                "--device",
                "cpu",
                "--parts",
                "rc,xyz",
            ]
        )
    assert err.value.code == 2 and "--parts" in capsys.readouterr().err


def test_shell_wrapper_runs_each_part_under_its_own_timeout(tmp_path: Path) -> None:
    """The wrapper with a stand-in python: one call per part, with that part's deadline, and the log in $OUT."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\necho ran\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": str(fake), "RC_SECONDS": "7", "MLM_SECONDS": "5"}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_research.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2 and "--parts rc --seconds 7" in calls[0] and "--parts mlm --seconds 5" in calls[1]
    assert f"--out {out}" in calls[0] and "--device cuda" in calls[0]
    assert (out / "log.txt").read_text().count("ran") == 2
    bad = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_research.sh")],
        env={**env, "PARTS": "rc,nope"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "PARTS" in bad.stdout


def test_a_failed_part_is_recorded_and_the_next_part_still_runs(driver, inputs_module, sources, tmp_path) -> None:
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs_module.build_inputs(inputs, limit_bytes=60 * 2**20, **sources)
    (inputs / "squad" / "train.json.gz").unlink()  # every RC run fails, starting with the probe
    args = ["--inputs", str(inputs), "--out", str(out), "--work", str(tmp_path / "work"), "--plan", "tiny"]
    # with stage 1 (the default) the tuning run is the first to fail; without it (--rc-tune-steps 0), the probe
    assert driver.main([*args, "--device", "cpu", "--in-process", "--parts", "rc"]) == 0
    rc = json.loads((out / "research.json").read_text())["parts"]["rc"]
    assert rc["status"] == "failed: the short-SQuAD tuning did not finish" and "probe" not in rc
    assert "train.json.gz" in rc["tuning"]["error"]
    assert driver.main([*args, "--device", "cpu", "--in-process", "--parts", "rc,mlm", "--rc-tune-steps", "0"]) == 0
    state = json.loads((out / "research.json").read_text())
    rc = state["parts"]["rc"]
    assert rc["status"] == "failed: the probe did not finish" and "train.json.gz" in rc["probe"]["error"]
    assert "tuning" not in rc and rc["init"] == str(inputs / "minilm")
    assert "did not finish: nothing can be concluded" in rc["verdict"] and not (out / "rc.json").exists()
    assert state["parts"]["mlm"]["status"] == "done" and len(json.loads((out / "mlm.json").read_text())) == 4


def test_steps_fill_the_deadline_without_passing_it(driver) -> None:
    timing = {"s_per_step": 0.2, "fixed_s": 15.0}
    kwargs = {"long_runs": 3, "window_runs": 1, "per_step_questions": 16, "eval_s": 10.0}

    def total(steps: int) -> float:  # the predicted seconds of the four runs, as the driver counts them
        step = 0.2 * driver.SAFETY
        long_run = 15.0 + 10.0 + steps * (step + 16 * driver.FEATURIZE_S_PER_QUESTION)
        window_run = long_run + steps * step * (driver.WINDOWS_STEP_FACTOR - 1)
        return 3 * long_run + window_run

    steps = driver.size_steps(300.0, timing, min_steps=1, max_steps=10**6, **kwargs)
    assert total(steps) <= 300.0 < total(steps + 1)
    assert driver.size_steps(300.0, timing, min_steps=1, max_steps=50, **kwargs) == 50
    assert driver.size_steps(50.0, timing, min_steps=20, max_steps=10**6, **kwargs) == 20  # the floor


def test_a_squad_tuned_init_keeps_its_span_head_in_every_run(driver, inputs_module, sources, tmp_path) -> None:
    """Inputs built from a BertForQuestionAnswering (a `gmat export bert` of a short-SQuAD model) count as tuned
    (no stage 1 on the device), and an RC run's model built from them starts with that trained span head."""
    from transformers import BertForQuestionAnswering

    from gmat.tasks.registry import create_task
    from gmat.training.config import parse_config

    source = BertForQuestionAnswering.from_pretrained(sources["model"])  # the tiny BERT with a span head
    with torch.no_grad():
        source.qa_outputs.weight.normal_()
    source.save_pretrained(tmp_path / "tuned")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (sources["model"] / name).is_file():
            (tmp_path / "tuned" / name).write_bytes((sources["model"] / name).read_bytes())
    manifest = inputs_module.build_inputs(
        tmp_path / "inputs",
        limit_bytes=60 * 2**20,
        model_note="short SQuAD, 3 steps",
        **{**sources, "model": tmp_path / "tuned"},
    )
    assert manifest["model_architecture"] == "BertForQuestionAnswering"
    assert manifest["model_note"] == "short SQuAD, 3 steps"
    assert driver.is_tuned(manifest) and not driver.is_tuned({"model_architecture": "BertModel"})
    plain, _ = driver.PLANS["tiny"]
    plan = driver.dataclasses.replace(plain, lr=plain.tuned_lr, seed=plain.tuned_seed)
    want = source.qa_outputs.weight.half().float()  # the inputs store fp16 weights
    for memory, windows in ((0, True), (4, False)):
        config = driver.rc_config(
            plan,
            tmp_path / "inputs",
            "cpu",
            name="x",
            memory=memory,
            windows=windows,
            steps=1,
            train_questions=4,
            eval_questions=4,
            log_every=1,
        )
        assert config["task"]["seed"] == plan.seed and config["train"]["lr"] == plan.lr
        run = parse_config(config)
        model = create_task(run.task).build_model(run.model)
        assert model.config.num_memory_tokens == memory
        torch.testing.assert_close(model.qa_outputs.weight, want, rtol=0, atol=0)
    # MLM from MiniLM needs a plain encoder: from these inputs the part stops with a reason naming the fix
    _, mlm_plan = driver.PLANS["tiny"]
    state = {"parts": {}, "inputs": manifest}
    with pytest.raises(ValueError, match="build the inputs with --model minilm for the MLM part, or pass --mlm-init"):
        driver.run_mlm(mlm_plan, tmp_path / "inputs", None, 0.0, state, lambda: None)


def test_mlm_config_from_minilm_or_from_scratch(driver, tmp_path: Path) -> None:
    """``minilm``: the inputs' model converted (its own sizes) at the pretrained lr; ``scratch``: the plan's sizes."""
    _, plan = driver.PLANS["h200"]
    caches = {"train": tmp_path / "train", "valid": tmp_path / "valid"}
    kwargs = dict(name="x", memory=64, seed=1, steps=10, log_every=1)
    pretrained = driver.mlm_config(plan, tmp_path, caches, "cuda", **kwargs)
    assert (
        pretrained["task"]["pretrained"] == str(tmp_path / "minilm") and pretrained["train"]["lr"] == plan.pretrained_lr
    )
    assert pretrained["model"] == {"num_memory_tokens": 64, "attention_pattern": "chunked", "chunk_size": 256}
    scratch = driver.mlm_config(driver.dataclasses.replace(plan, init="scratch"), tmp_path, caches, "cuda", **kwargs)
    assert "pretrained" not in scratch["task"] and scratch["train"]["lr"] == plan.lr
    assert scratch["model"]["hidden_size"] == plan.hidden_size
