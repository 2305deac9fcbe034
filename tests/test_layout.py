"""
The suite's own layout: no module under tests/ imports a test module, so
shared helpers stay in tests/helpers.py (and its neighbours) and running
one test module never collects another's tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).parent


def isTestModule(dotted: str) -> bool:
    return any(part.startswith("test_") for part in dotted.split("."))


def importsOfTestModules(source: str) -> list[tuple[int, str]]:
    """
    The (line, module) of every import of a C{test_*} module in C{source}:
    C{import tests.test_x}, C{from tests.test_x import y}, C{from tests
    import test_x}, and the relative spellings, at any depth.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            modules = [base] if isTestModule(base) else []
            if node.module in (None, "tests"):  # the names may be modules of the package
                joint = "" if base.endswith(".") else "."
                modules += [f"{base}{joint}{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, module) for module in modules if isTestModule(module)]
    return found


def test_the_scan_finds_every_spelling() -> None:
    source = (
        "import os\n"
        "from tests.helpers import record\n"
        "from tests.test_contract import Events\n"
        "import tests.test_cli\n"
        "from tests import test_group\n"
        "from .test_faults import capturedLogs\n"
        "from . import test_access, helpers\n"
        "def f():\n"
        "    from tests.test_examples import call\n"
    )
    assert [line for line, _ in importsOfTestModules(source)] == [3, 4, 5, 6, 7, 9]


def test_no_module_in_tests_imports_a_test_module() -> None:
    offenders = [
        f"{path.name}:{line} imports {module}"
        for path in sorted(HERE.glob("*.py"))
        for line, module in importsOfTestModules(path.read_text())
    ]
    assert offenders == [], "move shared helpers to tests/helpers.py: " + "; ".join(offenders)
