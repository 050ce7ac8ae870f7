"""scripts/rc_report.py: paired differences and tables from hand-made finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repo_scripts import load_script


@pytest.fixture(scope="module")
def report():
    return load_script("scripts/rc_report.py")


def fake_run(root: Path, name: str, m: int, f1s: list[float], old_format: bool = False) -> Path:
    """A finished run; ``old_format``: per_question.jsonl as first written (scores in [0, 1], no "scale")."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    questions = [
        {"id": f"q{i}", "prediction": "x", "em": float(f == 1.0), "f1": f, "distance_chunks": i}
        for i, f in enumerate(f1s)
    ]
    rows = (
        questions if old_format else [{**q, "em": 100 * q["em"], "f1": 100 * q["f1"], "scale": 100} for q in questions]
    )
    (run / "eval" / "per_question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in rows))
    f1 = 100 * sum(f1s) / len(f1s)
    by_distance = {str(i): {"em": 100 * q["em"], "f1": 100 * q["f1"], "count": 1} for i, q in enumerate(questions)}
    results = {
        "model": name,
        "num_memory": m,
        "pattern": "chunked",
        "length": 1024,
        "em": 0.0,
        "f1": f1,
        "budget": "b",
        "eval_questions": len(f1s),
        "train_questions": 8,
        "train_seconds": 60.0,
        "by_distance": by_distance,
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.mark.parametrize(
    ("old_base", "old_gmat"), [(False, False), (True, True), (True, False)], ids=["points", "old-files", "mixed"]
)
def test_paired_differences_in_points_and_tables(report, tmp_path: Path, old_base: bool, old_gmat: bool) -> None:
    base = fake_run(tmp_path, "m0", 0, [0.0, 0.5, 1.0, 0.0], old_format=old_base)
    gmat = fake_run(tmp_path, "m16", 16, [1.0, 0.5, 1.0, 0.5], old_format=old_gmat)
    out = tmp_path / "out"
    assert report.main(["--runs", str(base), str(gmat), "--baseline", str(base), "--out", str(out)]) == 0
    rows = json.loads((out / "rc.json").read_text())
    assert "vs_chunked_m0" not in rows[0]
    d = rows[1]["vs_chunked_m0"]["f1"]
    # differences 100, 0, 0, 50 points: mean 37.5, sd 47.87, 2 SE = 47.87
    assert d["mean"] == pytest.approx(37.5) and d["two_se"] == pytest.approx(47.87, abs=0.01)
    assert d["questions"] == 4
    assert rows[1]["vs_chunked_m0"]["em"]["mean"] == pytest.approx(25.0)
    table = (out / "rc-table.md").read_text()
    assert "| m16 | 16 | chunked | 1024 | 0.00 | 75.00 | +37.50 ± 47.87 |" in table
    assert "| 0 (1) | 1 (1) |" in table and (out / "rc-f1-by-distance.png").is_file()
