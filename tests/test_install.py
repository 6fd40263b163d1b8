"""The install: every module the code imports is a declared dependency, and CI does what the README says."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from conftest import ROOT

LOCAL = {"search", "space", "conftest"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return {normalized(re.match(r"[A-Za-z0-9_.\-]+", r).group()) for r in requirements}


def imported(folder: str) -> dict[str, str]:
    """Top-level modules imported anywhere in folder's .py files (inside functions too), each with one file that imports it."""
    found = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], f"{folder}/{path.name}")
    return found


def undeclared(folder: str, allowed: set[str]) -> list[str]:
    distributions = packages_distributions()
    problems = []
    for module, where in sorted(imported(folder).items()):
        if module in sys.stdlib_module_names or module in LOCAL or module == "__future__":
            continue
        owners = {normalized(d) for d in distributions.get(module, [])}
        if not owners & allowed:
            problems.append(f"{where} imports {module} (distribution: {', '.join(sorted(owners)) or 'not installed'})")
    return problems


def test_every_module_the_code_imports_is_a_declared_dependency():
    runtime = declared()
    assert undeclared("search", runtime) == [] and undeclared("space", runtime) == []
    assert undeclared("tests", declared("dev")) == []


def test_the_check_finds_an_undeclared_import():
    assert undeclared("search", declared() - {"sqlalchemy"}) == ["search/storage.py imports sqlalchemy (distribution: sqlalchemy)"]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|console)?\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_install_and_test_commands_in_a_fresh_virtual_environment():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    install = next(block for block in code_blocks(readme) if "venv" in block)
    test = next(block for block in code_blocks(readme) if "-m pytest" in block)
    commands = [line.split("#")[0].strip() for line in (install + test).splitlines() if line.split("#")[0].strip()]
    assert commands[0] == "python3 -m venv --clear .venv" and any("pip install" in c for c in commands)  # fresh: --clear empties one left over
    ci_lines = [line.strip() for line in ci.splitlines()]
    for command in commands:  # in the same order
        assert command in ci_lines, f"README's {command!r} is not a line of .ci/run"
    assert [ci_lines.index(c) for c in commands] == sorted(ci_lines.index(c) for c in commands)
    assert "python3 -m pip" not in ci and "python3 -m pytest" not in ci  # nothing into the system Python
