"""Out-of-sample evaluation: a checkpoint on the held-out test split, once, after the choice.

Every figure a run reports while it trains is a validation figure, the same figures that pick
its best checkpoint. This module measures a chosen checkpoint on the test split, which nothing
else reads: the deterministic policy walks the whole test span in one pass, with its phase's
costs, next to holding one contract long (buy and hold) and staying flat. The Sharpe ratio is
annualized by the data's own bars per year and comes with a block-bootstrap confidence
interval, so a reader sees how much of it is noise. The equity curves (the policy's and buy and
hold's, downsampled) go with the figures, for the report's test-period chart.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CURVE_POINTS", "TEST_METRICS", "bootstrap_sharpe", "equity_curve", "evaluate_on_test"]

CURVE_POINTS = 2000  # the most bars of a test-period equity curve kept in the JSON

TEST_METRICS = (
    "total_return",
    "sharpe_ratio",
    "max_drawdown",
    "n_trades",
    "exposure",
    "win_rate",
)


def bootstrap_sharpe(
    equity: np.ndarray,
    bars_per_year: float,
    *,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A ``level`` confidence interval of the annualized Sharpe ratio of ``equity``: moving
    blocks of about ``n ** (1/3)`` returns (bar returns are not independent) drawn with
    replacement, ``samples`` times, seeded. NaN bounds with fewer than 10 returns."""
    curve = np.asarray(equity, dtype=np.float64)
    returns = curve[1:] / curve[:-1] - 1.0
    n = len(returns)
    if n < 10 or not np.all(np.isfinite(returns)):
        return math.nan, math.nan
    block = max(1, round(n ** (1 / 3)))
    starts_per_sample = math.ceil(n / block)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(samples, starts_per_sample))
    index = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(samples, -1)[:, :n]
    drawn = returns[index]
    mean = drawn.mean(axis=1)
    std = drawn.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = np.where(std > 0, math.sqrt(bars_per_year) * mean / std, 0.0)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(sharpe, [tail, 1.0 - tail])
    return float(low), float(high)


def _figures(equity: np.ndarray, bars_per_year: float, boot: int, seed: int) -> dict[str, Any]:
    from tuner.trading import metrics

    low, high = bootstrap_sharpe(equity, bars_per_year, samples=boot, seed=seed)
    return {
        "total_return": metrics.total_return(equity),
        "sharpe_ratio": metrics.sharpe_ratio(equity, bars_per_year),
        "sharpe_ci": [low, high],
        "max_drawdown": metrics.max_drawdown(equity),
    }


def evaluate_on_test(
    checkpoint: str | os.PathLike[str],
    settings: Any,
    *,
    boot: int = 1000,
    seed: int = 0,
    models_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The checkpoint's figures on the test split, with buy and hold and flat beside them.

    Market and phase come from the checkpoint's metadata. Loading verifies the checkpoint
    first (:func:`checkpointing.load_checkpoint`; an RLlib checkpoint with
    :func:`checkpointing.trainers.unpack_checkpoint`); its VecNormalize statistics (RLlib: its
    observation filter's) normalize the test observations as they did in training. A file
    market's parsed bars come from the data cache of ``models_root`` (the experiment's) when
    given.

    Raises:
        ConfigError: the checkpoint does not say its market and phase, or the market is not
            in the settings.
        CheckpointCorruptError: it fails verification.
    """
    from stable_baselines3.common.vec_env import VecNormalize

    from checkpointing import load_checkpoint
    from checkpointing.errors import ConfigError
    from checkpointing.metadata import read_checkpoint_metadata
    from checkpointing.trainers import trainer_of
    from tuner.trading.env import MarketData
    from tuner.trading.evaluation import make_vec_env, run_episodes, summarize_episodes
    from tuner.trading.markets import get_market

    path = Path(checkpoint)
    meta = read_checkpoint_metadata(path) or {}
    market, phase = meta.get("market"), meta.get("phase")
    if not isinstance(market, str) or phase not in (1, 2, 3):
        raise ConfigError(f"{path.name}: its metadata does not say its market and phase")
    data = MarketData.load(get_market(settings.markets, market), models_root=models_root)
    env_config = replace(settings.training.env_config(), eval_episode_length=None)  # one pass
    env = make_vec_env(
        data,
        int(phase),
        "test",
        seed,
        1,
        config=env_config,
        evaluation=True,
        advisor_config=settings.advisor if phase == 3 else None,
    )
    if trainer_of(meta) == "rllib":
        try:
            (episode,) = run_episodes(_rllib_policy(path, meta, settings, env), env, 1)
        finally:
            env.close()
    else:
        loaded = load_checkpoint(path, env=env, device="cpu")
        venv = loaded.vec_normalize
        if not isinstance(venv, VecNormalize):
            env.close()
            raise ConfigError(
                f"{path.name}: no companion VecNormalize .pkl to normalize the test data"
            )
        venv.training, venv.norm_reward = False, False
        try:
            (episode,) = run_episodes(loaded.model, venv, 1)
        finally:
            venv.close()
    summary = summarize_episodes([episode])
    bpy = episode.bars_per_year
    part = data.ranges["test"]
    stamps = data.bars.timestamps[part]
    closes = np.asarray(episode.closes, dtype=np.float64)
    capital = float(episode.equity[0])
    hold = capital + (closes - closes[0]) * episode.point_value
    policy = {**_figures(np.asarray(episode.equity), bpy, boot, seed)}
    policy.update({k: summary[k] for k in ("n_trades", "exposure", "win_rate")})
    return {
        "checkpoint": os.fspath(path),
        "market": market,
        "phase": int(phase),
        "seed": meta.get("seed"),
        "run_id": meta.get("run_id"),
        "event": meta.get("event_tag"),
        "split": "test",
        "bars": len(closes),
        "start": str(stamps[0]),
        "end": str(stamps[-1]),
        "bars_per_year": bpy,
        "policy": policy,
        "buy_and_hold": _figures(hold, bpy, boot, seed) if np.all(hold > 0) else None,
        "flat": {"total_return": 0.0, "sharpe_ratio": 0.0, "max_drawdown": 0.0},
        "validation": {k: meta.get(k) for k in ("val_reward", "sharpe_ratio", "win_rate")},
        "curve": equity_curve(np.asarray(episode.equity, dtype=np.float64), hold),
    }


def equity_curve(
    equity: np.ndarray, hold: np.ndarray, max_points: int = CURVE_POINTS
) -> dict[str, list[float] | list[int]]:
    """The test-period equity of the policy and of buy and hold (account value, in the
    account's currency), downsampled to at most ``max_points`` bars for the report: ``bar``
    is each kept point's index in the test span."""
    from tuner.reporting.series import downsample

    keep = downsample(equity.tolist(), max_points)
    return {
        "bar": keep,
        "policy": [round(float(equity[i]), 2) for i in keep],
        "buy_and_hold": [round(float(hold[i]), 2) for i in keep],
    }


def _rllib_policy(path: Path, meta: dict[str, Any], settings: Any, env: Any) -> Any:
    """The greedy policy of an RLlib checkpoint, verified (every file) before it is read."""
    import tempfile

    from checkpointing.trainers import unpack_checkpoint
    from tuner.training.job import PhaseJob
    from tuner.training.rllib_algo import load_greedy_policy

    job = PhaseJob(str(meta["market"]), int(meta.get("seed") or 0), int(meta["phase"]))
    with tempfile.TemporaryDirectory(prefix="rllib-evaluate-") as tmp:
        unpack_checkpoint(path, tmp)
        return load_greedy_policy(Path(tmp), replace(job, trainer="rllib"), settings, env)
