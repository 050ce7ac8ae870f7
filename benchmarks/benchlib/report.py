"""Reports of a benchmark payload: the markdown tables and the log-log plot of time and memory vs L."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from benchlib.config import SweepSpec, to_tuple

__all__ = ["add_speedups", "markdown", "plot", "render"]


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Add ``speedup_vs_dense`` (dense SDPA's time over the row's, same L, M and mode) to every ok row."""
    dense = {
        (r["seq_len"], r["num_memory"], r["mode"]): r["time_ms"]
        for r in results
        if r["engine"] == "dense_sdpa" and r["status"] == "ok"
    }
    for r in results:
        base = dense.get((r["seq_len"], r["num_memory"], r["mode"]))
        if r["status"] == "ok" and base is not None:
            r["speedup_vs_dense"] = base / r["time_ms"]


def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


def _fmt_mb(mb: float) -> str:
    return f"{mb:.1f}" if mb < 10 else f"{mb:,.0f}"


def _cell(r: dict[str, Any] | None, metric: str) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return {"skipped": "skip", "check_failed": "FAILED check"}.get(r["status"], r["status"])
    if metric == "time":
        s = _fmt_ms(r["time_ms"])
        if r.get("speedup_vs_dense") is not None and r["engine"] != "dense_sdpa":
            s += f" ({r['speedup_vs_dense']:.1f}×)"
        return s
    if r.get("peak_mb") is None:
        return "n/a"
    static = f" +{_fmt_mb(r['static_mb'])} mask" if r.get("static_mb") else ""
    return f"{_fmt_mb(r['peak_mb'])}{static}"


def merged_sweeps(sweeps: list[dict[str, Any]]) -> list[SweepSpec]:
    """One spec per sweep name, in first-seen order; sweeps that share a name (e.g. the same L range run
    first for the engines that matter most, then for the rest) are reported as one table."""
    merged: dict[str, SweepSpec] = {}
    for raw in sweeps:
        spec = SweepSpec(**{k: to_tuple(v) for k, v in raw.items()})
        if spec.name in merged:
            old = merged[spec.name]
            spec = SweepSpec(
                name=spec.name,
                kind=old.kind,
                seq_lens=tuple(sorted(set(old.seq_lens) | set(spec.seq_lens))),
                num_memory=tuple(sorted(set(old.num_memory) | set(spec.num_memory))),
                sizes=tuple(sorted(set(old.sizes) | set(spec.sizes))),
            )
        merged[spec.name] = spec
    return list(merged.values())


def _axis_label(axis: str) -> str:
    return {"seq_len": "L", "num_memory": "M", "size": "C or w"}[axis]


def markdown(payload: dict[str, Any]) -> str:
    """Render the report: environment, checks, one time and one memory table per sweep and mode."""
    env, cfg = payload["environment"], payload["config"]
    hw = env.get("gpu") or f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads)"
    lines = [
        f"# Attention benchmark `{cfg['name']}`",
        "",
        f"- hardware: {hw}"
        + (f", driver {env.get('gpu_driver')}, CUDA {env.get('cuda')}" if env.get("gpu") else "")
        + (f", {env['ram_gib']} GiB RAM" if env.get("ram_gib") else ""),
        f"- software: torch {env['torch']}, transformers {env.get('transformers')}, "
        f"Python {env['python']}, "
        f"git {env.get('git_sha')}",
        f"- run: {env['utc']}, {env.get('wall_s')} s, load average at start {env.get('loadavg_start')}, "
        f"at end {env.get('loadavg_end')}",
        f"- shapes: B={cfg['batch']} H={cfg['heads']} D={cfg['head_dim']}, {cfg['dtype']} on {cfg['device']}",
        f"- command: `{payload.get('command')}`",
        "",
        "Time: median of timed steps in ms, (×) = speed-up over dense SDPA at the same L, M and mode. "
        "Peak memory: MB allocated by one step above what was held before it (inputs and weights "
        "excluded; `+N mask` = the dense mask masked SDPA keeps between steps). "
        "HF modules and `blocked_proj` include their Q/K/V projections; the other engines start from "
        "q/k/v.",
        "",
        "## Correctness checks (before timing)",
        "",
        "| engine | L | M | pattern | check | result |",
        "|---|---|---|---|---|---|",
    ]
    for c in payload["checks"]:
        lines.append(
            f"| {c['engine']} | {c.get('seq_len', '')} | {c.get('num_memory', '')} | "
            f"{c.get('kind', '')} {c.get('size', '')} | {c.get('check', '')} | "
            f"{'pass' if c['passed'] else 'FAIL'}: {c.get('note', '')} |"
        )
    results = payload["results"]
    for spec in merged_sweeps(cfg["sweeps"]):
        rows = [r for r in results if r["sweep"] == spec.name]
        engines = list(dict.fromkeys(r["engine"] for r in rows))
        engine_notes = {r["engine"]: r["note"] for r in rows if r.get("note")}
        headers = [
            f"{name} (no memory)" if name == "naive_chunk_sdpa" and name in engine_notes else name for name in engines
        ]
        axis = spec.axis
        values = sorted({r[axis] for r in rows})
        for mode in cfg["modes"]:
            for metric, title in (("time", "time ms"), ("memory", "peak MB")):
                lines += [
                    "",
                    f"## {spec.name}: {spec.kind}, {mode}, {title}",
                    "",
                    f"L={list(spec.seq_lens)}, M={list(spec.num_memory)}, "
                    f"{'C' if spec.kind == 'chunked' else 'w'}={list(spec.sizes)}",
                    "",
                    f"| {_axis_label(axis)} | " + " | ".join(headers) + " |",
                    "|---" * (len(engines) + 1) + "|",
                ]
                for value in values:
                    cells = []
                    for name in engines:
                        match = [r for r in rows if r["engine"] == name and r["mode"] == mode and r[axis] == value]
                        cells.append(_cell(match[0] if match else None, metric))
                    lines.append(f"| {value} | " + " | ".join(cells) + " |")
        if engine_notes:
            lines += [""] + [f"Note: `{name}` {note}." for name, note in engine_notes.items()]
        notes = sorted(
            {(r["engine"], r["status"], r["reason"]) for r in rows if r["status"] != "ok" and r.get("reason")}
        )
        if notes:
            lines += ["", f"Not measured in `{spec.name}`:", ""]
            lines += [f"- `{engine}` {status}: {reason}" for engine, status, reason in notes]
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Log-log time and peak memory vs L, one row per L sweep; solid = fwd+bwd, dashed = fwd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = payload["config"]
    sweeps = [dataclasses.asdict(s) for s in merged_sweeps(cfg["sweeps"]) if s.axis == "seq_len"]
    if not sweeps:
        return
    fig, axes = plt.subplots(len(sweeps), 2, figsize=(12, 4.5 * len(sweeps) + 0.6), squeeze=False)
    colours: dict[str, Any] = {}
    cmap = plt.get_cmap("tab10")
    for row, sweep in zip(axes, sweeps):
        rows = [r for r in payload["results"] if r["sweep"] == sweep["name"] and r["status"] == "ok"]
        for name in dict.fromkeys(r["engine"] for r in rows):
            colour = colours.setdefault(name, cmap(len(colours) % 10))
            for mode, style in (("fwd_bwd", "-"), ("fwd", "--")):
                pts = sorted(
                    (r["seq_len"], r["time_ms"], r["peak_mb"])
                    for r in rows
                    if r["engine"] == name
                    and r["mode"] == mode
                    and r["num_memory"] == sweep["num_memory"][0]
                    and r["size"] == sweep["sizes"][0]
                )
                if not pts:
                    continue
                label = name if mode == "fwd_bwd" or "fwd_bwd" not in payload["config"]["modes"] else None
                if label == "naive_chunk_sdpa" and rows and any(r.get("note") for r in rows if r["engine"] == name):
                    label += " (no memory)"
                row[0].plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=colour, label=label)
                mem = [p for p in pts if p[2]]
                if mem:
                    row[1].plot([p[0] for p in mem], [p[2] for p in mem], style, marker="o", color=colour, label=label)
        size_name = "C" if sweep["kind"] == "chunked" else "w"
        title = f"{sweep['name']}: {sweep['kind']} {size_name}={sweep['sizes'][0]}, M={sweep['num_memory'][0]}"
        for ax, ylabel in zip(row, ("time per step (ms)", "peak memory of a step (MB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("L (sequence length)")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=7)
    env = payload["environment"]
    hw = env.get("gpu") or f"{env['cpu']}, {env['cpu_count']} cores"
    fig.suptitle(
        f"GMAT attention benchmark — {hw}, {cfg['dtype']}, B={cfg['batch']} H={cfg['heads']} "
        f"D={cfg['head_dim']} (solid: forward+backward, dashed: forward)",
        fontsize=11,
    )
    height = fig.get_figheight()  # fixed margins in inches: tight_layout costs seconds on a busy CPU
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.6 / height, top=1 - 0.75 / height, wspace=0.22, hspace=0.45)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(payload: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the markdown table and the PNG of a payload (e.g. re-render a saved JSON); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    add_speedups(payload["results"])  # a JSON saved mid-run has none yet
    name = payload["config"]["name"]
    md_path, png_path = out / f"{name}-attention.md", out / f"{name}-attention.png"
    md_path.write_text(markdown(payload), encoding="utf-8")
    plot(payload, png_path)
    return [md_path, png_path]
