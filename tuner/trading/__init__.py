"""The trading domain: markets, bars, features, the environment, the advisor and metrics.

No Ray and no training loop here: the single-run trainer (:mod:`tuner.training`) and the Ray
driver (:mod:`tuner.driver`) build on it.
"""
