"""The package holds only the library: small modules, no tools or workspace paths inside, a design of record.

The layering itself (ops <- modeling <- data <- tasks <- training <- commands <- cli) is checked by import-linter
(``lint-imports``, contracts in pyproject.toml) in ``make lint``.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "gmat"
SOURCES = sorted(PACKAGE.rglob("*.py"))
# one model, one file (as HF does), and the fused kernels: the two modules allowed to be long
LONG_ALLOWED = {"modeling/modeling_gmat.py", "ops/triton_kernels.py"}
MAX_LINES = 600


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_module_is_small(path: Path) -> None:
    if _name(path) not in LONG_ALLOWED:
        assert len(path.read_text().splitlines()) <= MAX_LINES


def _imports(tree: ast.Module, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_no_tools_in_the_library(path: Path) -> None:
    tree = ast.parse(path.read_text())
    # process and memory tooling belongs to benchmarks/; plots are drawn lazily, by the commands only
    assert not _imports(tree, top_level_only=False) & {"subprocess", "ctypes"}
    assert "matplotlib" not in _imports(tree, top_level_only=True)
    if "matplotlib" in _imports(tree, top_level_only=False):
        assert _name(path).startswith("commands/")


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_no_path_outside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "../shared" not in text and "shared/data" not in text  # data paths come from configs and flags
    assert "DESIGN.md" not in text  # the design of record is docs/design.md, inside the repository


def test_the_design_of_record_names_where_to_extend() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    for anchor in ("Adding a backend", "Adding a task", "Adding a model head", "what may import what"):
        assert anchor in design
