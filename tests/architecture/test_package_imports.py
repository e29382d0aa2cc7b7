"""The rules between packages (docs/architecture.md), checked on the source: a library never
imports a service, a service never imports another service, and no package's modules import
each other in a circle. Pure: reads files, starts nothing."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each kind of package may import besides itself and third-party code.
CONTRACTS, PLATFORM, DEVKIT = "rawdrive_contracts", "rawdrive_platform", "rawdrive_devkit"


def packages(root: Path) -> dict[str, tuple[str, Path]]:
    """Package name -> (kind, source folder): libs/, services/ and clients/ each hold packages
    under <folder>/src/<package>."""
    found = {}
    for kind in ("libs", "services", "clients"):
        for source in sorted(root.glob(f"{kind}/*/src/*")):
            if source.is_dir() and (source / "__init__.py").exists():
                found[source.name] = (kind, source)
    return found


def allowed(package: str, kind: str, services: set[str]) -> set[str]:
    if package == CONTRACTS:
        return set()
    if package == PLATFORM:
        return {CONTRACTS}
    if package == DEVKIT:  # the dev stack runs the services and mints their tokens
        return {CONTRACTS, PLATFORM} | services
    return {CONTRACTS, PLATFORM}  # a service or a client: the libraries that run in production


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every absolute import in a file, function-level ones too
    (deferring an import hides a dependency, it does not remove it). `from package import
    name` yields both `package` and `package.name`, as either may be the module."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            yield from ((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)


def forbidden_imports(root: Path) -> list[str]:
    found = packages(root)
    services = {name for name, (kind, _) in found.items() if kind == "services"}
    problems = []
    for package, (kind, source) in found.items():
        permitted = allowed(package, kind, services) | {package}
        for path in sorted(source.rglob("*.py")):
            for module, line in imports(path):
                top = module.split(".")[0]
                if top in found and top not in permitted:
                    problems.append(f"{path.relative_to(root)}:{line}: {package} ({kind}) imports {top}")
    return sorted(set(problems))


def module_name(source: Path, path: Path) -> str:
    parts = [source.name, *path.relative_to(source).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports. `from pkg import sub` names the
    submodule, not pkg's __init__ (which Python has already begun importing when it is ours)."""
    found = {m for m, _ in imports(path) if m in modules and m != name}
    return {m for m in found if not any(other.startswith(m + ".") for other in found)}


def import_cycles(root: Path) -> list[list[str]]:
    """Circles among one package's modules through their imports."""
    cycles = []
    for package, (_, source) in packages(root).items():
        modules = {module_name(source, path): path for path in source.rglob("*.py")}
        graph = {name: _module_imports(path, name, modules) for name, path in modules.items()}
        done: set[str] = set()

        def visit(name: str, trail: list[str]) -> None:
            if name in trail:
                cycles.append(trail[trail.index(name):] + [name])
                return
            if name in done:
                return
            for target in sorted(graph[name]):
                visit(target, [*trail, name])
            done.add(name)

        for name in sorted(graph):
            visit(name, [])
    return cycles


def test_libraries_import_no_service_and_services_import_no_other_service():
    assert forbidden_imports(ROOT) == []


def test_no_package_has_modules_importing_each_other_in_a_circle():
    assert import_cycles(ROOT) == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for folder, package in (
        ("libs/contracts", CONTRACTS), ("libs/platform", PLATFORM), ("services/a", "svc_a"), ("services/b", "svc_b"),
    ):
        (tmp_path / folder / "src" / package).mkdir(parents=True)
        (tmp_path / folder / "src" / package / "__init__.py").write_text("")
    return tmp_path


def test_the_check_catches_a_library_importing_a_service_and_a_service_importing_another(tree: Path):
    (tree / "libs/platform/src/rawdrive_platform/dev.py").write_text("def f():\n    from svc_a import auth\n")
    (tree / "services/b/src/svc_b/x.py").write_text("import svc_a.handlers\nfrom rawdrive_platform import bus\n")
    assert forbidden_imports(tree) == [
        "libs/platform/src/rawdrive_platform/dev.py:2: rawdrive_platform (libs) imports svc_a",
        "services/b/src/svc_b/x.py:1: svc_b (services) imports svc_a",
    ]


def test_the_check_catches_two_modules_importing_each_other(tree: Path):
    (tree / "services/a/src/svc_a/one.py").write_text("from svc_a.two import x\n")
    (tree / "services/a/src/svc_a/two.py").write_text("from svc_a import one\n")
    assert import_cycles(tree) == [["svc_a.one", "svc_a.two", "svc_a.one"]]
