"""CPU peak memory of GMAT against dense SDPA, op level and model level, side by side in one run.

Every (level, engine, L) point runs in a fresh Python subprocess, so one engine's allocator state cannot
lower or raise another's figure. In the child, glibc is told (``mallopt``) to serve every allocation of
>= 64 KiB with ``mmap`` and to trim eagerly, so freed tensors go back to the OS; after one warm-up step the
kernel's resident-set high-water mark ``VmHWM`` is reset through ``/proc/self/clear_refs`` and one
forward+backward step is measured:

* ``step MiB``: ``VmHWM`` after the step minus ``VmRSS`` before it (the step's activations, saved tensors,
  outputs and gradients; inputs and weights excluded);
* ``process MiB``: the process's ``VmHWM`` over its whole life (interpreter, torch, weights, warm-up and the
  measured step), the figure ``/usr/bin/time -v`` calls "maximum resident set size".

Engines, fp32:

* op level, q/k/v ``(1, 8, M+L, 64)`` with M = 64 (``dense_sdpa`` takes the same M+L rows, no mask):
  ``dense_sdpa`` (``F.scaled_dot_product_attention``), ``blocked_chunked`` (C = 512) and ``blocked_window``
  (w = 256) through ``gmat_attention(backend="blocked")``; the step is ``out.backward(grad)``;
* model level, d = 256, 4 layers, 4 heads, FFN 1024, vocabulary 30,522, a batch of one sequence with an
  all-ones ``attention_mask`` (what a tokenizer returns): ``bert_sdpa`` (``BertModel`` with SDPA),
  ``gmat_chunked`` (``GmatModel``, M = 64, C = 512) and ``gmat_window`` (M = 64, w = 256); the step is
  ``last_hidden_state.square().mean().backward()``.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/cpu_memory_compare.py --lengths 4096 16384 --out cpu-memory.json

``--num-memory 0`` measures the GMAT engines without memory slots (M = 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib/, beside this file

OP_ENGINES = ("dense_sdpa", "blocked_chunked", "blocked_window")
MODEL_ENGINES = ("bert_sdpa", "gmat_chunked", "gmat_window")
NUM_MEMORY, CHUNK, WINDOW = 64, 512, 256
HEADS, HEAD_DIM = 8, 64  # op level
MODEL_SIZE = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "vocab_size": 30_522,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def _op_step(engine: str, length: int, num_memory: int) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    from gmat.ops import AttentionPattern, gmat_attention

    g = torch.Generator().manual_seed(0)
    shape = (1, HEADS, num_memory + length, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=g).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=g)
    if engine == "dense_sdpa":
        attend = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    else:
        kind = engine.removeprefix("blocked_")
        size = {"chunk_size": CHUNK} if kind == "chunked" else {"window": WINDOW}
        pattern = AttentionPattern(num_memory, kind, **size)
        attend = lambda: gmat_attention(q, k, v, pattern, backend="blocked")  # noqa: E731

    def step() -> None:
        attend().backward(grad)
        for t in (q, k, v):
            t.grad = None

    return step


def _model_step(engine: str, length: int, num_memory: int) -> Callable[[], None]:
    import torch

    torch.manual_seed(0)
    if engine == "bert_sdpa":
        from transformers import BertConfig, BertModel

        model = BertModel(
            BertConfig(**MODEL_SIZE, max_position_embeddings=length, attn_implementation="sdpa"),
            add_pooling_layer=False,
        )
    else:
        from gmat.modeling import GmatConfig, GmatModel

        kind = engine.removeprefix("gmat_")
        size = {"chunk_size": CHUNK} if kind == "chunked" else {"attention_window": WINDOW}
        config = GmatConfig(
            **MODEL_SIZE,
            max_position_embeddings=length,
            num_memory_tokens=num_memory,
            attention_pattern=kind,
            attn_backend="blocked",
            **size,
        )
        model = GmatModel(config, add_pooling_layer=False)
    model.train()
    ids = torch.randint(1000, MODEL_SIZE["vocab_size"], (1, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    def step() -> None:
        model(input_ids=ids, attention_mask=mask).last_hidden_state.square().mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def child(level: str, engine: str, length: int, num_memory: int = NUM_MEMORY) -> dict:
    """Build, warm up, then measure one step; returns the row."""
    from benchlib.measure import MemoryMeter, status_kib  # mallopt: freed memory goes back to the OS

    meter = MemoryMeter("cpu")
    import torch

    step = (_op_step if level == "op" else _model_step)(engine, length, num_memory)
    step()  # warm-up: lazy initialisations, thread pools
    warm_peak = status_kib("VmHWM")  # interpreter, imports, weights, inputs and the warm-up step
    before = meter.start()  # trims, then resets VmHWM to the current RSS
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    step_bytes = meter.peak(before)
    after_peak = status_kib("VmHWM")
    # clear_refs reset the high-water mark, so the process's life-long peak is the larger of the two phases
    return {
        "level": level,
        "engine": engine,
        "length": length,
        "step_mib": step_bytes / 2**20,
        "process_mib": max(warm_peak, after_peak) / 1024,
        "num_memory": num_memory,
        "rss_before_step_mib": before / 2**20,
        "step_s": seconds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _run_child(level: str, engine: str, length: int, num_memory: int) -> dict:
    """One point in a fresh process."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        level,
        engine,
        str(length),
        "--num-memory",
        str(num_memory),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        return {"level": level, "engine": engine, "length": length, "error": f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run every point in a fresh process and print the table (or, with --child, one point)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--levels", nargs="+", default=["op", "model"], choices=["op", "model"])
    p.add_argument("--engines", nargs="+", default=None, help="only these engines (default: all of each level)")
    p.add_argument("--num-memory", type=int, default=NUM_MEMORY, help="M of the GMAT engines (default 64)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("--child", nargs=3, metavar=("LEVEL", "ENGINE", "L"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        level, engine, length = args.child
        print(json.dumps(child(level, engine, int(length), args.num_memory)))
        return 0
    rows = []
    for level in args.levels:
        for length in args.lengths:
            for engine in OP_ENGINES if level == "op" else MODEL_ENGINES:
                if args.engines and engine not in args.engines:
                    continue
                row = _run_child(level, engine, length, args.num_memory)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    from benchlib.measure import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("| level | engine | L | step peak MiB (fwd+bwd) | process peak RSS MiB | step s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['level']} | {r['engine']} | {r['length']} | {r['error']} | | |")
            continue
        print(
            f"| {r['level']} | {r['engine']} | {r['length']} | {r['step_mib']:,.0f} | {r['process_mib']:,.0f} "
            f"| {r['step_s']:.2f} |"
        )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
