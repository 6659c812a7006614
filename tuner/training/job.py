"""What one training run does: the phase job, how it ended, and checking it before it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.errors import ConfigError
from checkpointing.naming import validate_market, validate_seed

if TYPE_CHECKING:
    from tuner.training.settings import Settings

__all__ = ["PhaseJob", "PhaseResult", "parse_phases", "prepare", "tag"]


@dataclass(frozen=True)
class PhaseJob:
    """What to train: one phase of one (market, seed), and where to start from."""

    market: str
    seed: int
    phase: int
    timesteps: int | None = None  # None: the checkpoint config's target_timesteps of the phase
    base_interval: int | None = None  # None: the checkpoint config's base_interval
    models_root: Path | None = None
    model_path: Path | None = None  # --continue --model-path
    resume_from: str | None = None  # latest | phase_end | best:<metric>
    torch_threads: int = 1
    quiet: bool = False


@dataclass
class PhaseResult:
    """How a phase ended."""

    market: str
    seed: int
    phase: int
    folder: Path
    timesteps: int
    metrics: dict[str, float] = field(default_factory=dict)
    phase_end: Path | None = None
    interrupted: bool = False
    skipped: bool = False
    started_from: str = "scratch"
    elapsed_seconds: float = 0.0


def parse_phases(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; phases must be 1-3, increasing, without gaps."""
    try:
        phases = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--phases must look like 1,2,3, got {text!r}") from None
    if not phases or any(p not in (1, 2, 3) for p in phases):
        raise ConfigError(f"--phases must list phases 1, 2 or 3, got {text!r}")
    if phases != list(range(phases[0], phases[0] + len(phases))):
        raise ConfigError(f"--phases must be consecutive and increasing, got {text!r}")
    return phases


def prepare(job: PhaseJob, settings: Settings) -> tuple[Any, int]:
    """Validate the job against the settings and load the market data (nothing is written).

    Returns the market data and the phase's length: ``--timesteps``, else the checkpoint
    config's ``checkpointing.phaseN.target_timesteps``.
    """
    from tuner.trading.env import MarketData
    from tuner.trading.markets import get_market

    validate_market(job.market)
    validate_seed(job.seed)
    if job.phase not in (1, 2, 3):
        raise ConfigError(f"--phase must be 1, 2 or 3, got {job.phase!r}")
    if job.timesteps is not None and job.timesteps < 1:
        raise ConfigError(f"--timesteps must be >= 1, got {job.timesteps!r}")
    if job.base_interval is not None and job.base_interval < 1:
        raise ConfigError(f"--base-interval must be >= 1, got {job.base_interval!r}")
    spec = get_market(settings.markets, job.market)
    data = MarketData.load(spec)
    target = job.timesteps or settings.checkpoint.phase(job.phase).target_timesteps
    return data, target


def tag(job: PhaseJob) -> str:
    """``NQ seed 42 phase 1``: how progress lines name a job."""
    return f"{job.market} seed {job.seed} phase {job.phase}"
