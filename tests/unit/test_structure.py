"""The package's shape: modules keep their private names to themselves, parents flush before children."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pme_exporter
from pme_exporter.schema import BY_TABLE, FLUSH_ORDER, TABLES

PACKAGE = Path(pme_exporter.__file__).parent
REPO = PACKAGE.parents[1]
OURS = ("pme_exporter", "tests", "benchmarks")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    modules: set[str] = set()  # local names bound to pme_exporter modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(OURS):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{path.name}:{node.lineno} imports {node.module}.{alias.name}")
                elif node.module in OURS or (node.module or "").endswith("devtools"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(OURS):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in modules:
                found.append(f"{path.name}:{node.lineno} uses {base.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    sources = sorted(
        [*PACKAGE.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]
    )
    assert len(sources) > 60
    violations = [v for path in sources for v in _violations(path)]
    assert violations == []


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from pme_exporter.sink import _Attempt\nfrom pme_exporter import sink\nsink._STATEMENTS\n"
    )
    assert len(_violations(sample)) == 2


def test_every_parent_table_is_flushed_before_its_children() -> None:
    position = {spec.table: i for i, spec in enumerate(FLUSH_ORDER)}
    assert sorted(position) == sorted(spec.table for spec in TABLES)
    for spec in FLUSH_ORDER:
        for parent in spec.parents:
            assert parent.table in BY_TABLE and position[parent.table] < position[spec.table], (
                f"{spec.table} is flushed before its parent {parent.table}"
            )


EXIT_NUMBER = re.compile(r"\bexits? (?:code )?\d\b|\bEXIT_[A-Z]+ = \d")


def test_exit_codes_are_numbers_in_one_module_only() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "errors.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if EXIT_NUMBER.search(line)
    ]
    assert found == []
    assert EXIT_NUMBER.search((PACKAGE / "errors.py").read_text())  # the check sees them where they are


def test_the_design_s_log_prefix_is_written_once() -> None:
    places = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "[DB-EXPORTER]" in line
    ]
    assert len(places) == 1 and places[0].startswith("logs.py:"), places


def test_the_offsets_table_is_named_in_one_module_only() -> None:
    naming = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "exporter_offsets" in path.read_text()
    )
    assert naming == ["progress.py"]


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_worker_imports_nothing_from_the_operator_commands() -> None:
    worker = [path for path in PACKAGE.glob("*.py") if path.name not in ("cli.py", "__main__.py")]
    assert {"worker.py", "consumer.py", "sink.py", "flusher.py"} <= {path.name for path in worker}
    uses_ops = [
        path.name for path in worker if any(n.startswith("pme_exporter.ops") for n in _imported(path))
    ]
    assert uses_ops == []
    assert any(n.startswith("pme_exporter.ops") for n in _imported(PACKAGE / "cli.py"))  # the check sees it


def test_the_readme_is_short_and_its_map_names_every_module() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 450
    table = readme[readme.index("| module | its one job |") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z_]+)/?`", table))
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {p.stem for p in (PACKAGE / "ops").glob("*.py")}
    modules -= {"__init__"}
    assert modules - named == set()
    for doc in ("docs/operations.md", "docs/performance.md"):
        assert f"]({doc})" in readme and (REPO / doc).is_file()


def test_each_setting_s_variable_is_named_once_where_its_field_is_declared() -> None:
    from pme_exporter.settings import ENVIRONMENT_VARIABLES

    source = (PACKAGE / "settings.py").read_text()
    twice = [name for name, _ in ENVIRONMENT_VARIABLES if source.count(f'"{name}"') != 1]
    assert twice == []
    assert len(ENVIRONMENT_VARIABLES) > 40
