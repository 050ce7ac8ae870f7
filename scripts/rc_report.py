"""Collect finished reading-comprehension runs into docs/results/rc.json, a markdown table and the F1 plot.

Every run is ``gmat train configs/rc/<name>.yaml`` (see docs/results-rc.md); this script only reads their
``results.json`` and ``eval/per_question.jsonl``. Besides EM / F1 overall and by the answer's distance from the
question, it gives each model's **paired** difference to the chunked M=0 run: the mean over the same dev questions
of (F1 of the model - F1 of chunked M=0), with two standard errors. That error covers the choice of questions,
not the training seed: for that, add a second seed of chunked M=0 (``--set train.seed=1 run_dir=...``, the same
questions) to ``--runs``.

    python scripts/rc_report.py                      # the five configs of configs/rc/
    python scripts/rc_report.py --runs runs/rc/a runs/rc/b --baseline runs/rc/a --out /tmp/rc
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiment_runs import mean_two_se

from gmat.tasks.rc import DISTANCE_BUCKETS, distance_bucket

REPO = Path(__file__).resolve().parents[1]
RUNS = tuple(
    f"runs/rc/{name}"
    for name in (
        "bert512-windows-l1024",
        "chunked-m0-l1024",
        "gmat-chunked-m16-l1024",
        "gmat-chunked-m64-l1024",
        "gmat-window-m16-l1024",
    )
)


REPORT_FIELDS = (
    "model",
    "num_memory",
    "pattern",
    "length",
    "em",
    "f1",
    "budget",
    "eval_questions",
    "train_questions",
    "train_seconds",
    "eval_seconds",
    "hardware",
    "by_distance",
    "answers_truncated",
    "run_dir",
)


def report_row(results: dict, run_dir: str | Path) -> dict:
    """The report row of one finished run's ``results.json`` (``gmat train``'s, or an older flat one)."""
    if "config" in results and "eval" in results and "em" not in results:  # the training loop's results
        config, ev = results["config"], results["eval"]
        task, model, train = config["task"], config["model"], config["train"]
        pattern = model["attention_pattern"] + ("-windows" if task["featurization"] == "windows" else "")
        budget = (
            f"{task['train_questions'] or 'all'} train questions, {results['steps_done']} steps of "
            f"{train['batch_size']}; {results['train_seconds']:.0f} s training on {results.get('hardware', '?')}"
        )
        results = {
            "model": config.get("name") or Path(run_dir).name,
            "num_memory": model["num_memory_tokens"],
            "pattern": pattern,
            "length": task["length"],
            "em": ev["em"],
            "f1": ev["f1"],
            "budget": budget,
            "eval_questions": ev["count"],
            "train_questions": task["train_questions"],
            "train_seconds": results["train_seconds"],
            "hardware": results.get("hardware"),
            "by_distance": ev["by_distance"],
            "answers_truncated": ev.get("answers_truncated"),
        }
    row = {k: results[k] for k in REPORT_FIELDS if k in results}
    row["run_dir"] = str(run_dir)
    return row


def plot_f1_by_distance(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Plot F1 against the answer's distance bucket, one line per report row (needs ``by_distance``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [distance_bucket(lo) for lo, _ in DISTANCE_BUCKETS]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for row in rows:
        bd = row.get("by_distance") or {}
        xs = [i for i, b in enumerate(labels) if b in bd]
        ax.plot(xs, [bd[labels[i]]["f1"] for i in xs], "o-", label=f"{row['model']} (L={row['length']})")
    ax.set_xticks(range(len(labels)), labels)
    ax.set(
        xlabel="answer distance from the question (chunks of 128 tokens)",
        ylabel="F1",
        ylim=(0, 100),
        title=title or "F1 by answer distance",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_rc_report(
    run_dirs: list[str | Path], json_path: str | Path, png_path: str | Path | None = None
) -> list[dict]:
    """Collect ``results.json`` of finished rc runs into report rows (``docs/results/rc.json``) and plot.

    Raises:
        FileNotFoundError: when a run directory has no ``results.json`` (the run did not finish).
    """
    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: the run did not finish")
        rows.append(report_row(json.loads(path.read_text()), run_dir))
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    if png_path is not None:
        plot_f1_by_distance(rows, png_path)
    return rows


def per_question(run_dir: Path) -> dict[str, dict]:
    """``{question id: {"em", "f1", "distance_chunks", ...}}`` of a run's dev evaluation, EM / F1 in points (0-100).

    Rows carry ``"scale": 100``; rows without it come from files written when per-question scores were in [0, 1]
    and are multiplied by 100.
    """
    lines = (run_dir / "eval" / "per_question.jsonl").read_text().splitlines()
    rows = {}
    for row in map(json.loads, lines):
        factor = 100.0 / row.get("scale", 1)
        rows[row["id"]] = {**row, "em": factor * row["em"], "f1": factor * row["f1"], "scale": 100}
    return rows


def paired_difference(mine: dict[str, dict], base: dict[str, dict], metric: str) -> dict:
    """Mean of (mine - base) of ``metric`` over the questions both scored, in points (%), with two standard errors."""
    shared = sorted(set(mine) & set(base))
    diffs = [mine[q][metric] - base[q][metric] for q in shared]  # per_question gives points (0-100)
    return {**mean_two_se(diffs), "questions": len(diffs)}


def markdown(rows: list[dict]) -> str:
    """Overall table (with the paired differences) and the F1-by-distance table."""
    lines = [
        "| model | M | pattern | L | EM | F1 | ΔF1 vs chunked M=0 (± 2 SE) | ΔEM (± 2 SE) | dev q | train q | "
        "train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r.get("vs_chunked_m0")
        df = f"{d['f1']['mean']:+.2f} ± {d['f1']['two_se']:.2f}" if d else "–"
        de = f"{d['em']['mean']:+.2f} ± {d['em']['two_se']:.2f}" if d else "–"
        lines.append(
            f"| {r['model']} | {r['num_memory']} | {r['pattern']} | {r['length']} | {r['em']:.2f} | {r['f1']:.2f} | "
            f"{df} | {de} | {r.get('eval_questions', '?')} | {r.get('train_questions', '?')} | "
            f"{r.get('train_seconds', 0) / 60:.0f} |"
        )
    labels = [distance_bucket(lo) for lo, _ in DISTANCE_BUCKETS]
    buckets = [b for b in labels if any(b in r.get("by_distance", {}) for r in rows)]
    counts = {b: next(r["by_distance"][b]["count"] for r in rows if b in r.get("by_distance", {})) for b in buckets}
    lines += [
        "",
        "F1 by the answer's distance from the question, in chunks of 128 tokens (dev questions per bucket):",
        "",
        "| model | " + " | ".join(f"{b} ({counts[b]})" for b in buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for r in rows:
        cells = [f"{r['by_distance'][b]['f1']:.1f}" if b in r.get("by_distance", {}) else "–" for b in buckets]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write ``OUT/rc.json``, ``OUT/rc-table.md`` and ``OUT/rc-f1-by-distance.png``; print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=list(RUNS), help="finished run directories")
    p.add_argument("--baseline", default="runs/rc/chunked-m0-l1024", help="the run the others are paired with")
    p.add_argument("--out", default=str(REPO / "docs" / "results"))
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = write_rc_report(args.runs, out / "rc.json", out / "rc-f1-by-distance.png")
    base = per_question(Path(args.baseline))
    for row in rows:
        if Path(row["run_dir"]) != Path(args.baseline):
            mine = per_question(Path(row["run_dir"]))
            row["vs_chunked_m0"] = {m: paired_difference(mine, base, m) for m in ("f1", "em")}
    (out / "rc.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows)
    (out / "rc-table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
