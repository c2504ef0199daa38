"""Every error a user can act on derives from ``DeepfakeMAEError`` and ends a command with one
line on stderr and its exit code: each error class of the packages, raised through the one
handler, and real command lines that hit real error paths."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import data_modules
import deepfakemae
from deepfakemae.cli import main
from deepfakemae.errors import DeepfakeMAEError, UsageError, error_line, reports_errors

#: the errors whose command exits otherwise than 2 (and why)
OTHER_EXIT_CODES = {"DemoDataError": 1,  # demo-data: the build failed, not its arguments
                    "StageFailed": 1}    # a stage failed (130 / 143 when it was interrupted)


def package_errors() -> list[type[BaseException]]:
    """Every exception class (warnings aside) defined in a module of the two packages."""
    found = {}
    for package in (deepfakemae, data_modules):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and not issubclass(cls, Warning) and \
                        cls.__module__ == module.__name__:
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found)]


ERRORS = package_errors()


def two_line_error(cls: type[BaseException]) -> BaseException:
    """An instance built with a two-line text for each required argument (a ``path`` gets it
    as a ``Path``; a class with Exception's own ``__init__`` gets it once), so that its message
    has more than one line."""
    text = "first line\n  second line"
    required = [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    return cls(*[Path(text) if name == "path" else text for name in required or ["message"]])


def test_the_walk_finds_the_errors():
    names = {cls.__name__ for cls in ERRORS}
    assert {"UsageError", "DatasetError", "CheckpointError", "CacheError", "PlanError",
            "FaceDetectorError", "StageFailed", "RunDirError"} <= names
    assert sum(cls.__name__ == "UsageError" for cls in ERRORS) == 1  # defined once


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_one_line_and_its_exit_code(cls, capsys):
    assert issubclass(cls, DeepfakeMAEError), f"{cls.__module__}.{cls.__name__}"

    @reports_errors("tool")
    def run() -> int:
        raise two_line_error(cls)

    assert run() == OTHER_EXIT_CODES.get(cls.__name__, 2)
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("deepfakemae tool: error: ") and "first line; second line" in err


def test_the_old_names_are_the_same_classes():
    from data_modules.datasets import DataError
    from data_modules.indexes import DatasetError

    assert DataError is DatasetError
    assert issubclass(DatasetError, ValueError) and issubclass(DatasetError, RuntimeError)
    assert issubclass(UsageError, ValueError)
    assert error_line("x", UsageError("")) == "deepfakemae x: error: UsageError"


def command_lines(tmp_path) -> dict[str, tuple[list[str], int, str]]:
    """Real error paths: ``{name: (argv, exit code, text the line holds)}``."""
    missing = tmp_path / "missing.mp4"
    return {
        "score: no such input": (["score", "--video", str(missing), "--output",
                                  str(tmp_path / "out"), "--no-progress"], 2, str(missing)),
        "score: bad device": (["score", "--video", str(missing), "--device", "tpu"], 2,
                              "not a torch device"),
        "preprocess: dataset root": (["preprocess", "--dataset", "ffpp", "--root",
                                      str(tmp_path / "nowhere"), "--output",
                                      str(tmp_path / "cache"), "--no-progress"], 2, "nowhere"),
        "preprocess: no input": (["preprocess", "--output", str(tmp_path / "cache")], 2,
                                 "give --input"),
        "cache: not a cache": (["cache", "verify", str(tmp_path)], 2, "is not a face cache"),
        "run: no plan": (["run", str(tmp_path / "plan.yaml"), "--dry-run"], 2, "plan.yaml"),
        "premise: no checkpoint": (["premise", "--checkpoint", str(tmp_path / "none.ckpt"),
                                    "--cache", str(tmp_path)], 2, "none.ckpt"),
        "demo: options": (["demo", "--sensitivity"], 2, "--folds"),
    }


@pytest.mark.parametrize("name", [
    "score: no such input", "score: bad device", "preprocess: dataset root",
    "preprocess: no input", "cache: not a cache", "run: no plan", "premise: no checkpoint",
    "demo: options"])
def test_command_error_paths_exit_with_one_line(name, tmp_path, capsys):
    argv, code, text = command_lines(tmp_path)[name]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"deepfakemae {argv[0]}: error: ") and text in err[0], err
