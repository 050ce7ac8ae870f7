"""benchmarks/bench_model.py (the whole-model MLM training-step benchmark) on tiny CPU models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repo_scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_model.py")


def test_tiny_run_writes_rows_and_a_table(bench, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    engines = "gmat_blocked,gmat_blocked_fullhead,gmat_triton,bert_sdpa,gmat_nosuch"
    argv = ["--device", "cpu", "--dtype", "fp32", "--layers", "1", "--hidden", "32", "--heads", "2"]
    argv += ["--length", "256", "--chunk", "64", "--num-memory", "4", "--warmup", "1", "--steps", "2"]
    assert bench.main([*argv, "--engines", engines, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "model-step.json").read_text())
    rows = {r["engine"]: r for r in result["rows"]}
    for name in ("gmat_blocked", "gmat_blocked_fullhead", "bert_sdpa"):
        assert rows[name]["tokens_per_s"] > 0 and rows[name]["steps"] == 2
        assert 9.0 < rows[name]["loss"] < 12.0  # ~ln(30522): a fresh model on random tokens
    # the same weights whatever the head does with them: sparse prediction changes the cost, not the loss
    assert rows["gmat_blocked"]["parameters"] == rows["gmat_blocked_fullhead"]["parameters"]
    assert "triton" in rows["gmat_triton"]["skipped"] and "cuda" in rows["gmat_triton"]["skipped"]
    assert "attn_backend" in rows["gmat_nosuch"]["skipped"]
    table = (tmp_path / "model-step.md").read_text()
    assert "| bert_sdpa |" in table and "1.00×" in table and "skipped" in table


def test_bad_arguments_are_refused(bench) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--engines", "gpt2"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--length", "0"])


def test_rows_are_written_as_they_finish(bench, tmp_path: Path, monkeypatch) -> None:
    # A kill (here: an interrupt during the second engine) keeps every finished row on disk.
    real_measure, calls = bench.measure, []

    def measure_then_die(engine, args):  # noqa: ANN001, ANN202
        calls.append(engine)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_measure(engine, args)

    monkeypatch.setattr(bench, "measure", measure_then_die)
    argv = [
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--layers",
        "1",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--length",
        "128",
        "--chunk",
        "64",
        "--num-memory",
        "4",
        "--warmup",
        "0",
        "--steps",
        "1",
    ]
    with pytest.raises(KeyboardInterrupt):
        bench.main([*argv, "--engines", "gmat_blocked,bert_sdpa", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "model-step.json").read_text())["rows"]
    assert [r["engine"] for r in rows] == ["gmat_blocked"] and rows[0]["tokens_per_s"] > 0
    assert "| gmat_blocked |" in (tmp_path / "model-step.md").read_text()


def test_all_real_tokens_get_no_mask(bench) -> None:
    # Every engine gets attention_mask=None: an all-ones mask would send GMAT down its padding paths.
    args = bench.parse_args(["--device", "cpu", "--length", "64", "--batch", "2"])
    batch = bench.make_batch(args, "cpu")
    assert batch["attention_mask"] is None
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 64)
