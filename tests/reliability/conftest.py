"""Helpers of the fault-injection tests: a one-second synthetic run written as a YAML config."""

from __future__ import annotations

import json

import yaml

from training.conftest import tiny_config_dict


def write_config(tmp_path, name="run", **train):
    """Write the tiny synthetic run's config (``train`` overrides its train section); returns (path, run_dir)."""
    run_dir = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(run_dir, **train)))
    return path, run_dir


def _no_constant(name):
    raise ValueError(f"bare {name} in a JSON file")


def strict_json(text):
    """``json.loads`` that refuses the non-standard NaN / Infinity / -Infinity."""
    return json.loads(text, parse_constant=_no_constant)


def strict_jsonl(path):
    return [strict_json(line) for line in path.read_text().splitlines() if line.strip()]
