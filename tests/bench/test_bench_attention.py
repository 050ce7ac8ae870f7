"""The attention benchmark (`benchmarks/benchlib`) end to end on a tiny CPU sweep, and its correctness gate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchlib.config import BenchConfig, SweepSpec, config_from_dict, load_config, quick_config
from benchlib.engines import Case, Engine, default_engines
from benchlib.measure import MemoryMeter
from benchlib.runner import run_benchmark
from gmat.ops import gmat_attention
from repo_scripts import load_script

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"

# Tiny shapes: every engine (flex excepted on CPU) runs in a few milliseconds per point.
TINY_SWEEPS = (
    SweepSpec(name="L-chunked", kind="chunked", seq_lens=(256,), num_memory=(4,), sizes=(128,)),
    SweepSpec(
        name="L-window",
        kind="window",
        seq_lens=(256,),
        num_memory=(4,),
        sizes=(64,),
        engines=("dense_sdpa", "naive_chunk_sdpa", "blocked", "hf_longformer"),
    ),
    SweepSpec(
        name="M-sweep",
        kind="chunked",
        seq_lens=(256,),
        num_memory=(0, 4),
        sizes=(128,),
        engines=("blocked", "dense_sdpa", "naive_chunk_mem_sdpa"),
    ),
)


def tiny_config(**overrides: object) -> BenchConfig:
    base = BenchConfig(
        name="tiny",
        batch=1,
        heads=2,
        head_dim=16,
        sweeps=TINY_SWEEPS,
        check_seq_len=256,
        warmup=0,
        min_repeats=1,
        max_repeats=1,
        min_time_s=0.0,
        repeat_budget_s=0.0,
    )
    return dataclasses.replace(base, **overrides)


def test_tiny_sweep_end_to_end(tmp_path: Path) -> None:
    payload = run_benchmark(tiny_config(), tmp_path, command="pytest")
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"tiny-attention.{ext}").stat().st_size > 0
    saved = json.loads((tmp_path / "tiny-attention.json").read_text())
    assert saved["environment"]["torch"] == torch.__version__
    assert saved["environment"]["cpu_count"] >= 1

    checks = {c["engine"]: c for c in saved["checks"]}
    assert all(c["passed"] for c in saved["checks"]), saved["checks"]
    for name in ("blocked", "masked_sdpa", "dense_sdpa", "naive_chunk_sdpa", "naive_chunk_mem_sdpa", "blocked_proj"):
        assert checks[name]["check"] == "reference" and checks[name]["with_grad"]
    assert checks["hf_longformer"]["check"] == checks["hf_bigbird"]["check"] == "sanity"

    by_key = {(r["sweep"], r["engine"], r["seq_len"], r["num_memory"], r["mode"]): r for r in payload["results"]}
    for engine in (
        "dense_sdpa",
        "masked_sdpa",
        "naive_chunk_sdpa",
        "naive_chunk_mem_sdpa",
        "blocked",
        "blocked_proj",
        "hf_longformer",
        "hf_bigbird",
    ):
        for mode in ("fwd", "fwd_bwd"):
            r = by_key[("L-chunked", engine, 256, 4, mode)]
            assert r["status"] == "ok", r
            assert r["time_ms"] > 0 and r["repeats"] == 1
    # A skipped engine is recorded with its reason, never dropped.
    flex = by_key[("L-chunked", "flex", 256, 4, "fwd")]
    assert flex["status"] == "skipped" and "CUDA" in flex["reason"]
    naive_window = by_key[("L-window", "naive_chunk_sdpa", 256, 4, "fwd")]
    assert naive_window["status"] == "skipped" and "chunks only" in naive_window["reason"]
    # Dense SDPA ignores the pattern: measured once, reused by the window sweep; speed-ups are relative to it.
    assert by_key[("L-window", "dense_sdpa", 256, 4, "fwd")].get("reused")
    assert by_key[("L-window", "hf_longformer", 256, 4, "fwd_bwd")].get("reused")  # same K = 2w = C
    assert by_key[("L-chunked", "dense_sdpa", 256, 4, "fwd")]["speedup_vs_dense"] == pytest.approx(1.0)
    assert by_key[("M-sweep", "blocked", 256, 0, "fwd")]["status"] == "ok"
    assert by_key[("M-sweep", "naive_chunk_mem_sdpa", 256, 0, "fwd_bwd")]["status"] == "ok"

    md = (tmp_path / "tiny-attention.md").read_text()
    assert "| L | dense_sdpa | masked_sdpa |" in md and "| M |" in md and "`flex` skipped" in md


def test_quick_sweep_uses_the_same_pattern_naive_engine() -> None:
    # The quick tables sit at M=64: their naive path must compute the memory too.
    engines = quick_config().engines
    assert "naive_chunk_mem_sdpa" in engines and "naive_chunk_sdpa" not in engines


def test_memoryless_naive_engine_is_labelled(tmp_path: Path) -> None:
    cfg = tiny_config(engines=("naive_chunk_sdpa", "blocked"), sweeps=TINY_SWEEPS[:1], modes=("fwd",))
    payload = run_benchmark(cfg, tmp_path)
    naive = [r for r in payload["results"] if r["engine"] == "naive_chunk_sdpa"]
    assert naive and all("WITHOUT memory" in r["note"] for r in naive)
    assert not any(r.get("note") for r in payload["results"] if r["engine"] == "blocked")
    md = (tmp_path / "tiny-attention.md").read_text()
    assert "| L | naive_chunk_sdpa (no memory) | blocked |" in md
    assert "Note: `naive_chunk_sdpa` computes chunks WITHOUT memory" in md


def test_triton_engine_runs_under_the_interpreter() -> None:
    from gmat.ops.triton_kernels import interpreter_usable

    if not interpreter_usable():
        pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (tests/conftest.py sets it without CUDA)")
    sweep = SweepSpec(name="t", kind="window", seq_lens=(64,), num_memory=(4,), sizes=(16,))
    payload = run_benchmark(tiny_config(engines=("triton",), sweeps=(sweep,), heads=1, check_seq_len=64))
    (check,) = payload["checks"]
    assert check["passed"] and check["with_grad"] and check["check"] == "reference", check
    assert [r["status"] for r in payload["results"]] == ["ok", "ok"]


def _wrong_build(exp, requires_grad, cfg):  # noqa: ANN001, ANN202 - a deliberately broken engine
    case = default_engines()["blocked"].build(exp, requires_grad, cfg)
    q, k, v = case.leaves
    wrong = dataclasses.replace(exp.pattern, chunk_size=exp.size * 2)  # twice the chunk: wrong keys
    return Case(
        leaves=case.leaves, oracle=case.oracle, forward=lambda: gmat_attention(q, k, v, wrong, backend="blocked")
    )


def test_check_catches_a_wrong_engine(tmp_path: Path) -> None:
    engines = default_engines()
    engines["wrong"] = Engine("wrong", "blocked with the wrong chunk size", _wrong_build)
    cfg = tiny_config(engines=("blocked", "wrong"), sweeps=TINY_SWEEPS[:1], modes=("fwd",))
    payload = run_benchmark(cfg, tmp_path, engines=engines)
    checks = {c["engine"]: c for c in payload["checks"]}
    assert checks["blocked"]["passed"]
    assert not checks["wrong"]["passed"] and checks["wrong"]["fwd_err"] > checks["wrong"]["fwd_tol"]
    wrong = [r for r in payload["results"] if r["engine"] == "wrong"]
    assert wrong and all(r["status"] == "check_failed" and "time_ms" not in r for r in wrong)
    assert "FAILED check" in (tmp_path / "tiny-attention.md").read_text()


def test_over_budget_points_are_skipped_with_a_reason() -> None:
    sweep = dataclasses.replace(TINY_SWEEPS[0], seq_lens=(256, 512))
    cfg = tiny_config(engines=("dense_sdpa",), sweeps=(sweep,), modes=("fwd",), max_step_s=1e-9)
    results = run_benchmark(cfg)["results"]
    assert results[0]["status"] == "ok"  # nothing to predict from at the smallest L
    assert results[1]["status"] == "skipped" and "max_step_s" in results[1]["reason"]


def test_quick_yaml_is_the_builtin_quick_config() -> None:
    assert load_config(CONFIGS / "quick.yaml") == quick_config()


@pytest.mark.parametrize("name", ["quick.yaml", "cpu.yaml", "gpu.yaml"])
def test_configs_load_and_start_with_their_command(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.sweeps and set(cfg.engines) <= set(default_engines())
    first = (CONFIGS / name).read_text().splitlines()[0]
    assert first.startswith("# ") and (
        "gmat bench attention" in first or "bench_attention.py" in first or "gpu_pack.sh" in first
    )


def test_unknown_config_keys_raise() -> None:
    with pytest.raises(ValueError, match="unknown benchmark config keys"):
        config_from_dict({"nmae": "x"})
    with pytest.raises(ValueError, match="unknown sweep keys"):
        config_from_dict(
            {"sweeps": [{"name": "a", "kind": "chunked", "seq_lens": [8], "num_memory": [0], "sizes": [4], "chunk": 4}]}
        )


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_cpu_peak_memory_sees_a_known_allocation() -> None:
    meter = MemoryMeter("cpu")
    baseline = meter.start()
    x = torch.ones(32 * 2**20 // 4)  # 32 MiB, touched
    peak = meter.peak(baseline)
    del x
    assert 30 * 2**20 <= peak <= 40 * 2**20


def test_cli_runs_a_config(tmp_path: Path) -> None:
    main = load_script("benchmarks/bench_attention.py").main

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "# python benchmarks/bench_attention.py --config tiny.yaml\n"
        "name: cli\nheads: 2\nhead_dim: 16\nengines: [blocked, dense_sdpa]\nmodes: [fwd]\n"
        "check_seq_len: 256\n"
        "warmup: 0\nmin_repeats: 1\nmax_repeats: 1\nmin_time_s: 0\nrepeat_budget_s: 0\n"
        "sweeps:\n  - {name: s, kind: window, seq_lens: [256], num_memory: [2], sizes: [16]}\n"
    )
    assert main(["--config", str(config), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "cli-attention.md").exists()
    assert main(["--from-json", str(tmp_path / "out" / "cli-attention.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "cli-attention.png").exists()


def test_cpu_memory_compare_measures_a_step_in_fresh_processes(tmp_path):
    """benchmarks/cpu_memory_compare.py (the CPU peak-memory figures of record) on one tiny op point."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    argv = ["--levels", "op", "--engines", "blocked_chunked", "--lengths", "600", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "cpu_memory_compare.py"), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["engine"] for r in rows] == ["blocked_chunked"]
    for r in rows:
        assert "error" not in r, r
        assert 0 < r["step_mib"] < r["process_mib"] and r["rss_before_step_mib"] > 0
    assert "| op | blocked_chunked | 600 |" in done.stdout
