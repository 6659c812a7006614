"""One training run without Ray: settings, the phase job, and the trainer.

:func:`tuner.training.trainer.train_phase` trains one phase of one (market, seed); the Ray
Tune trainable (:mod:`tuner.driver.trainable`) wraps it.
"""
