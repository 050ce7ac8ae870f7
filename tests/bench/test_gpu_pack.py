"""The GPU evidence pack (benchmarks/gpu_pack.sh) proven on CPU: its dry run, its limits, its soft failures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from benchlib.config import load_config
from benchlib.engines import attention_flops
from gmat.ops import AttentionPattern
from repo_scripts import ROOT, load_script

FILES = {"gpu-pack.json", "gpu-pack.md", "gpu-pack.png", "gpu-pack.log"}
NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device returns: letters, digits, '.', '_', '-'


@pytest.fixture(scope="module")
def pack():
    return load_script("benchmarks/gpu_pack.py")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dry run of the whole pack, as the device would run it (about 40 s on 2 busy cores)."""
    out = tmp_path_factory.mktemp("pack") / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the script puts ./src first itself
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_pack.sh"), "--dry-run"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_dry_run_stays_inside_the_device_limits(dry_run: Path) -> None:
    paths = [p for p in dry_run.rglob("*")]
    files = [p for p in paths if p.is_file()]
    assert {p.name for p in files} == FILES and len(files) <= 8
    for p in paths:
        rel = p.relative_to(dry_run)
        assert len(rel.parts) <= 3 and all(NAME.match(part) for part in rel.parts), rel  # $OUT/a/b/file at most
    assert all(0 < p.stat().st_size <= 16 * 2**20 for p in files)
    assert (dry_run / "gpu-pack.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_schema(dry_run: Path) -> None:
    state = json.loads((dry_run / "gpu-pack.json").read_text())
    assert state["pack"]["dry_run"] is True
    assert {name: s["status"] for name, s in state["steps"].items()} == dict.fromkeys(
        ("env", "correctness", "ops", "model"), "done"
    )
    env = state["environment"]
    assert env["torch"] and env["triton"] and env["git_sha"] and env["GMAT_GIT_SHA"]

    rows = state["correctness"]["rows"]
    assert all({"backend", "dtype", "case", "status", "wall_s"} <= set(r) for r in rows)
    by = {(r["backend"], r["dtype"]): [] for r in rows}
    for r in rows:
        by[(r["backend"], r["dtype"])].append(r)
    for key in (("triton", "float32"), ("blocked", "float32"), ("triton", "bfloat16")):
        assert by[key] and all(r["status"] == "ok" and r["finite"] for r in by[key]), by[key]
        assert all(
            set(r["errors"]) == {"out", "dq", "dk", "dv"} and max(r["errors"].values()) <= r["tol"] for r in by[key]
        )
    assert any("nan" in r["case"] for r in by[("triton", "float32")])  # NaN-filled padding is a case
    assert all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in by[("flex", "float32")])
    order = list(dict.fromkeys((r["backend"], r["dtype"]) for r in rows))  # flex last: its compiles hit the deadline
    assert order == [("triton", "float32"), ("blocked", "float32"), ("triton", "bfloat16"), ("flex", "float32")]

    ops = state["ops"]
    assert ops["config"]["name"] == "gpu" and ops["config"]["device"] == "cpu"
    assert all(c["passed"] for c in ops["checks"]), ops["checks"]
    results = ops["results"]
    first = [r["engine"] for r in results[:4]]
    assert first == ["triton", "triton", "blocked", "blocked"]  # the kernels that matter are timed first
    for engine in ("triton", "blocked", "triton_v0", "dense_sdpa", "naive_chunk_mem_sdpa", "hf_longformer"):
        assert any(r["engine"] == engine and r["status"] == "ok" and r["mode"] == "fwd_bwd" for r in results)
    assert {r["sweep"] for r in results} == {"L-chunked", "L-window", "M-sweep"}

    model = state["model"]["rows"]
    assert [r["length"] for r in model] == [256] * 5 + [128] * 5
    ok = {(r["engine"], r["length"]) for r in model if r.get("tokens_per_s", 0) > 0}
    assert {("bert_sdpa", 256), ("gmat_blocked", 256), ("modernbert", 128), ("longformer", 128)} <= ok
    assert all("triton" in r["skipped"] for r in model if r["engine"] == "gmat_triton")  # CPU: refused, recorded

    md = (dry_run / "gpu-pack.md").read_text()
    for heading in ("## Environment", "## Correctness on cpu", "## Op sweep", "### L-chunked", "## Model step"):
        assert heading in md
    assert "DRY RUN" in md and "naive_chunk_sdpa (no memory)" in md


def test_gpu_sweep_runs_the_kernels_that_matter_first() -> None:
    gpu = yaml.safe_load((ROOT / "benchmarks/configs/gpu.yaml").read_text())
    dry = yaml.safe_load((ROOT / "benchmarks/configs/gpu-dry-run.yaml").read_text())
    assert gpu["device"] == "cuda" and gpu["dtype"] == "bfloat16" and (gpu["heads"], gpu["head_dim"]) == (16, 64)
    first, m_sweep, headline = gpu["sweeps"][:2], gpu["sweeps"][2], gpu["sweeps"][3]
    assert [s["engines"] for s in first] == [["triton", "blocked"]] * 2
    assert all(s["seq_lens"] == [4096, 16384, 65536, 262144] and s["num_memory"] == [64] for s in first)
    assert [(s["kind"], s["sizes"]) for s in first] == [("chunked", [512]), ("window", [256])]
    assert m_sweep["engines"] == ["triton", "blocked"] and m_sweep["num_memory"] == [0, 64, 256, 1024]
    # then the yardsticks, at the headline length first (the side-by-side point of the targets)
    assert headline["seq_lens"] == [65536]
    assert {"dense_sdpa", "flex", "naive_chunk_mem_sdpa", "hf_longformer"} <= set(headline["engines"])
    assert gpu["sweeps"][-1]["name"] == "M-sweep" and gpu["sweeps"][-1]["seq_lens"] == [65536]
    # the dry run mirrors the sweep structure, so it runs the same code paths
    shape = lambda c: [(s["name"], s["kind"], s.get("engines")) for s in c["sweeps"]]  # noqa: E731
    assert shape(dry) == shape(gpu) and dry["engines"] == gpu["engines"]
    load_config(ROOT / "benchmarks/configs/gpu.yaml")  # valid


def test_pack_fits_nine_minutes() -> None:
    script = (ROOT / "benchmarks/gpu_pack.sh").read_text()
    steps = re.findall(r"^ +\w+\) step (\w+) (\d+) (\d+) ;;$", script, flags=re.M)
    assert [s[0] for s in steps] == ["env", "correctness", "ops", "model"]
    assert all(int(deadline) < int(hard) for _, deadline, hard in steps)
    total = int(re.search(r"GMAT_PACK_TOTAL_S:-(\d+)", script).group(1))
    kill_after = int(re.search(r"--kill-after=(\d+)", script).group(1))
    finish = int(re.search(r"timeout (\d+) \"\$PY\" benchmarks/gpu_pack.py finish", script).group(1))
    # each step's hard timeout is cut to what is left of TOTAL_S, so the last one ends by then + its kill-after,
    # plus the re-render after it
    assert total + kill_after + finish <= 9 * 60


def test_one_failing_case_does_not_end_the_correctness_step(pack, tmp_path: Path, monkeypatch) -> None:
    def broken(backend, case, device, dtype_name="float32"):  # noqa: ANN001, ANN202
        if backend == "triton":
            raise RuntimeError("device-only compile error")
        return {"status": "ok", "errors": {}, "tol": 0.0, "finite": True}

    monkeypatch.setattr(pack, "check_case", broken)
    state = pack.Pack(tmp_path, dry_run=True)
    pack.step_correctness(state, Namespace(dry_run=True, deadline_s=60.0))
    rows = json.loads((tmp_path / "gpu-pack.json").read_text())["correctness"]["rows"]
    triton = [r for r in rows if r["backend"] == "triton"]
    assert triton and all(r["status"] == "error" and "compile error" in r["reason"] for r in triton)
    assert [r["status"] for r in rows if r["backend"] == "blocked"] == ["ok", "ok"]  # the next cases still ran


def test_a_failed_or_killed_step_is_recorded_and_rendered(pack, tmp_path: Path, monkeypatch) -> None:
    def crash(p, args):  # noqa: ANN001, ANN202
        p.state["model"] = {
            "describe": "tiny",
            "args": [],
            "rows": [
                {"engine": "bert_sdpa", "length": 128, "tokens_per_s": 1000.0, "step_ms": 128.0, "loss": 10.0},
                {"engine": "gmat_triton", "length": 128, "skipped": "why"},
            ],
        }
        p.save()
        raise RuntimeError("boom")

    monkeypatch.setitem(pack.STEP_FUNCTIONS, "model", crash)
    assert pack.main(["model", "--out", str(tmp_path), "--dry-run"]) == 1
    state = json.loads((tmp_path / "gpu-pack.json").read_text())
    assert state["steps"]["model"]["status"] == "failed" and "boom" in state["steps"]["model"]["error"]
    md = (tmp_path / "gpu-pack.md").read_text()
    assert "| 128 | bert_sdpa | 1,000 |" in md and "skipped: why" in md and "RuntimeError: boom" in md
    # A step the hard timeout killed never marked itself done: finish says so.
    state["steps"]["ops"] = {"status": "running"}
    (tmp_path / "gpu-pack.json").write_text(json.dumps(state))
    assert pack.main(["finish", "ops", "124", "--out", str(tmp_path)]) == 0
    ops = json.loads((tmp_path / "gpu-pack.json").read_text())["steps"]["ops"]
    assert ops["status"] == "killed" and ops["rc"] == 124 and "timeout" in ops["error"]


def test_effective_flops_count_the_allowed_pairs() -> None:
    pat = AttentionPattern(num_memory=64, kind="chunked", chunk_size=512)
    fwd = attention_flops(pat, 65536, batch=1, heads=16, head_dim=64, mode="fwd")
    assert fwd == pytest.approx(4 * 16 * 64 * pat.allowed_pairs(65536))
    assert attention_flops(pat, 65536, 1, 16, 64, "fwd_bwd") == pytest.approx(3.5 * fwd)


def test_gpu_tests_run_without_an_install() -> None:
    # On the GPU machine nothing can be installed: `make test-gpu` must use its python3 with src/ on the path.
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^test-gpu:(.*)\n\t(.*)$", makefile, flags=re.M)
    assert rule and "setup" not in rule.group(1).split("##")[0]
    assert rule.group(2).strip() == "PYTHONPATH=src $(PYTHON) -m pytest -m gpu tests/ops"
    assert re.search(r"^gpu-pack:(?![^\n]*setup)", makefile, flags=re.M)
    env = {**os.environ, "PYTHONPATH": "src"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "tests/ops", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    collected = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", done.stdout)
    assert collected and int(collected.group(1)) > 0, done.stdout[-500:]


def test_steps_picks_steps_for_a_rerun_and_refuses_unknown_names(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "STEPS": "env"}
    env.pop("PYTHONPATH", None)
    script = str(ROOT / "benchmarks" / "gpu_pack.sh")
    done = subprocess.run(["bash", script, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "== env exit code 0" in done.stdout and "== correctness" not in done.stdout
    state = json.loads((tmp_path / "out" / "gpu-pack.json").read_text())
    assert state["environment"]["torch"]
    env["STEPS"] = "env opz"
    done = subprocess.run(["bash", script, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "got 'opz'" in done.stdout


def test_triton_tune_dry_run(tmp_path: Path) -> None:
    """benchmarks/triton_tune.py, the launch-config tuning of a GPU window, runs on CPU under the interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "triton_tune.py"), "--dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = json.loads((tmp_path / "tune.json").read_text())
    assert [p for p in tmp_path.iterdir()] == [tmp_path / "tune.json"]
    assert {"triton", "blocked"} <= set(state["host_overhead"][0])
    rows = state["rows"]
    assert [r["phase"] for r in rows] == ["fwd", "fwd", "bwd", "bwd"]
    assert all(r["status"] == "ok" and r["chunked_ms"] > 0 and r["window_ms"] > 0 for r in rows), rows
    assert all(e < 1e-4 for r in rows for k in ("check_chunked", "check_window") for e in r[k].values())
