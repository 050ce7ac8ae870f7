"""The README's quickstart runs as written, and its two fresh-machine commands are the Makefile's."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start:] if nxt == -1 else text[start:nxt]


def test_quickstart_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", _section(readme, "## Quickstart"), flags=re.S)
    assert blocks, "README quickstart has no python block"
    for block in blocks:
        exec(compile(block, "README quickstart", "exec"), {"__name__": "readme"})


def test_fresh_machine_commands_exist():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^make (\w[\w-]*)", readme, flags=re.M)
    assert commands[:2] == ["demo", "test"], commands
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "make test" in ci
