"""bench/cv_power.py: its vectorised interval is the table's interval, and its power is sane."""

import importlib.util
from pathlib import Path

import numpy as np

from deepfakemae.metrics import bootstrap_auc

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "cv_power.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cv_power", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lower_bound_matches_bootstrap_auc():
    power = load_script()
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=10), rng.normal(size=10) + 0.8
    ours = power.bootstrap_low(real, fake, 4000, np.random.default_rng(0))
    keys = [f"v{i}" for i in range(20)]
    table = bootstrap_auc(np.concatenate([real, fake]), np.repeat([0, 1], 10), keys, "video",
                          n_boot=4000).low
    assert abs(ours - table) < 0.02


def test_power_grows_with_auc_and_is_certain_for_separated_sets():
    power = load_script()
    chance = power.lower_bounds(0.5, 10, 60, 500, seed=0)
    strong = power.lower_bounds(0.99, 10, 60, 500, seed=0)
    assert np.mean(chance > 0.5) < 0.1
    assert np.mean(strong > 0.5) > 0.95
    separated = power.bootstrap_low(np.zeros(5), np.ones(5), 200, np.random.default_rng(0))
    assert separated == 1.0
