"""Building training/evaluation environments and measuring a policy on validation data.

Typical use by the trainer::

    data = MarketData.load(get_market(load_markets("config/markets.yaml"), "NQ"))
    train_env = VecNormalize(make_vec_env(data, phase=1, split="train", seed=42, n_envs=8))
    eval_env = VecNormalize(
        make_vec_env(data, phase=1, split="validation", seed=42, evaluation=True),
        training=False,
        norm_reward=False,
    )
    # ... sync eval_env.obs_rms from train_env before each evaluation ...
    metrics = evaluate_trading(model, eval_env, n_episodes=1)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from tuner.trading import metrics
from tuner.trading.advisor import Advisor, AdvisorConfig, build_advisor
from tuner.trading.env import EnvConfig, EpisodeStats, FuturesTradingEnv, MarketData

__all__ = [
    "TRADING_METRICS",
    "evaluate_trading",
    "make_env",
    "make_vec_env",
    "run_episodes",
    "summarize_episodes",
]

log = logging.getLogger(__name__)

#: Keys of :func:`evaluate_trading`'s result in every phase (phase 3 adds the advisor ones).
TRADING_METRICS = (
    "val_reward",
    "sharpe_ratio",
    "win_rate",
    "max_drawdown",
    "total_return",
    "n_trades",
    "exposure",
    "buy_hold_gap",
)


def make_env(
    data: MarketData,
    phase: int,
    split: str = "train",
    seed: int | None = None,
    *,
    config: EnvConfig | None = None,
    evaluation: bool = False,
    advisor: Advisor | None = None,
    advisor_config: AdvisorConfig | None = None,
    window_offset: int = 0,
    window_stride: int = 1,
) -> FuturesTradingEnv:
    """Create one :class:`FuturesTradingEnv`.

    Args:
        data: Prepared market data (``MarketData.load(spec)``).
        phase: 1, 2 or 3.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        seed: Seed of the env's RNG (episode starts).
        config: Env settings (default :class:`EnvConfig`).
        evaluation: Deterministic walk through the split instead of random starts.
        advisor: Phase 3 advisor object; takes precedence over ``advisor_config``.
        advisor_config: Phase 3: builds the advisor and sets ``consult_every`` and
            ``min_confidence`` of the env config.
        window_offset, window_stride: Evaluation windows of this env (see the env).
    """
    cfg = config or EnvConfig()
    if phase == 3 and advisor_config is not None:
        cfg = replace(
            cfg,
            consult_every=advisor_config.consult_every,
            min_confidence=advisor_config.min_confidence,
        )
        if advisor is None:
            advisor = build_advisor(advisor_config)
    return FuturesTradingEnv(
        data,
        split,
        phase,
        config=cfg,
        evaluation=evaluation,
        seed=seed,
        advisor=advisor if phase == 3 else None,
        window_offset=window_offset,
        window_stride=window_stride,
    )


def make_vec_env(
    data: MarketData,
    phase: int,
    split: str,
    seed: int,
    n_envs: int = 1,
    *,
    config: EnvConfig | None = None,
    evaluation: bool = False,
    advisor_config: AdvisorConfig | None = None,
    monitor: bool = True,
) -> DummyVecEnv:
    """Create ``n_envs`` envs in a ``DummyVecEnv`` (env ``i`` seeded ``seed + i``).

    In evaluation mode env ``i`` walks windows ``i, i + n_envs, ...`` so the envs cover
    different parts of the split; with the default whole-split episodes use ``n_envs=1``.
    The envs share one advisor (built from ``advisor_config``; the rule-based one by default
    in phase 3). With ``monitor`` each env is wrapped in SB3's ``Monitor`` (episode reward
    and length in the training logs).
    """
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be an integer >= 1, got {n_envs!r}")
    advisor = build_advisor(advisor_config) if phase == 3 and advisor_config else None

    def factory(i: int) -> Any:
        def build() -> Any:
            env = make_env(
                data,
                phase,
                split,
                seed + i,
                config=config,
                evaluation=evaluation,
                advisor=advisor,
                advisor_config=advisor_config,
                window_offset=i,
                window_stride=n_envs,
            )
            return Monitor(env) if monitor else env

        return build

    vec = DummyVecEnv([factory(i) for i in range(n_envs)])
    vec.seed(seed)
    return vec


def evaluate_trading(
    model: BaseAlgorithm, eval_env: VecEnv, n_episodes: int, deterministic: bool = True
) -> dict[str, float]:
    """Run ``model`` for ``n_episodes`` evaluation episodes and compute the trading metrics.

    The env must be a VecEnv of :class:`FuturesTradingEnv` in evaluation mode (possibly
    wrapped, e.g. in ``VecNormalize(training=False, norm_reward=False)``; sync its statistics
    before calling). Each call starts again from the first evaluation window, so the same
    model on the same data gives the same metrics.

    Returns:
        :data:`TRADING_METRICS` (see :func:`summarize_episodes`), plus the six phase-3
        advisor fields when the env is in phase 3.

    Raises:
        ValueError: if ``n_episodes < 1`` or the env is not a trading env in evaluation mode.
    """
    return summarize_episodes(run_episodes(model, eval_env, n_episodes, deterministic))


def run_episodes(
    model: BaseAlgorithm, eval_env: VecEnv, n_episodes: int, deterministic: bool = True
) -> list[EpisodeStats]:
    """The first ``n_episodes`` evaluation episodes of ``model`` on ``eval_env``, as
    :class:`EpisodeStats` (what :func:`evaluate_trading` summarizes)."""
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes must be an integer >= 1, got {n_episodes!r}")
    try:
        modes = eval_env.get_attr("evaluation")
    except AttributeError:
        modes = []
    if not modes or not all(modes):
        raise ValueError(
            "evaluate_trading needs FuturesTradingEnv envs in evaluation mode; "
            "build them with make_vec_env(..., evaluation=True)"
        )
    eval_env.env_method("rewind")
    obs = eval_env.reset()
    n_envs = eval_env.num_envs
    episode_starts = np.ones(n_envs, dtype=bool)
    state: tuple[np.ndarray, ...] | None = None
    episodes: list[EpisodeStats] = []
    greedy = _greedy_policy(model) if deterministic else None
    policy = getattr(model, "policy", None)
    was_training = bool(getattr(policy, "training", False))
    if policy is not None:
        policy.set_training_mode(False)
    try:
        while len(episodes) < n_episodes:
            if greedy is not None:
                actions = greedy(obs)
            else:
                actions, state = model.predict(
                    obs,  # type: ignore[arg-type]
                    state=state,
                    episode_start=episode_starts,
                    deterministic=deterministic,
                )
            obs, _, dones, infos = eval_env.step(actions)
            for i in np.flatnonzero(dones):
                episodes.append(infos[i]["episode_stats"])
            episode_starts = dones
    finally:
        if policy is not None:
            policy.set_training_mode(was_training)
    return episodes[:n_episodes]


def _greedy_policy(model: BaseAlgorithm) -> Any:
    """A fast deterministic ``obs -> actions`` for discrete actor-critic policies, else None.

    Same actions as ``model.predict(obs, deterministic=True)`` (the argmax of the logits),
    without the per-call overhead of building a distribution and switching module modes,
    which otherwise dominates evaluation time.
    """
    import torch
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.preprocessing import preprocess_obs

    policy = getattr(model, "policy", None)
    if not isinstance(policy, ActorCriticPolicy) or not isinstance(
        policy.action_space, spaces.Discrete
    ):
        return None
    device = policy.device

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            tensor = torch.as_tensor(obs, device=device)
            features = policy.pi_features_extractor(
                preprocess_obs(tensor, policy.observation_space, policy.normalize_images)
            )
            latent = policy.mlp_extractor.forward_actor(features)
            logits = policy.action_net(latent)
            result: np.ndarray = logits.argmax(dim=1).cpu().numpy()
            return result

    return act


def summarize_episodes(episodes: Sequence[EpisodeStats]) -> dict[str, float]:
    """Combine evaluation episodes into the trading metrics (:mod:`tuner.trading.metrics`).

    * ``val_reward``: mean total reward per episode;
    * ``sharpe_ratio``: of the per-bar returns of all episodes together;
    * ``win_rate``: of all closed round trips together (NaN without trades);
    * ``max_drawdown``: the worst episode's (fraction <= 0);
    * ``total_return`` and ``buy_hold_gap``: mean per episode (percent);
    * ``n_trades``: closed round trips per episode (mean);
    * ``exposure``: share of all bars with a position;
    * phase 3: the six advisor fields of all episodes together.
    """
    if not episodes:
        raise ValueError("summarize_episodes needs at least one episode")
    returns = np.concatenate([ep.equity[1:] / ep.equity[:-1] for ep in episodes])
    # One equity curve with the same per-bar returns as all episodes back to back.
    joined = np.concatenate([[1.0], np.cumprod(returns)])
    trades = np.concatenate([ep.trade_pnls for ep in episodes])
    result: dict[str, float] = {
        "val_reward": metrics.val_reward([ep.total_reward for ep in episodes]),
        "sharpe_ratio": _sharpe(joined, episodes[0].bars_per_year),
        "win_rate": metrics.win_rate(trades),
        "max_drawdown": min(metrics.max_drawdown(ep.equity) for ep in episodes),
        "total_return": float(np.mean([metrics.total_return(ep.equity) for ep in episodes])),
        "n_trades": metrics.n_trades(trades) / len(episodes),
        "exposure": metrics.exposure(np.concatenate([ep.positions for ep in episodes])),
        "buy_hold_gap": float(
            np.mean([metrics.buy_hold_gap(ep.equity, ep.closes, ep.point_value) for ep in episodes])
        ),
    }
    counters = [ep.advisor for ep in episodes if ep.advisor is not None]
    if counters:
        total = sum(counters[1:], counters[0])
        result.update(total.metadata())
    return result


def _sharpe(joined: np.ndarray, bars_per_year: float) -> float:
    if np.any(joined[:-1] <= 0):  # an episode ended in ruin; its last bar ends the curve
        return math.nan
    return metrics.sharpe_ratio(joined, bars_per_year)
