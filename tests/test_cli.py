"""The `deepfakemae` command dispatches its subcommands."""

import subprocess
import sys

from deepfakemae.cli import main


def test_usage_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "test", "predict", "preprocess"):
        assert command in out


def test_unknown_command_fails(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_runs_lightning_help():
    out = subprocess.run([sys.executable, "-m", "deepfakemae.cli", "fit", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--trainer" in out.stdout and "--model" in out.stdout
