"""Hyperparameter search: the search file (``config/search.yaml``) and the Tune objects built
from it (:mod:`tuner.search.space`), read and checked by :mod:`tuner.search.loading`.
Importing it does not import Ray."""

from tuner.search.loading import load_search
from tuner.search.space import (
    AshaSettings,
    Dist,
    PbtSettings,
    SearchSpec,
    decode,
    flatten,
    unflatten,
)

__all__ = [
    "AshaSettings",
    "Dist",
    "PbtSettings",
    "SearchSpec",
    "decode",
    "flatten",
    "load_search",
    "unflatten",
]
