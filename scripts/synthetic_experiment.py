"""Run the synthetic global-reasoning benchmark and write docs/results-synthetic data and plots.

Every run is exactly ``gmat train configs/synthetic/<name>.yaml --set train.seed=S task.seed=S
run_dir=runs/synthetic/<name>-L<L>-s<S> [task.seq_len=L]`` followed by
``gmat eval runs/synthetic/<name>-L<L>-s<S> --checkpoint latest --split test``; this script only runs
them in-process (one import of torch per worker) on ``--workers`` processes and aggregates the results.
Finished runs (``results.json`` with ``finished: true``) are skipped, so the script can be re-run.

    python scripts/synthetic_experiment.py --seeds 0 1 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "synthetic"
TASKS = ("majority", "majority-tagging", "lookup")
VARIANTS = ("dense", "chunked-m0", "chunked-m1", "chunked-m8", "chunked-m32", "window-m8")
BASE_LENGTH = 512
# accuracy against L: majority, chunked M=0 vs M=8; (length, number of seeds)
LENGTH_SWEEP = {
    "task": "majority",
    "variants": ("chunked-m0", "chunked-m8"),
    "lengths": ((1024, 3), (2048, 3), (4096, 3), (8192, 1)),
}


def _jobs(tasks: list[str], seeds: list[int], runs_dir: Path, with_length_sweep: bool, extra: list[str]) -> list[dict]:
    jobs = []
    for task in tasks:
        for seed in seeds:  # seed-major, so a sweep cut short still has every variant
            for variant in VARIANTS:
                jobs.append({"task": task, "variant": variant, "seq_len": BASE_LENGTH, "seed": seed})
    if with_length_sweep:
        for length, n_seeds in LENGTH_SWEEP["lengths"]:
            for variant in LENGTH_SWEEP["variants"]:
                for seed in seeds[:n_seeds]:
                    jobs.append({"task": LENGTH_SWEEP["task"], "variant": variant, "seq_len": length, "seed": seed})
    for job in jobs:
        name = f"{job['task']}-{job['variant']}"
        job["config"] = str(CONFIGS / f"{name}.yaml")
        job["run_dir"] = str(runs_dir / f"{name}-L{job['seq_len']}-s{job['seed']}")
        job["overrides"] = [
            f"train.seed={job['seed']}",
            f"task.seed={job['seed']}",
            f"run_dir={job['run_dir']}",
            f"task.seq_len={job['seq_len']}",
            *extra,
            "train.progress=false",
        ]
    return jobs


def _run(job: dict) -> dict:
    try:
        return _run_one(job)
    except Exception as err:  # one broken run must not stop the sweep; it is reported instead
        return {**{k: job[k] for k in ("task", "variant", "seq_len", "seed")}, "error": repr(err)}


def _run_one(job: dict) -> dict:
    from gmat.training.config import load_config
    from gmat.training.evaluate import evaluate_run
    from gmat.training.loop import train

    results_path = Path(job["run_dir"]) / "results.json"
    if (
        results_path.is_file()
        and json.loads(results_path.read_text()).get("finished")
        and (Path(job["run_dir"]) / "test.json").is_file()
    ):
        results = json.loads(results_path.read_text())
        test = json.loads((Path(job["run_dir"]) / "test.json").read_text())
    else:
        config = load_config(job["config"], job["overrides"])
        t0 = time.perf_counter()
        results = train(config)
        test = evaluate_run(job["run_dir"], checkpoint="latest", split="test")
        test["seconds"] = time.perf_counter() - t0
        (Path(job["run_dir"]) / "test.json").write_text(json.dumps(test, indent=2) + "\n")
    metric = results["metric"]
    return {
        **{k: job[k] for k in ("task", "variant", "seq_len", "seed")},
        "metric": metric,
        "test": test["metrics"][metric],
        "eval_final": results["eval"][metric],
        "train_seconds": results["train_seconds"],
        "wall_seconds": results["wall_seconds"],
    }


def _summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["variant"], row["seq_len"]), []).append(row)
    out = []
    for (task, variant, length), items in sorted(groups.items()):
        values = [r["test"] for r in items]
        out.append(
            {
                "task": task,
                "variant": variant,
                "seq_len": length,
                "metric": items[0]["metric"],
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "seeds": [r["seed"] for r in items],
                "values": values,
                "train_seconds_mean": statistics.mean(r["train_seconds"] for r in items),
            }
        )
    return out


def _plots(summary: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gmat.tasks.synthetic import make_task
    from gmat.training.config import load_config

    tasks = [t for t in TASKS if any(r["task"] == t and r["seq_len"] == BASE_LENGTH for r in summary)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = {r["variant"]: r for r in summary if r["task"] == task and r["seq_len"] == BASE_LENGTH}
        chunk = load_config(CONFIGS / f"{task}-chunked-m8.yaml").model.chunk_size
        window = load_config(CONFIGS / f"{task}-window-m8.yaml").model.attention_window
        ms = [(0, "chunked-m0"), (1, "chunked-m1"), (8, "chunked-m8"), (32, "chunked-m32")]
        pts = [(m, rows[v]) for m, v in ms if v in rows]
        if pts:
            ax.errorbar(
                [m for m, _ in pts],
                [r["mean"] for _, r in pts],
                yerr=[r["std"] for _, r in pts],
                marker="o",
                capsize=3,
                label=f"chunked C={chunk}",
            )
        if "dense" in rows:
            ax.axhline(rows["dense"]["mean"], color="k", ls="--", lw=1, label="dense M=0 (mean)")
        if "window-m8" in rows:  # drawn slightly right of M=8 so that it stays visible
            ax.errorbar(
                [9.5],
                [rows["window-m8"]["mean"]],
                yerr=[rows["window-m8"]["std"]],
                marker="s",
                color="C2",
                capsize=3,
                ls="none",
                label=f"window w={window}, M=8",
            )
        chance = make_task(load_config(CONFIGS / f"{task}-chunked-m0.yaml").task).chance
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks([0, 1, 8, 32], labels=["0", "1", "8", "32"])
        metric = next(iter(rows.values()))["metric"]
        ax.set(
            title=f"{task} (L={BASE_LENGTH})",
            xlabel="memory slots M",
            ylabel=f"test {metric}",
            ylim=(0, 1.02),
        )
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "synthetic-accuracy-vs-m.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for variant, label in (("chunked-m0", "chunked M=0"), ("chunked-m8", "GMAT chunked M=8")):
        rows = sorted(
            (r for r in summary if r["task"] == LENGTH_SWEEP["task"] and r["variant"] == variant),
            key=lambda r: r["seq_len"],
        )
        if rows:
            ax.errorbar(
                [r["seq_len"] for r in rows],
                [r["mean"] for r in rows],
                yerr=[r["std"] for r in rows],
                marker="o",
                capsize=3,
                label=label,
            )
    ax.set_xscale("log", base=2)
    ax.set(
        title="majority: accuracy vs L (C=32)",
        xlabel="sequence length L",
        ylabel="test accuracy",
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "synthetic-accuracy-vs-l.png", dpi=110)
    plt.close(fig)


def _markdown(summary: list[dict]) -> str:
    """Markdown table: one row per task, one column per variant, mean ± std (n) of the test metric."""
    header = "| task (metric) | L | " + " | ".join(VARIANTS) + " |"
    lines = [header, "|" + "---|" * (len(VARIANTS) + 2)]
    keys = sorted({(r["task"], r["seq_len"]) for r in summary}, key=lambda k: (TASKS.index(k[0]), k[1]))
    for task, length in keys:
        cells = []
        metric = ""
        for variant in VARIANTS:
            row = next(
                (r for r in summary if (r["task"], r["variant"], r["seq_len"]) == (task, variant, length)),
                None,
            )
            if row is None:
                cells.append("–")
            else:
                metric = row["metric"]
                cells.append(f"{row['mean']:.3f} ± {row['std']:.3f} ({len(row['values'])})")
        lines.append(f"| {task} ({metric}) | {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run (or collect) the sweep, then write the JSON summary and the plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "synthetic"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--no-length-sweep", action="store_true")
    parser.add_argument("--only-length-sweep", action="store_true")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], help="extra overrides for every run")
    parser.add_argument("--aggregate-only", action="store_true", help="only collect finished runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    jobs = _jobs(args.tasks, args.seeds, Path(args.runs_dir), not args.no_length_sweep, args.overrides)
    if args.only_length_sweep:
        jobs = [j for j in jobs if j["seq_len"] != BASE_LENGTH]
    jobs.sort(key=lambda j: j["seq_len"] == BASE_LENGTH)  # the (short) length sweep first
    # the summary covers every finished run of the full sweep, not only the runs of this invocation
    every_job = _jobs(list(TASKS), args.seeds, Path(args.runs_dir), True, args.overrides)
    t0 = time.perf_counter()
    if not args.aggregate_only:
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=None) as pool:
            rows = []
            for row in pool.imap_unordered(_run, jobs):
                if "error" in row:
                    print(f"FAILED {row}", flush=True)
                    continue
                rows.append(row)
                print(
                    f"[{time.perf_counter() - t0:7.0f}s] {len(rows)}/{len(jobs)} "
                    f"{row['task']} {row['variant']} "
                    f"L={row['seq_len']} seed={row['seed']}: test {row['metric']}={row['test']:.3f} "
                    f"({row['train_seconds']:.0f}s)",
                    flush=True,
                )
    rows = [_run(j) for j in every_job if (Path(j["run_dir"]) / "test.json").is_file()]
    rows = [r for r in rows if "error" not in r]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = _summarise(rows)
    (out / "synthetic.json").write_text(
        json.dumps(
            {
                "summary": summary,
                "runs": sorted(rows, key=lambda r: (r["task"], r["variant"], r["seq_len"], r["seed"])),
                "sweep_wall_seconds": time.perf_counter() - t0,
                "workers": args.workers,
            },
            indent=1,
        )
        + "\n"
    )
    _plots(summary, out)
    (out / "synthetic-table.md").write_text(_markdown(summary))
    for r in summary:
        print(
            f"{r['task']:<18} {r['variant']:<12} L={r['seq_len']:<5} {r['metric']:<9} "
            f"{r['mean']:.3f} ± {r['std']:.3f}  (n={len(r['values'])})"
        )


if __name__ == "__main__":
    main()
