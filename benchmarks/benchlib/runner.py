"""One benchmark run: expand the sweeps into points, check each engine, time it, save after every point."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from benchlib.config import BenchConfig, Experiment, SweepSpec
from benchlib.engines import Engine, attention_flops, default_engines
from benchlib.measure import MemoryMeter, check_engine, environment, has_backward, is_oom, loadavg, time_case
from benchlib.report import add_speedups, render

__all__ = ["run_benchmark"]

logger = logging.getLogger(__name__)


def _points(cfg: BenchConfig) -> list[tuple[SweepSpec, Experiment]]:
    """All points, sweep by sweep; within a sweep L ascending so smaller points predict larger ones."""
    points = []
    for sweep in cfg.sweeps:
        for seq_len in sorted(sweep.seq_lens):
            for m in sweep.num_memory:
                for size in sweep.sizes:
                    for name in sweep.engines or cfg.engines:
                        points.append(
                            (
                                sweep,
                                Experiment(
                                    engine=name,
                                    seq_len=seq_len,
                                    num_memory=m,
                                    kind=sweep.kind,
                                    size=size,
                                    batch=cfg.batch,
                                    heads=cfg.heads,
                                    head_dim=cfg.head_dim,
                                    dtype=cfg.dtype,
                                    device=cfg.device,
                                ),
                            )
                        )
    return points


class _Runner:
    """Holds the state of one run: measured points, checks, budget bookkeeping."""

    def __init__(
        self, cfg: BenchConfig, engines: Mapping[str, Engine], json_path: Path | None, payload: dict[str, Any]
    ) -> None:
        self.cfg = cfg
        self.engines = engines
        self.json_path = json_path
        self.payload = payload
        self.meter = MemoryMeter(cfg.device)
        self.measured: dict[tuple[Experiment, str], dict[str, Any]] = {}  # canonical point -> result
        self.checks: dict[Experiment, dict[str, Any]] = {}  # canonical check point -> record
        self.start = time.perf_counter()

    def save(self) -> None:
        if self.json_path is not None:
            self.json_path.write_text(json.dumps(self.payload, indent=1) + "\n", encoding="utf-8")

    # ---- checks -----------------------------------------------------------------------------------
    def check(self, engine: Engine, exp: Experiment, sweep: SweepSpec) -> dict[str, Any]:
        """Check ``engine`` at the small L of this point's pattern, once per distinct computation."""
        candidates = [self.cfg.check_seq_len] + sorted(sweep.seq_lens)
        small = None
        for seq_len in candidates:
            cand = dataclasses.replace(exp, seq_len=seq_len)
            if engine.supports(cand, "fwd") is None:
                small = cand
                break
        if small is None:
            return {"engine": engine.name, "passed": False, "note": "no supported L to check at"}
        key = engine.canonical(small)
        if key not in self.checks:
            with_grad = "fwd_bwd" in self.cfg.modes and has_backward(engine, small)
            try:
                record = check_engine(engine, small, self.cfg, with_grad)
            except Exception as err:  # noqa: BLE001 - a failing engine is a result, not a crash
                logger.exception("check of %s failed to run", engine.name)
                record = {
                    "engine": engine.name,
                    "seq_len": small.seq_len,
                    "num_memory": small.num_memory,
                    "kind": small.kind,
                    "size": small.size,
                    "check": engine.check,
                    "passed": False,
                    "note": f"raised {type(err).__name__}: {err}",
                }
            record["label"] = engine.label
            log = logger.info if record["passed"] else logger.error
            log(
                "check %-17s L=%d M=%d %s %d: %s — %s",
                engine.name,
                small.seq_len,
                small.num_memory,
                small.kind,
                small.size,
                "PASS" if record["passed"] else "FAIL",
                record.get("note", ""),
            )
            self.checks[key] = record
            self.payload["checks"].append(record)
            self.save()
        return self.checks[key]

    # ---- budget -----------------------------------------------------------------------------------
    def _budget_reason(self, engine: Engine, exp: Experiment, mode: str) -> str | None:
        """Why a point is predicted to be over budget, from the largest smaller L of the same engine/mode."""
        smaller = [
            (key, res)
            for key, res in self.measured.items()
            if key[0].engine == exp.engine and key[1] == mode and key[0].seq_len <= exp.seq_len
        ]
        for key, res in smaller:
            if res["status"] == "skipped" and res.get("over_budget"):
                return f"already over budget at L={key[0].seq_len} (<= this L)"
        done = [(key, res) for key, res in smaller if res["status"] == "ok"]
        if not done:
            return None
        key, res = max(done, key=lambda kr: (kr[0][0].seq_len, kr[1]["time_ms"]))
        ratio = (exp.total_len / key[0].total_len) ** engine.exponent
        predicted_s = res["time_ms"] / 1e3 * ratio
        if predicted_s > self.cfg.max_step_s:
            return (
                f"predicted {predicted_s:.1f} s per step (from L={key[0].seq_len}) > max_step_s={self.cfg.max_step_s:g}"
            )
        free = self.meter.free_bytes()
        if res.get("peak_mb") is not None and free is not None:
            predicted_b = res["peak_mb"] * 2**20 * ratio
            if predicted_b > self.cfg.memory_fraction * free:
                return (
                    f"predicted peak {predicted_b / 2**30:.1f} GiB (from L={key[0].seq_len}) > "
                    f"{self.cfg.memory_fraction:g} x free {free / 2**30:.1f} GiB"
                )
        return None

    def _warmup_for(self, exp: Experiment) -> int:
        slow = any(
            res["status"] == "ok" and res["time_ms"] / 1e3 > self.cfg.slow_step_s
            for key, res in self.measured.items()
            if key[0].engine == exp.engine
        )
        return 0 if slow else self.cfg.warmup

    # ---- one point --------------------------------------------------------------------------------
    def measure(self, sweep: SweepSpec, exp: Experiment, mode: str) -> dict[str, Any]:
        engine = self.engines[exp.engine]
        base = {
            "sweep": sweep.name,
            "engine": exp.engine,
            "label": engine.label,
            "seq_len": exp.seq_len,
            "num_memory": exp.num_memory,
            "kind": exp.kind,
            "size": exp.size,
            "mode": mode,
        }
        if engine.note:
            base["note"] = engine.note
        reason = engine.supports(exp, mode)
        if reason is not None:
            return {**base, "status": "skipped", "reason": reason}
        key = (engine.canonical(exp), mode)
        if key in self.measured:
            return {**base, **self.measured[key], "reused": True}
        if self.cfg.deadline_s is not None and time.perf_counter() - self.start > self.cfg.deadline_s:
            # Not stored in ``measured``: a deadline says nothing about the point itself.
            return {**base, "status": "skipped", "reason": f"run deadline of {self.cfg.deadline_s:g} s reached"}
        check = self.check(engine, exp, sweep)
        if not check["passed"]:
            result = {"status": "check_failed", "reason": f"correctness check failed: {check.get('note', '')}"}
        else:
            result = self._run(engine, exp, mode)
        self.measured[key] = result
        return {**base, **result}

    def _run(self, engine: Engine, exp: Experiment, mode: str) -> dict[str, Any]:
        reason = self._budget_reason(engine, exp, mode)
        if reason is not None:
            return {"status": "skipped", "reason": reason, "over_budget": True}
        case = None
        try:
            case = engine.build(exp, mode == "fwd_bwd", self.cfg)
            result = {"status": "ok", **time_case(case, mode, self.cfg, self.meter, self._warmup_for(exp))}
        except Exception as err:  # noqa: BLE001 - OOM and engine failures are recorded, the sweep goes on
            if not is_oom(err):
                logger.exception("%s failed at L=%d", engine.name, exp.seq_len)
                return {"status": "error", "reason": f"{type(err).__name__}: {str(err)[:300]}"}
            result = {
                "status": "skipped",
                "reason": f"out of memory: {str(err).splitlines()[0][:200]}",
                "over_budget": True,
            }
        finally:
            del case
            if self.cfg.device == "cuda":
                torch.cuda.empty_cache()
        pattern = engine.flops_pattern(exp)
        if result["status"] == "ok" and pattern is not None:
            flops = attention_flops(pattern, exp.seq_len, exp.batch, exp.heads, exp.head_dim, mode)
            result["eff_tflops"] = flops / (result["time_ms"] / 1e3) / 1e12
        return result


def run_benchmark(
    cfg: BenchConfig,
    out_dir: str | os.PathLike[str] | None = None,
    engines: Mapping[str, Engine] | None = None,
    command: str | None = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every sweep of ``cfg``; write JSON (after every point), markdown and PNG into ``out_dir``.

    Args:
        cfg: the benchmark configuration.
        out_dir: output folder (created); None = write nothing.
        engines: the engine registry; default ``default_engines(cfg.bigbird_random_blocks)``.
        command: the command line, recorded in the outputs.
        on_point: called with the payload after every finished point (and check), e.g. to rewrite a report.

    Returns:
        The payload written as JSON: ``environment``, ``config``, ``checks`` and ``results``.

    Raises:
        ValueError: on an unknown engine name, or ``cuda`` without a GPU.
    """
    engines = dict(engines) if engines is not None else default_engines(cfg.bigbird_random_blocks)
    wanted = set(cfg.engines).union(*(s.engines or () for s in cfg.sweeps))
    unknown = sorted(wanted - set(engines))
    if unknown:
        raise ValueError(f"unknown engines {unknown}; known: {sorted(engines)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False")
    payload: dict[str, Any] = {
        "environment": environment(cfg.device),
        "command": command,
        "config": dataclasses.asdict(cfg),
        "checks": [],
        "results": [],
    }
    json_path = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        json_path = Path(out_dir) / f"{cfg.name}-attention.json"
    runner = _Runner(cfg, engines, json_path, payload)
    for sweep, exp in _points(cfg):
        for mode in cfg.modes:
            record = runner.measure(sweep, exp, mode)
            payload["results"].append(record)
            if record["status"] == "ok":
                logger.info(
                    "%-8s %-17s L=%-6d M=%-4d %s %-4d %-7s %9.2f ms  peak %s MB%s",
                    sweep.name,
                    exp.engine,
                    exp.seq_len,
                    exp.num_memory,
                    exp.kind,
                    exp.size,
                    mode,
                    record["time_ms"],
                    "n/a" if record["peak_mb"] is None else f"{record['peak_mb']:.0f}",
                    " (reused)" if record.get("reused") else "",
                )
            elif not record.get("reused"):
                logger.info(
                    "%-8s %-17s L=%-6d %-7s %s: %s",
                    sweep.name,
                    exp.engine,
                    exp.seq_len,
                    mode,
                    record["status"],
                    record["reason"],
                )
            runner.save()
            if on_point is not None:
                on_point(payload)
    add_speedups(payload["results"])
    payload["environment"]["loadavg_end"] = loadavg()
    payload["environment"]["wall_s"] = round(time.perf_counter() - runner.start, 1)
    runner.save()
    if out_dir is not None:
        render(payload, out_dir)
    return payload
