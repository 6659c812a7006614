"""The SB3 callback: evaluates before each periodic save and hands every event to the manager.

Thin by design (as SB3's own callbacks): ``_on_step`` checks a few integers and calls the
:class:`~checkpointing.manager.DynamicCheckpointManager`, which does the work.

Events:
    periodic        at the adaptive interval, after an evaluation on the eval env
    best            same evaluation, when a monitored metric improved enough
    phase_boundary  when a configured curriculum stage is crossed
    interrupt       on SIGINT / SIGTERM (main thread) or an exception inside ``learn()``
    phase_end       when ``learn()`` completes
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, sync_envs_normalization

from checkpointing.manager import DynamicCheckpointManager, SaveOutcome

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

__all__ = [
    "Evaluator",
    "MetricTrackingEvalCallback",
    "TrainingInterrupted",
    "default_evaluator",
    "learn_with_checkpoints",
]

log = logging.getLogger(__name__)

Evaluator = Callable[["BaseAlgorithm", VecEnv, int], Mapping[str, float]]
"""``evaluator(model, eval_env, n_episodes) -> metrics``; extra keys go to the metadata."""


def default_evaluator(model: BaseAlgorithm, env: VecEnv, n_episodes: int) -> dict[str, float]:
    """Mean episode reward (``val_reward``) with SB3's ``evaluate_policy``; other metrics NaN."""
    from stable_baselines3.common.evaluation import evaluate_policy

    rewards, _lengths = evaluate_policy(
        model, env, n_eval_episodes=n_episodes, deterministic=True, return_episode_rewards=True
    )
    assert isinstance(rewards, list)
    return {"val_reward": float(sum(rewards) / len(rewards)) if rewards else math.nan}


class TrainingStopped(Exception):
    """Raised by an ``on_evaluation`` hook to end training right after an evaluation (a
    scheduler stopped a weak trial): the evaluation's checkpoint is saved already, so no
    ``interrupt`` checkpoint is written and the run ends as it stands."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving an ``interrupt`` checkpoint."""

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        where = f"; saved {checkpoint}" if checkpoint else "; no checkpoint could be saved"
        super().__init__(f"training interrupted by {name}{where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class MetricTrackingEvalCallback(BaseCallback):
    """Evaluate, then save through a :class:`DynamicCheckpointManager`.

    Args:
        manager: the run's checkpoint manager.
        eval_env: a separate VecEnv on validation data. When the training env is a
            VecNormalize, this must be one too; its statistics are synced before each
            evaluation (as SB3's EvalCallback does).
        evaluator: ``evaluator(model, eval_env, n_episodes) -> metrics``; default: mean reward.
        n_eval_episodes: episodes per evaluation.
        handle_signals: catch SIGINT/SIGTERM (main thread only) and stop with an interrupt save.
        save_phase_end: save ``phase_end`` (and the legacy final model) when learn() completes.
        on_evaluation: called as ``on_evaluation(timesteps, metrics)`` after each evaluation
            and the save it leads to has been handed to the writer (progress output, Tune
            reports; ``manager.state.last_checkpoint`` names that save).
        stop_requested: polled about once per ``stop_poll_seconds`` of training; when it
            returns True, training stops with an interrupt save as on SIGTERM (a driver asks
            its trials to stop this way).
    """

    def __init__(
        self,
        manager: DynamicCheckpointManager,
        eval_env: VecEnv | None,
        *,
        evaluator: Evaluator | None = None,
        n_eval_episodes: int = 5,
        handle_signals: bool = True,
        save_phase_end: bool = True,
        on_evaluation: Callable[[int, Mapping[str, float]], None] | None = None,
        stop_requested: Callable[[], bool] | None = None,
        stop_poll_seconds: float = 1.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if n_eval_episodes < 1:
            raise ValueError(f"n_eval_episodes must be >= 1, got {n_eval_episodes!r}")
        self.manager = manager
        self.eval_env = eval_env
        self.evaluator: Evaluator = evaluator or default_evaluator
        self.n_eval_episodes = n_eval_episodes
        self.handle_signals = handle_signals
        self.save_phase_end = save_phase_end
        self.on_evaluation = on_evaluation
        self.stop_requested = stop_requested
        self.stop_poll_seconds = stop_poll_seconds
        self._next_poll = 0.0
        self.stop_signal: int | None = None
        self.interrupt_outcome: SaveOutcome | None = None
        self.phase_end_outcome: SaveOutcome | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._start_wall: float | None = None
        self._elapsed_before = 0.0
        self._last_improved: list[str] = []

    # ------------------------------------------------------------------ hooks

    def _on_training_start(self) -> None:
        self._start_wall = time.monotonic()
        self._elapsed_before = self.manager.state.elapsed_seconds
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is not None:
            # Asked twice: give up waiting for the next step.
            self._restore_signals()
            raise KeyboardInterrupt
        self.stop_signal = signum
        log.warning(
            "%s received: saving an interrupt checkpoint at the next step",
            signal.Signals(signum).name,
        )

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask training to stop with an interrupt save (for callers off the main thread)."""
        self.stop_signal = signum

    def _on_step(self) -> bool:
        if self.stop_requested is not None and self.stop_signal is None:
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + self.stop_poll_seconds
                if self.stop_requested():
                    log.warning("stop requested: saving an interrupt checkpoint")
                    self.stop_signal = signal.SIGTERM
        if self.stop_signal is not None:
            self.save_interrupt(reason=signal.Signals(self.stop_signal).name)
            return False
        t = self.num_timesteps
        if self.manager.periodic_due(t):
            self._evaluate_and_save(t)
        boundaries = self.manager.boundaries_due(t)
        if boundaries:
            metrics = self._evaluate(t)
            self.manager.save(
                self.model,
                self._vec_normalize(),
                [f"phase_boundary_{b}" for b in boundaries],
                metrics=metrics,
                metrics_timesteps=t,
                runtime=self._runtime(),
            )
            self._notify(t, metrics)
        return True

    def _on_training_end(self) -> None:
        self._restore_signals()
        if self.stop_signal is not None and self.interrupt_outcome is None:
            # The stop came during the last update, after the final step's check.
            self.save_interrupt(reason=signal.Signals(self.stop_signal).name)
        elif self.save_phase_end and self.interrupt_outcome is None:
            self.save_phase_end_checkpoint()
        self.manager.flush()

    # ------------------------------------------------------------------ actions

    def _vec_normalize(self) -> VecNormalize | None:
        return self.model.get_vec_normalize_env()

    def _runtime(self) -> dict[str, Any]:
        if self._start_wall is not None:
            self.manager.state.elapsed_seconds = self._elapsed_before + (
                time.monotonic() - self._start_wall
            )
        lr = self.model.policy.optimizer.param_groups[0]["lr"]
        return {
            "training_elapsed_seconds": round(self.manager.state.elapsed_seconds, 3),
            "eval_episodes_run": self.n_eval_episodes,
            "learning_rate": float(lr),
            "n_envs": int(self.model.n_envs),
        }

    def _evaluate(self, t: int) -> dict[str, float]:
        if self.eval_env is None:
            return {}
        if isinstance(self.training_env, VecNormalize) or isinstance(self.eval_env, VecNormalize):
            sync_envs_normalization(self.training_env, self.eval_env)
        metrics = {
            k: float(v)
            for k, v in self.evaluator(self.model, self.eval_env, self.n_eval_episodes).items()
        }
        improved = self.manager.record_evaluation(metrics, t)
        self._last_improved = improved
        if self.verbose:
            shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
            log.info("eval at %d steps: %s", t, shown)
        return metrics

    def _evaluate_and_save(self, t: int) -> None:
        metrics = self._evaluate(t)
        events = ["periodic"]
        improved = self._last_improved
        if improved:
            events.append("best")
        self.manager.save(
            self.model,
            self._vec_normalize(),
            events,
            metrics=metrics,
            metrics_timesteps=t,
            improved=improved,
            runtime=self._runtime(),
        )
        self._notify(t, metrics)

    def _notify(self, t: int, metrics: Mapping[str, float]) -> None:
        if self.on_evaluation is not None:
            self.on_evaluation(t, metrics)

    def save_interrupt(self, reason: str = "interrupt") -> SaveOutcome | None:
        """Save an ``interrupt`` checkpoint now (waits for the commit); once per run."""
        if self.interrupt_outcome is not None or self.model is None:
            return self.interrupt_outcome
        if not self.manager.config.events.fires("interrupt"):
            return None
        log.warning(
            "saving interrupt checkpoint at %d steps (%s)", self.model.num_timesteps, reason
        )
        future = self.manager.save(
            self.model,
            self._vec_normalize(),
            "interrupt",
            runtime=self._runtime() | {"interrupt_reason": reason},
            wait=True,
        )
        self.interrupt_outcome = future.result()
        return self.interrupt_outcome

    def save_phase_end_checkpoint(self) -> SaveOutcome | None:
        """Evaluate and save ``phase_end`` plus the legacy final model; waits for the commit."""
        if self.phase_end_outcome is not None:
            return self.phase_end_outcome
        if not self.manager.config.events.fires("phase_end"):
            return None
        t = self.num_timesteps
        metrics = self._evaluate(t)
        future = self.manager.save(
            self.model,
            self._vec_normalize(),
            "phase_end",
            metrics=metrics,
            metrics_timesteps=t,
            runtime=self._runtime(),
            wait=True,
        )
        self.phase_end_outcome = future.result()
        self._notify(t, metrics)
        return self.phase_end_outcome

    def _restore_signals(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()


def learn_with_checkpoints(
    model: BaseAlgorithm,
    total_timesteps: int,
    callback: MetricTrackingEvalCallback,
    **learn_kwargs: Any,
) -> BaseAlgorithm:
    """``model.learn`` with interrupt saves for signals and exceptions.

    Runs until ``total_timesteps`` more steps (``reset_num_timesteps=False``, so resumed runs
    keep counting). An exception raised inside ``learn()`` saves an ``interrupt`` checkpoint,
    then propagates. A SIGINT/SIGTERM stops training with an interrupt save and raises
    :class:`TrainingInterrupted` (``exit_code`` 130 / 143). :class:`TrainingStopped` from an
    evaluation hook ends training without an interrupt save.
    """
    learn_kwargs.setdefault("reset_num_timesteps", False)
    try:
        model.learn(total_timesteps=total_timesteps, callback=callback, **learn_kwargs)
    except TrainingStopped:
        callback.manager.flush()
        callback._restore_signals()
        raise
    except BaseException as exc:
        if callback.model is not None and callback.interrupt_outcome is None:
            try:
                callback.save_interrupt(reason=f"{type(exc).__name__}: {exc}")
            except Exception as save_exc:  # keep the original error visible
                log.error("could not save an interrupt checkpoint: %s", save_exc)
        callback.manager.flush()
        callback._restore_signals()  # SB3 skips on_training_end when learn() raises
        raise
    if callback.stop_signal is not None:
        outcome = callback.interrupt_outcome
        path = str(outcome.paths[0]) if outcome is not None and outcome.paths else None
        raise TrainingInterrupted(callback.stop_signal, path)
    return model
