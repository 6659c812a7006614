"""Two checkpoints compared on a market: ``python -m tuner.diff A.zip B.zip --market NQ``.

Everything ``python -m checkpointing.diff`` shows (it does the work), plus ``--market``: the
share of observations on which both policies choose the same action, on the market's
validation data, the environment built as a run builds its evaluation environment
(:func:`tuner.training.trainer.validation_env`, for checkpoint A's phase) and driven by
policy A; each policy sees the observations through its own VecNormalize. Without
``--steps`` the validation environments play one episode each, as an evaluation does. The
VecNormalize drift names the market's features. Nothing is written.

The checkpoint package never imports this one; this thin entry point plugs the market's
observations into :func:`checkpointing.diff.run`.

Examples::

    python -m tuner.diff A.zip B.zip --market NQ
    python -m tuner.diff A.zip B.zip --market ES --config-dir config --json
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from checkpointing.diff import build_parser, env_observations, run
from checkpointing.errors import ConfigError, usage_error
from checkpointing.observations import ObservationSource, collect_observations

if TYPE_CHECKING:
    import numpy as np

    from checkpointing.loading import LoadedCheckpoint
    from tuner.training.settings import Settings

__all__ = ["main", "market_observations", "parser"]


def parser() -> argparse.ArgumentParser:
    """``checkpointing.diff``'s command line plus ``--market`` and ``--config-dir``."""
    p = build_parser(prog="python -m tuner.diff")
    p.add_argument(
        "--market",
        help="compare actions on this market's validation data (a market of markets.yaml)",
    )
    p.add_argument("--config-dir", default="config", help="folder of the YAML configs")
    return p


def market_observations(
    settings: Settings, market: str, *, steps: int | None = None, seed: int = 0
) -> ObservationSource:
    """Observations of ``market``'s validation split, collected with policy A in checkpoint
    A's phase (phase 1 without metadata): ``steps`` steps, or one episode per validation env.

    Raises:
        ConfigError: an unknown market; DataError: its data cannot be loaded; ValueError:
            ``steps`` < 1.
    """
    from tuner.trading.env import POSITION_FEATURE_NAMES, MarketData
    from tuner.trading.markets import get_market
    from tuner.training.trainer import validation_env

    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps!r}")
    data = MarketData.load(get_market(settings.markets, market))
    length = "one episode per evaluation env" if steps is None else f"{steps} steps"

    def collect(checkpoint: LoadedCheckpoint) -> np.ndarray:
        phase = checkpoint.metadata.get("phase", 1)
        if phase not in (1, 2, 3):
            raise ValueError(f"{checkpoint.path}: metadata names phase {phase!r}, not 1, 2 or 3")
        venv = validation_env(settings, data, phase, seed)
        try:
            return collect_observations(venv, checkpoint, steps)
        finally:
            venv.close()

    return ObservationSource(
        f"{market} validation split, {length}, driven by policy A in A's phase",
        collect,
        (*data.features.names, *POSITION_FEATURE_NAMES),
    )


def _observations(args: argparse.Namespace) -> ObservationSource | None:
    if args.market is None:
        return env_observations(args)
    if args.env is not None:
        raise ConfigError("--env and --market exclude each other: choose one")
    from tuner.training.settings import load_settings

    return market_observations(
        load_settings(args.config_dir), args.market, steps=args.steps, seed=args.seed
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tuner.diff``; returns the exit code (0, or 2 for bad input)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        observations = _observations(args)
    except ValueError as exc:  # ConfigError, CheckpointNameError, DataError among them
        return usage_error(exc)
    return run(args, observations)


if __name__ == "__main__":
    sys.exit(main())
