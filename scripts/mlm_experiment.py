"""Run the MLM comparison of docs/results-mlm.md and write docs/results/mlm.json, the table and the plot.

Every run is exactly ``gmat train configs/mlm/<name>.yaml`` followed by

    gmat eval mlm --model runs/mlm/<name>/checkpoints/step_00001000 --data ../shared/data/corpus/valid.jsonl
        --length L --max-examples N --split-chunk-size C      (and once more with test.jsonl)

with N = 65,536 / L examples (the same 64 k tokens at every L) and C the chunk size of the L's chunked runs,
so every model of one L is scored on the same masked tokens; models with memory are scored once more with
``--memory-swap`` (each example reads the memory rows of the previous one in its batch: does the model use
what its memory holds about the example?). This script runs them in-process on
``--workers`` processes (1 thread each) and aggregates. Finished runs are skipped, so it can be re-run.

    python scripts/mlm_experiment.py --workers 2
    python scripts/mlm_experiment.py --aggregate-only
"""

from __future__ import annotations

import json
from pathlib import Path

from experiment_runs import collect, mean_two_se, parser, run_all, train_or_reuse, write_results

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "mlm"
# in running order: the main comparison first, the long runs spread over the workers
RUNS = (
    "scratch-L1024-C128-m0",
    "scratch-L1024-C128-m16",
    "scratch-L1024-dense-m0",
    "scratch-L1024-C128-m64",
    "scratch-L4096-C256-m0",
    "scratch-L4096-C256-m16",
    "scratch-L1024-window64-m16",
    "scratch-L1024-C128-m0-seed1",  # how far apart two seeds of one model land: the yardstick for the others
    "minilm-L1024-C128-m0",  # converted MiniLM (task.pretrained: minilm), fine-tuned
    "minilm-L1024-C128-m16",
    "scratch-L1024-C256-m0",  # C = 256 at L = 1024 (the split stays at C = 128, so the pairing holds)
    "scratch-L1024-C256-m16",
    "minilm-L1024-C128-m0-seed1",  # the MiniLM seed spread, and M=16 vs M=0 again with another seed
    "minilm-L1024-C128-m16-seed1",
    "scratch-L4096-window128-m16",  # the rest of the L = 4096 grid; all paired with scratch-L4096-C256-m0
    "scratch-L4096-C256-m64",
    "scratch-L4096-C128-m0",
    "scratch-L4096-C128-m16",
    "scratch-L1024-C256-m64",  # completes chunked C x M in {0, 16, 64} at both lengths
    "scratch-L4096-C128-m64",
    "scratch-L4096-C256-m0-seed1",  # the seed spread at L = 4096: the yardstick for its memory rows
    "scratch-L4096-window128-m0",  # is window + M's deficit at L = 4096 the window or the memory?
)
EVAL_TOKENS = 65_536
RUNS_DIR = REPO / "runs" / "mlm"
SMOOTH = 0.8  # decay of the plotted moving average of the logged training losses (one every 10 steps)
# what the other runs are paired with: the chunked M=0 run of the same start (scratch / minilm) and length
BASELINE = {
    ("scratch", 1024): "scratch-L1024-C128-m0",
    ("scratch", 4096): "scratch-L4096-C256-m0",
    ("minilm", 1024): "minilm-L1024-C128-m0",
}


def _evaluate(run_dir: Path, config, split: str, memory_swap: bool = False) -> dict:
    from gmat.tasks.mlm import evaluate_mlm

    path = run_dir / f"eval-{split}{'-swap' if memory_swap else ''}.json"
    if path.is_file():
        return json.loads(path.read_text())
    data = config.task.eval_data if split == "valid" else config.task.test_data
    length = config.task.seq_len
    from gmat.training.checkpoint import latest_checkpoint

    # the final weights: every model is scored after the same budget (best-accuracy selection on 32 examples
    # picked step 750 for some runs and 1000 for others)
    result = evaluate_mlm(
        latest_checkpoint(run_dir / "checkpoints"),
        data,
        length=length,
        max_examples=EVAL_TOKENS // length,
        split_chunk_size=config.task.split_chunk_size,
        cache_dir=config.task.cache_dir,
        batch_size=4,
        per_example=True,
        memory_swap=memory_swap,
    )
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _paired_difference(a: dict, b: dict, group: str) -> dict:
    """Mean over examples of (loss of a - loss of b) per masked token of ``group``, with 2 standard errors.

    ``a`` and ``b`` are ``evaluate_mlm(..., per_example=True)`` results on the same examples and masks.
    """
    diffs = [
        (counts[group][0] - b["per_example"][i][group][0]) / counts[group][2]
        for i, counts in a["per_example"].items()
        if counts[group][2]
    ]
    return {**mean_two_se(diffs), "examples": len(diffs)}


def _paired(name: str, base: str, suffix: str = "") -> dict[str, dict]:
    """Per split, the paired difference of run ``name`` (its ``eval-<split><suffix>.json``) to run ``base``.

    On all tokens and on ``outside_chunk`` tokens.
    """
    out = {}
    for split in ("valid", "test"):
        mine, theirs = (
            json.loads((RUNS_DIR / n / f"eval-{split}{x}.json").read_text()) for n, x in ((name, suffix), (base, ""))
        )
        out[split] = {g: _paired_difference(mine, theirs, g) for g in ("all", "outside_chunk")}
    return out


def _add_paired_differences(rows: list[dict]) -> None:
    """Give rows their paired loss differences (every model of one length scores the same masked tokens).

    ``vs_chunked_m0``: to the chunked M=0 run of the same start, length and seed. ``vs_seed0``: a second seed's
    difference to seed 0 of the same config, the yardstick for the first.
    """
    finished = {r["setting"] for r in rows}
    for row in rows:
        base = BASELINE[(row["start"], row["length"])] + (f"-seed{row['seed']}" if row["seed"] else "")
        if row["setting"] != base and base in finished:
            row["vs_chunked_m0"] = _paired(row["setting"], base)
        if row["seed"] and row["config"] in finished:
            row["vs_seed0"] = _paired(row["setting"], row["config"])
        if row["num_memory"]:
            row["memory_swap"] = _paired(row["setting"], row["setting"], "-swap")


def _run_one(name: str) -> dict:
    base, _, seed = name.partition("-seed")  # "<config>-seed<S>": the same run with seed S
    config, results = train_or_reuse(CONFIGS / f"{base}.yaml", RUNS_DIR / name, int(seed or 0))
    run_dir = Path(config.run_dir)
    valid = _evaluate(run_dir, config, "valid")
    test = _evaluate(run_dir, config, "test")
    m, t = config.model, config.train
    if m.num_memory_tokens:  # the control: each example scored with another example's memory rows
        for split in ("valid", "test"):
            _evaluate(run_dir, config, split, memory_swap=True)
    pattern = {"chunked": f"chunked C={m.chunk_size}", "window": f"window w={m.attention_window}"}
    start = "minilm" if config.task.pretrained == "minilm" else "scratch"
    described = {
        "minilm": "converted MiniLM-L6-H384 (d=384, 6 layers, fresh MLM head)",
        "scratch": f"from scratch, d={m.hidden_size}, {m.num_hidden_layers} layers",
    }[start]
    return {
        "setting": name,
        "config": base,
        "seed": int(seed or 0),
        "start": start,
        "num_memory": m.num_memory_tokens,
        "pattern": pattern.get(m.attention_pattern, m.attention_pattern),
        "length": config.task.seq_len,
        "metrics": {"valid": valid["metrics"], "test": test["metrics"]},
        "eval_examples": valid["num_examples"],
        "split_chunk_size": valid["split_chunk_size"],
        "evaluated_step": results["steps_done"],
        "train_seconds": results["train_seconds"],
        "num_parameters": results["num_parameters"],
        "budget": (
            f"{described}; {t.steps} steps x {t.batch_size} x "
            f"{config.task.seq_len} tokens, lr {t.lr:g}; 1 CPU thread (2-core AMD EPYC VM, 2 runs side by side), "
            f"{results['train_seconds'] / 60:.0f} min"
        ),
    }


def _curves(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["start"], r["length"]) for r in rows}, reverse=True)  # (start, L)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (start, length) in zip(axes[0], panels):
        for row in (r for r in rows if (r["start"], r["length"]) == (start, length)):
            records = [json.loads(x) for x in (RUNS_DIR / row["setting"] / "metrics.jsonl").open()]
            steps, losses = zip(*[(r["step"], r["loss"]) for r in records if r["split"] == "train"])
            # an exponential moving average (decay SMOOTH): single batches are too noisy to compare runs
            smooth, ema = [], None
            for loss in losses:
                ema = loss if ema is None else SMOOTH * ema + (1 - SMOOTH) * loss
                smooth.append(ema)
            evals = [(r["step"], r["mlm_loss"]) for r in records if r["split"] == "eval"]
            seed = row["setting"].partition("-seed")[2]
            label = f"{row['pattern']}, M={row['num_memory']}" + (f" (seed {seed})" if seed else "")
            (line,) = ax.plot(steps, smooth, lw=1.2, label=label)
            ax.plot(*zip(*evals), ls="none", marker="o", ms=4, color=line.get_color())
        title = "MLM from scratch" if start == "scratch" else "converted MiniLM, fine-tuned"
        ax.set(title=f"{title}, L={length}", xlabel="step", ylabel="loss (nats / masked token)")
        ax.text(
            0.02,
            0.02,
            "lines: training loss (moving average); dots: eval on 8-32 examples",
            fontsize=7,
            transform=ax.transAxes,
        )
        ax.set_ylim(top=8.0 if start == "scratch" else 11.0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "mlm-curves.png", dpi=110)
    plt.close(fig)


def _markdown(rows: list[dict]) -> str:
    head = (
        "| setting | pattern | M | L | split | loss | ppl | acc | Δ loss vs chunked M=0 (± 2 SE) | "
        "outside_chunk loss / acc | Δ outside_chunk | chunk_only loss / acc | masked tokens (out / only) | "
        "Δ loss vs seed 0 | train time |\n" + "|---" * 15 + "|\n"
    )

    def delta(r: dict, split: str, group: str, key: str = "vs_chunked_m0") -> str:
        d = r.get(key, {}).get(split, {}).get(group)
        return "–" if d is None else f"{d['mean']:+.3f} ± {d['two_se']:.3f}"

    lines = []
    for r in rows:
        for split in ("valid", "test"):
            g = r["metrics"][split]
            a, o, c = g["all"], g["outside_chunk"], g["chunk_only"]
            lines.append(
                f"| {r['setting']} | {r['pattern']} | {r['num_memory']} | {r['length']} | {split} | "
                f"{a['loss']:.3f} | {a['perplexity']:.0f} | {a['accuracy']:.2%} | {delta(r, split, 'all')} | "
                f"{o['loss']:.3f} / {o['accuracy']:.2%} | {delta(r, split, 'outside_chunk')} | "
                f"{c['loss']:.3f} / {c['accuracy']:.2%} | {o['tokens']} / {c['tokens']} | "
                f"{delta(r, split, 'all', 'vs_seed0')} | {r['train_seconds'] / 60:.0f} min |"
            )
    swap = [
        f"| {r['setting']} | {r['num_memory']} | {split} | {r['metrics'][split]['all']['loss']:.3f} | "
        f"{delta(r, split, 'all', 'memory_swap')} | {delta(r, split, 'outside_chunk', 'memory_swap')} |"
        for r in rows
        if "memory_swap" in r
        for split in ("valid", "test")
    ]
    swap_head = (
        "\n**Memory-swap control**: the same examples and masks, each read with the memory rows of the previous "
        "example in its batch of 4, at every layer (paired Δ = swapped − own, ± 2 SE).\n\n"
        "| setting | M | split | own loss | Δ loss, swapped memory | Δ outside_chunk |\n" + "|---" * 6 + "|\n"
    )
    return head + "\n".join(lines) + "\n" + (swap_head + "\n".join(swap) + "\n" if swap else "")


def main() -> None:
    """Run (or collect) the runs, then write the JSON rows, the markdown table and the curves."""
    args = parser(__doc__.splitlines()[0], RUNS, RUNS, 2, REPO / "docs" / "results").parse_args()
    if not args.aggregate_only:
        run_all(_run_one, args.runs, args.workers, lambda r: f"valid loss {r['metrics']['valid']['all']['loss']:.3f}")
    rows = collect(_run_one, [n for n in RUNS if (RUNS_DIR / n / "eval-test.json").is_file()])
    _add_paired_differences(rows)
    write_results(args.out, "mlm", rows, _markdown, _curves)


if __name__ == "__main__":
    main()
