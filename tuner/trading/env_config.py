"""Environment settings: the validated ``training.env`` section, without the environment.

Kept apart from :mod:`tuner.trading.env` so that validating a config
(:mod:`tuner.training.settings`) needs neither gymnasium nor pandas; :mod:`tuner.trading.env`
re-exports :class:`EnvConfig`.

Three fields are set elsewhere and refused in ``training.env``: ``eval_episode_length`` comes
from ``training.eval_episode_length``, and the phase-3 ``consult_every`` and ``min_confidence``
from the ``advisor:`` section of ``llm_config.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from checkpointing.errors import ConfigError
from checkpointing.validation import Section

__all__ = ["EnvConfig"]


@dataclass(frozen=True)
class EnvConfig:
    """Environment settings (defaults suit 5-minute bars).

    Attributes:
        episode_length: Steps per training episode (shortened to fit a short split).
        eval_episode_length: Steps per evaluation episode; ``None`` = the whole split (set
            by ``training.eval_episode_length``).
        max_position: Largest ``|position|`` in phases 2-3; fixes the action space.
        initial_capital: Starting equity in dollars (for returns and drawdowns).
        phase1_cost_ticks: Phase-1 cost per contract traded, in ticks.
        stop_atr_multiple: Phase 2-3 stop distance from the average entry, in ATRs
            (0 disables stops).
        drawdown_penalty: Phase 2-3 penalty per dollar the episode's maximum drawdown grows.
        reward_scale: Dollars per unit of reward; ``None`` = from the training split.
        reward_clip: Bound on ``|reward|`` per step.
        consult_every: Phase 3: consult the advisor every N steps (set from
            ``advisor.rules.consult_every`` or ``advisor.http.consult_every``).
        min_confidence: Phase 3: advice below this confidence is ignored (set from
            ``advisor.min_confidence``).
    """

    episode_length: int = 2048
    eval_episode_length: int | None = None
    max_position: int = 3
    initial_capital: float = 100_000.0
    phase1_cost_ticks: float = 1.0
    stop_atr_multiple: float = 4.0
    drawdown_penalty: float = 0.5
    reward_scale: float | None = None
    reward_clip: float = 50.0
    consult_every: int = 1
    min_confidence: float = 0.6

    def __post_init__(self) -> None:
        checks = (
            ("episode_length", self.episode_length >= 1, ">= 1"),
            (
                "eval_episode_length",
                self.eval_episode_length is None or self.eval_episode_length >= 1,
                ">= 1 or null",
            ),
            ("max_position", 1 <= self.max_position <= 100, "an integer in [1, 100]"),
            ("initial_capital", _finite(self.initial_capital) and self.initial_capital > 0, "> 0"),
            (
                "phase1_cost_ticks",
                _finite(self.phase1_cost_ticks) and self.phase1_cost_ticks >= 0,
                ">= 0",
            ),
            (
                "stop_atr_multiple",
                _finite(self.stop_atr_multiple) and self.stop_atr_multiple >= 0,
                ">= 0",
            ),
            (
                "drawdown_penalty",
                _finite(self.drawdown_penalty) and self.drawdown_penalty >= 0,
                ">= 0",
            ),
            (
                "reward_scale",
                self.reward_scale is None or (_finite(self.reward_scale) and self.reward_scale > 0),
                "> 0 or null",
            ),
            ("reward_clip", _finite(self.reward_clip) and self.reward_clip > 0, "> 0"),
            ("consult_every", self.consult_every >= 1, ">= 1"),
            ("min_confidence", 0.0 <= self.min_confidence <= 1.0, "in [0, 1]"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"env.{name} must be {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def from_mapping(cls, raw: object, where: str = "env") -> EnvConfig:
        """Build from a YAML mapping (unknown keys refused, defaults for missing ones).

        ``eval_episode_length``, ``consult_every`` and ``min_confidence`` are refused, naming
        where they are set.
        """
        sec = Section(raw, where)
        sec.refuse(
            "eval_episode_length",
            "evaluation windows are training.eval_episode_length in training.yaml",
        )
        for key, why in _ADVISOR_KEYS.items():
            sec.refuse(key, f"{why} in llm_config.yaml")
        d = cls()
        out = cls(
            episode_length=sec.get_int("episode_length", d.episode_length, ge=1),
            max_position=sec.get_int("max_position", d.max_position, ge=1, le=100),
            initial_capital=sec.get_float("initial_capital", d.initial_capital, gt=0.0),
            phase1_cost_ticks=sec.get_float("phase1_cost_ticks", d.phase1_cost_ticks, ge=0.0),
            stop_atr_multiple=sec.get_float("stop_atr_multiple", d.stop_atr_multiple, ge=0.0),
            drawdown_penalty=sec.get_float("drawdown_penalty", d.drawdown_penalty, ge=0.0),
            reward_scale=sec.get_float_or_none("reward_scale", d.reward_scale, gt=0.0),
            reward_clip=sec.get_float("reward_clip", d.reward_clip, gt=0.0),
        )
        sec.done()
        return out


# Phase-3 fields set from the advisor: section of llm_config.yaml, and where.
_ADVISOR_KEYS = {
    "consult_every": (
        "the advisor's consult interval is advisor.rules.consult_every (kind: rules) or "
        "advisor.http.consult_every (kind: http)"
    ),
    "min_confidence": "the advisor's confidence threshold is advisor.min_confidence",
}


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
