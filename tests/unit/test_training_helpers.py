"""``airflow_mlops.training``: search spaces for ``.expand(hyperparameters=...)`` and checkpoint keys."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from airflow_mlops.training import IntUniform, LogUniform, Uniform, checkpoint_key, param_grid, random_samples


def test_param_grid_is_the_cartesian_product_in_a_stable_order():
    grid = param_grid({"lr": [0.001, 0.01], "hidden": [16, 32, 64], "epochs": 5})
    assert len(grid) == 6
    assert grid[0] == {"lr": 0.001, "hidden": 16, "epochs": 5}
    assert grid[1] == {"lr": 0.001, "hidden": 32, "epochs": 5}  # the last list varies fastest
    assert grid[-1] == {"lr": 0.01, "hidden": 64, "epochs": 5}
    assert len({json.dumps(g, sort_keys=True) for g in grid}) == 6
    assert param_grid({"lr": [0.1]}) == [{"lr": 0.1}]
    assert param_grid({"optimizer": "adam", "betas": ((0.9, 0.99),)}) == [
        {"optimizer": "adam", "betas": (0.9, 0.99)}
    ]
    assert param_grid({}) == [{}]


def test_param_grid_rejects_an_empty_list():
    with pytest.raises(ValueError, match="'lr' has an empty list"):
        param_grid({"lr": [], "hidden": [16]})


def test_random_samples_are_reproducible_and_within_the_space():
    space = {"lr": LogUniform(1e-4, 1e-1), "dropout": Uniform(0.0, 0.5), "hidden": IntUniform(8, 64),
             "optimizer": ["adam", "sgd"], "epochs": 5}  # fmt: skip
    samples = random_samples(space, 50, seed=7)
    assert samples == random_samples(dict(reversed(space.items())), 50, seed=7)  # key order does not matter
    assert samples != random_samples(space, 50, seed=8)
    assert len(samples) == 50
    for s in samples:
        assert 1e-4 <= s["lr"] <= 1e-1 and 0.0 <= s["dropout"] <= 0.5
        assert isinstance(s["hidden"], int) and 8 <= s["hidden"] <= 64
        assert s["optimizer"] in ("adam", "sgd") and s["epochs"] == 5
    assert {s["optimizer"] for s in samples} == {"adam", "sgd"}
    # log-uniform: about as many draws per decade
    decades = [int(math.floor(math.log10(s["lr"]))) for s in random_samples(space, 3000, seed=1)]
    counts = [decades.count(d) for d in (-4, -3, -2)]
    assert min(counts) > 800, counts
    json.dumps(samples)  # XCom- and config-safe


def test_random_samples_and_distributions_reject_bad_arguments():
    with pytest.raises(ValueError, match="n >= 1"):
        random_samples({"lr": [0.1]}, 0)
    with pytest.raises(ValueError, match="0 < low <= high"):
        LogUniform(0.0, 1.0)
    with pytest.raises(ValueError, match="low <= high"):
        Uniform(2.0, 1.0)
    with pytest.raises(ValueError, match="low <= high"):
        IntUniform(3, 1)


def test_checkpoint_key_ignores_the_try_and_separates_task_instances():
    key = checkpoint_key("dag", "run", "train", -1)
    assert key == checkpoint_key("dag", "run", "train", -1) and len(key) == 24
    others = {checkpoint_key("dag", "run", "train", 0), checkpoint_key("dag", "run2", "train", -1),
              checkpoint_key("dag", "run", "train2", -1), checkpoint_key("dag2", "run", "train", -1),
              checkpoint_key("da", "grun", "train", -1)}  # fmt: skip
    assert key not in others and len(others) == 5


def test_the_module_is_light_to_import():
    heavy = "('airflow', 'pandas', 'torch', 'mlflow')"
    code = f"import sys, airflow_mlops.training; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
