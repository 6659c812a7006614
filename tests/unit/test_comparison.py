"""The measurements of checkpointing.comparison on made-up models and statistics."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd

from checkpointing.comparison import (
    ActionAgreement,
    HyperparameterChange,
    hyperparameter_changes,
    layer_changes,
    normalization_drift,
)


def _model(state: dict[str, torch.Tensor], **attrs: Any) -> Any:
    policy = SimpleNamespace(state_dict=lambda: state)
    return SimpleNamespace(policy=policy, **attrs)


def _rms(mean: list[float], var: list[float], count: float = 10.0) -> RunningMeanStd:
    rms = RunningMeanStd(shape=(len(mean),))
    rms.mean, rms.var, rms.count = np.array(mean), np.array(var), count
    return rms


def _vecnorm(obs_rms: Any, ret_mean: float = 0.0, ret_var: float = 1.0) -> Any:
    return SimpleNamespace(obs_rms=obs_rms, ret_rms=_rms([ret_mean], [ret_var]), epsilon=1e-8)


def test_layers_by_relative_change_then_the_ones_that_cannot_be_compared() -> None:
    a = _model(
        {
            "big": torch.ones(4),  # |A| = 2
            "small": torch.full((4,), 10.0),  # |A| = 20
            "zeros": torch.zeros(2),
            "same": torch.ones(3),
            "reshaped": torch.ones(2, 2),
            "gone": torch.ones(1),
        }
    )
    b = _model(
        {
            "big": torch.ones(4) * 2,  # |B - A| = 2: relative 1.0
            "small": torch.full((4,), 11.0),  # |B - A| = 2: relative 0.1
            "zeros": torch.ones(2),  # from zeros: infinitely far
            "same": torch.ones(3),
            "reshaped": torch.ones(4),
            "new": torch.ones(1),
        }
    )
    rows = [(c.name, c.status, c.relative_change) for c in layer_changes(a, b)]
    assert rows == [
        ("zeros", "changed", math.inf),
        ("big", "changed", pytest.approx(1.0)),
        ("small", "changed", pytest.approx(0.1)),
        ("same", "same", 0.0),
        ("reshaped", "shape differs", None),
        ("gone", "only in A", None),
        ("new", "only in B", None),
    ]


def test_drift_is_measured_in_a_s_standard_deviations_and_log_variance_ratios() -> None:
    a = _vecnorm(_rms([0.0, 1.0, 5.0], [4.0, 1.0, 1.0], count=100), ret_var=2.0)
    b = _vecnorm(_rms([1.0, 1.0, 5.0], [4.0, math.e**2, 1.0], count=300), ret_var=2.0 * math.e)
    drift = normalization_drift(a, b, feature_names=["x", "y", "z"])
    assert drift is not None
    assert [(f.name, f.delta_mean_std, f.log_var_ratio) for f in drift.features] == [
        ("x", pytest.approx(0.5), pytest.approx(0.0)),
        ("y", pytest.approx(0.0), pytest.approx(2.0)),
        ("z", pytest.approx(0.0), pytest.approx(0.0)),
    ]
    assert drift.largest_mean_shift is not None and drift.largest_mean_shift.name == "x"
    assert drift.largest_var_change is not None and drift.largest_var_change.name == "y"
    assert [f.name for f in drift.top(2)] == ["y", "x"]
    assert (drift.count_a, drift.count_b) == (100, 300)
    assert drift.return_log_var_ratio == pytest.approx(1.0)


def test_drift_of_dict_observations_and_of_other_shapes() -> None:
    a = _vecnorm({"pos": _rms([0.0, 0.0], [1.0, 1.0]), "vel": _rms([0.0], [1.0])})
    b = _vecnorm({"pos": _rms([0.0, 3.0], [1.0, 1.0]), "vel": _rms([0.0], [1.0])})
    drift = normalization_drift(a, b)
    assert drift is not None and [f.name for f in drift.features] == ["pos[0]", "pos[1]", "vel[0]"]
    assert drift.largest_mean_shift is not None and drift.largest_mean_shift.name == "pos[1]"
    assert (
        normalization_drift(_vecnorm(_rms([0.0], [1.0])), _vecnorm(_rms([0.0] * 2, [1.0] * 2)))
        is None
    )


def test_hyperparameters_read_schedules_at_the_start_and_compare_nan_as_equal() -> None:
    a = _model({}, learning_rate=lambda progress: progress * 1e-3, gamma=0.99, clip_range=0.2)
    b = _model({}, learning_rate=3e-4, gamma=np.float64(0.99), clip_range=lambda _: 0.3)
    rows = {h.name: h for h in hyperparameter_changes(a, b, {"n_envs": 8}, {"n_envs": 4})}
    assert (rows["learning_rate"].a, rows["learning_rate"].b) == (1e-3, 3e-4)
    assert (rows["clip_range"].a, rows["clip_range"].b) == (0.2, 0.3)
    assert rows["gamma"].same and isinstance(rows["gamma"].b, float)
    assert rows["n_steps"].same and rows["n_steps"].a is None  # neither model has one
    assert not rows["n_envs"].same and rows["n_envs"].source == "metadata"
    assert HyperparameterChange("x", "metadata", math.nan, math.nan).same


def test_agreement_of_no_observations_is_not_a_number() -> None:
    assert math.isnan(ActionAgreement("none", 0, 0).share)
    assert ActionAgreement("some", 4, 3).share == 0.75
