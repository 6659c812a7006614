"""A market's bars from its configured source: the synthetic generator or an OHLCV file.

:mod:`tuner.trading.bars` holds the bars and the split, :mod:`tuner.trading.synthetic` the
generator, :mod:`tuner.trading.ohlcv` the file loader and :mod:`tuner.trading.data_cache`
the cache of parsed files and of their features, beside the models root
(``defaults.data_cache`` in ``markets.yaml`` moves it or turns it off).
"""

from __future__ import annotations

import os
from pathlib import Path

from tuner.trading.bars import Bars, DataError
from tuner.trading.data_cache import DataCache
from tuner.trading.features import FeatureSet, compute_features
from tuner.trading.markets import FileSource, MarketSpec
from tuner.trading.ohlcv import LoadReport, load_ohlcv_report
from tuner.trading.synthetic import generate_synthetic

__all__ = ["DataError", "data_cache", "load_bars", "load_file", "load_market"]


def load_bars(
    spec: MarketSpec,
    *,
    seed: int | None = None,
    models_root: str | os.PathLike[str] | None = None,
) -> Bars:
    """Load a market's bars from its configured source.

    Args:
        spec: The market.
        seed: Data seed for a synthetic source (default: the one in ``markets.yaml``);
            ignored for files.
        models_root: The run's models root: a file's parsed bars are cached (and looked up)
            in its ``.data-cache`` folder (see :func:`data_cache`).

    Raises:
        DataError: if the file is missing or malformed.
    """
    source = spec.data
    if isinstance(source, FileSource):
        return load_file(spec, models_root=models_root)[0]
    return generate_synthetic(spec.name, source, spec.tick_size, seed=seed)


def load_market(
    spec: MarketSpec,
    *,
    seed: int | None = None,
    models_root: str | os.PathLike[str] | None = None,
) -> tuple[Bars, FeatureSet]:
    """:func:`load_bars`, and their features (:func:`~tuner.trading.features.compute_features`).

    A file's features are cached beside its bars (see :func:`data_cache`), so a later load
    maps them instead of computing them; a synthetic market's are computed.

    Raises:
        DataError: if the file is missing or malformed.
    """
    source = spec.data
    cache = data_cache(source, models_root) if isinstance(source, FileSource) else None
    if isinstance(source, FileSource) and cache is not None:
        _check_file(spec, source)
        cached = cache.read(source.path, source.settings, market=spec.name)
        return cached.bars, cache.features(cached)
    bars = load_bars(spec, seed=seed, models_root=models_root)
    return bars, compute_features(bars)


def load_file(
    spec: MarketSpec,
    *,
    models_root: str | os.PathLike[str] | None = None,
    cache: bool = True,
) -> tuple[Bars, LoadReport]:
    """Load the bars of a market whose ``data:`` is a file, with what the loader detected.

    Args:
        spec: The market.
        models_root: As for :func:`load_bars`.
        cache: False parses the file whatever the cache holds, and leaves the cache alone.

    Raises:
        DataError: if the market's data is synthetic, or the file is missing or malformed.
    """
    source = spec.data
    if not isinstance(source, FileSource):
        raise DataError(f"markets.{spec.name}.data is synthetic; it names no file")
    _check_file(spec, source)
    cached = data_cache(source, models_root) if cache else None
    if cached is None:
        return load_ohlcv_report(source.path, source.settings, market=spec.name)
    return cached.load(source.path, source.settings, market=spec.name)


def data_cache(source: FileSource, models_root: str | os.PathLike[str] | None) -> DataCache | None:
    """Where the parsed bars of ``source`` are cached: ``defaults.data_cache`` of
    ``markets.yaml`` (``auto``: ``<models_root>/.data-cache``, none without a models root;
    ``false``: nowhere; else that folder)."""
    if source.cache is False:
        return None
    if source.cache is True:
        return None if models_root is None else DataCache.beside(models_root)
    return DataCache(Path(source.cache))


def _check_file(spec: MarketSpec, source: FileSource) -> None:
    if not source.path.is_file():
        raise DataError(
            f"markets.{spec.name}.data.file: no such file {str(source.path)!r} "
            f"(configured as {source.configured!r})"
        )
