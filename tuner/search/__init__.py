"""Hyperparameter search: the search file (``config/search.yaml``) and the Tune objects built
from it (:mod:`tuner.search.space`). Importing it does not import Ray."""

from tuner.search.space import (
    AshaSettings,
    Dist,
    PbtSettings,
    SearchSpec,
    decode,
    flatten,
    load_search,
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
