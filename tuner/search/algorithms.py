"""Searchers and schedulers that keep each market to itself.

A search of ``--markets NQ,ES`` is one Tune experiment whose trials are interleaved across
markets, but no decision may compare one market with another: their rewards are on
different scales. So:

- :class:`PerMarketSearcher` gives every market its own searcher (Optuna's TPE through Tune's
  ``OptunaSearch``, seeded per market) and its own number of samples;
- :class:`PerMarketScheduler` gives every market its own scheduler: ASHA (stops weak trials
  at rungs in timesteps) or :class:`PhasePBT` (population-based training that only copies a
  trial of the same market in the same phase).

The scheduler's state (ASHA's rungs) is saved beside the experiment after every decision and
read back when ``tuner.run --resume`` restores the experiment, because Tune restores the
searcher's state but not the scheduler's. Imports Ray; loaded by the driver only.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import Searcher

__all__ = ["PerMarketScheduler", "PerMarketSearcher", "PhasePBT"]

log = logging.getLogger(__name__)


class PerMarketSearcher(Searcher):
    """One searcher per market, each asked for ``samples`` configurations in turn.

    ``make(market, index)`` builds a market's searcher; its suggestions are the trial's
    config without the market, which is added here.
    """

    def __init__(
        self,
        markets: Sequence[str],
        samples: int,
        make: Callable[[str, int], Searcher],
        metric: str,
        mode: str = "max",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.markets = list(markets)
        self.samples = samples
        self.inner = {m: make(m, i) for i, m in enumerate(self.markets)}
        self.suggested = {m: 0 for m in self.markets}
        self.market_of: dict[str, str] = {}

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return True  # every market's searcher has its space, metric and mode already

    def suggest(self, trial_id: str) -> Any:
        open_markets = [m for m in self.markets if self.suggested[m] < self.samples]
        if not open_markets:
            return Searcher.FINISHED
        market = min(open_markets, key=lambda m: (self.suggested[m], self.markets.index(m)))
        config = self.inner[market].suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        self.suggested[market] += 1
        self.market_of[trial_id] = market
        return {**config, "market": market}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        market = self.market_of.get(trial_id)
        if market is not None:
            self.inner[market].on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        market = self.market_of.get(trial_id)
        if market is None:
            return
        if result is not None and not _finite(result.get(self.metric)):
            error = True  # a trial stopped before its first evaluation has nothing to learn from
        self.inner[market].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__.copy(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class PhasePBT(PopulationBasedTraining):
    """Population-based training that copies only a trial in the same phase: a trial in
    phase 1 is never replaced by one in phase 2 (their metrics are not comparable, and the
    later phase trains with other settings). Used per market by :class:`PerMarketScheduler`.

    A trial's final result (``finished``) is never a reason to exploit: Tune's PBT would pause
    the trial that just ended and train it again, from another trial's checkpoint, to the
    same end."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("finished"):
            return str(TrialScheduler.CONTINUE)
        return str(super().on_trial_result(tune_controller, trial, result))

    def _checkpoint_or_exploit(
        self,
        trial: Any,
        tune_controller: Any,
        upper_quantile: list[Any],
        lower_quantile: list[Any],
    ) -> None:
        phase = self._phase(trial)
        lower, upper = self._quantiles_of([t for t in self._trial_state if self._phase(t) == phase])
        super()._checkpoint_or_exploit(trial, tune_controller, upper, lower)

    def _phase(self, trial: Any) -> Any:
        result = self._trial_state[trial].last_result or {}
        return result.get("phase")

    def _quantiles_of(self, trials: list[Any]) -> tuple[list[Any], list[Any]]:
        """Tune's quantiles (``_quantiles``), over ``trials`` only."""
        scores = {t: self._trial_state[t].last_score for t in trials if not t.is_finished()}
        scored = [t for t, v in scores.items() if v is not None and not math.isnan(v)]
        scored.sort(key=lambda t: float(scores[t] or 0.0))
        if len(scored) <= 1:
            return [], []
        n = math.ceil(len(scored) * self._quantile_fraction)
        n = min(n, len(scored) // 2)
        return scored[:n], scored[len(scored) - n :]


_PBT_KEY = "__pbt_trials__"
_PBT_FIELDS = ("last_score", "last_perturbation_time", "last_train_time", "last_result")


class PerMarketScheduler(FIFOScheduler):
    """One scheduler per market (``make()`` builds one); trials go to their market's.

    ``state_file``: where the schedulers are saved after every decision and read back on
    restore (None: not saved): ASHA's rungs as they are, PBT's per-trial statistics (last
    score, result and perturbation time) by trial id, since PBT keys them by Tune's trial
    objects, which a restore makes anew.
    """

    def __init__(self, make: Callable[[], TrialScheduler], state_file: str | None) -> None:
        super().__init__()
        self.make = make
        self.state_file = state_file
        self.by_market: dict[str, TrialScheduler] = {}
        self._metric_mode: tuple[str | None, str | None] = (None, None)
        self._pbt_saved: dict[str, dict[str, Any]] = {}  # trial id -> PBT statistics
        self._load()

    # Tune pickles the scheduler into tuner.pkl and unpickles it on restore.
    def __getstate__(self) -> dict[str, Any]:
        return {"make": self.make, "state_file": self.state_file, "metric_mode": self._metric_mode}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__init__(state["make"], state["state_file"])  # type: ignore[misc]
        metric, mode = state.get("metric_mode") or (None, None)
        self._metric_mode = (metric, mode)

    def _load(self) -> None:
        if not self.state_file or not os.path.exists(self.state_file):
            return
        try:
            with open(self.state_file, "rb") as fh:
                saved = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            log.warning("scheduler state %s unreadable (%s); starting afresh", self.state_file, exc)
            return
        self._pbt_saved = dict(saved.pop(_PBT_KEY, {}))
        self.by_market.update(saved)

    def _save(self) -> None:
        if not self.state_file:
            return
        keep: dict[str, Any] = {
            m: s for m, s in self.by_market.items() if not isinstance(s, PopulationBasedTraining)
        }
        pbt = {
            trial.trial_id: {k: getattr(state, k) for k in _PBT_FIELDS}
            for s in self.by_market.values()
            if isinstance(s, PopulationBasedTraining)
            for trial, state in s._trial_state.items()
        }
        if pbt:
            keep[_PBT_KEY] = {**self._pbt_saved, **pbt}
        if not keep:
            return
        tmp = f"{self.state_file}.tmp"
        Path(tmp).parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            pickle.dump(keep, fh)
        os.replace(tmp, self.state_file)

    def of(self, trial: Any) -> TrialScheduler:
        market = str(trial.config.get("market"))
        if market not in self.by_market:
            scheduler = self.make()
            if any(self._metric_mode):
                scheduler.set_search_properties(*self._metric_mode, config={})
            self.by_market[market] = scheduler
        return self.by_market[market]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric_mode = (metric, mode)
        for scheduler in self.by_market.values():
            scheduler.set_search_properties(metric, mode, **spec)
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        scheduler = self.of(trial)
        scheduler.on_trial_add(tune_controller, trial)
        saved = self._pbt_saved.get(trial.trial_id)
        if saved and isinstance(scheduler, PopulationBasedTraining):  # a restored trial
            state = scheduler._trial_state[trial]
            for key, value in saved.items():
                setattr(state, key, value)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision: str = self.of(trial).on_trial_result(tune_controller, trial, result)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self.of(trial).on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.of(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """A pending or paused trial; under PBT the one that has trained least (PBT's own
        rule, each trial measured by its market's scheduler)."""
        from ray.tune.experiment import Trial

        waiting = [
            t for t in tune_controller.get_trials() if t.status in (Trial.PENDING, Trial.PAUSED)
        ]
        if not waiting:
            return None

        def trained(trial: Any) -> float:
            scheduler = self.of(trial)
            state = getattr(scheduler, "_trial_state", {}).get(trial)
            return float(getattr(state, "last_train_time", 0) or 0)

        pending = [t for t in waiting if t.status == Trial.PENDING]
        return min(pending or waiting, key=trained)

    def debug_string(self) -> str:
        return "; ".join(f"{m}: {s.debug_string()}" for m, s in self.by_market.items())
