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
from pathlib import Path

from experiment_runs import mean_two_se

from gmat.tasks.rc import DISTANCE_BUCKETS, distance_bucket, write_rc_report

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


def per_question(run_dir: Path) -> dict[str, dict]:
    """``{question id: {"em", "f1", "distance_chunks", ...}}`` of a run's dev evaluation."""
    lines = (run_dir / "eval" / "per_question.jsonl").read_text().splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def paired_difference(mine: dict[str, dict], base: dict[str, dict], metric: str) -> dict:
    """Mean of (mine - base) of ``metric`` over the questions both scored, in points (%), with two standard errors."""
    shared = sorted(set(mine) & set(base))
    diffs = [100 * (mine[q][metric] - base[q][metric]) for q in shared]  # per-question scores are in [0, 1]
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
