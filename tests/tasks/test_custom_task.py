"""A task written outside the package trains through ``gmat train``: the documented example, run as written."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from gmat.cli import main
from gmat.tasks.registry import task_entry

ROOT = Path(__file__).resolve().parents[2]


def documented_example() -> tuple[str, dict]:
    """The ``my_tasks.py`` module and the run config of the "Your own task" section, wherever it lives now."""
    homes = [p for p in (ROOT / "docs" / "usage-classification.md", ROOT / "README.md") if p.is_file()]
    texts = [p.read_text() for p in homes if "# my_tasks.py" in p.read_text()]
    assert len(texts) == 1, f"the custom-task example should be in exactly one of {homes}"
    text = texts[0][texts[0].index("## Your own task") :]
    module = re.search(r"```python\n(# my_tasks\.py.*?)```", text, flags=re.S).group(1)
    config = yaml.safe_load(re.search(r"```yaml\n(# PYTHONPATH=\. gmat train.*?)```", text, flags=re.S).group(1))
    return module, config


def write_module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(source)


def test_documented_custom_task_registers_and_trains_through_the_cli(tmp_path, monkeypatch):
    module, config = documented_example()
    write_module(tmp_path, "my_tasks", module)
    monkeypatch.syspath_prepend(str(tmp_path))  # as PYTHONPATH=. does
    config["run_dir"] = str(tmp_path / "run")
    config["train"].update(progress=False, num_threads=1)
    (tmp_path / "needle.yaml").write_text(yaml.safe_dump(config))

    assert main(["train", str(tmp_path / "needle.yaml"), "--set", "task.eval_size=64"]) == 0

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["task"] == "my_tasks:NeedleTask"
    assert task_entry("my_tasks:NeedleTask").task.__module__ == "my_tasks"  # the user's class, not a built-in
    assert results["finished"] and results["eval"]["loss"] < 0.6
    assert results["eval"]["accuracy"] >= 0.9  # chance is 0.5: the needle is found through the memory
    assert (tmp_path / "run" / "best" / "config.json").is_file()


def test_unknown_task_key_of_a_custom_task_is_refused(tmp_path, monkeypatch, caplog):
    module, config = documented_example()
    write_module(tmp_path, "my_tasks_typo", module.replace("my_tasks:NeedleTask", "my_tasks_typo:NeedleTask"))
    monkeypatch.syspath_prepend(str(tmp_path))
    config["task"]["name"] = "my_tasks_typo:NeedleTask"
    config["task"]["seq_lenn"] = 64
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    assert "task.seq_lenn" in caplog.text


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            """
            class NoSettings:
                metric_name = "accuracy"
                def build_model(self, s): ...
                def batch(self, split, indices): ...
                def forward_loss(self, model, batch): ...
                def evaluate(self, model, **kw): ...
                def checkpoint_files(self): return {}
            """,
            r"task.name='{mod}:NoSettings': NoSettings has no Settings attribute",
        ),
        (
            """
            from dataclasses import dataclass
            from gmat.tasks.base import CountingTask

            @dataclass(frozen=True)
            class S:
                name: str = ""

            class NoBatch(CountingTask):
                Settings = S
                def build_model(self, s): ...
            """,
            r"task.name='{mod}:NoBatch': NoBatch has no batch \(the Task protocol of gmat.tasks.base",
        ),
        (
            """
            class BadSettings:
                Settings = dict
                def build_model(self, s): ...
                def batch(self, split, indices): ...
                def forward_loss(self, model, batch): ...
                def evaluate(self, model, **kw): ...
                def checkpoint_files(self): return {}
            """,
            r"task.name='{mod}:BadSettings': the settings of BadSettings must be a dataclass with a 'name' field",
        ),
    ],
    ids=["no_settings", "no_batch", "bad_settings"],
)
def test_a_class_that_is_not_a_task_is_refused_with_a_named_reason(tmp_path, monkeypatch, request, source, message):
    mod = f"user_task_{request.node.callspec.id}"
    write_module(tmp_path, mod, textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = re.search(r"'\{mod\}:(\w+)'", message).group(1)
    with pytest.raises(ValueError, match=message.format(mod=mod)):
        task_entry(f"{mod}:{cls}")


def test_a_missing_module_says_how_to_make_it_importable():
    with pytest.raises(ValueError, match=r"cannot import no_such_module_xyz .*put its folder on PYTHONPATH"):
        task_entry("no_such_module_xyz:Task")
