"""GPU evidence pack, one step per call: environment, CUDA correctness, the op sweep, the model step.

``benchmarks/gpu_pack.sh`` runs the steps in priority order, each in its own process with a deadline (no new
row starts after it) and a hard ``timeout`` behind it::

    python3 benchmarks/gpu_pack.py env          --out DIR [--dry-run]
    python3 benchmarks/gpu_pack.py correctness  --out DIR [--dry-run] [--deadline-s S]
    python3 benchmarks/gpu_pack.py ops          --out DIR [--dry-run] [--deadline-s S]
    python3 benchmarks/gpu_pack.py model        --out DIR [--dry-run] [--deadline-s S]
    python3 benchmarks/gpu_pack.py finish STEP RC --out DIR      (after a step that failed: its exit code)

Every step adds to one state file and rewrites the reports after every finished row, so a kill at any moment
loses at most the row in flight. ``DIR`` holds only these four files (the device returns at most 8, flat):

* ``gpu-pack.json``: everything (schema below), written atomically;
* ``gpu-pack.md``: the tables;
* ``gpu-pack.png``: the op sweep, time and peak memory vs L (redrawn at most every ``PNG_EVERY_S`` and at the
  end of each step);
* ``gpu-pack.log``: the steps' output (written by the shell script).

``--dry-run`` runs every step on CPU at tiny shapes through the same code (``triton`` under Triton's
interpreter, flex recorded as CUDA-only), so the pack is proven without a GPU.

Schema of ``gpu-pack.json``: ``pack`` (dry_run, started), ``steps`` (per step: status ``running`` | ``done`` |
``failed`` | ``killed``, rc, wall_s, error), ``environment``, ``correctness`` (``rows``: backend, case, status
``ok`` | ``FAIL`` | ``error`` | ``skipped``, relative errors, tolerance, reason), ``ops`` (the attention
benchmark's payload: config, checks, results) and ``model`` (``rows``: one per length and engine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib/ and bench_model.py, beside this file

HERE = Path(__file__).resolve().parent
STATE, MARKDOWN, PNG, LOG = "gpu-pack.json", "gpu-pack.md", "gpu-pack.png", "gpu-pack.log"
STEPS = ("env", "correctness", "ops", "model")
PNG_EVERY_S = 20.0

# Correctness cases: (B, H, L, D, kind, C or w, M, padding). Odd L, D in {32, 64, 128}, M in {0, 7, 64}, both patterns,
# padding of half an example ("half"), of a whole example ("full": with M = 0 its rows have no key at all) and
# padded keys/values filled with NaN ("half-nan": they must never be read).
CASES = [
    (2, 2, 1000, 64, "chunked", 128, 64, None),
    (2, 2, 777, 64, "window", 64, 7, "half-nan"),
    (2, 2, 555, 32, "chunked", 100, 0, "full"),
    (1, 2, 1001, 32, "window", 33, 64, "half"),
    (2, 1, 333, 128, "chunked", 64, 7, "half-nan"),
    (2, 2, 513, 128, "window", 50, 0, "full"),
]
DRY_CASES = [
    (2, 1, 37, 32, "chunked", 16, 3, "half-nan"),
    (2, 1, 40, 32, "window", 8, 0, "full"),
]
# fp32 relative error allowed (||got - ref|| / ||ref|| against float64): triton and flex may use TF32 for fp32
# dots on the GPU (about 3e-4 expected); blocked runs PyTorch's fp32 kernels.
TOLERANCE = {"triton": 3e-3, "flex": 3e-3, "blocked": 1e-4}
# Then, time permitting, triton in bf16 (the dtype it is timed in) at the other head dims, with flash-attention's
# rule: error <= 2x (forward) / 3x (gradients) that of the reference run in bf16, plus BF16_SLACK.
BF16_CASES = [c for c in CASES if c[3] != 64]
BF16_SLACK = 4e-3

# Model step (GMAT-base against BERT/SDPA, ModernBERT, Longformer): the headline length first.
MODEL_LENGTHS, DRY_MODEL_LENGTHS = (16384, 4096), (256, 128)
MODEL_ENGINES = ("bert_sdpa", "gmat_triton", "gmat_blocked", "modernbert", "longformer")
MODEL_ARGS = [
    "--dtype",
    "bf16",
    "--layers",
    "12",
    "--hidden",
    "768",
    "--heads",
    "12",
    "--num-memory",
    "64",
    "--chunk",
    "512",
    "--warmup",
    "2",
    "--steps",
    "5",
]
DRY_MODEL_ARGS = [
    "--dtype",
    "fp32",
    "--layers",
    "1",
    "--hidden",
    "32",
    "--heads",
    "2",
    "--num-memory",
    "4",
    "--chunk",
    "64",
    "--warmup",
    "0",
    "--steps",
    "1",
]


# ==== state and reports ========================================================================================
class Pack:
    """The state file and its reports in ``out``; ``save`` rewrites them (JSON atomically)."""

    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        path = out / STATE
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.state.setdefault("pack", {"dry_run": dry_run, "started": _utc()})
        self.state.setdefault("steps", {})
        self._png_at = 0.0

    def save(self, png: bool = False) -> None:
        tmp = self.out / (STATE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / STATE)
        (self.out / MARKDOWN).write_text(markdown(self.state))
        if png or time.monotonic() - self._png_at > PNG_EVERY_S:
            self._png_at = time.monotonic()
            draw(self.state, self.out / PNG)


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fmt(x: float | None, spec: str = ".2e") -> str:
    return "–" if x is None else format(x, spec)


def markdown(state: dict[str, Any]) -> str:
    """Every section that has data: steps, environment, correctness, op sweep, model step."""
    pack = state["pack"]
    lines = [
        "# GMAT GPU evidence pack" + (" (DRY RUN on CPU, tiny shapes: not evidence)" if pack["dry_run"] else ""),
        "",
        f"Started {pack['started']}. Steps (in running order):",
        "",
        "| step | status | wall s | note |",
        "|---|---|---|---|",
    ]
    for name in STEPS:
        s = state["steps"].get(name)
        if s:
            lines.append(f"| {name} | {s['status']} | {_fmt(s.get('wall_s'), '.0f')} | {s.get('error') or ''} |")
        else:
            lines.append(f"| {name} | not started | | |")
    env = state.get("environment")
    if env:
        lines += [
            "",
            "## Environment",
            "",
            f"- device: {env.get('gpu') or env.get('cpu')}"
            + (
                f" ({env.get('gpu_memory_gib')} GiB, capability {env.get('gpu_capability')}, driver "
                f"{env.get('gpu_driver')}, CUDA {env.get('cuda')})"
                if env.get("gpu")
                else ""
            ),
            f"- software: Python {env.get('python')}, torch {env.get('torch')}, triton {env.get('triton')}, "
            f"transformers {env.get('transformers')}",
            f"- git: {env.get('git_sha')}; run {env.get('utc')}",
        ]
    corr = state.get("correctness")
    if corr:
        lines += [
            "",
            f"## Correctness on {corr['device']} (forward and gradients, vs float64 reference)",
            "",
            "Relative error ||got - ref|| / ||ref|| per output; NaN or Inf never passes. fp32: fixed "
            "tolerance (TF32 dots allowed for triton and flex); bf16: 2x / 3x the error of the reference run "
            "in bf16 plus a slack (tol = the largest).",
            "",
            "| backend | dtype | case | result | out | dq | dk | dv | tol |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in corr["rows"]:
            e = r.get("errors", {})
            result = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
            lines.append(
                f"| {r['backend']} | {r['dtype']} | {r['case']} | {result} | "
                + " | ".join(_fmt(e.get(k)) for k in ("out", "dq", "dk", "dv"))
                + f" | {_fmt(r.get('tol'))} |"
            )
    ops = state.get("ops")
    if ops:
        from benchlib.report import add_speedups
        from benchlib.report import markdown as ops_markdown

        add_speedups(ops["results"])  # the runner adds them only at its end
        body = ops_markdown(ops).splitlines()
        lines += ["", "## Op sweep", ""] + ["#" + x if x.startswith("#") else x for x in body[1:]]
    model = state.get("model")
    if model:
        lines += [
            "",
            "## Model step: MLM training step (forward, loss, backward, AdamW)",
            "",
            f"{model['describe']}",
            "",
            "| L | engine | tokens/s | step ms | peak GiB | × BERT-SDPA tokens/s | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in model["rows"]:
            if "tokens_per_s" not in r:
                lines.append(f"| {r['length']} | {r['engine']} | | | | | skipped: {r.get('skipped')} |")
                continue
            bert = next(
                (
                    b
                    for b in model["rows"]
                    if b["engine"] == "bert_sdpa" and b["length"] == r["length"] and "tokens_per_s" in b
                ),
                None,
            )
            ratio = f"{r['tokens_per_s'] / bert['tokens_per_s']:.2f}×" if bert else "–"
            lines.append(
                f"| {r['length']} | {r['engine']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                f"{_fmt(r.get('peak_gib'), '.2f')} | {ratio} | loss {r.get('loss', 0):.2f} |"
            )
    return "\n".join(lines) + "\n"


def draw(state: dict[str, Any], path: Path) -> None:
    """The op sweep's plot (nothing before the op sweep has a row)."""
    ops = state.get("ops")
    if ops and any(r["status"] == "ok" for r in ops["results"]):
        from benchlib.report import plot

        plot(ops, path)


# ==== steps ====================================================================================================
def step_env(pack: Pack, args: argparse.Namespace) -> None:
    """Hardware and software, the git SHA passed in as ``GMAT_GIT_SHA`` (the device copy has no ``.git``)."""
    import subprocess

    import torch

    from benchlib.measure import environment

    device = "cpu" if args.dry_run else "cuda"
    env = environment(device)
    env["cuda_available"] = torch.cuda.is_available()
    env["GMAT_GIT_SHA"] = os.environ.get("GMAT_GIT_SHA")
    env["python_executable"] = sys.executable
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as err:
        env["triton"] = f"not importable: {err}"
    try:
        env["nvidia_smi"] = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu",
                "--format=csv",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        env["nvidia_smi"] = f"unavailable: {type(err).__name__}"
    pack.state["environment"] = env
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False on the GPU run")


def _case_name(case: tuple) -> str:
    b, h, seq, d, kind, size, m, pad = case
    return f"B{b} H{h} L{seq} D{d} M{m} {kind} {'C' if kind == 'chunked' else 'w'}={size} pad={pad}"


def check_case(backend: str, case: tuple, device: str, dtype_name: str = "float32") -> dict[str, Any]:
    """One backend on one case, forward and dQ/dK/dV, against the float64 reference on ``device``.

    fp32: relative error <= ``TOLERANCE[backend]``. bf16: <= 2x (forward) / 3x (gradients) the relative error of
    the reference run in bf16, plus ``BF16_SLACK``.
    """
    import torch

    from gmat.ops import AttentionPattern, gmat_attention
    from gmat.ops.reference import reference_attention

    b, h, seq, d, kind, size, m, pad = case
    pattern = (
        AttentionPattern(m, "chunked", chunk_size=size)
        if kind == "chunked"
        else AttentionPattern(m, "window", window=size)
    )
    gen = torch.Generator().manual_seed(seq * 131 + d)
    n = m + seq
    q, k, v, do = (torch.randn(b, h, n, d, generator=gen).to(device) for _ in range(4))  # fresh random inputs
    mask = None
    if pad is not None:
        mask = torch.ones(b, seq, dtype=torch.bool)
        mask[0, seq // 2 :] = False
        if pad == "full" and b > 1:
            mask[1] = False
        mask = mask.to(device)
        if pad.endswith("nan"):
            real = torch.cat([torch.ones(b, m, dtype=torch.bool, device=device), mask], dim=1)[:, None, :, None]
            k, v = (x.masked_fill(~real, float("nan")) for x in (k, v))
    if backend == "triton":
        # fp32 is outside the dispatcher's declared dtypes for triton; the kernels run it (TF32 dots on CUDA),
        # under gmat_attention's rule for padded query rows (zero in, zero out), which the reference follows too.
        from gmat.ops.triton_kernels import triton_attention

        def fn(q: Any, k: Any, v: Any, pattern: Any, mask: Any) -> torch.Tensor:
            if mask is None:
                return triton_attention(q, k, v, pattern, mask)
            padded = ~pattern.key_valid(mask)[:, None, :, None]
            return triton_attention(q.masked_fill(padded, 0.0), k, v, pattern, mask).masked_fill(padded, 0.0)
    else:

        def fn(*a: Any) -> torch.Tensor:
            return gmat_attention(*a, backend=backend)

    def run(f: Any, dtype: torch.dtype) -> list[torch.Tensor]:
        xs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        out = f(*xs, pattern, mask)
        return [out, *torch.autograd.grad(out, xs, do.to(dtype))]

    def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
        return float((a.detach().double() - ref.detach()).norm() / ref.detach().norm().clamp_min(1e-30))

    dtype = getattr(torch, dtype_name)
    got = run(fn, dtype)
    truth = run(reference_attention, torch.float64)
    names = ("out", "dq", "dk", "dv")
    errors = {name: rel(g, r) for name, g, r in zip(names, got, truth)}
    finite = all(bool(torch.isfinite(g).all()) for g in got)
    if dtype == torch.float32:
        tols = dict.fromkeys(names, TOLERANCE[backend])
    else:
        low = run(reference_attention, dtype)
        tols = {
            name: (2.0 if name == "out" else 3.0) * rel(lo, r) + BF16_SLACK for name, lo, r in zip(names, low, truth)
        }
    ok = finite and all(errors[name] <= tols[name] for name in names)
    return {
        "status": "ok" if ok else "FAIL",
        "dtype": dtype_name,
        "errors": errors,
        "tol": max(tols.values()),
        "tols": tols,
        "finite": finite,
        **({} if finite else {"reason": "non-finite values"}),
    }


def step_correctness(pack: Pack, args: argparse.Namespace) -> None:
    """Every (backend, case), each caught and recorded on its own; none starts after the deadline."""
    import torch

    device = "cpu" if args.dry_run else "cuda"
    cases = DRY_CASES if args.dry_run else CASES
    rows: list[dict[str, Any]] = []
    pack.state["correctness"] = {"device": device, "rows": rows}
    start = time.monotonic()
    # Priority order. flex last: each of its shapes is a ~30 s compile on an H200, so the deadline cuts flex.
    runs = [(backend, case, "float32") for backend in ("triton", "blocked") for case in cases]
    runs += [("triton", case, "bfloat16") for case in (cases if args.dry_run else BF16_CASES)]
    runs += [("flex", case, "float32") for case in cases]
    for backend, case, dtype_name in runs:
        row: dict[str, Any] = {"backend": backend, "dtype": dtype_name, "case": _case_name(case)}
        t0 = time.monotonic()
        if time.monotonic() - start > args.deadline_s:
            row.update(status="skipped", reason=f"step deadline of {args.deadline_s:g} s reached")
        elif backend == "flex" and device == "cpu":
            row.update(status="skipped", reason="CUDA only here (flex has no backward on CPU)")
        else:
            try:
                row.update(check_case(backend, case, device, dtype_name))
            except Exception as err:  # noqa: BLE001 - one failing case (compile, launch) must not end the step
                row.update(status="error", reason=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
                traceback.print_exc()
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
        row["wall_s"] = round(time.monotonic() - t0, 2)
        rows.append(row)
        print(f"[correctness] {backend:8s} {row['case']}: {row['status']} {row.get('reason', '')}", flush=True)
        pack.save()


def step_ops(pack: Pack, args: argparse.Namespace) -> None:
    """The op sweep of ``configs/gpu.yaml`` (``gpu-dry-run.yaml`` for a dry run); the pack's deadline wins."""
    import dataclasses

    from benchlib.config import load_config
    from benchlib.runner import run_benchmark

    name = "gpu-dry-run.yaml" if args.dry_run else "gpu.yaml"
    cfg = dataclasses.replace(load_config(HERE / "configs" / name), deadline_s=args.deadline_s)

    def on_point(payload: dict[str, Any]) -> None:
        pack.state["ops"] = payload
        pack.save()

    run_benchmark(cfg, None, command=f"benchmarks/gpu_pack.py ops (configs/{name})", on_point=on_point)


def step_model(pack: Pack, args: argparse.Namespace) -> None:
    """GMAT-base (triton, blocked) against BERT/SDPA, ModernBERT and Longformer; one row per (L, engine)."""
    import bench_model

    lengths = DRY_MODEL_LENGTHS if args.dry_run else MODEL_LENGTHS
    common = (DRY_MODEL_ARGS if args.dry_run else MODEL_ARGS) + ["--device", "cpu" if args.dry_run else "cuda"]
    rows: list[dict[str, Any]] = []
    first = bench_model.parse_args([*common, "--length", str(lengths[0])])
    pack.state["model"] = {
        "describe": f"{first.layers} layers d={first.hidden} H={first.heads}, B={first.batch}, {first.dtype} on "
        f"{first.device}; GMAT M={first.num_memory} chunked C={first.chunk}; every engine gets "
        "attention_mask=None (all tokens real); GMAT scores only the labelled rows (sparse prediction)",
        "args": common,
        "rows": rows,
    }
    start = time.monotonic()
    for length in lengths:
        model_args = bench_model.parse_args([*common, "--length", str(length)])
        for engine in MODEL_ENGINES:
            if time.monotonic() - start > args.deadline_s:
                row = {"engine": engine, "length": length, "skipped": f"step deadline of {args.deadline_s:g} s reached"}
            else:
                row = bench_model.measure(engine, model_args)  # records its own failure as "skipped"
            rows.append(row)
            print(f"[model] {json.dumps(row)}", flush=True)
            pack.save()


def finish(pack: Pack, step: str, rc: int) -> None:
    """Record a step's exit code (a step killed by its timeout stays ``running`` until here) and re-render."""
    s = pack.state["steps"].setdefault(step, {"status": "not started"})
    s["rc"] = rc
    if s["status"] == "not started":
        s["error"] = "not started: the pack's time budget was spent"
    elif s["status"] == "running":
        s["status"] = "killed"
        s["error"] = f"killed by its hard timeout (exit code {rc})" if rc in (124, 137) else f"exit code {rc}"
    pack.save(png=True)


STEP_FUNCTIONS = {"env": step_env, "correctness": step_correctness, "ops": step_ops, "model": step_model}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=(*STEPS, "finish"))
    parser.add_argument("finish_args", nargs="*", help="for finish: STEP RC")
    parser.add_argument("--out", required=True, help="output folder ($OUT)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, same code")
    parser.add_argument("--deadline-s", type=float, default=60.0, help="start no new row after this many seconds")
    args = parser.parse_args(argv)
    pack = Pack(Path(args.out), args.dry_run)
    if args.step == "finish":
        if len(args.finish_args) != 2 or args.finish_args[0] not in STEPS:
            parser.error(f"finish needs STEP RC with STEP in {STEPS}, got {args.finish_args}")
        finish(pack, args.finish_args[0], int(args.finish_args[1]))
        return 0
    status: dict[str, Any] = {"status": "running", "started": _utc(), "deadline_s": args.deadline_s}
    pack.state["steps"][args.step] = status
    pack.save()
    t0 = time.monotonic()
    try:
        STEP_FUNCTIONS[args.step](pack, args)
        status["status"] = "done"
    except Exception as err:  # noqa: BLE001 - a failed step is a result; the later steps still run
        traceback.print_exc()
        status.update(status="failed", error=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
    status["wall_s"] = round(time.monotonic() - t0, 1)
    pack.save(png=True)
    return 0 if status["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
