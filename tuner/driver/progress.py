"""What the driver shows and how it stops: progress lines per trial, and Ctrl+C / SIGTERM.

Imported after Ray has been chosen (it subclasses ``ray.tune.Callback``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

__all__ = ["Progress", "StopHandler"]


class Progress:
    """One line per trial result, at most every ``every`` seconds per trial; stop tracking."""

    def __init__(self, every: float = 10.0) -> None:
        from ray import tune

        outer = self

        class Callback(tune.Callback):
            def on_trial_start(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.running.add(trial.trial_id)
                outer.say(f"[start]  {outer.label(trial)}")

            def on_trial_result(
                self,
                iteration: int,
                trials: list[Any],
                trial: Any,
                result: dict[str, Any],
                **info: Any,
            ) -> None:
                outer.last[trial.trial_id] = result
                now = time.monotonic()
                if result.get("finished"):
                    return  # on_trial_complete prints it
                if now - outer.shown.get(trial.trial_id, 0.0) >= outer.every:
                    outer.shown[trial.trial_id] = now
                    outer.say(f"[train]  {outer.label(trial)}  {outer.metrics(result)}")

            def on_trial_complete(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.running.discard(trial.trial_id)
                last = outer.last.get(trial.trial_id, {})
                if last.get("finished") or not last:
                    outer.say(f"[done]   {outer.label(trial)}  {outer.metrics(last)}")
                else:  # a search's scheduler stopped it after this result
                    outer.say(
                        f"[stop]   {outer.label(trial)}  {outer.metrics(last)}  stopped early"
                    )

            def on_trial_error(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.running.discard(trial.trial_id)
                where = getattr(trial, "local_path", None) or ""
                outer.say(f"[failed] {outer.label(trial)}  (error log in {where})")

            def on_trial_recover(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.say(
                    f"[retry]  {outer.label(trial)}: crashed, resuming from its last checkpoint"
                )

        self.callback = Callback()
        self.every = every
        self.running: set[str] = set()
        self.last: dict[str, dict[str, Any]] = {}
        self.shown: dict[str, float] = {}

    @staticmethod
    def label(trial: Any) -> str:
        """``NQ seed 42``, and a search trial's configuration: ``NQ seed 42 config 1a2b3c4d``."""
        cfg = {**trial.config, **(trial.config.get("case") or {})}
        label = f"{cfg.get('market')} seed {cfg.get('seed')}"
        if cfg.get("stage") in ("search", "confirm"):
            from tuner.search.space import decode
            from tuner.training.settings import overlay_id

            with contextlib.suppress(ValueError):
                label += f" config {overlay_id(decode(cfg.get('training') or {}))}"
        return label

    @staticmethod
    def metrics(result: dict[str, Any]) -> str:
        parts = [f"phase {result.get('phase', '?')}", f"{int(result.get('timesteps', 0)):,} steps"]
        for key, short in (("val_reward", "val"), ("sharpe_ratio", "sharpe"), ("win_rate", "win")):
            if key in result and isinstance(result[key], (int, float)):
                parts.append(f"{short}={result[key]:+.3f}")
        return "  ".join(parts)

    def say(self, line: str) -> None:
        print(line, flush=True)


# --------------------------------------------------------------------------- stop handling


class StopHandler:
    """Ctrl+C / SIGTERM: ask trials to save interrupt checkpoints, then end the Tune run.

    The first signal sets the stop flag; once every running trial has acknowledged its
    interrupt save (or after ``grace`` seconds) the driver sends itself SIGUSR1, Tune's own
    "stop and save the experiment state" signal. A second signal skips the wait.
    """

    def __init__(self, flag: Any, progress: Progress, grace: float = 120.0) -> None:
        self.flag = flag
        self.progress = progress
        self.grace = grace
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._watcher: threading.Thread | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        self.signum = signum
        self.progress.say(
            f"{signal.Signals(signum).name}: asking running trials to save interrupt "
            "checkpoints (again to stop at once) ..."
        )
        self.flag.set.remote()
        self._watcher = threading.Thread(target=self._wait_then_stop, daemon=True)
        self._watcher.start()

    def _wait_then_stop(self) -> None:
        import ray

        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            try:
                acks = ray.get(self.flag.acks.remote(), timeout=10)
            except Exception:
                break
            running = {name for name in self.progress.running}
            if len(acks) >= len(running):
                break
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGUSR1)
