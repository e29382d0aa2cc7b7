"""The package rules of the README's layout: no import cycle between the gateway's packages and
top-level modules, and no package importing another's private (`_`) names."""

import ast
from pathlib import Path

import upload_gateway

ROOT = Path(upload_gateway.__file__).parent


def _unit(module: str) -> str:
    """`upload_gateway.uploads.tus.store` -> `uploads`; `upload_gateway.auth` -> `auth`."""
    return module.split(".")[1] if "." in module else module


def _imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, imported name) for every first-party import."""
    found = []
    for path in ROOT.rglob("*.py"):
        module = ".".join(("upload_gateway", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("upload_gateway"):
                for alias in node.names:
                    imported = f"{node.module}.{alias.name}" if node.module == "upload_gateway" else node.module
                    found.append((module, imported, alias.name))
    return found


def _arrows() -> dict[str, set[str]]:
    arrows: dict[str, set[str]] = {}
    for module, imported, _ in _imports():
        if _unit(module) != _unit(imported):
            arrows.setdefault(_unit(module), set()).add(_unit(imported))
    return arrows


def test_no_package_imports_in_a_circle():
    arrows = _arrows()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in arrows.get(start, ()))

    assert [unit for unit in arrows if reaches(unit, unit, set())] == []
    assert {"uploads", "catalogue", "storage_profiles", "http"} <= set(arrows)  # the rule sees the packages


def test_no_package_imports_another_packages_private_names():
    crossing = [
        (module, imported, name)
        for module, imported, name in _imports()
        if _unit(module) != _unit(imported)
        and (name.startswith("_") or any(part.startswith("_") for part in imported.split(".")[1:]))
    ]
    assert crossing == []
