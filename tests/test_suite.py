"""The suite's own promises: every test says what it pins down, and what the README (and the
reference in docs/) says of the tests is true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).parent
README = "\n".join(p.read_text() for p in [TESTS.parent / "README.md", *sorted((TESTS.parent / "docs").glob("*.md"))])


def collected() -> dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Each test module's test functions, read from the source."""
    found: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    for path in sorted([*TESTS.glob("test_*.py"), *(TESTS.parent / "emulator" / "tests").glob("test_*.py")]):
        tree = ast.parse(path.read_text())
        found[path.name] = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        ]
    return found


def test_every_test_has_a_docstring() -> None:
    """Each test carries a docstring saying which behaviour it pins down (STYLE.md)."""
    bare = [f"{module}::{fn.name}" for module, fns in collected().items() for fn in fns if not ast.get_docstring(fn)]
    assert bare == []


def test_the_tests_the_readme_names_exist() -> None:
    """Every test module and test function the README names is in the suite."""
    modules = collected()
    names = {fn.name for fns in modules.values() for fn in fns}
    for module in set(re.findall(r"\btest_[a-z0-9_]+\.py\b", README)):
        assert module in modules, module
    for name in set(re.findall(r"`(test_[a-z0-9_]+)`", README)):
        assert name in names, name
