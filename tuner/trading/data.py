"""A market's bars from its configured source: the synthetic generator or an OHLCV file.

:mod:`tuner.trading.bars` holds the bars and the split, :mod:`tuner.trading.synthetic` the
generator, :mod:`tuner.trading.ohlcv` the file loader.
"""

from __future__ import annotations

from tuner.trading.bars import Bars, DataError
from tuner.trading.markets import FileSource, MarketSpec
from tuner.trading.ohlcv import LoadReport, load_ohlcv_report
from tuner.trading.synthetic import generate_synthetic

__all__ = ["DataError", "load_bars", "load_file"]


def load_bars(spec: MarketSpec, *, seed: int | None = None) -> Bars:
    """Load a market's bars from its configured source.

    Args:
        spec: The market.
        seed: Data seed for a synthetic source (default: the one in ``markets.yaml``);
            ignored for files.

    Raises:
        DataError: if the file is missing or malformed.
    """
    source = spec.data
    if isinstance(source, FileSource):
        return load_file(spec)[0]
    return generate_synthetic(spec.name, source, spec.tick_size, seed=seed)


def load_file(spec: MarketSpec) -> tuple[Bars, LoadReport]:
    """Load the bars of a market whose ``data:`` is a file, with what the loader detected.

    Raises:
        DataError: if the market's data is synthetic, or the file is missing or malformed.
    """
    source = spec.data
    if not isinstance(source, FileSource):
        raise DataError(f"markets.{spec.name}.data is synthetic; it names no file")
    if not source.path.is_file():
        raise DataError(
            f"markets.{spec.name}.data.file: no such file {str(source.path)!r} "
            f"(configured as {source.configured!r})"
        )
    return load_ohlcv_report(source.path, source.settings, market=spec.name)
