"""Market data files: ``python -m tuner.data inspect``.

    python -m tuner.data inspect "data/NQ 03-23.Last.txt"        # detected, defaults.split
    python -m tuner.data inspect --market NQ                       # markets.yaml's data: file
    python -m tuner.data inspect new.csv --market NQ --json        # a file, read as NQ's

``inspect`` shows what the loader makes of a file before anything trains on it
(:mod:`tuner.trading.data_inspection`): layout and columns, day-first or month-first and what
settled it, rows read and duplicates dropped, the contract, first and last times, interval,
bars per year, the largest gaps and the train / validation / test parts as the trainer cuts
them. With ``--market`` the file is read with that market's ``data:`` keys and cut by its
split; without it, with no keys and ``defaults.split``. A file the loader refuses is refused
here with the loader's message and exit code 2. ``inspect`` always parses the file itself,
never the data cache's copy (:mod:`tuner.trading.data_cache`), so it shows what the loader of
today makes of the file of today, and its warnings come as the parse logs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpointing.errors import ConfigError, usage_error

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.data", description="Market data files.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect",
        help="what the loader makes of a data file",
        description="Show what the loader makes of a data file before training on it.",
    )
    inspect.add_argument(
        "file", nargs="?", metavar="FILE", help="the file (default: the market's data: file)"
    )
    inspect.add_argument("--market", help="read the file with this market's data: keys and split")
    inspect.add_argument("--config-dir", default="config", help="folder of the YAML configs")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    from tuner.trading.data import load_file
    from tuner.trading.data_inspection import inspection
    from tuner.trading.markets import (
        FileSource,
        default_split,
        get_market,
        load_markets,
    )
    from tuner.trading.ohlcv import load_ohlcv_report

    markets_file = Path(args.config_dir) / "markets.yaml"
    if args.market is None:
        if args.file is None:
            raise ConfigError("give a FILE, or --market for a market's data: file")
        bars, report = load_ohlcv_report(args.file)
        return inspection(bars, report, default_split(markets_file))
    spec = get_market(load_markets(markets_file), args.market)
    source = spec.data
    if not isinstance(source, FileSource):
        if args.file is None:
            raise ConfigError(
                f"market {spec.name!r} has synthetic data; give a FILE to read with its split"
            )
        bars, report = load_ohlcv_report(args.file, market=spec.name)
        return inspection(bars, report, spec.split)
    if args.file is None:
        bars, report = load_file(spec, cache=False)  # what the loader makes of it now
    else:
        bars, report = load_ohlcv_report(args.file, source.settings, market=spec.name)
    return inspection(bars, report, spec.split, source.settings.timezone)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from tuner.trading.data import DataError
    from tuner.trading.data_inspection import render

    try:
        doc = _inspect(args)
    except (ConfigError, DataError) as exc:
        return usage_error(exc)
    print(json.dumps(doc, indent=2, allow_nan=False) if args.json else render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
