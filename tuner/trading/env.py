"""The futures trading environment, the same spaces in all three curriculum phases.

Timing. An observation describes bar ``t`` after it closed. The action is a target position,
filled at ``close[t]``; the position then earns ``position * (close[t+1] - close[t]) *
point_value`` over the next bar, and the next observation describes bar ``t + 1``.

Spaces (identical in every phase, so each phase continues from the previous model):

* action: ``Discrete(2 * max_position + 1)``; action ``a`` means target position
  ``a - max_position`` contracts (``max_position`` = ``EnvConfig.max_position``, default 3);
* observation: ``Box(-10, 10, (len(FEATURE_NAMES) + 4,), float32)``: the market features of
  bar ``t`` (:mod:`tuner.trading.features`) then the position state: position / max_position, open
  profit in ATRs, time in the position (``n / (n + 20)`` for ``n`` bars), drawdown in percent
  of the initial capital (all clipped to [-10, 10]).

Phases:

1. foundational: target positions clipped to [-1, 1]; every contract traded costs a fixed
   ``phase1_cost_ticks`` ticks; no stops, no drawdown penalty.
2. position management: up to ``max_position`` contracts; every fill costs the market's
   commission plus slippage (``MarketSpec.cost_per_contract_side``); a protective stop
   ``stop_atr_multiple`` ATRs from the average entry closes the position within the bar
   (at the stop, or at the open if the bar gaps through it); every dollar by which the
   episode's maximum drawdown (deepest fall of equity below its running peak) grows costs
   ``drawdown_penalty`` dollars of reward, so over an episode the penalty adds up to
   ``drawdown_penalty * max drawdown`` (a fall that only repeats an earlier depth is free).
3. hybrid: phase 2 plus an advisor (:mod:`tuner.trading.advisor`) consulted every
   ``consult_every`` steps, whose confident advice overrides the RL target and whose
   confident veto blocks new or larger positions.

Rolls. Over a bar where the data moves to the next contract with raw prices (``data: adjust:
none``; :attr:`Bars.roll_gap <tuner.trading.bars.Bars.roll_gap>`), the position is rolled at
no cost: its entry, its stop and the previous close move by the gap, so it earns the new
contract's move alone and the gap is never profit or loss. Back-adjusted data has no gaps.

Reward per step: ``(pnl - costs - drawdown_penalty) / reward_scale``, with ``reward_scale``
the dollars a 1-contract position makes or loses on an average bar of the training split
(so rewards are O(1)), clipped to ``[-reward_clip, reward_clip]``.

Training episodes start at a random bar (from the env's seeded RNG) and last
``episode_length`` steps. In evaluation mode episodes walk the split from its start in
consecutive windows of ``eval_episode_length`` steps (default: the whole split), so
evaluation is deterministic. At the end of an episode ``info["episode_stats"]`` holds an
:class:`EpisodeStats` with the equity curve, closed round trips, positions and advisor counts.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from numpy.typing import NDArray

from tuner.trading.advisor import Advice, Advisor, AdvisorCounters, MarketState, RuleAdvisor
from tuner.trading.bars import SPLIT_NAMES, Bars, SplitRanges, split_ranges
from tuner.trading.data import load_market
from tuner.trading.env_config import EnvConfig
from tuner.trading.features import FEATURE_CLIP, FeatureSet, compute_features
from tuner.trading.markets import MarketSpec

__all__ = [
    "N_POSITION_FEATURES",
    "PHASES",
    "POSITION_FEATURE_NAMES",
    "EnvConfig",
    "EpisodeStats",
    "FuturesTradingEnv",
    "MarketData",
    "splits_opened",
]

log = logging.getLogger(__name__)

PHASES = (1, 2, 3)
# The position state that follows the market features in every observation.
POSITION_FEATURE_NAMES = ("position", "open_profit_atr", "time_in_position", "drawdown_pct")
N_POSITION_FEATURES = len(POSITION_FEATURE_NAMES)


@dataclass(frozen=True, eq=False)
class MarketData:
    """Everything an environment needs about one market, computed once and shared.

    Attributes:
        spec: The market's contract spec.
        bars: All bars of the market.
        features: Features of every bar (past bars only).
        ranges: Index ranges of the train / validation / test parts.
        reward_scale: Mean dollar move of a 1-contract position per bar over the training
            part (the default reward unit; roll gaps are no moves).
    """

    spec: MarketSpec
    bars: Bars
    features: FeatureSet
    ranges: SplitRanges
    reward_scale: float

    @classmethod
    def from_bars(
        cls, spec: MarketSpec, bars: Bars, features: FeatureSet | None = None
    ) -> MarketData:
        """Split ranges, the reward scale and (unless given) the features of ``bars``.

        Args:
            spec: The market.
            bars: Its bars.
            features: ``compute_features(bars)`` when they are known (e.g. from the data
                cache); computed when None.

        Raises:
            ValueError: if ``features`` are not those of as many bars.
        """
        if features is None:
            features = compute_features(bars)
        elif len(features.values) != len(bars):
            raise ValueError(f"features of {len(features.values)} bars for {len(bars)} bars")
        ranges = split_ranges(len(bars), spec.split, market=spec.name)
        train_close = bars.slice(ranges.train).close_without_gaps()
        move = float(np.mean(np.abs(np.diff(train_close)))) if len(train_close) > 1 else 0.0
        scale = move * spec.point_value
        if not math.isfinite(scale) or scale <= 0:  # flat training prices
            scale = spec.tick_value
        return cls(spec, bars, features, ranges, scale)

    @classmethod
    def load(
        cls,
        spec: MarketSpec,
        *,
        data_seed: int | None = None,
        models_root: str | os.PathLike[str] | None = None,
    ) -> MarketData:
        """Load the market's bars and features (:func:`tuner.trading.data.load_market`) and
        prepare them.

        Args:
            spec: The market.
            data_seed: Seed of the synthetic generator (default: the one in the config).
            models_root: The run's models root, whose ``.data-cache`` holds parsed data files
                and their features.
        """
        bars, features = load_market(spec, seed=data_seed, models_root=models_root)
        return cls.from_bars(spec, bars, features)


@dataclass(frozen=True, eq=False)
class EpisodeStats:
    """What one episode did, for :mod:`tuner.trading.metrics`.

    Attributes:
        total_reward: Sum of the rewards.
        equity: Equity in dollars before the first step and after each step.
        positions: Position held over each step's bar (contracts).
        trade_pnls: Net dollar PnL (after all costs) of each closed round trip; a round trip
            runs from flat to flat (a reversal closes one and opens another).
        closes: Close prices of the episode's bars (``len(equity)`` of them), with roll gaps
            taken out (:meth:`Bars.close_without_gaps
            <tuner.trading.bars.Bars.close_without_gaps>`): buy and hold earns no gap either.
        point_value: Dollars per price unit per contract.
        bars_per_year: For annualizing.
        start: Index of the first bar in the split.
        n_stops: Positions closed by the protective stop.
        advisor: Advisor counts (phase 3), else ``None``.
    """

    total_reward: float
    equity: NDArray[np.float64]
    positions: NDArray[np.int16]
    trade_pnls: NDArray[np.float64]
    closes: NDArray[np.float64]
    point_value: float
    bars_per_year: float
    start: int
    n_stops: int
    advisor: AdvisorCounters | None


def _floats(values: NDArray[np.float64]) -> Sequence[float]:
    """``values`` as a sequence of Python floats, without a copy (of contiguous values)."""
    return cast("Sequence[float]", np.ascontiguousarray(values, dtype=np.float64).data)


_OPENED: set[str] = set()  # the splits any environment of this process has walked


def splits_opened() -> tuple[str, ...]:
    """The splits environments of this process have been built on, in split order: what a
    search reports with every result, so anyone can check it never touched ``test``."""
    return tuple(s for s in SPLIT_NAMES if s in _OPENED)


class FuturesTradingEnv(gym.Env[NDArray[np.float32], np.int64]):
    """Trading one futures market on precomputed features (see the module docstring).

    Args:
        data: Prepared market data (:meth:`MarketData.load`).
        split: ``"train"``, ``"validation"`` or ``"test"``.
        phase: Curriculum phase, 1, 2 or 3.
        config: Settings; defaults to :class:`EnvConfig`.
        evaluation: Walk the split deterministically instead of random episode starts.
        seed: Seeds the episode-start RNG (``reset(seed=...)`` reseeds it).
        advisor: Phase 3 advisor; defaults to :class:`tuner.trading.advisor.RuleAdvisor`.
        window_offset: Evaluation: index of this env's first window (for several eval envs).
        window_stride: Evaluation: windows to skip between episodes (number of eval envs).

    Raises:
        ValueError: for an unknown split or phase, or an advisor outside phase 3.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium API

    def __init__(
        self,
        data: MarketData,
        split: str = "train",
        phase: int = 1,
        *,
        config: EnvConfig | None = None,
        evaluation: bool = False,
        seed: int | None = None,
        advisor: Advisor | None = None,
        window_offset: int = 0,
        window_stride: int = 1,
    ) -> None:
        super().__init__()
        if split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
        if phase not in PHASES:
            raise ValueError(f"phase must be 1, 2 or 3, got {phase!r}")
        if advisor is not None and phase != 3:
            raise ValueError(f"an advisor is only used in phase 3, got phase {phase!r}")
        if window_offset < 0 or window_stride < 1:
            raise ValueError(
                f"window_offset must be >= 0 and window_stride >= 1, got "
                f"{window_offset!r} and {window_stride!r}"
            )
        cfg = config or EnvConfig()
        _OPENED.add(split)
        part = data.ranges[split]
        n = part.stop - part.start
        if n < 2:
            raise ValueError(f"{data.spec.name}: split {split!r} has {n} bars; need at least 2")
        self.data = data
        self.split = split
        self.phase = phase
        self.config = cfg
        self.evaluation = evaluation
        self.market = data.spec.name

        spec = data.spec
        self._n_bars = n
        self._max_pos = cfg.max_position
        self._limit = 1 if phase == 1 else cfg.max_position
        self._n_actions = 2 * cfg.max_position + 1
        self._pv = spec.point_value
        self._cost = (
            cfg.phase1_cost_ticks * spec.tick_value if phase == 1 else spec.cost_per_contract_side
        )
        self._stop_mult = cfg.stop_atr_multiple if phase >= 2 else 0.0
        self._dd_penalty = cfg.drawdown_penalty if phase >= 2 else 0.0
        self._scale = cfg.reward_scale or data.reward_scale
        self._clip = cfg.reward_clip
        self._capital = cfg.initial_capital
        self._bars_per_year = data.bars.bars_per_year

        # Memoryviews: indexing one gives a Python float, twice as fast as a numpy scalar,
        # and unlike a list (32 bytes a value) it shares the bars' memory with every env.
        # Nothing here copies a whole split: every env of every trial reads the same pages.
        self._first = part.start
        self._close = _floats(data.bars.close[part])
        self._gap = _floats(data.bars.roll_gap[part])
        self._open = _floats(data.bars.open[part])
        self._high = _floats(data.bars.high[part])
        self._low = _floats(data.bars.low[part])
        self._atr = _floats(data.features.atr[part])
        self._features = data.features.values[part]
        self._feature_names = data.features.names
        self._timestamps = data.bars.timestamps[part]
        self._n_features = self._features.shape[1]

        self.episode_length = min(cfg.episode_length, n - 1)
        if self.episode_length < cfg.episode_length and not evaluation:
            log.info(
                "%s %s: episode_length %d shortened to %d to fit %d bars",
                self.market,
                split,
                cfg.episode_length,
                self.episode_length,
                n,
            )
        eval_len = cfg.eval_episode_length or (n - 1)
        self._eval_length = min(eval_len, n - 1)
        self._n_windows = (n - 1) // self._eval_length
        self._window_offset = window_offset
        self._window_stride = window_stride
        self._episode_index = 0

        self._advisor: Advisor | None = None
        if phase == 3:
            self._advisor = advisor if advisor is not None else RuleAdvisor()
        self._consult_every = cfg.consult_every
        self._min_conf = cfg.min_confidence
        self._advisor_errors_logged = 0

        self.action_space = spaces.Discrete(self._n_actions)
        self.observation_space = spaces.Box(
            low=-FEATURE_CLIP,
            high=FEATURE_CLIP,
            shape=(self._n_features + N_POSITION_FEATURES,),
            dtype=np.float32,
        )
        # Only an evaluation env walks whole windows (by default the whole split).
        capacity = max(self.episode_length, self._eval_length if evaluation else 0)
        self._equity_buf = np.empty(capacity + 1, dtype=np.float64)
        self._pos_buf = np.empty(capacity, dtype=np.int16)
        # a step can close two round trips: a reversal, then a stop on the new position
        self._trade_buf = np.empty(2 * capacity + 1, dtype=np.float64)
        if seed is not None:
            self.np_random, _ = seeding.np_random(seed)
        self._reset_state(0, self.episode_length)

    # --- episode bookkeeping --------------------------------------------------------------

    def _reset_state(self, start: int, length: int) -> None:
        self._start = start
        self._t = start
        self._length = length
        self._k = 0
        self._pos = 0
        self._pos_before_bar = 0  # the position held through the last bar (after trading)
        self._entry = 0.0
        self._stop = 0.0
        self._bars_in_pos = 0
        self._equity = self._capital
        self._peak = self._capital
        self._dd = 0.0
        self._max_dd = 0.0
        self._trip_pnl = 0.0
        self._n_trades = 0
        self._n_stops = 0
        self._reward_sum = 0.0
        self._equity_buf[0] = self._capital
        self._counters = AdvisorCounters() if self._advisor is not None else None

    def rewind(self) -> None:
        """Evaluation mode: make the next ``reset()`` start again from the first window."""
        self._episode_index = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Start an episode (random start in training mode, next window in evaluation)."""
        super().reset(seed=seed)
        if self.evaluation:
            window = (
                self._window_offset + self._episode_index * self._window_stride
            ) % self._n_windows
            self._episode_index += 1
            self._reset_state(window * self._eval_length, self._eval_length)
        else:
            last_start = self._n_bars - 1 - self.episode_length
            start = int(self.np_random.integers(0, last_start + 1))
            self._reset_state(start, self.episode_length)
        return self._observation(), {}

    def step(
        self, action: np.int64 | int
    ) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Trade to the target position of ``action``, then advance one bar."""
        target = self._target(action)
        t = self._t
        c0 = self._close[t]
        cost = self._trade_to(target, c0, t) if target != self._pos else 0.0
        t += 1
        gap = self._gap[t]
        if gap:  # the position moves to the next contract
            c0 += gap
            self._entry += gap
            self._stop += gap
        pnl, exit_cost = self._move(c0, t)
        cost += exit_cost
        reward = self._reward(pnl, cost)

        k = self._k
        self._pos_buf[k] = self._pos_before_bar
        k += 1
        self._equity_buf[k] = self._equity
        self._k = k
        self._t = t

        terminated = self._equity <= 0.0
        truncated = k >= self._length
        info: dict[str, Any] = {}
        if terminated or truncated:
            info["episode_stats"] = self.episode_stats()
        return self._observation(), reward, terminated, truncated, info

    def _target(self, action: np.int64 | int) -> int:
        """The position ``action`` asks for, within this phase's limit and after the advisor."""
        a = int(action)
        if not 0 <= a < self._n_actions:
            raise ValueError(f"action must be in [0, {self._n_actions - 1}], got {action!r}")
        target = max(-self._limit, min(self._limit, a - self._max_pos))
        if self._counters is not None:
            self._counters.steps += 1
            if self._k % self._consult_every == 0:
                target = self._consult(target)
        return target

    def _trade_to(self, target: int, c0: float, t: int) -> float:
        """Go from the current position to ``target`` at the close ``c0``; returns the cost."""
        pos, cpc = self._pos, self._cost
        cost = abs(target - pos) * cpc
        if pos == 0:
            self._open_trip(target, c0, t, abs(target) * cpc)
        elif target == 0 or (target > 0) != (pos > 0):
            self._close_trip(self._trip_pnl - abs(pos) * cpc)
            if target != 0:
                self._open_trip(target, c0, t, abs(target) * cpc)
        else:
            self._trip_pnl -= cost
            if abs(target) > abs(pos):  # adding: new average entry and stop
                self._entry = (pos * self._entry + (target - pos) * c0) / target
                self._set_stop(target, t)
        self._pos = target
        if target == 0:
            self._bars_in_pos = 0
        return cost

    def _move(self, c0: float, t: int) -> tuple[float, float]:
        """The position through bar ``t``: (PnL, the cost of a stop exit)."""
        pos = self._pos_before_bar = self._pos
        stopped = (
            pos != 0
            and self._stop_mult > 0.0
            and (
                (pos > 0 and self._low[t] <= self._stop)
                or (pos < 0 and self._high[t] >= self._stop)
            )
        )
        if not stopped:
            pnl = pos * (self._close[t] - c0) * self._pv
            if pos != 0:
                self._trip_pnl += pnl
                self._bars_in_pos += 1
            return pnl, 0.0
        opened = self._open[t]
        fill = min(opened, self._stop) if pos > 0 else max(opened, self._stop)
        pnl = pos * (fill - c0) * self._pv
        exit_cost = abs(pos) * self._cost
        self._close_trip(self._trip_pnl + pnl - exit_cost)
        self._n_stops += 1
        self._pos = 0
        self._bars_in_pos = 0
        return pnl, exit_cost

    def _reward(self, pnl: float, cost: float) -> float:
        """Book the bar's PnL and costs; the drawdown penalty; the scaled, clipped reward."""
        equity = self._equity = self._equity + pnl - cost
        penalty = 0.0
        if equity > self._peak:
            self._peak = equity
        dd = self._peak - equity
        if dd > self._max_dd:
            penalty = (dd - self._max_dd) * self._dd_penalty
            self._max_dd = dd
        self._dd = dd
        reward = (pnl - cost - penalty) / self._scale
        if reward > self._clip:
            reward = self._clip
        elif reward < -self._clip:
            reward = -self._clip
        self._reward_sum += reward
        return reward

    def _open_trip(self, target: int, price: float, t: int, cost: float) -> None:
        self._entry = price
        self._trip_pnl = -cost
        self._bars_in_pos = 0
        self._set_stop(target, t)

    def _set_stop(self, target: int, t: int) -> None:
        distance = self._stop_mult * self._atr[t]
        self._stop = self._entry - distance if target > 0 else self._entry + distance

    def _close_trip(self, net_pnl: float) -> None:
        self._trade_buf[self._n_trades] = net_pnl
        self._n_trades += 1
        self._trip_pnl = 0.0

    def _observation(self) -> NDArray[np.float32]:
        t = self._t
        obs = np.empty(self._n_features + N_POSITION_FEATURES, dtype=np.float32)
        obs[: self._n_features] = self._features[t]
        pos = self._pos
        if pos:
            gain = (self._close[t] - self._entry) / self._atr[t]
            gain = gain if pos > 0 else -gain
            gain = 10.0 if gain > 10.0 else -10.0 if gain < -10.0 else gain
        else:
            gain = 0.0
        held = self._bars_in_pos
        dd_pct = 100.0 * self._dd / self._capital
        obs[self._n_features :] = (
            pos / self._max_pos,
            gain,
            held / (held + 20.0),
            10.0 if dd_pct > 10.0 else dd_pct,
        )
        return obs

    # --- phase 3 --------------------------------------------------------------------------

    def _market_state(self) -> MarketState:
        t = self._t
        pos = self._pos
        return MarketState(
            market=self.market,
            timestamp=self._timestamps[t],
            close=self._close[t],
            atr=self._atr[t],
            features=self._features[t],
            feature_names=self._feature_names,
            position=pos,
            max_position=self._limit,
            unrealized_pnl=pos * (self._close[t] - self._entry) * self._pv if pos else 0.0,
            equity=self._equity,
            drawdown=self._dd / self._peak if self._peak > 0 else 0.0,
        )

    def _consult(self, rl_target: int) -> int:
        counters = self._counters
        advisor = self._advisor
        assert counters is not None and advisor is not None  # only called in phase 3
        counters.consults += 1
        try:
            advice = advisor.advise(self._market_state(), rl_target)
            if advice is not None:
                _check_advice(advice, self._limit)
        except Exception as exc:  # an advisor must never stop training
            counters.errors += 1
            self._log_advisor_error(exc)
            return rl_target
        if advice is None:
            return rl_target
        counters.answers += 1
        counters.confidence_sum += advice.confidence
        confident = advice.confidence >= self._min_conf
        final = rl_target
        if advice.target_position is not None:
            counters.action_advices += 1
            if advice.target_position == rl_target:
                counters.agreements += 1
            elif confident:
                final = advice.target_position
                counters.overrides += 1
        if advice.veto and confident:
            allowed = _risk_reducing(final, self._pos)
            if allowed != final:
                counters.vetoes += 1
                final = allowed
        return final

    def _log_advisor_error(self, exc: Exception) -> None:
        self._advisor_errors_logged += 1
        n = self._advisor_errors_logged
        if n == 1 or n % 100 == 0:
            log.warning(
                "%s: advisor failed (%d so far in this env), keeping the RL action: %s",
                self.market,
                n,
                exc,
            )

    # --- results --------------------------------------------------------------------------

    def episode_stats(self) -> EpisodeStats:
        """Statistics of the current episode so far (copies; safe to keep)."""
        k = self._k
        counters = replace(self._counters) if self._counters is not None else None
        first = self._first + self._start
        closes = self.data.bars.slice(slice(first, first + k + 1)).close_without_gaps()
        return EpisodeStats(
            total_reward=self._reward_sum,
            equity=self._equity_buf[: k + 1].copy(),
            positions=self._pos_buf[:k].copy(),
            trade_pnls=self._trade_buf[: self._n_trades].copy(),
            closes=closes.copy(),
            point_value=self._pv,
            bars_per_year=self._bars_per_year,
            start=self._start,
            n_stops=self._n_stops,
            advisor=counters,
        )


def _check_advice(advice: Advice, limit: int) -> None:
    target = advice.target_position
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, int | np.integer) or abs(target) > limit
    ):
        raise ValueError(f"advice target_position must be an integer in [-{limit}, {limit}]")
    if not (isinstance(advice.confidence, int | float) and 0.0 <= advice.confidence <= 1.0):
        raise ValueError(f"advice confidence must be in [0, 1], got {advice.confidence!r}")


def _risk_reducing(target: int, position: int) -> int:
    """The part of a move to ``target`` that does not add risk: exits yes, entries no."""
    if position == 0 or target == 0 or (target > 0) != (position > 0):
        return 0
    return target if abs(target) <= abs(position) else position
