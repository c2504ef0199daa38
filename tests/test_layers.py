"""Imports run one way: no module imports a module of a higher layer.

Every import of ``deepfakemae`` and ``data_modules`` (function-level imports included) is read
with ``ast``. A module's layer is that of the longest prefix in ``LAYERS``; a module named
nowhere belongs to the top layer, so a new command needs no entry, and a new low-level module
must be listed before anything below the top may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("deepfakemae", "data_modules")

#: bottom to top; each layer may import its own layer and the ones before it
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("faces", ("deepfakemae.constants", "deepfakemae.errors", "deepfakemae.records",
               "deepfakemae.rundir", "deepfakemae.faces", "deepfakemae.synth")),
    ("data", ("data_modules",)),
    ("models", ("deepfakemae.models", "deepfakemae.masking", "deepfakemae.metalearning",
                "deepfakemae.metrics", "deepfakemae.visualize", "deepfakemae.loggers",
                "deepfakemae.explain", "deepfakemae.branches", "deepfakemae.results",
                "deepfakemae.premise")),
    ("modules", ("deepfakemae.modules", "deepfakemae.callbacks", "deepfakemae.runstate")),
    ("commands", ("deepfakemae",)),  # commands, CLI, plan runner, report: everything else
)


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest prefix of ``module`` (its package's layer)."""
    best, depth = len(LAYERS) - 1, -1
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = rank, len(prefix)
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) of every project import in ``path``, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def upward_imports(root: Path) -> list[str]:
    """``file:line: module (layer) imports name (layer)`` for every import that runs upward."""
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            own = layer_of(module)
            for line, name in imported_modules(path, module):
                if layer_of(name) > own:
                    problems.append(f"{path.relative_to(root)}:{line}: {module} "
                                    f"({LAYERS[own][0]}) imports {name} "
                                    f"({LAYERS[layer_of(name)][0]})")
    return problems


def test_no_import_runs_upward():
    problems = upward_imports(REPO)
    assert not problems, "imports from a higher layer:\n" + "\n".join(problems)


def test_layer_table_names_existing_modules():
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            path = REPO / prefix.replace(".", "/")
            assert path.is_dir() or path.with_suffix(".py").is_file(), prefix


@pytest.mark.parametrize(("module", "layer"), [
    ("deepfakemae.faces.cache", "faces"), ("deepfakemae.records", "faces"),
    ("data_modules.indexes.ffpp", "data"), ("deepfakemae.masking", "models"),
    ("deepfakemae.modules.mapping", "modules"), ("deepfakemae.commands.predict", "commands"),
    ("deepfakemae.cli", "commands"), ("deepfakemae.score_report", "commands"),
])
def test_layer_of(module, layer):
    assert LAYERS[layer_of(module)][0] == layer


def test_an_upward_import_is_caught(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "deepfakemae" / "faces").mkdir()
    (tmp_path / "deepfakemae" / "faces" / "__init__.py").write_text("")
    (tmp_path / "deepfakemae" / "faces" / "bad.py").write_text(
        "def f():\n    from data_modules.datasets import DataError\n    return DataError\n")
    (tmp_path / "deepfakemae" / "faces" / "rel.py").write_text("from ..masking import x\n")
    assert upward_imports(tmp_path) == [
        "deepfakemae/faces/bad.py:2: deepfakemae.faces.bad (faces) imports "
        "data_modules.datasets (data)",
        "deepfakemae/faces/rel.py:1: deepfakemae.faces.rel (faces) imports "
        "deepfakemae.masking (models)",
    ]
