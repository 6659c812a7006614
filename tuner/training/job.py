"""What one training run does: the phase job, how it ended, and checking it before it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.errors import ConfigError
from checkpointing.naming import validate_market, validate_run_id, validate_seed
from checkpointing.trainers import TRAINERS

if TYPE_CHECKING:
    from tuner.training.settings import Settings

__all__ = ["PhaseJob", "PhaseResult", "check", "parse_phases", "prepare", "tag"]


@dataclass(frozen=True)
class PhaseJob:
    """What to train: one phase of one (market, seed), as which run, and where to start from.

    ``run_id`` None: a new run (or, resuming, the run the checkpoint picked belongs to).
    ``resume_from`` picks within ``run_id`` (default: the run written to last), or across
    every run of the market and seed with ``any_run``. ``run_info`` goes into every
    checkpoint's metadata (a Tune trial's ``experiment`` and ``trial_id``).
    """

    market: str
    seed: int
    phase: int
    timesteps: int | None = None  # None: the checkpoint config's target_timesteps of the phase
    base_interval: int | None = None  # None: the checkpoint config's base_interval
    models_root: Path | None = None
    model_path: Path | None = None  # --continue --model-path
    resume_from: str | None = None  # latest | phase_end | best:<metric>
    run_id: str | None = None
    any_run: bool = False
    run_info: tuple[tuple[str, Any], ...] = ()
    torch_threads: int = 1
    quiet: bool = False
    check_start: bool = False  # evaluate the starting checkpoint once it is loaded
    curves_dir: Path | None = None  # TensorBoard files go to <curves_dir>/phase<N>_<run id>
    trainer: str = "sb3"  # sb3 | rllib
    env_runners: int | None = None  # rllib: None is the phase's rllib.num_env_runners


@dataclass
class PhaseResult:
    """How a phase ended."""

    market: str
    seed: int
    phase: int
    folder: Path
    timesteps: int
    run_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    phase_end: Path | None = None
    interrupted: bool = False
    skipped: bool = False
    started_from: str = "scratch"
    elapsed_seconds: float = 0.0
    start_metrics: dict[str, float] = field(default_factory=dict)  # with check_start


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


def check(job: PhaseJob, settings: Settings) -> int:
    """Validate the job against the settings (nothing is loaded or written).

    Returns the phase's length: ``--timesteps``, else the checkpoint config's
    ``checkpointing.phaseN.target_timesteps``.
    """
    from tuner.trading.markets import get_market

    validate_market(job.market)
    validate_seed(job.seed)
    if job.run_id is not None:
        validate_run_id(job.run_id)
    if job.any_run and (job.resume_from is None or job.run_id is not None):
        raise ConfigError("--any-run goes with --resume-from, and not with --run-id")
    if job.trainer not in TRAINERS:
        raise ConfigError(f"--trainer must be one of {list(TRAINERS)}, got {job.trainer!r}")
    if job.env_runners is not None and (job.trainer != "rllib" or job.env_runners < 0):
        raise ConfigError(
            f"--env-runners goes with --trainer rllib and must be >= 0, got {job.env_runners!r}"
        )
    if job.phase not in (1, 2, 3):
        raise ConfigError(f"--phase must be 1, 2 or 3, got {job.phase!r}")
    if job.timesteps is not None and job.timesteps < 1:
        raise ConfigError(f"--timesteps must be >= 1, got {job.timesteps!r}")
    if job.base_interval is not None and job.base_interval < 1:
        raise ConfigError(f"--base-interval must be >= 1, got {job.base_interval!r}")
    get_market(settings.markets, job.market)
    return job.timesteps or settings.checkpoint.phase(job.phase).target_timesteps


def prepare(job: PhaseJob, settings: Settings) -> tuple[Any, int]:
    """:func:`check` the job and load the market data (nothing is written but the data cache
    of the models root, which a file market fills on its first load).

    Returns the market data and the phase's length (as :func:`check`).
    """
    from tuner.trading.env import MarketData

    target = check(job, settings)
    spec = settings.markets[job.market]
    data = MarketData.load(spec, models_root=settings.checkpoint.models_root(job.models_root))
    return data, target


def tag(job: PhaseJob) -> str:
    """``NQ seed 42 phase 1``: how progress lines name a job."""
    return f"{job.market} seed {job.seed} phase {job.phase}"
