"""The package layout by layer, checked from the source with ``ast``.

- Imports point downwards only: ``engine`` (the loop, the pass primitive, statistics,
  kernels, math) imports no other layer; ``init`` only ``engine``; ``mixture`` only
  ``engine`` and ``init``; ``data`` only ``errors``, ``_schema`` and the engine's
  ``register_block_reader``; ``jobs`` anything.
- No function in ``dask_em/`` is over 100 lines, except the numba-compiled kernels.
- No module is over 800 lines.

Known offenders are listed by name in ``KNOWN_LONG_FUNCTIONS`` and ``KNOWN_LONG_MODULES``
while their clean-up is under way; an entry that no longer offends fails the test too,
so the lists only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dask_em"
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 800

# What each part of the package may import from dask_em, besides itself. None: anything.
# A part is a layer folder (engine, init, mixture, data, jobs) or a top-level module.
ALLOWED = {
    "engine": set(),
    "init": {"engine"},
    "mixture": {"engine", "init"},
    "data": {"errors", "_schema"},
    "jobs": None,
    # Shared foundations: import nothing of the package.
    "errors": set(),
    "_schema": set(),
    # Pictures, usable by estimators and jobs alike.
    "plots": {"engine"},
    # Facades kept for old imports.
    "io": {"data"},
    "folders": {"data"},
    # The public face and the command.
    "__init__": None,
    "__main__": None,
}
# Single names allowed across layers where the rule above has to bend, by importer layer:
# data registers its raw block readers with the pass primitive.
ALLOWED_NAMES = {"data": {("dask_em.engine._reduce", "register_block_reader")}}

# Offenders that others are cleaning up (issue #19); remove an entry once it is fixed.
KNOWN_LONG_FUNCTIONS: set[str] = set()
KNOWN_LONG_MODULES: set[str] = set()


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _part(path: Path) -> str:
    """The layer folder a file is in, or its own name for a top-level module."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _part_of_target(module: str) -> str:
    """``dask_em.engine._math`` -> ``engine``; ``dask_em`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(source: str) -> list[tuple[str, tuple[str, ...], int]]:
    """``(module, names, line)`` of every import of dask_em in ``source``, also those
    inside functions (a lazy import still points somewhere)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [
                (a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == "dask_em"
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"relative import at line {node.lineno}: use dask_em.…")
            if node.module and node.module.split(".")[0] == "dask_em":
                out.append((node.module, tuple(a.name for a in node.names), node.lineno))
    return sorted(out, key=lambda imp: imp[2])


def violations(part: str, source: str) -> list[str]:
    """Imports in ``source`` (of layer ``part``) that point to a layer it may not use."""
    allowed = ALLOWED[part]
    if allowed is None:
        return []
    bad = []
    for module, names, line in imports_of(source):
        target = _part_of_target(module)
        if target == part or target in allowed:
            continue
        # `from dask_em import engine` style names a layer, not the package root
        if module == "dask_em" and names and all(n in allowed or n == part for n in names):
            continue
        extra = ALLOWED_NAMES.get(part, set())
        if names and all((module, n) in extra for n in names):
            continue
        bad.append(f"line {line}: {part} imports {module} ({', '.join(names) or 'module'})")
    return bad


def _function_lengths(source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = " ".join(ast.unparse(d) for d in node.decorator_list)
            compiled = "jit" in decorators or "vectorize" in decorators
            yield node.name, node.end_lineno - node.lineno + 1, compiled


def test_every_module_belongs_to_a_known_part():
    unknown = {_name(p) for p in _modules() if _part(p) not in ALLOWED}
    assert not unknown, f"classify these in ALLOWED: {sorted(unknown)}"


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_imports_point_downwards(path):
    assert violations(_part(path), path.read_text()) == []


def test_the_import_check_sees_upward_and_lazy_imports():
    source = (
        "from dask_em.engine import _math\n"
        "def f():\n"
        "    from dask_em.jobs.config import JobConfig\n"
        "import dask_em.mixture._gaussian\n"
    )
    assert violations("engine", source) == [
        "line 3: engine imports dask_em.jobs.config (JobConfig)",
        "line 4: engine imports dask_em.mixture._gaussian (module)",
    ]
    assert violations("init", source) == [
        "line 3: init imports dask_em.jobs.config (JobConfig)",
        "line 4: init imports dask_em.mixture._gaussian (module)",
    ]
    assert violations("jobs", source) == []
    assert violations("data", "from dask_em.engine._reduce import register_block_reader\n") == []
    assert violations("data", "from dask_em.engine._reduce import compute_pass\n") == [
        "line 1: data imports dask_em.engine._reduce (compute_pass)"
    ]


def test_no_function_over_100_lines_except_compiled_kernels():
    long = {}
    for path in _modules():
        for name, lines, compiled in _function_lengths(path.read_text()):
            if lines > MAX_FUNCTION_LINES and not compiled:
                long[f"{_name(path)}::{name}"] = lines
    assert set(long) - KNOWN_LONG_FUNCTIONS == set(), long
    fixed = KNOWN_LONG_FUNCTIONS - set(long)
    assert not fixed, f"no longer over {MAX_FUNCTION_LINES} lines: remove {fixed} from the list"


def test_no_module_over_800_lines():
    long = {
        _name(p): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert set(long) - KNOWN_LONG_MODULES == set(), long
    fixed = KNOWN_LONG_MODULES - set(long)
    assert not fixed, f"no longer over {MAX_MODULE_LINES} lines: remove {fixed} from the list"
