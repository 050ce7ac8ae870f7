"""GPU check of the ``triton`` backend: correctness on CUDA, then timing against the other engines.

Usage (one CUDA GPU, bf16). The defaults are sized for under 6 minutes on an H100: timing rows stop
starting after ``--budget-s`` (270 s, compilation included) and the rest are recorded as skipped. Not yet
run on a GPU::

    python benchmarks/gpu_triton.py                       # writes $OUT/gpu_triton.json (or ./gpu_triton.json)
    python benchmarks/gpu_triton.py --lengths 65536 --budget-s 120

1. Correctness: ``triton`` against the fp32 ``reference`` at small L (awkward lengths, padding, M = 0 with a
   fully padded example), forward and gradients, with flash-attention's rule: error <= 2x (forward) / 3x
   (gradients) the error of a plain bf16 run, plus one bf16 epsilon.
2. Timing at the issue's shapes (B=1, H=16, D=64, M=64; chunked C=512 and window w=256; L in 16k, 65k,
   262k), forward and forward+backward, median of ``triton.testing.do_bench``: ``triton``, ``blocked``,
   ``flex`` (FlexAttention with the pattern's BlockMask), dense SDPA over all M+L rows (no mask: the
   speed of a dense kernel doing more work) and HF ``LongformerSelfAttention`` (band of w=256 with the
   first 64 of L positions global; it includes its own Q/K/V projections). TFLOP/s are *effective*: only
   the allowed (query, key) pairs are counted, 4·D FLOPs each forward, 3.5x that forward+backward.

Engines that cannot run at a length are recorded as skipped with the reason (FlexAttention's BlockMask is
built from a dense (M+L)² evaluation, dense SDPA at 262k takes seconds per call, Longformer's score tensor
is huge). A wall-clock budget stops the sweep early and records what was left. The run order puts the
issue's headline length (65,536) first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gmat.ops import AttentionPattern, gmat_attention
from gmat.ops.reference import reference_attention


def useful_flops(pattern: AttentionPattern, seq_len: int, *, heads: int, head_dim: int, batch: int,
                 backward: bool) -> float:
    """Effective FLOPs: allowed (query, key) pairs x 4·D (QK^T and PV), x 3.5 with the backward pass."""
    fwd = 4.0 * batch * heads * head_dim * pattern.allowed_pairs(seq_len)
    return fwd * 3.5 if backward else fwd


def format_table(rows: list[dict]) -> str:
    """Fixed-width table of timing rows (keys: L, pattern, backend, mode, ms, tflops, peak_gib, ...)."""
    head = (f"{'L':>7} {'pattern':<11} {'backend':<11} {'mode':<7} {'ms':>9} {'TFLOP/s':>8} {'GiB':>7} "
            f"{'vs dense':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        key = f"{r['L']:>7} {r['pattern']:<11} {r['backend']:<11} {r['mode']:<7}"
        if r.get("ms") is None:
            lines.append(f"{key} skipped: {r.get('skip')}")
            continue
        speed = r.get("speedup_vs_dense")
        speed_text = f"{speed:.1f}x" if speed else "-"
        lines.append(f"{key} {r['ms']:>9.3f} {r['tflops']:>8.1f} {r['peak_gib']:>7.2f} {speed_text:>8}")
    return "\n".join(lines)


# ---- correctness ------------------------------------------------------------------------------------------
def _lowp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """Plain low-precision attention (matmuls in q's dtype, softmax in fp32): the error yardstick."""
    allowed = pattern.to_dense(q.shape[-2] - pattern.num_memory, mask, device=q.device)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_any = allowed.any(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~row_any, 0.0), dim=-1) * row_any
    return torch.matmul(probs.to(q.dtype), v)


def _fwd_bwd(fn: Callable, xs: list[torch.Tensor], do: torch.Tensor, dtype: torch.dtype,
             pattern: AttentionPattern, mask: torch.Tensor | None) -> list[torch.Tensor]:
    leaves = [x.to(dtype).requires_grad_() for x in xs]
    out = fn(*leaves, pattern, mask)
    return [out.float()] + [g.float() for g in torch.autograd.grad(out, leaves, do.to(dtype))]


def check_correctness(device: str, dtype: torch.dtype) -> list[dict]:
    """Compare ``triton`` with the reference on small awkward shapes; one dict per case."""
    # The first two compile the kernel variants the timing uses; the last two cover padding (a fully
    # padded example with M = 0 has rows without any key) and the other head dims. Each distinct
    # variant costs a few seconds of Triton compilation, so the list stays short.
    cases = [
        (2, 4, 1000, 64, AttentionPattern(num_memory=64, kind="chunked", chunk_size=512), None),
        (1, 4, 1537, 64, AttentionPattern(num_memory=64, kind="window", window=256), None),
        (2, 2, 777, 128, AttentionPattern(num_memory=7, kind="chunked", chunk_size=100), "full"),
        (2, 2, 777, 32, AttentionPattern(num_memory=0, kind="window", window=33), "full"),
    ]
    results = []
    for b, h, seq, d, pat, pad in cases:
        gen = torch.Generator().manual_seed(seq + d)
        n = pat.num_memory + seq
        xs = [torch.randn(b, h, n, d, generator=gen).to(device) for _ in range(3)]
        do = torch.randn(b, h, n, d, generator=gen).to(device)
        mask = None
        if pad is not None:
            mask = torch.ones(b, seq, dtype=torch.bool)
            mask[0, seq // 2:] = False
            if pad == "full" and b > 1:
                mask[1] = False
            mask = mask.to(device)
        got = _fwd_bwd(lambda *a: gmat_attention(*a, backend="triton"), xs, do, dtype, pat, mask)
        ref = _fwd_bwd(reference_attention, xs, do, torch.float32, pat, mask)
        low = _fwd_bwd(_lowp_attention, xs, do, dtype, pat, mask)
        atol = torch.finfo(dtype).eps
        ok, errs = True, {}
        for i, name in enumerate(("out", "dq", "dk", "dv")):
            err = (got[i] - ref[i]).abs().max().item()
            base = (low[i] - ref[i]).abs().max().item()
            limit = (2.0 if i == 0 else 3.0) * base + atol
            errs[name] = {"err": err, "lowp_err": base, "limit": limit}
            ok = ok and math.isfinite(err) and err <= limit
        results.append({"case": f"B{b} H{h} L{seq} M{pat.num_memory} D{d} {pat.kind} pad={pad}", "ok": ok,
                        "errors": errs})
    return results


# ---- engines -----------------------------------------------------------------------------------------------
def _longformer_fn(pattern: AttentionPattern, seq_len: int, heads: int, head_dim: int, dtype: torch.dtype,
                   device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """HF ``LongformerSelfAttention`` over L positions, the first M global, band w (its own projections)."""
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    config = LongformerConfig(hidden_size=heads * head_dim, num_attention_heads=heads,
                              attention_window=[2 * pattern.window], attention_probs_dropout_prob=0.0)
    layer = LongformerSelfAttention(config, layer_id=0).to(device=device, dtype=dtype)
    mask = torch.zeros(1, seq_len, device=device, dtype=dtype)  # 0 local, +10000 global, -10000 padding
    mask[:, : pattern.num_memory] = 10000.0
    is_masked, is_global = mask < 0, mask > 0

    def run(hidden: torch.Tensor) -> torch.Tensor:
        return layer(hidden, attention_mask=mask, is_index_masked=is_masked, is_index_global_attn=is_global,
                     is_global_attn=True)[0]

    return run


def _time(fn: Callable[[], object], rep_ms: int) -> tuple[float, float]:
    """Median ms of ``fn`` and its peak memory in GiB."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    ms = triton.testing.do_bench(fn, warmup=max(rep_ms // 4, 5), rep=rep_ms, return_mode="median")
    return float(ms), peak


def bench_one(engine: str, pattern: AttentionPattern, seq_len: int, mode: str, *, heads: int, head_dim: int,
              dtype: torch.dtype, rep_ms: int) -> tuple[float, float]:
    """Time one engine at one shape; ``mode`` is ``"fwd"`` or ``"fwd+bwd"``. Returns (ms, peak GiB)."""
    device = "cuda"
    m = pattern.num_memory
    backward = mode == "fwd+bwd"
    if engine == "longformer":
        fn = _longformer_fn(pattern, seq_len, heads, head_dim, dtype, device)
        x = torch.randn(1, seq_len, heads * head_dim, device=device, dtype=dtype, requires_grad=backward)
        args = [x]
        call = fn
    else:
        shape = (1, heads, m + seq_len, head_dim)
        args = [torch.randn(shape, device=device, dtype=dtype, requires_grad=backward) for _ in range(3)]
        if engine == "dense":
            def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                return F.scaled_dot_product_attention(q, k, v)
        else:
            def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                return gmat_attention(q, k, v, pattern, backend=engine)
    if backward:
        grad = torch.randn_like(call(*args))

        def step() -> None:
            for a in args:
                a.grad = None
            call(*args).backward(grad)
    else:
        def step() -> None:
            with torch.no_grad():
                call(*args)
    return _time(step, rep_ms)


def _skip_reason(engine: str, seq_len: int, full: bool) -> str | None:
    if full:
        return None
    if engine == "flex" and seq_len > 65536:
        return "BlockMask construction evaluates the dense (M+L)^2 mask"
    if engine == "dense" and seq_len > 65536:
        return "dense SDPA takes seconds per call here (use --full)"
    if engine == "longformer" and seq_len > 65536:
        return "HF Longformer's (L, H, 2w+1) fp32 scores exceed the time budget (use --full)"
    return None


def _environment() -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    try:
        env["git_sha"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_sha"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[65536, 262144, 16384])
    parser.add_argument("--patterns", nargs="+", default=["chunked", "window"], choices=["chunked", "window"])
    parser.add_argument("--engines", nargs="+", default=["triton", "blocked", "flex", "dense", "longformer"])
    parser.add_argument("--memory", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--rep-ms", type=int, default=150, help="do_bench measuring time per row")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="start no new timing row after this much wall time (compilation included)")
    parser.add_argument("--full", action="store_true", help="also run the engines skipped at long L")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_triton.json)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    start = time.monotonic()
    dtype = getattr(torch, args.dtype)
    report: dict = {"environment": _environment(), "args": vars(args), "correctness": [], "timings": []}
    out_path = pathlib.Path(args.out or pathlib.Path(os.environ.get("OUT", ".")) / "gpu_triton.json")

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2))

    all_ok = True
    if not args.skip_correctness:
        report["correctness"] = check_correctness("cuda", dtype)
        for r in report["correctness"]:
            errs = " ".join(f"{k}={v['err']:.2e}/{v['limit']:.2e}" for k, v in r["errors"].items())
            print(f"[{'ok' if r['ok'] else 'FAIL'}] {r['case']}: {errs}", flush=True)
            all_ok = all_ok and r["ok"]
        save()
        print(f"correctness done in {time.monotonic() - start:.0f}s", flush=True)

    rows = report["timings"]
    for seq_len in args.lengths:
        for kind in args.patterns:
            pattern = (AttentionPattern(num_memory=args.memory, kind="chunked", chunk_size=args.chunk)
                       if kind == "chunked" else
                       AttentionPattern(num_memory=args.memory, kind="window", window=args.window))
            label = f"{kind}{args.chunk if kind == 'chunked' else args.window}"
            for mode in ("fwd", "fwd+bwd"):
                dense_ms = None
                batch_rows = []
                for engine in args.engines:
                    row = {"L": seq_len, "pattern": label, "backend": engine, "mode": mode, "ms": None}
                    reason = _skip_reason(engine, seq_len, args.full)
                    if reason is None and time.monotonic() - start > args.budget_s:
                        reason = f"time budget of {args.budget_s:.0f}s spent"
                    if reason is None:
                        try:
                            ms, peak = bench_one(engine, pattern, seq_len, mode, heads=args.heads,
                                                 head_dim=args.head_dim, dtype=dtype, rep_ms=args.rep_ms)
                            flops = useful_flops(pattern, seq_len, heads=args.heads, head_dim=args.head_dim,
                                                 batch=1, backward=mode == "fwd+bwd")
                            row.update(ms=ms, tflops=flops / ms / 1e9, peak_gib=peak,
                                       ms_per_ktoken=ms / (seq_len / 1000))
                            if engine == "dense":
                                dense_ms = ms
                        except Exception as exc:  # noqa: BLE001 - an engine failing must not end the sweep
                            first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
                            reason = f"{type(exc).__name__}: {first_line}"
                        finally:
                            torch.cuda.empty_cache()
                    if reason is not None:
                        row["skip"] = reason
                    batch_rows.append(row)
                    print(format_table([row]).splitlines()[-1], flush=True)
                for row in batch_rows:
                    if dense_ms is not None and row.get("ms"):
                        row["speedup_vs_dense"] = dense_ms / row["ms"]
                rows.extend(batch_rows)
                save()

    # Linear scaling of the triton backend: per-token time at the longest L against 65,536.
    scaling = {}
    for r in rows:
        if r["backend"] == "triton" and r.get("ms"):
            scaling.setdefault((r["pattern"], r["mode"]), {})[r["L"]] = r["ms_per_ktoken"]
    report["scaling"] = [{"pattern": p, "mode": m, "ms_per_ktoken": v} for (p, m), v in scaling.items()]
    save()
    print()
    print(format_table(rows))
    for s in report["scaling"]:
        v = s["ms_per_ktoken"]
        if 65536 in v and len(v) > 1:
            longest = max(v)
            print(f"scaling {s['pattern']} {s['mode']}: per-token time at L={longest} is "
                  f"{v[longest] / v[65536]:.2f}x that at L=65536")
    verdict = "ok" if all_ok else "FAILED"
    print(f"\nwrote {out_path} after {time.monotonic() - start:.0f}s; correctness {verdict}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
