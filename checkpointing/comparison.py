"""What changed between two loaded models: the measurements behind :mod:`checkpointing.diff`.

Each measurement is a pure function over two models (or their VecNormalize statistics) that
returns small frozen records; nothing here reads or writes files::

    layers = layer_changes(model_a, model_b)         # largest relative change first
    layers[0].name, layers[0].relative_change        # "action_net.weight", 0.31
    drift = normalization_drift(vecnorm_a, vecnorm_b)
    drift.largest_mean_shift.name                    # the feature whose mean moved most
    agreement = action_agreement(model_a, vecnorm_a, model_b, vecnorm_b, raw_observations)
    agreement.share                                  # 0.93: same deterministic action

- A layer's change is ``|B - A| / |A|`` (Frobenius norms of its tensors in the policy's state
  dict); layers present in one model only, or with other shapes, are listed as such.
- Hyperparameters are read from the models' attributes (:data:`MODEL_HYPERPARAMETERS`), a
  schedule by its value at progress 1.0 (the start of training), so plain SB3 zips compare too.
- Observation statistics drift per feature: the mean's move in A's standard deviations and
  the log of the variance ratio; plus the return statistics.
- Actions are compared on raw observations, each model seeing them through its own
  VecNormalize, as it would in its own run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.vec_env import VecNormalize

__all__ = [
    "MODEL_HYPERPARAMETERS",
    "ActionAgreement",
    "FeatureDrift",
    "HyperparameterChange",
    "LayerChange",
    "NormalizationDrift",
    "action_agreement",
    "hyperparameter_changes",
    "layer_changes",
    "normalization_drift",
    "policy_actions",
    "same_value",
]

# Read from the loaded models (PPO's names; an algorithm without one reads None).
MODEL_HYPERPARAMETERS = (
    "learning_rate",
    "n_steps",
    "batch_size",
    "n_epochs",
    "gamma",
    "gae_lambda",
    "clip_range",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
)
# The metadata's own record of a run's settings: a search's flattened configuration, and the
# runtime fields (the optimizer's learning rate when saved, the number of training envs).
METADATA_HYPERPARAMETERS = ("learning_rate", "n_envs")


# --------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class HyperparameterChange:
    """One hyperparameter of both checkpoints; ``source`` is ``model`` or ``metadata``."""

    name: str
    source: str
    a: Any
    b: Any

    @property
    def same(self) -> bool:
        return same_value(self.a, self.b)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "a": self.a,
            "b": self.b,
            "same": self.same,
        }


def same_value(a: Any, b: Any) -> bool:
    """Equal, counting two NaNs (two unmeasured values) as equal."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _plain(value: Any) -> Any:
    """A schedule by its value at progress 1.0; numpy scalars as Python numbers."""
    if callable(value):
        value = value(1.0)
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return value


def hyperparameter_changes(
    model_a: BaseAlgorithm,
    model_b: BaseAlgorithm,
    metadata_a: Mapping[str, Any],
    metadata_b: Mapping[str, Any],
) -> tuple[HyperparameterChange, ...]:
    """Every hyperparameter either checkpoint records, equal or not (see ``.same``).

    The models' :data:`MODEL_HYPERPARAMETERS` first, then the metadata's
    ``hyperparameters`` (a search's configuration) and runtime ``learning_rate``/``n_envs``.
    """
    rows = [
        HyperparameterChange(
            name,
            "model",
            _plain(getattr(model_a, name, None)),
            _plain(getattr(model_b, name, None)),
        )
        for name in MODEL_HYPERPARAMETERS
    ]
    searched_a = metadata_a.get("hyperparameters") or {}
    searched_b = metadata_b.get("hyperparameters") or {}
    if isinstance(searched_a, Mapping) and isinstance(searched_b, Mapping):
        for key in sorted({*searched_a, *searched_b}):
            rows.append(
                HyperparameterChange(key, "metadata", searched_a.get(key), searched_b.get(key))
            )
    for key in METADATA_HYPERPARAMETERS:
        if key in metadata_a or key in metadata_b:
            rows.append(
                HyperparameterChange(key, "metadata", metadata_a.get(key), metadata_b.get(key))
            )
    return tuple(rows)


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class LayerChange:
    """One tensor of the policy's state dict: its shapes in A and B and how far it moved.

    ``diff_norm`` (``|B - A|``) and ``norm_a`` (``|A|``) are None unless both models have
    the layer with the same shape.
    """

    name: str
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    diff_norm: float | None = None
    norm_a: float | None = None

    @property
    def status(self) -> str:
        """``changed``, ``same``, ``shape differs``, ``only in A`` or ``only in B``."""
        if self.shape_b is None:
            return "only in A"
        if self.shape_a is None:
            return "only in B"
        if self.shape_a != self.shape_b:
            return "shape differs"
        return "changed" if self.diff_norm else "same"

    @property
    def comparable(self) -> bool:
        """Both models have the layer, with the same shape."""
        return self.diff_norm is not None

    @property
    def relative_change(self) -> float | None:
        """``|B - A| / |A|``; infinite when a layer of zeros changed; None if not comparable."""
        if self.diff_norm is None or self.norm_a is None:
            return None
        if self.norm_a == 0.0:
            return math.inf if self.diff_norm > 0.0 else 0.0
        return self.diff_norm / self.norm_a

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "shape_a": self.shape_a,
            "shape_b": self.shape_b,
            "diff_norm": self.diff_norm,
            "norm_a": self.norm_a,
            "relative_change": self.relative_change,
        }


def layer_changes(model_a: BaseAlgorithm, model_b: BaseAlgorithm) -> tuple[LayerChange, ...]:
    """Every tensor of either policy's state dict: those in both (same shape) by relative
    change, largest first, then shapes that differ, then layers in A only, then in B only."""
    import torch

    state_a = model_a.policy.state_dict()
    state_b = model_b.policy.state_dict()
    compared: list[LayerChange] = []
    other: list[LayerChange] = []
    for name, tensor in state_a.items():
        shape_a = tuple(tensor.shape)
        if name not in state_b:
            other.append(LayerChange(name, shape_a, None))
            continue
        shape_b = tuple(state_b[name].shape)
        if shape_a != shape_b:
            other.append(LayerChange(name, shape_a, shape_b))
            continue
        a = tensor.detach().to(torch.float64)
        b = state_b[name].detach().to(torch.float64)
        diff = float(torch.linalg.vector_norm(b - a))
        compared.append(
            LayerChange(name, shape_a, shape_b, diff, float(torch.linalg.vector_norm(a)))
        )
    other.extend(
        LayerChange(n, None, tuple(t.shape)) for n, t in state_b.items() if n not in state_a
    )
    compared.sort(key=lambda layer: (-(layer.relative_change or 0.0), layer.name))
    order = {"shape differs": 0, "only in A": 1, "only in B": 2}
    other.sort(key=lambda layer: order[layer.status])
    return (*compared, *other)


# --------------------------------------------------------------------------- VecNormalize


@dataclass(frozen=True)
class FeatureDrift:
    """How the running statistics of one observation feature moved from A to B."""

    index: int
    name: str
    delta_mean_std: float  # (mean_B - mean_A) / std_A
    log_var_ratio: float  # log(var_B / var_A)


@dataclass(frozen=True)
class NormalizationDrift:
    """The drift of two VecNormalize statistics: per observation feature, and of returns."""

    features: tuple[FeatureDrift, ...]
    count_a: float
    count_b: float
    return_mean: tuple[float, float]
    return_var: tuple[float, float]

    @property
    def largest_mean_shift(self) -> FeatureDrift | None:
        """The feature whose mean moved most, in A's standard deviations."""
        return max(self.features, key=lambda f: abs(f.delta_mean_std), default=None)

    @property
    def largest_var_change(self) -> FeatureDrift | None:
        """The feature whose variance changed most (largest ``|log var ratio|``)."""
        return max(self.features, key=lambda f: abs(f.log_var_ratio), default=None)

    @property
    def return_log_var_ratio(self) -> float:
        a, b = self.return_var
        return _log_ratio(b, a)

    def top(self, n: int) -> tuple[FeatureDrift, ...]:
        """The ``n`` features that drifted most (by the larger of the two measures)."""
        return tuple(
            sorted(
                self.features,
                key=lambda f: (-max(abs(f.delta_mean_std), abs(f.log_var_ratio)), f.index),
            )[:n]
        )

    def to_json(self) -> dict[str, Any]:
        shift, var = self.largest_mean_shift, self.largest_var_change
        return {
            "count_a": self.count_a,
            "count_b": self.count_b,
            "max_abs_delta_mean_std": None if shift is None else abs(shift.delta_mean_std),
            "max_abs_delta_mean_feature": None if shift is None else shift.name,
            "max_abs_log_var_ratio": None if var is None else abs(var.log_var_ratio),
            "max_abs_log_var_ratio_feature": None if var is None else var.name,
            "features": [
                {
                    "index": f.index,
                    "name": f.name,
                    "delta_mean_std": f.delta_mean_std,
                    "log_var_ratio": f.log_var_ratio,
                }
                for f in self.features
            ],
            "returns": {
                "mean_a": self.return_mean[0],
                "mean_b": self.return_mean[1],
                "var_a": self.return_var[0],
                "var_b": self.return_var[1],
                "log_var_ratio": self.return_log_var_ratio,
            },
        }


def _log_ratio(num: float, den: float, eps: float = 1e-8) -> float:
    return math.log((num + eps) / (den + eps))


def _flat_rms(rms: RunningMeanStd | Mapping[str, RunningMeanStd]) -> list[tuple[str, Any, Any]]:
    """``(feature prefix, mean, var)`` per statistics object (one for a Box observation, one
    per key for a Dict observation)."""
    if isinstance(rms, Mapping):
        return [(f"{key}", rms[key].mean, rms[key].var) for key in sorted(rms)]
    return [("", rms.mean, rms.var)]


def normalization_drift(
    a: VecNormalize, b: VecNormalize, feature_names: Sequence[str] | None = None
) -> NormalizationDrift | None:
    """The drift of B's statistics from A's, or None when their observations differ in shape.

    ``feature_names`` names the features of a flat Box observation (else ``#i`` or
    ``key[i]``).
    """
    parts_a, parts_b = _flat_rms(a.obs_rms), _flat_rms(b.obs_rms)
    if [(k, np.shape(m)) for k, m, _ in parts_a] != [(k, np.shape(m)) for k, m, _ in parts_b]:
        return None
    eps = float(getattr(a, "epsilon", 1e-8))
    features: list[FeatureDrift] = []
    for (key, mean_a, var_a), (_, mean_b, var_b) in zip(parts_a, parts_b, strict=True):
        ma, va = np.ravel(mean_a).astype(float), np.ravel(var_a).astype(float)
        mb, vb = np.ravel(mean_b).astype(float), np.ravel(var_b).astype(float)
        shift = (mb - ma) / np.sqrt(va + eps)
        ratio = np.log((vb + eps) / (va + eps))
        for i in range(len(ma)):
            if key:
                name = f"{key}[{i}]"
            elif feature_names is not None and len(feature_names) == len(ma):
                name = feature_names[i]
            else:
                name = f"#{i}"
            features.append(FeatureDrift(len(features), name, float(shift[i]), float(ratio[i])))
    count_a = _count(a.obs_rms)
    count_b = _count(b.obs_rms)
    return NormalizationDrift(
        tuple(features),
        count_a,
        count_b,
        (float(np.ravel(a.ret_rms.mean)[0]), float(np.ravel(b.ret_rms.mean)[0])),
        (float(np.ravel(a.ret_rms.var)[0]), float(np.ravel(b.ret_rms.var)[0])),
    )


def _count(rms: RunningMeanStd | Mapping[str, RunningMeanStd]) -> float:
    if isinstance(rms, Mapping):
        return float(max((r.count for r in rms.values()), default=0.0))
    return float(rms.count)


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class ActionAgreement:
    """How often two policies choose the same deterministic action."""

    source: str
    observations: int
    same: int

    @property
    def share(self) -> float:
        return self.same / self.observations if self.observations else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "observations": self.observations,
            "same": self.same,
            "share": self.share,
        }


def policy_actions(
    model: BaseAlgorithm, vec_normalize: VecNormalize | None, raw: np.ndarray
) -> np.ndarray:
    """The model's deterministic actions on raw observations seen through its VecNormalize.

    Raises:
        ValueError: the observations do not have the shape the policy expects.
    """
    expected = model.observation_space.shape
    if expected is None or tuple(raw.shape[1:]) != tuple(expected):
        raise ValueError(
            f"observations of shape {tuple(raw.shape[1:])} do not fit a policy that expects "
            f"{expected}; collect them from an environment of the checkpoint's kind"
        )
    obs = raw if vec_normalize is None else vec_normalize.normalize_obs(raw)
    actions, _ = model.predict(obs, deterministic=True)
    return np.asarray(actions).reshape(len(raw), -1)


def action_agreement(
    model_a: BaseAlgorithm,
    vec_normalize_a: VecNormalize | None,
    model_b: BaseAlgorithm,
    vec_normalize_b: VecNormalize | None,
    raw: np.ndarray,
    source: str = "observations",
) -> ActionAgreement:
    """The share of ``raw`` observations (``(n, *obs_shape)``) on which both choose the same
    deterministic action, each seeing them through its own VecNormalize."""
    actions_a = policy_actions(model_a, vec_normalize_a, raw)
    actions_b = policy_actions(model_b, vec_normalize_b, raw)
    if actions_a.shape != actions_b.shape:
        return ActionAgreement(source, len(raw), 0)
    same = int(np.all(actions_a == actions_b, axis=1).sum())
    return ActionAgreement(source, len(raw), same)
