"""Run the compression runs of docs/results-compression.md and write docs/results/compression.json and plots.

Every run is exactly ``gmat train configs/compression/<name>.yaml`` followed by
``gmat eval runs/compression/<name> --checkpoint latest --split eval`` and ``... --split test``; this script
only runs them in-process on ``--workers`` processes (1 thread each) and aggregates. Finished runs are
skipped, so it can be re-run. Compressed-context runs also get each evaluation example's loss
(``eval-<split>-per-example.json``) and their paired difference to the no-context run. The from-scratch
"full context" baseline at A = 2048 (dense over 2,560 tokens) is left out by default: about 80 s a step on
this CPU, a GPU run.

    python scripts/compression_experiment.py --workers 1
    python scripts/compression_experiment.py --aggregate-only
"""

from __future__ import annotations

import json
from pathlib import Path

from experiment_runs import collect, mean_two_se, parser, run_all, train_or_reuse, write_results

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "compression"
RUNS_DIR = REPO / "runs" / "compression"
RUNS = (
    "reconstruction-L512-m8",
    "reconstruction-L512-m32",
    "reconstruction-L512-m128",
    "context-A2048-B512-none",
    "context-A2048-B512-compressed-m16",
    "context-A2048-B512-compressed-m64",
    "minilm-reconstruction-L512-m32",  # task.pretrained: minilm (converted MiniLM-L6-H384 layers 0-2, twice)
    "minilm-reconstruction-L512-m8",
    # task (b) from converted MiniLM, A = 512, B = 256: the same 6 pretrained layers read B in every mode
    "minilm-context-A512-B256-full",
    "minilm-context-A512-B256-compressed-m16",
    "minilm-context-A512-B256-compressed-m64",
    "minilm-context-A512-B256-none",
    # second seeds (train.seed = task.seed = 1: initialisation, data order, training masks), scored on the
    # seed-0 examples and masks: how far two seeds of one model land, the yardstick for the modes' differences
    "minilm-context-A512-B256-compressed-m16-seed1",
    "minilm-context-A512-B256-none-seed1",
    # A = 256: the fair full-context reference (A + B = 512 stays inside MiniLM's trained positions; at A = 512
    # the copied positions 512-767 collide with A's), with the modes it is compared with on the same windows
    "minilm-context-A256-B256-full",
    "minilm-context-A256-B256-compressed-m16",
    "minilm-context-A256-B256-none",
    "minilm-context-A256-B256-full-m16",  # full context with the 16 memory rows the other modes have
)
GPU_RUNS = ("context-A2048-B512-full",)


def _run_one(name: str) -> dict:
    from gmat.training.config import load_config
    from gmat.training.evaluate import evaluate_run

    run_dir = RUNS_DIR / name
    base, _, seed = name.partition("-seed")  # "<config>-seed<S>": the same run with seed S
    config, results = train_or_reuse(CONFIGS / f"{base}.yaml", run_dir, int(seed or 0))
    # scored on seed 0's evaluation examples and masks, like every run of its config
    scored = load_config(CONFIGS / f"{base}.yaml", [f"run_dir={run_dir}"])
    metrics = {}
    for split in ("eval", "test"):
        path = run_dir / f"eval-{split}.json"
        if not path.is_file():
            # the final weights: token accuracy plateaus at the most frequent token's rate early on, and the
            # best-accuracy checkpoint would then be the first step that reaches the plateau
            result = evaluate_run(run_dir, checkpoint="latest", split=split, overrides=["task.seed=0"])
            path.write_text(json.dumps(result, indent=1) + "\n")
        metrics["valid" if split == "eval" else "test"] = json.loads(path.read_text())["metrics"]
    m, t, s = config.model, config.train, config.task
    if s.name == "reconstruction":
        for split, swap in _memory_swaps(run_dir, scored).items():
            metrics["valid" if split == "eval" else "test"]["memory_swap"] = swap
    else:
        _per_example(run_dir, scored)  # for the paired differences between context modes and seeds
    pattern = {"chunked": f"chunked C={m.chunk_size}", "window": f"window w={m.attention_window}"}
    start = s.pretrained or "scratch"
    model = f"from scratch, d={m.hidden_size}" if start == "scratch" else f"from {start}"
    return {
        "setting": name,
        "config": base,
        "seed": int(seed or 0),
        "start": start,
        "task": s.name,
        "context": s.context_mode if s.name == "compressed_context" else None,
        "num_memory": m.num_memory_tokens,
        "pattern": pattern.get(m.attention_pattern, m.attention_pattern),
        "length": s.seq_len,
        "context_length": s.context_len if s.name == "compressed_context" else None,
        "metrics": metrics,
        "eval_examples": s.eval_size,
        "evaluated_step": results["steps_done"],
        "train_seconds": results["train_seconds"],
        "num_parameters": results["num_parameters"],
        "budget": (
            f"{model}, n_enc/n_mid/n_dec = {m.num_encoder_layers}/{m.num_bottleneck_layers}/"
            f"{m.num_decoder_layers}; {t.steps} steps x {t.batch_size} examples, lr {t.lr:g}, seed {t.seed}; "
            f"1 CPU thread (2-core AMD EPYC VM shared with 1-3 other runs), {results['train_seconds'] / 60:.0f} min"
        ),
    }


def _per_split(run_dir: Path, suffix: str) -> dict[str, dict]:
    """The cached ``eval-<split>-<suffix>.json`` of a run, for eval and test."""
    return {split: json.loads((run_dir / f"eval-{split}-{suffix}.json").read_text()) for split in ("eval", "test")}


def _cached_per_split(run_dir: Path, config, suffix: str, compute) -> dict[str, dict]:
    """``compute(model, task, split)`` on the final weights for eval and test, cached in ``eval-<split>-<suffix>.json``.

    The model is loaded once for the missing splits, the way ``gmat eval`` loads it.
    """
    missing = [split for split in ("eval", "test") if not (run_dir / f"eval-{split}-{suffix}.json").is_file()]
    if missing:
        from gmat.tasks.registry import create_task
        from gmat.training.checkpoint import latest_checkpoint, load_model_weights

        task = create_task(config.task)
        model = task.build_model(config.model)
        load_model_weights(latest_checkpoint(run_dir / "checkpoints"), model)
        for split in missing:
            result = compute(model, task, split)
            (run_dir / f"eval-{split}-{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    return _per_split(run_dir, suffix)


def _memory_swaps(run_dir: Path, config) -> dict[str, dict]:
    """``memory_swap_losses`` of the final weights on eval and test (``eval-<split>-swap.json``)."""
    from gmat.tasks.compression import memory_swap_losses

    return _cached_per_split(
        run_dir, config, "swap", lambda model, task, split: memory_swap_losses(model, task, split, batch_size=8)
    )


def _per_example(run_dir: Path, config) -> dict[str, dict]:
    """``per_example_losses`` of the final weights on eval and test (``eval-<split>-per-example.json``)."""
    from gmat.tasks.compression import per_example_losses

    return _cached_per_split(
        run_dir,
        config,
        "per-example",
        lambda model, task, split: per_example_losses(model, task, split, batch_size=config.train.eval_batch_size),
    )


def _paired(name: str, base: str) -> dict[str, dict]:
    """Mean over evaluation examples of (loss of ``name`` - loss of ``base``) per masked token, ± 2 SE, per split."""
    mine, theirs = (_per_split(RUNS_DIR / n, "per-example") for n in (name, base))
    out = {}
    for split, label in (("eval", "valid"), ("test", "test")):
        diffs = [(loss - theirs[split][i][0]) / n for i, (loss, n) in mine[split].items() if n]
        out[label] = {**mean_two_se(diffs), "examples": len(diffs), "baseline": base}
    return out


def _add_paired_differences(rows: list[dict]) -> None:
    """Give compressed-context rows their paired loss differences (every mode scores the same masked tokens).

    ``vs_none``: to the no-context run of the same start, lengths and seed. ``vs_seed0``: a second seed's
    difference to seed 0 of the same config, the yardstick for the first.
    """
    context = {r["setting"]: r for r in rows if r["task"] == "compressed_context"}
    group = lambda r: (r["start"], r["length"], r["context_length"], r["seed"])  # noqa: E731
    none = {group(r): name for name, r in context.items() if r["context"] == "none"}
    for row in context.values():
        if row["context"] != "none" and group(row) in none:
            row["vs_none"] = _paired(row["setting"], none[group(row)])
        if row["seed"] and row["config"] in context:
            row["vs_seed0"] = _paired(row["setting"], row["config"])


def _plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    recon = sorted((r for r in rows if r["task"] == "reconstruction"), key=lambda r: r["length"] / r["num_memory"])
    for start in sorted({r.get("start", "scratch") for r in recon}):
        mine = [r for r in recon if r.get("start", "scratch") == start]
        ratios = [r["length"] / r["num_memory"] for r in mine]
        left.plot(ratios, [r["metrics"]["test"]["accuracy"] for r in mine], marker="o", label=start)
    if recon:
        left.set_xscale("log", base=2)
        left.legend(title="start")
        left.set(title="(a) reconstruction, L=512", xlabel="compression ratio L/M", ylabel="test token accuracy")
    context = [r for r in rows if r["task"] == "compressed_context"]
    if not context:
        right.axis("off")
        right.text(0.5, 0.5, "(b) compressed context: not run yet", ha="center", va="center")
    else:
        groups = sorted({f"{r['start']}, A={r['context_length']}, B={r['length']}" for r in context})
        labels = [
            (r["context"] if r["context"] != "compressed" else f"M={r['num_memory']}")
            + (f"\nseed {r['seed']}" if r["seed"] else "")
            + (f"\n{r['start']} A={r['context_length']}" if len(groups) > 1 else "")
            for r in context
        ]
        right.bar(labels, [r["metrics"]["test"]["loss"] for r in context], color="C1")
        right.tick_params(axis="x", labelsize=8)
        title = "(b) MLM on B given context A" + (f"\n({groups[0]})" if len(groups) == 1 else "")
        right.set(title=title, ylabel="test MLM loss (nats)", xlabel="context: none / M memory rows / full")
        low = min(r["metrics"]["test"]["loss"] for r in context)
        right.set_ylim(bottom=max(0.0, low - 0.5))
    fig.tight_layout()
    fig.savefig(out / "compression-curves.png", dpi=110)
    plt.close(fig)


def _markdown(rows: list[dict]) -> str:
    head = (
        "| setting | M | L | context | split | loss | perplexity | token accuracy | swapped-memory loss (gap) "
        "| paired Δ loss (± 2 SE) | tokens | train time |\n" + "|---" * 12 + "|\n"
    )
    lines = []
    for r in rows:
        ctx = f"{r['context']} ({r['context_length']})" if r["context"] else "–"
        for split in ("valid", "test"):
            g = r["metrics"][split]
            swap = g.get("memory_swap")
            swapped = f"{swap['swapped_loss']:.3f} ({swap['swap_gap']:+.3f})" if swap else "–"
            deltas = [
                f"{label} {d['mean']:+.3f} ± {d['two_se']:.3f}"
                for label, d in (
                    ("vs none", r.get("vs_none", {}).get(split)),
                    ("vs seed 0", r.get("vs_seed0", {}).get(split)),
                )
                if d is not None
            ]
            delta = "; ".join(deltas) or "–"
            lines.append(
                f"| {r['setting']} | {r['num_memory']} | {r['length']} | {ctx} | {split} | {g['loss']:.3f} | "
                f"{g['perplexity']:.0f} | {g['accuracy']:.2%} | {swapped} | {delta} | {g['tokens']} | "
                f"{r['train_seconds'] / 60:.0f} min |"
            )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    """Run (or collect) the runs, then write the JSON rows, the markdown table and the plot."""
    args = parser(__doc__.splitlines()[0], RUNS, RUNS + GPU_RUNS, 1, REPO / "docs" / "results").parse_args()
    if not args.aggregate_only:
        run_all(_run_one, args.runs, args.workers, lambda r: f"test loss {r['metrics']['test']['loss']:.3f}")
    names = [n for n in RUNS + GPU_RUNS if (REPO / "runs" / "compression" / n / "eval-test.json").is_file()]
    rows = collect(_run_one, names)
    _add_paired_differences(rows)
    write_results(args.out, "compression", rows, _markdown, _plot)


if __name__ == "__main__":
    main()
