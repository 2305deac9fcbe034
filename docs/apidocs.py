"""
Build txmasse's API docs with pydoctor, Twisted's own tool, from the
docstrings (epytext), into docs/api/; any warning, such as a broken L{...}
link or a docstring that does not parse, fails the build.

    python docs/apidocs.py [extra pydoctor options]

tests/run.sh runs it, so a broken docstring link fails the test command.
Links to Twisted go through an inventory made here from the Twisted that is
installed (the machines that build this have no network to fetch Twisted's
own objects.inv, and making Twisted's full one with pydoctor takes ~15 s).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import zlib
from pathlib import Path
from types import ModuleType

from zope.interface.interface import InterfaceClass

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api"
TWISTED_API = "https://docs.twisted.org/en/stable/api"


def importTxmasse() -> None:
    """
    Import every txmasse module, so that every Twisted module it uses is
    imported too.
    """
    import txmasse

    for module in pkgutil.walk_packages(txmasse.__path__, "txmasse."):
        if not module.name.endswith(".__main__"):
            importlib.import_module(module.name)


def isPublic(dotted: str) -> bool:
    return not any(part.startswith("_") for part in dotted.split("."))


def twistedEntries() -> list[str]:
    """
    Inventory lines for the public modules, classes, functions and methods
    of the Twisted modules imported now, addressed the way Twisted's API
    docs (made by pydoctor) address them.
    """
    lines: list[str] = []
    modules = [
        (name, module)
        for name, module in sorted(sys.modules.items())
        if (name == "twisted" or name.startswith("twisted."))
        and isPublic(name)
        and isinstance(module, ModuleType)
        and not name.startswith("twisted.plugins")
    ]
    for name, module in modules:
        page = "index.html" if name == "twisted" else f"{name}.html"
        lines.append(f"{name} py:module -1 {page} -")
        exported = set(getattr(module, "__all__", ()))
        for attribute, value in sorted(vars(module).items()):
            if attribute.startswith("_"):
                continue
            home = getattr(value, "__module__", None)
            # Defined here, or in a private module that this one re-exports.
            if not isinstance(home, str) or not (
                home == name
                or (attribute in exported and home.startswith("twisted.") and not isPublic(home))
            ):
                continue
            full = f"{name}.{attribute}"
            if isinstance(value, InterfaceClass):
                members = list(value.names())
            elif inspect.isclass(value):
                members = list(vars(value))
            elif callable(value):
                lines.append(f"{full} py:function -1 {name}.html#{attribute} -")
                continue
            else:
                continue
            lines.append(f"{full} py:class -1 {full}.html -")
            for member in sorted(members):
                if not member.startswith("_"):
                    lines.append(f"{full}.{member} py:method -1 {full}.html#{member} -")
    return lines


def writeInventory(path: Path, project: str, lines: list[str]) -> None:
    """
    Write a Sphinx inventory (version 2), the format pydoctor reads.
    """
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: \n"
        "# The rest of this file is compressed with zlib.\n"
    )
    body = "".join(line + "\n" for line in lines)
    path.write_bytes(header.encode() + zlib.compress(body.encode()))


def main(argv: list[str]) -> int:
    from pydoctor.driver import main as pydoctor

    importTxmasse()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    inventory = OUTPUT / "twisted-objects.inv"
    writeInventory(inventory, "twisted", twistedEntries())
    options = [
        "--quiet",
        "--project-name=txmasse",
        f"--project-base-dir={ROOT}",
        "--docformat=epytext",
        f"--html-output={OUTPUT}",
        f"--intersphinx-file={inventory}::{TWISTED_API}",
        "--warnings-as-errors",
        *argv,
        str(ROOT / "txmasse"),
    ]
    return int(pydoctor(options))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
