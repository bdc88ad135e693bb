"""The package's shape, checked: dependencies point one way.

faces (``engine.cli``, ``engine.web``) → operations on recorded runs (``engine.runs``)
→ the agent runtime (``engine.agent``) → config → the model layer and the tools →
the state machines → projections → events. Every import in every module counts,
those inside functions too (the command line imports lazily). Inside the CLI, no
module imports the package itself: the group lives in ``engine.cli.base``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lower number = lower layer; a module may import its own layer or lower ones
LAYERS: dict[str, int] = {
    "events": 0,
    "projections": 1,
    "engine.errors": 1,
    "engine.tables": 1,
    "engine.terminal": 1,
    "engine.stops": 1,
    "engine.keys": 2,
    "engine.storage": 2,
    "engine.machines": 2,
    "engine.model": 3,
    "engine.tools": 3,
    "engine.config": 4,
    "engine.agent": 5,
    "engine.testing": 6,
    "engine.misbehaving": 6,
    "engine.runs": 6,
    "engine.pytest_plugin": 7,
    "engine.web": 7,
    "engine.cli": 8,
    "engine": 9,  # the package root itself holds only __version__
}

# modules of one layer that must not import each other
APART = [("engine.model", "engine.tools")]


def layer_of(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # "from engine import arbiter" imports the module engine.arbiter
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [
        (line, name)
        for line, name in found
        if name.split(".")[0] in ("engine", "events", "projections")
    ]


SOURCES = sorted(
    p for top in ("engine", "events", "projections") for p in (ROOT / top).rglob("*.py")
)


def known(name: str) -> bool:
    """Whether ``name`` is a module or package of ours (not a name imported from one)."""
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    here = module_name(path)
    mine = layer_of(here)
    wrong = []
    for line, target in imports(path):
        if not known(target) or target == "engine":
            continue
        theirs = layer_of(target)
        if LAYERS[theirs] > LAYERS[mine]:
            wrong.append(
                f"line {line}: {here} ({mine}) imports {target} ({theirs}), a higher layer"
            )
        if (mine, theirs) in APART or (theirs, mine) in APART:
            wrong.append(f"line {line}: {here} imports {target}: {mine} and {theirs} stay apart")
        if mine == "engine.cli" and target == "engine.cli" and here != "engine.cli":
            wrong.append(f"line {line}: {here} imports the CLI package; import engine.cli.base")
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The check above is not vacuous: an upward import is seen, even inside a function."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from engine.agent.runner import Engine\n")
    assert (2, "engine.agent.runner") in imports(module)
    assert LAYERS[layer_of("engine.agent.runner")] > LAYERS[layer_of("engine.tools.files")]
