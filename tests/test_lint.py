"""The lint gate: ruff (pycodestyle, pyflakes, import order; on fsl/, tests/ and benchmarks/, in the
fast lane: a second) and mypy (fsl/), configured in pyproject.toml, are clean; no module name is
used twice; no function is longer than the limits."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUNCTION_LIMITS = {"fsl": 50, "benchmarks": 80}  # lines of a function's body, its docstring not counted


def test_ruff_finds_nothing_in_fsl_tests_and_benchmarks():
    if shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                                       capture_output=True).returncode != 0:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    done = subprocess.run([sys.executable, "-m", "ruff", "check"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


@pytest.mark.slow  # mypy takes most of a minute on a cold cache
def test_mypy_finds_nothing_in_fsl():
    if subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode != 0:
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


def test_no_two_modules_share_a_name():
    """`fsl.train` and `fsl.commands.train` once read alike in tracebacks, imports and searches
    (a package is named by its folder: `fsl.recipes` and a `recipes.py` would too)."""
    seen: dict[str, Path] = {}
    for path in python_files("fsl", "benchmarks", "tests"):
        name = path.parent.name if path.name == "__init__.py" else path.stem
        if path.name == "__init__.py" and path.parent.name in ("fsl", "benchmarks", "tests"):
            continue
        assert name not in seen, f"{path.relative_to(REPO)} and {seen[name].relative_to(REPO)}"
        seen[name] = path


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(name, lines) of every function in a file, without its docstring."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0]
            if len(body) > 1 and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                first = body[1]
            out.append((node.name, node.end_lineno - first.lineno + 1))
    return out


@pytest.mark.parametrize("folder", sorted(FUNCTION_LIMITS))
def test_no_function_is_longer_than_the_limit(folder):
    limit = FUNCTION_LIMITS[folder]
    long = [f"{path.relative_to(REPO)}:{name} ({lines} lines)" for path in python_files(folder)
            for name, lines in function_lengths(path) if lines > limit]
    assert not long, f"over {limit} lines: {long}"
