"""The packages' floors, as bench/__init__.py describes them: a module imports from its own floor
and the floors below it, never above, and the model package imports nothing of the bench."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a module at the top of bench/ (a command line) is above every floor
FLOORS = ("lenet", "bench.basics", "bench.instruments", "bench.planning", "bench.records",
          "bench.gates", "bench.series", "bench.execution", "reports", "bench")


def floor_of(module: str) -> int:
    """The index in FLOORS of the floor a dotted module name lives on: the longest that holds it
    (bench.records.row is on bench.records, bench.run on bench)."""
    return max((i for i, floor in enumerate(FLOORS)
                if module == floor or module.startswith(floor + ".")),
               key=lambda i: len(FLOORS[i]))


def imported(path: Path) -> set[str]:
    """Every module of these packages that a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from bench.records import store` imports a module on the floor it names
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in ("bench", "lenet", "reports")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = sorted(p for package in ("bench", "lenet", "reports")
                 for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_a_module_imports_nothing_from_a_floor_above_its_own(path):
    here = module_name(path)
    above = sorted(m for m in imported(path) if floor_of(m) > floor_of(here))
    assert not above, f"{here} (floor {FLOORS[floor_of(here)]}) imports {above} from above"


def test_every_folder_of_the_bench_is_a_floor_with_a_docstring_that_says_what_it_is():
    folders = {p.parent.name for p in (ROOT / "bench").glob("*/__init__.py")}
    assert {f"bench.{name}" for name in folders} == set(FLOORS) - {"lenet", "reports", "bench"}
    for name in folders:
        assert ast.get_docstring(ast.parse((ROOT / "bench" / name / "__init__.py").read_text()))


def test_the_floor_check_sees_an_upward_import(tmp_path):
    # the check above cannot pass by reading nothing
    source = tmp_path / "probe.py"
    source.write_text("from bench.execution.session import Session\nimport bench.run\n")
    assert imported(source) == {"bench.execution.session", "bench.run"}
    assert floor_of("bench.run") > floor_of("bench.execution.session") > floor_of("bench.gates")
