"""Every text file the project reads or writes is opened as UTF-8, whatever the locale: an AST
scan of the package for ``open`` / ``Path.open`` / ``read_text`` / ``write_text`` in text mode
without ``encoding=`` (the end-to-end check under ``LC_ALL=C`` is in test_predict.py)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("deepfakemae", "data_modules")
#: ``<name>.open(...)`` calls that are not text files (containers, archives, images, fds)
NOT_TEXT = {"av", "_av", "tarfile", "zipfile", "gzip", "Image", "os", "np", "h5py", "decord"}


def _mode(call: ast.Call, position: int) -> str | None:
    for kw in call.keywords:
        if kw.arg == "mode" and isinstance(kw.value, ast.Constant):
            return str(kw.value.value)
    if len(call.args) > position and isinstance(call.args[position], ast.Constant):
        return str(call.args[position].value)
    return None


def unencoded_calls(path: Path) -> list[str]:
    """``file:line call`` of each text-mode open/read/write without ``encoding=``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {func.attr}")
        elif isinstance(func, ast.Name) and func.id == "open":
            if "b" not in (_mode(node, 1) or "r"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} open")
        elif isinstance(func, ast.Attribute) and func.attr == "open":
            base = func.value
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            if name in NOT_TEXT:
                continue
            if "b" not in (_mode(node, 0) or "r"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} .open")
    return found


def test_every_text_file_is_opened_as_utf8():
    found = [c for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
             for c in unencoded_calls(path)]
    assert not found, "pass encoding=\"utf-8\" to: " + ", ".join(found)
