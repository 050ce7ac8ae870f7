"""Where the Triton kernels' time goes, and which launch configuration is fastest: one short GPU call.

    PYTHONPATH=src OUT=DIR python3 benchmarks/triton_tune.py --deadline-s 150      (one H100/H200)
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/triton_tune.py --dry-run --out DIR   (CPU, tiny)

Part 1, host overhead: at a small L (little GPU work), one call of ``triton_attention`` timed three ways
(wall clock with a sync, like ``benchmarks/gpu_pack.sh``; host time to enqueue; GPU time between CUDA events),
plus the profiler's top operators by self CPU time, for the triton and blocked forward.
Part 2, launch configurations: the forward kernels and the backward kernels are timed apart
(``triton.testing.do_bench``, median GPU time, L2 flushed) at the headline shape of docs/benchmarks.md
(bf16, B=1, H=16, D=64, M=64, L=65,536, chunked C=512 and window w=256), each candidate first checked
against the reference op on an odd length (forward and gradients). The default config runs first.
Writes ``tune.json`` to ``--out`` after every row, so a kill loses at most the row in flight.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from gmat.ops import AttentionPattern, gmat_attention
from gmat.ops import triton_kernels as tk

FWD_FIELDS = ("block_m", "block_n", "num_warps", "num_stages")
BWD_FIELDS = ("dq_block_m", "bwd_block_n", "kv_block_m", "kv_block_n", "bwd_num_warps", "bwd_num_stages")
# Candidates as changes to the default config (D=64), most promising first; {} is the default itself. The first
# run (docs/benchmarks.md, "Launch configuration") started from ``first_cuda_config`` and chose today's default.
FWD_CANDIDATES: list[dict[str, int]] = [
    {},
    {"block_m": 128},
    {"num_warps": 8},
    {"num_stages": 2},
    {"num_stages": 4},
    {"block_m": 128, "num_warps": 8},
    {"block_n": 128, "num_stages": 2},
    {"block_n": 32},
]
BWD_CANDIDATES: list[dict[str, int]] = [
    {},
    {"kv_block_m": 64},
    {"bwd_num_stages": 3},
    {"dq_block_m": 64},
    {"kv_block_n": 64},
    {
        "dq_block_m": 128,
        "bwd_block_n": 64,
        "kv_block_m": 64,
        "kv_block_n": 128,
        "bwd_num_warps": 8,
        "bwd_num_stages": 3,
    },
    {"bwd_num_warps": 8},
    {"bwd_block_n": 64, "bwd_num_stages": 4},
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _inputs(b: int, h: int, m: int, seq: int, d: int, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(seq + 7 * m)
    return [torch.randn(b, h, m + seq, d, generator=gen).to(device=device, dtype=dtype) for _ in range(3)]


def host_overhead(device: torch.device, seq: int, heads: int, dtype: torch.dtype, calls: int) -> dict[str, Any]:
    """Wall (sync each call), host enqueue and GPU-event time per forward call, and the profiler's top ops."""
    pattern = AttentionPattern(64, "chunked", chunk_size=512 if seq >= 1024 else 32)
    q, k, v = _inputs(1, heads, 64, seq, 64, dtype, device)
    profiled = 1 if device.type == "cpu" else 5
    rows: dict[str, Any] = {"seq_len": seq, "heads": heads, "pattern": "chunked", "M": 64}
    for name, fn in {
        "triton": lambda: tk.triton_attention(q, k, v, pattern),
        "blocked": lambda: gmat_attention(q, k, v, pattern, backend="blocked"),
    }.items():
        with torch.no_grad():
            for _ in range(1 if device.type == "cpu" else 3):
                fn()
            _sync(device)
            wall = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                _sync(device)
                wall.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            host = (time.perf_counter() - t0) / calls
            _sync(device)
            gpu = None
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                for _ in range(calls):
                    fn()
                end.record()
                torch.cuda.synchronize()
                gpu = start.elapsed_time(end) / calls
            acts = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(profiled):
                    fn()
                _sync(device)
        top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        rows[name] = {
            "wall_ms": 1e3 * statistics.median(wall),
            "host_enqueue_ms": 1e3 * host,
            "gpu_event_ms": gpu,
            "profile_top_self_cpu_us_per_call": [
                {"op": e.key, "self_cpu_us": e.self_cpu_time_total / profiled, "count": e.count / profiled} for e in top
            ],
        }
    return rows


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(phase: str, cfg: tk.TritonConfig, pattern: AttentionPattern, code: int, args, dtype, device) -> dict:
    """``cfg``'s kernels of one phase vs the reference op in fp32 on the same (rounded) inputs.

    The forward phase compares O; the backward phase runs the default forward and ``cfg``'s backward and
    compares dQ, dK, dV. Only that phase's kernels are compiled for ``cfg``.
    """
    q, k, v = _inputs(2, 2, pattern.num_memory, args.check_len, 64, dtype, device)
    go = torch.randn_like(q)
    ref_leaves = [t.float().clone().requires_grad_(True) for t in (q, k, v)]
    ref = gmat_attention(*ref_leaves, pattern, backend="reference")
    ref.backward(go.float())
    size, scale = pattern.chunk_size or pattern.window, 1.0 / 8.0
    if phase == "fwd":
        out, _ = tk._forward(q, k, v, None, code, size, pattern.num_memory, scale, cfg)
        return {"out": _rel(out, ref.detach())}
    out, lse = tk._forward(q, k, v, None, code, size, pattern.num_memory, scale, args.base)
    grads = tk._backward(go, q, k, v, out, lse, None, code, size, pattern.num_memory, scale, cfg)
    return {name: _rel(g, r.grad) for name, g, r in zip(("dq", "dk", "dv"), grads, ref_leaves)}


def bench(fn, device: torch.device) -> float:
    """Median ms of ``fn``: GPU events via triton's do_bench on CUDA, wall clock on the interpreter."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    times = []
    for _ in range(1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def tune(args, device, dtype, state: dict[str, Any], save) -> None:
    start = time.monotonic()
    base = args.base = tk.default_config(64, device)
    seq = args.seq_len
    patterns = {
        "chunked": (AttentionPattern(64, "chunked", chunk_size=args.chunk), 0),
        "window": (AttentionPattern(64, "window", window=args.window), 1),
    }
    plan = [(phase, c) for pair in zip(FWD_CANDIDATES, BWD_CANDIDATES) for phase, c in zip(("fwd", "bwd"), pair)]
    if args.dry_run:
        plan = [("fwd", {}), ("fwd", {"num_warps": 2}), ("bwd", {}), ("bwd", {"bwd_num_stages": 2})]
    for phase, change in plan:
        cfg = dataclasses.replace(base, **change)
        fields = FWD_FIELDS if phase == "fwd" else BWD_FIELDS
        row: dict[str, Any] = {"phase": phase, "change": change, "config": {f: getattr(cfg, f) for f in fields}}
        if time.monotonic() - start > args.deadline_s:
            row["status"] = f"skipped: deadline {args.deadline_s:g} s"
            state["rows"].append(row)
            continue
        try:
            for kind, (pattern, code) in patterns.items():
                errs = check(phase, cfg, pattern, code, args, dtype, device)
                row[f"check_{kind}"] = errs
                if not all(e < args.tol for e in errs.values()):
                    raise AssertionError(f"{kind}: error above {args.tol}: {errs}")
                q, k, v = _inputs(1, args.heads, 64, seq, 64, dtype, device)
                meta = (code, pattern.chunk_size or pattern.window, 64, 1.0 / 8.0)
                if phase == "fwd":
                    call = functools.partial(tk._forward, q, k, v, None, *meta, cfg)
                else:
                    out, lse = tk._forward(q, k, v, None, *meta, base)
                    call = functools.partial(tk._backward, torch.randn_like(out), q, k, v, out, lse, None, *meta, cfg)
                row[f"{kind}_ms"] = bench(call, device)
            row["status"] = "ok"
        except Exception as err:  # noqa: BLE001  (one bad config must not lose the others)
            row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            row["traceback"] = traceback.format_exc()[-2000:]
        state["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
        save()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "tune-out"))
    parser.add_argument("--dry-run", action="store_true", help="CPU interpreter, tiny shapes, same code")
    parser.add_argument("--deadline-s", type=float, default=150.0, help="no new config after this many seconds")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    args.heads = 2 if args.dry_run else 16
    args.seq_len, args.chunk, args.window, args.check_len = (
        (64, 32, 16, 45) if args.dry_run else (65536, 512, 256, 1777)
    )
    args.tol = 1e-4 if args.dry_run else 2e-2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)"}
    state.update(torch=torch.__version__, triton=__import__("triton").__version__, rows=[])

    def save() -> None:
        tmp = out / "tune.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(out / "tune.json")

    try:
        lengths = (64,) if args.dry_run else (4096, 16384)
        state["host_overhead"] = [
            host_overhead(device, s, args.heads, dtype, 2 if args.dry_run else 50) for s in lengths
        ]
        print(json.dumps(state["host_overhead"], indent=1)[:6000], flush=True)
    except Exception:  # noqa: BLE001
        state["host_overhead_error"] = traceback.format_exc()[-3000:]
        print(state["host_overhead_error"], flush=True)
    save()
    tune(args, device, dtype, state, save)
    print("\nphase change                                   chunked ms  window ms  status")
    for r in state["rows"]:
        chunked, window = r.get("chunked_ms", float("nan")), r.get("window_ms", float("nan"))
        print(f"{r['phase']:5} {json.dumps(r['change']):42} {chunked:10.3f} {window:10.3f}  {r['status'][:60]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
