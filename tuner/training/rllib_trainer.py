"""The RLlib trainer: one phase of one (market, seed) with RLlib's PPO, under our checkpoints.

Reads as the SB3 trainer does: config -> data -> where to start -> Ray -> algorithm -> restore
-> train with checkpoint events -> summary. RLlib trains in iterations (``train_batch_size``
env steps each), so the checkpoint events are checked between iterations:

    periodic        when the adaptive interval is reached, after an evaluation on validation
    best            same evaluation, when a monitored metric improved enough
    phase_boundary  when a configured curriculum stage is crossed
    interrupt       on SIGINT / SIGTERM (main thread), a stop request, or an exception
                    (not on :class:`~checkpointing.TrainingStopped` from ``on_evaluation``:
                    a scheduler stopped the run after that evaluation's checkpoint)
    phase_end       when the phase's timesteps are reached

The metrics come from :func:`tuner.trading.evaluation.evaluate_trading` with the policy's
greedy action on observations normalized by its own filter, as for SB3.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from checkpointing.callback import TrainingInterrupted, TrainingStopped
from tuner.training.job import PhaseJob, PhaseResult, prepare, tag
from tuner.training.setup import phase_checkpoint_config, run_manager, validation_env
from tuner.training.start import Start, choose_start

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm

    from checkpointing.manager import DynamicCheckpointManager, SaveOutcome
    from checkpointing.uploads import Uploader
    from tuner.training.settings import RLlibConfig, Settings

__all__ = ["train_rllib_phase"]

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]


def train_rllib_phase(
    job: PhaseJob,
    settings: Settings,
    *,
    report: Reporter | None = None,
    on_evaluation: Callable[[int, Mapping[str, float], Any], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    handle_signals: bool = True,
    uploads: Uploader | None = None,
) -> PhaseResult:
    """:func:`tuner.training.trainer.train_phase` with RLlib (same arguments, same result).

    Raises:
        ConfigError, CheckpointNameError, DataError: bad input, before Ray starts; among
            them a starting checkpoint written by SB3.
        CheckpointCorruptError: the starting checkpoint fails verification (nothing of it
            has been unpickled).
        TrainingInterrupted: a signal stopped training after an interrupt save.
        TrainingStopped: raised by ``on_evaluation`` (a scheduler stopped the run); no
            interrupt checkpoint is written.
    """
    from tuner.training.rllib_algo import build_algorithm, ensure_ray, rllib_settings

    say = report or (lambda line: None)
    t0 = time.monotonic()

    # --- config, data, where to start and as which run --------------------------------------
    data, target = prepare(job, settings)
    checkpoint_cfg = phase_checkpoint_config(job, settings)
    start = choose_start(job, checkpoint_cfg, None if uploads is None else uploads.mirror())
    manager = run_manager(job, checkpoint_cfg, start, target, uploads)
    say(f"{tag(job)}: {start.describe()} (rllib)")
    if job.curves_dir is not None:
        log.warning("--tensorboard is not written by the rllib trainer yet")

    # --- Ray, algorithm, environments --------------------------------------------------------
    cfg = rllib_settings(job, settings)
    ensure_ray(cfg.num_env_runners)
    algo = build_algorithm(job, settings, data)
    eval_env = validation_env(settings, data, job.phase, job.seed)
    loop = _Loop(job, settings, cfg, manager, algo, eval_env, say, on_evaluation)
    loop.stop_requested = stop_requested
    result = PhaseResult(job.market, job.seed, job.phase, manager.folder, 0, manager.run_id)
    result.started_from = start.how
    try:
        loop.start_from(start)
        result.start_metrics = loop.start_metrics
        result.skipped = loop.timesteps >= target
        loop.run(target, handle_signals)
    finally:
        manager.close()
        eval_env.close()
        algo.stop()

    # --- summary ---------------------------------------------------------------------------
    outcome = loop.phase_end_outcome
    result.timesteps = loop.timesteps
    result.metrics = dict(loop.last_metrics or manager.state.last_metrics)
    result.phase_end = outcome.paths[0] if outcome is not None and outcome.paths else None
    result.elapsed_seconds = time.monotonic() - t0
    return result


class _Loop:
    """RLlib iterations with the checkpoint events (what the SB3 callback does for SB3)."""

    def __init__(
        self,
        job: PhaseJob,
        settings: Settings,
        cfg: RLlibConfig,
        manager: DynamicCheckpointManager,
        algo: Algorithm,
        eval_env: Any,
        say: Reporter,
        on_evaluation: Callable[[int, Mapping[str, float], Any], None] | None,
    ) -> None:
        self.job, self.settings, self.cfg = job, settings, cfg
        self.manager, self.algo, self.eval_env = manager, algo, eval_env
        self.say, self.on_evaluation = say, on_evaluation
        self.stop_requested: Callable[[], bool] | None = None
        self.timesteps = 0
        self.stop_signal: int | None = None
        self.interrupt_outcome: SaveOutcome | None = None
        self.phase_end_outcome: SaveOutcome | None = None
        self.last_metrics: dict[str, float] = {}
        self.start_metrics: dict[str, float] = {}  # the starting checkpoint's (check_start)
        self._improved: list[str] = []
        self._wall = time.monotonic()
        self._elapsed_before = 0.0
        self._rate = (time.monotonic(), 0)

    # ------------------------------------------------------------------ start

    def start_from(self, start: Start) -> None:
        """Load the starting checkpoint (verified first) and continue its count and schedule."""
        from tuner.training.rllib_algo import restore

        if start.path is None:
            return
        metadata = restore(self.algo, start.path)
        if self.job.check_start:
            # Continued from another run's checkpoint (a PBT exploit): it must score, as
            # loaded, what that checkpoint scored; every checkpoint of the run records it.
            self.start_metrics = self._measure()
            self.manager.run_info["start_metrics"] = self.start_metrics
            self.say(
                f"{tag(self.job)}: {start.path.name} evaluates at "
                f"val_reward={self.start_metrics.get('val_reward', 0):+.3f}"
            )
        if start.new_phase:
            return  # a new phase counts from 0, with a fresh schedule
        self.timesteps = int(metadata.get("timesteps") or 0)
        state = metadata.get("callback_state")
        if isinstance(state, dict):
            self.manager.load_state_dict(state)
        else:
            self.manager.start_at(self.timesteps)
        self._elapsed_before = self.manager.state.elapsed_seconds
        self._rate = (time.monotonic(), self.timesteps)

    # ------------------------------------------------------------------ run

    def run(self, target: int, handle_signals: bool) -> None:
        previous = self._install_signals() if handle_signals else {}
        self._wall = time.monotonic()
        trained = False
        try:
            while self.timesteps < target:
                if self._stopping():
                    break
                self.timesteps += _sampled(self.algo.train())
                trained = True
                self._after_iteration()
            # A run resumed at its end saves phase_end only if it never did.
            ended = not trained and self.manager.state.saves_by_event.get("phase_end", 0) > 0
            if self.stop_signal is None and self.interrupt_outcome is None and not ended:
                self.save_phase_end()
        except TrainingStopped:
            raise  # a scheduler ended the run after an evaluation: it ends as it stands
        except BaseException as exc:
            if self.interrupt_outcome is None:
                self._save_interrupt_after(exc)
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.manager.flush()
        if self.stop_signal is not None:
            outcome = self.interrupt_outcome
            path = str(outcome.paths[0]) if outcome is not None and outcome.paths else None
            raise TrainingInterrupted(self.stop_signal, path)

    def _stopping(self) -> bool:
        if self.stop_signal is None and self.stop_requested is not None and self.stop_requested():
            log.warning("stop requested: saving an interrupt checkpoint")
            self.stop_signal = signal.SIGTERM
        if self.stop_signal is None:
            return False
        self.save_interrupt(signal.Signals(self.stop_signal).name)
        return True

    def _after_iteration(self) -> None:
        t = self.timesteps
        if self.manager.periodic_due(t):
            metrics = self._evaluate()
            events = ["periodic", *(["best"] if self._improved else [])]
            self._save(events, metrics, improved=self._improved)
            self._notify(metrics)
        boundaries = self.manager.boundaries_due(t)
        if boundaries:
            metrics = self._evaluate()
            self._save([f"phase_boundary_{b}" for b in boundaries], metrics)
            self._notify(metrics)

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is not None:
            raise KeyboardInterrupt  # asked twice: stop waiting for the iteration to end
        self.stop_signal = signum
        log.warning(
            "%s received: saving an interrupt checkpoint after this iteration",
            signal.Signals(signum).name,
        )

    # ------------------------------------------------------------------ evaluation and saves

    def _measure(self) -> dict[str, float]:
        """The greedy policy's metrics on validation (nothing recorded)."""
        from tuner.trading.evaluation import evaluate_trading
        from tuner.training.rllib_algo import greedy_policy

        episodes = self.settings.training.eval_episodes
        policy: Any = greedy_policy(self.algo)
        return {k: float(v) for k, v in evaluate_trading(policy, self.eval_env, episodes).items()}

    def _evaluate(self) -> dict[str, float]:
        metrics = self._measure()
        self._improved = self.manager.record_evaluation(metrics, self.timesteps)
        return metrics

    def _runtime(self) -> dict[str, Any]:
        from tuner.training.rllib_algo import ray_nodes

        elapsed = self._elapsed_before + (time.monotonic() - self._wall)
        self.manager.state.elapsed_seconds = elapsed
        runners = self.cfg.num_env_runners
        return {
            "training_elapsed_seconds": round(elapsed, 3),
            "eval_episodes_run": self.settings.training.eval_episodes,
            "learning_rate": self.cfg.lr,
            "n_envs": max(runners, 1) * self.cfg.num_envs_per_env_runner,
            "env_runners": runners,
            **ray_nodes(self.algo),
        }

    def _save(
        self,
        events: list[str],
        metrics: Mapping[str, float] | None,
        *,
        improved: list[str] | None = None,
        wait: bool = False,
        runtime: Mapping[str, Any] | None = None,
    ) -> SaveOutcome:
        from tuner.training.rllib_algo import RLlibSource

        future = self.manager.save_from(
            RLlibSource(self.algo, self.timesteps),
            events,
            metrics=metrics,
            metrics_timesteps=self.timesteps if metrics is not None else None,
            improved=improved or [],
            runtime={**self._runtime(), **dict(runtime or {})},
            wait=wait,
        )
        outcome: SaveOutcome = future.result() if wait else None  # type: ignore[assignment]
        return outcome

    def save_interrupt(self, reason: str) -> None:
        if self.interrupt_outcome is not None:
            return
        if not self.manager.config.events.fires("interrupt"):
            return
        log.warning("saving interrupt checkpoint at %d steps (%s)", self.timesteps, reason)
        self.interrupt_outcome = self._save(
            ["interrupt"], None, wait=True, runtime={"interrupt_reason": reason}
        )

    def _save_interrupt_after(self, exc: BaseException) -> None:
        try:
            self.save_interrupt(f"{type(exc).__name__}: {exc}")
        except Exception as save_exc:  # keep the original error visible
            log.error("could not save an interrupt checkpoint: %s", save_exc)

    def save_phase_end(self) -> None:
        if not self.manager.config.events.fires("phase_end"):
            return
        metrics = self._evaluate()
        self.phase_end_outcome = self._save(["phase_end"], metrics, wait=True)
        self._notify(metrics)

    def _notify(self, metrics: Mapping[str, float]) -> None:
        self.last_metrics = dict(metrics)
        t = self.timesteps
        if not self.job.quiet:
            then, steps = self._rate
            now = time.monotonic()
            rate = (t - steps) / max(now - then, 1e-9)
            self._rate = (now, t)
            shown = "  ".join(
                f"{k}={metrics[k]:+.3f}"
                for k in ("val_reward", "sharpe_ratio", "win_rate", "max_drawdown")
                if k in metrics
            )
            target = self.manager.target_timesteps
            self.say(f"{tag(self.job)}: {t:>9,}/{target:,} steps  {rate:>6,.0f} steps/s  {shown}")
        if self.on_evaluation is not None:
            self.on_evaluation(t, metrics, self.manager)


def _sampled(result: Mapping[str, Any]) -> int:
    """Env steps sampled by one training iteration (all env runners together)."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED

    return int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED])
