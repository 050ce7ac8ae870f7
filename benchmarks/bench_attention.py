"""Attention benchmark: GMAT backends side by side with dense SDPA, a naive chunk path and HF baselines.

    python benchmarks/bench_attention.py --quick                       # < 90 s on 2 CPU cores (make bench)
    python benchmarks/bench_attention.py --config benchmarks/configs/cpu.yaml --out docs/bench
    python benchmarks/bench_attention.py --from-json docs/bench/cpu-attention.json --out docs/bench

One run, in one process (``benchlib.runner.run_benchmark``):

1. expands the sweeps of a ``BenchConfig`` into ``Experiment`` points (engine x L x M x pattern), sweep by sweep,
   L ascending within a sweep (``benchlib.config``);
2. checks each engine at a small L before timing it: GMAT engines against the reference oracle (forward and
   gradients, the flash-attention rule: error <= 2x (fwd) / 3x (grad) the error of the reference run in the
   same dtype, plus a small atol); the HF modules compute other patterns with their own projections, so for
   them the check is a sanity check only (``benchlib.measure.check_engine``);
3. times the forward (under ``torch.no_grad``) and the forward+backward, after warm-up, as the median of
   repeats (``perf_counter`` around a synchronised step), and records the peak memory of each timed step above
   the memory held just before it (``benchlib.measure``);
4. skips a point whose predicted time or memory (scaled from the largest smaller L of the same engine) is over
   budget, or that runs out of memory, and records ``skipped (reason)``;
5. writes ``<name>-attention.json`` after every point (results + environment: CPU/GPU, cores, torch, git SHA,
   load), then a markdown table and a log-log PNG (``benchlib.report``).

The engines are listed in ``benchlib.engines``. The sweeps are the YAML files in ``benchmarks/configs/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib/, beside this file

from benchlib.config import DTYPES, load_config, quick_config  # noqa: E402
from benchlib.report import render  # noqa: E402
from benchlib.runner import run_benchmark  # noqa: E402

logger = logging.getLogger("bench_attention")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``main``."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--quick", action="store_true", help="the built-in quick sweep (< 90 s on a 2-core CPU)")
    source.add_argument("--config", help="YAML sweep (see benchmarks/configs/)")
    source.add_argument("--from-json", help="only re-render the markdown and PNG of a saved JSON")
    parser.add_argument("--out", default="./bench-results", help="output folder (default: ./bench-results)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="override the config's device")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="override the config's dtype")
    parser.add_argument("--engines", help="comma-separated engines to keep (default: the config's)")


def cli_run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed arguments; 0 when every check passed and nothing errored."""
    if args.from_json:
        payload = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        for path in render(payload, args.out):
            logger.info("wrote %s", path)
        return 0
    if args.quick:
        cfg = quick_config()
    elif args.config:
        try:
            cfg = load_config(args.config)
        except (OSError, ValueError) as err:
            print(f"bench_attention.py: --config {args.config}: {err}", file=sys.stderr)
            return 2
    else:
        print("bench_attention.py: pass --quick or --config FILE.yaml (or --from-json)", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.dtype:
        overrides["dtype"] = args.dtype
    if args.engines:
        keep = tuple(e.strip() for e in args.engines.split(",") if e.strip())
        overrides["engines"] = keep
        overrides["sweeps"] = tuple(
            s if s.engines is None else dataclasses.replace(s, engines=tuple(e for e in s.engines if e in keep))
            for s in cfg.sweeps
        )
    cfg = dataclasses.replace(cfg, **overrides)
    payload = run_benchmark(cfg, args.out, command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
    out = Path(args.out)
    logger.info("wrote %s, %s, %s", *(out / f"{cfg.name}-attention.{ext}" for ext in ("json", "md", "png")))
    failed = [c["engine"] for c in payload["checks"] if not c["passed"]]
    errors = [r["engine"] for r in payload["results"] if r["status"] == "error"]
    if failed or errors:
        logger.error("failed checks: %s; errors: %s", failed, sorted(set(errors)))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/bench_attention.py [--quick | --config X.yaml] [--out DIR] ...``."""
    parser = argparse.ArgumentParser(prog="bench_attention.py", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    add_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    return cli_run(args)


if __name__ == "__main__":
    sys.exit(main())
