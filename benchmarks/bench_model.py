"""Whole-model MLM training step: GMAT against BERT (SDPA), HF Longformer, HF BigBird and ModernBERT.

The target: a GMAT-base model (12 layers, d=768, H=12; M=64, chunked C=512) trains an MLM step at
L=16,384 with >= 1.5x the tokens/s of ``BertForMaskedLM`` with SDPA, and less peak memory. Every engine is a
``*ForMaskedLM`` of the same depth and width, randomly initialised (speed does not depend on the weights),
trained with AdamW on the same random batch with 15% of the positions labelled, hidden dropout at each library's
default and no attention dropout (the fused kernels have none):

    python benchmarks/bench_model.py --device cuda --dtype bf16 --out bench-results/gpu   # --budget-s 200 by default
    python benchmarks/bench_model.py --device cpu --layers 2 --hidden 128 --heads 2 --length 2048

One step = forward + loss + backward + ``optimizer.step()`` + ``zero_grad``; bf16 runs under autocast with
fp32 weights (the usual mixed-precision recipe). On CUDA each step is bracketed by ``synchronize``; the median
of ``--steps`` timed steps after ``--warmup`` is reported as tokens/s (B·L / step time). Peak memory (CUDA) is
``max_memory_allocated`` over the timed steps minus what was allocated before the first step (weights,
optimizer state after warm-up, batch). Engines that fail or run out of memory are recorded as skipped with the
reason; ``--budget-s`` stops starting new engines. Writes ``model-step.json`` and ``model-step.md`` into
``--out``. GMAT runs with ``sparse_prediction`` (the head scores the labelled rows only, ModernBERT's option);
the HF models run their full vocabulary head, as users run them; ``gmat_triton_fullhead`` is GMAT with the full
head too, the like-for-like row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib/, beside this file

from benchlib.measure import environment  # noqa: E402

ENGINES = (  # in running order: the must-haves first, so a spent budget skips the least needed
    "bert_sdpa",
    "gmat_triton",
    "gmat_triton_fullhead",
    "modernbert",
    "longformer",
    "bigbird",
    "gmat_blocked",
    "gmat_flex",
)
VOCAB = 30_522


def _sizes(args: argparse.Namespace) -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
    )


NO_ATTENTION_DROPOUT = {"attention_probs_dropout_prob": 0.0}  # fused kernels train without it (ModernBERT's default)


def build(engine: str, args: argparse.Namespace) -> tuple[torch.nn.Module, Callable[[dict], dict]]:
    """The model of ``engine`` and a function turning the common batch into its keyword arguments."""
    L, size = args.length, _sizes(args)  # noqa: N806 (shape letter)
    plain = lambda b: b  # noqa: E731
    if engine.startswith("gmat_"):
        from gmat.modeling import GmatConfig, GmatForMaskedLM

        backend, _, head = engine[len("gmat_") :].partition("_")
        config = GmatConfig(
            **size,
            **NO_ATTENTION_DROPOUT,
            max_position_embeddings=L,
            num_memory_tokens=args.num_memory,
            attention_pattern="chunked",
            chunk_size=args.chunk,
            attn_backend=backend,
            sparse_prediction=head != "fullhead",
        )
        return GmatForMaskedLM(config), plain
    if engine == "bert_sdpa":
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(**size, **NO_ATTENTION_DROPOUT, max_position_embeddings=L, attn_implementation="sdpa")
        return BertForMaskedLM(config), plain
    if engine == "longformer":
        from transformers import LongformerConfig, LongformerForMaskedLM

        # attention_window = C keys per query (w = C/2 each side), the first M tokens global: GMAT's budget
        config = LongformerConfig(
            **size, **NO_ATTENTION_DROPOUT, max_position_embeddings=L + 2, attention_window=args.chunk
        )

        def longformer_inputs(b: dict) -> dict:
            glob = torch.zeros_like(b["input_ids"])
            glob[:, : args.num_memory] = 1
            return {**b, "global_attention_mask": glob}

        return LongformerForMaskedLM(config), longformer_inputs
    if engine == "bigbird":
        from transformers import BigBirdConfig, BigBirdForMaskedLM

        config = BigBirdConfig(
            **size,
            **NO_ATTENTION_DROPOUT,
            max_position_embeddings=L,
            attention_type="block_sparse",
            block_size=64,
            num_random_blocks=3,
        )
        return BigBirdForMaskedLM(config), plain
    if engine == "modernbert":
        from transformers import ModernBertConfig, ModernBertForMaskedLM

        special = dict(pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102)
        config = ModernBertConfig(**size, **special, max_position_embeddings=L, local_attention=args.chunk)
        return ModernBertForMaskedLM(config), plain
    raise ValueError(f"--engines: unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def make_batch(args: argparse.Namespace, device: str) -> dict:
    """Random tokens, all real, 15% of the positions labelled (the rest -100).

    Every token is real, so no engine gets an ``attention_mask`` (None for all alike): an all-ones mask would
    send GMAT down its padding paths (and rebuild flex's BlockMask every layer) while BERT's SDPA drops it.
    """
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB, (args.batch, args.length), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    return {"input_ids": ids.to(device), "attention_mask": None, "labels": labels.to(device)}


def measure(engine: str, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps of ``engine``; returns the row (or a skipped row with the reason)."""
    device = args.device
    row: dict = {"engine": engine, "length": args.length, "batch": args.batch}
    try:
        torch.manual_seed(0)
        model, inputs = build(engine, args)
        model.to(device).train()
        row["parameters"] = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = inputs(make_batch(args, device))
        amp = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

        def step() -> float:
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            with amp:
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            row["loss"] = float(loss.detach())
            return time.perf_counter() - t0

        for _ in range(args.warmup):
            step()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        times = [step() for _ in range(args.steps)]
        ms = 1e3 * statistics.median(times)
        row.update(step_ms=ms, tokens_per_s=args.batch * args.length / (ms / 1e3), steps=len(times))
        if device == "cuda":
            row["peak_gib"] = (torch.cuda.max_memory_allocated() - before) / 2**30
    except Exception as err:  # OOM or an engine that cannot run this shape: recorded, not fatal
        row["skipped"] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    finally:
        model = opt = batch = None  # noqa: F841 (free before the next engine)
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], env: dict, args: argparse.Namespace) -> str:
    """The table: tokens/s, step time, peak memory and the ratio to BERT (SDPA)."""
    bert = next((r for r in rows if r["engine"] == "bert_sdpa" and "tokens_per_s" in r), None)
    where = env.get("gpu") or env.get("cpu")
    lines = [
        f"MLM training step, {args.layers} layers d={args.hidden} H={args.heads}, B={args.batch} L={args.length}, "
        f"{args.dtype}, {args.device} ({where}); GMAT M={args.num_memory} chunked C={args.chunk}",
        "",
        "| engine | tokens/s | step ms | peak GiB | × BERT-SDPA tokens/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['engine']} | skipped: {r['skipped']} | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / bert['tokens_per_s']:.2f}×" if bert else "–"
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "–"
        lines.append(f"| {r['engine']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {peak} | {ratio} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated, of {','.join(ENGINES)} or gmat_<any gmat.ops backend>[_fullhead]",
    )
    p.add_argument("--length", type=int, default=16_384)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--num-memory", type=int, default=64)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=200.0, help="start no new engine after this many seconds")
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES and not e.startswith("gmat_")]  # gmat_<backend>[_fullhead]
    if unknown or not engines:
        p.error(f"--engines: unknown {unknown} (known: {', '.join(ENGINES)})")
    args.engines = engines
    for name in ("length", "batch", "layers", "hidden", "heads", "chunk", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def write(out: Path, rows: list[dict], env: dict, args: argparse.Namespace) -> str:
    """(Re)write ``model-step.json`` and ``model-step.md`` with the rows so far; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "model-step.json").write_text(json.dumps({"args": vars(args), "env": env, "rows": rows}, indent=1) + "\n")
    table = markdown(rows, env, args)
    (out / "model-step.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment(args.device)
    rows: list[dict] = []
    out = Path(args.out)
    t0 = time.perf_counter()
    for engine in args.engines:
        if time.perf_counter() - t0 > args.budget_s:
            rows.append({"engine": engine, "skipped": f"budget: started no engine after {args.budget_s:.0f} s"})
        else:
            rows.append(measure(engine, args))
            print(json.dumps(rows[-1]), flush=True)
        table = write(out, rows, env, args)  # after every row: a kill loses at most the row in flight
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
