"""A regular (non-editable) wheel install finds its configs and plans: the wheel is built from
this checkout, installed without dependencies into a temporary folder, and run from outside the
checkout (the dependencies come from the running environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, target: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    if target is not None:
        env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(target folder holding the installed wheel, a working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = _run(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                  "-w", str(tmp / "dist")], cwd=tmp)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("deepfakemae-*.whl")
    done = _run(["-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp / "site"),
                 str(wheel)], cwd=tmp)
    assert done.returncode == 0, done.stderr
    work = tmp / "work"
    work.mkdir()
    return tmp / "site", work


@pytest.mark.slow
def test_wheel_install_runs_the_table_plans_and_the_demo_plan(installed):
    site, work = installed
    where = _run(["-c", "import deepfakemae, deepfakemae.commands.demo as d; "
                  "print(deepfakemae.__file__); print(d.PLAN.is_file())"], work, site)
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(site / "deepfakemae" / "__init__.py"), "True"]
    plan = _run(["-m", "deepfakemae.cli", "run", "table1", "--demo", "--dry-run",
                 "--run-root", "runs"], work, site)
    assert plan.returncode == 0, plan.stderr
    assert f"-c {site / 'deepfakemae' / 'configs' / 'pretrain.yaml'}" in plan.stdout


@pytest.mark.slow
def test_wheel_install_reads_a_stage_config_by_its_documented_path(installed):
    site, work = installed
    shown = _run(["-m", "deepfakemae.cli", "fit", "-c", "experiments/pretrain.yaml",
                  "--print_config"], work, site)
    assert shown.returncode == 0, shown.stderr
    assert "MAEPretrainModule" in shown.stdout
