"""The per-market schedulers of a search: each market decides alone, and what they learnt
survives a restore (Tune pickles the scheduler into tuner.pkl; ASHA's rungs and PBT's
statistics are read back from the state file beside the experiment)."""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import pytest
from ray.tune.experiment import Trial

from tests.tiny_config import CONFIG_DIR
from tuner.driver.search import _AshaFactory, _PbtFactory
from tuner.search.algorithms import PerMarketScheduler


def _trials(*markets: str) -> list[Trial]:
    return [Trial("fn", config={"market": m, "training": {}}, stub=True) for m in markets]


def _controller(trials: list[Trial]) -> Any:
    return types.SimpleNamespace(
        search_alg=None,
        get_trials=lambda: trials,
        get_live_trials=lambda: trials,
        _schedule_trial_save=lambda trial, result=None: f"checkpoint of {trial}",
    )


def test_asha_keeps_markets_apart_and_its_rungs_survive_a_restore(tmp_path: Path) -> None:
    state = tmp_path / "scheduler-state.pkl"
    scheduler = PerMarketScheduler(_AshaFactory(max_t=8000, grace=1000, eta=2), str(state))
    scheduler.set_search_properties("val_reward", "max")
    trials = _trials("NQ", "NQ", "ES")
    ctl = _controller(trials)
    for t in trials:
        scheduler.on_trial_add(ctl, t)
    # ES's reward is on another scale: it must not raise NQ's cutoff.
    for t, reward in zip(trials, (0.0, 1.0, 100.0), strict=True):
        assert scheduler.on_trial_result(ctl, t, {"timesteps": 1200, "val_reward": reward}) == (
            "CONTINUE"
        )
    assert state.is_file()

    restored = pickle.loads(pickle.dumps(scheduler))  # what Tune does with tuner.pkl
    assert set(restored.by_market) == {"NQ", "ES"}
    rung = restored.by_market["NQ"]._brackets[0]._rungs[-1]
    assert rung[0] == 1000 and set(rung[1].values()) == {0.0, 1.0}
    # A third NQ trial below the median of NQ's two is stopped at the rung; ES never counted.
    late = _trials("NQ")[0]
    restored.on_trial_add(ctl, late)
    assert restored.on_trial_result(ctl, late, {"timesteps": 1200, "val_reward": 0.2}) == "STOP"


def test_pbt_statistics_survive_a_restore_by_trial_id(tmp_path: Path) -> None:
    from tuner.search.loading import load_search
    from tuner.training.settings import load_settings

    spec = load_search(CONFIG_DIR / "search.yaml", load_settings(CONFIG_DIR).training)
    state = tmp_path / "scheduler-state.pkl"
    scheduler = PerMarketScheduler(_PbtFactory(spec.for_phases([1])), str(state))
    scheduler.set_search_properties("val_reward", "max")
    trials = _trials("NQ", "NQ", "ES")
    ctl = _controller(trials)
    for t in trials:
        scheduler.on_trial_add(ctl, t)
    interval = spec.pbt.perturbation_interval
    for t, reward in zip(trials, (0.0, 1.0, 2.0), strict=True):
        scheduler.on_trial_result(
            ctl, t, {"timesteps": interval + 1, "val_reward": reward, "phase": 1}
        )

    restored = pickle.loads(pickle.dumps(scheduler))
    again = [Trial("fn", config=t.config, stub=True, trial_id=t.trial_id) for t in trials]
    for t in again:
        restored.on_trial_add(_controller(again), t)
    states = [restored.of(t)._trial_state[t] for t in again]
    assert [s.last_score for s in states] == [0.0, 1.0, 2.0]
    assert all(s.last_train_time == interval + 1 for s in states)
    assert restored.of(again[0]) is restored.of(again[1]) is not restored.of(again[2])


def test_pbt_copies_only_a_trial_in_the_same_phase(monkeypatch: Any) -> None:
    from tuner.search.algorithms import PhasePBT

    pbt = PhasePBT(
        time_attr="timesteps",
        metric="val_reward",
        mode="max",
        perturbation_interval=10,
        quantile_fraction=0.5,
        hyperparam_mutations={"x": [1, 2]},
    )
    copied: list[tuple[Trial, Trial]] = []
    monkeypatch.setattr(PhasePBT, "_exploit", lambda self, ctl, t, clone: copied.append((t, clone)))
    weak, strong, ahead = _trials("NQ", "NQ", "NQ")
    ctl = _controller([weak, strong, ahead])
    for t in (weak, strong, ahead):
        pbt.on_trial_add(ctl, t)
    # `ahead` is in phase 2 with the best score: not comparable with phase 1's trials.
    for steps in (20, 40):
        pbt.on_trial_result(ctl, ahead, {"timesteps": steps, "val_reward": 10.0, "phase": 2})
        pbt.on_trial_result(ctl, strong, {"timesteps": steps, "val_reward": 1.0, "phase": 1})
        pbt.on_trial_result(ctl, weak, {"timesteps": steps, "val_reward": 0.0, "phase": 1})
    assert copied == [(weak, strong)]  # the first round: no top trial had a checkpoint yet


def _suggestions(tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    """The first configurations the search of ``tuner.run ... --search`` would sample."""
    from tests.tiny_config import tiny_config_dir
    from tuner.driver.experiment import _trial_base
    from tuner.driver.search import search_tune_config
    from tuner.run import parse_options

    configs = tiny_config_dir(tmp_path / "configs")
    opts, settings = parse_options(
        [
            *("--markets", "NQ,ES", "--config-dir", str(configs)),
            *("--storage-path", str(tmp_path / "rr"), "--models-root", str(tmp_path / "m")),
            *("--search", str(CONFIG_DIR / "search.yaml"), "--num-samples", "3", *extra),
        ]
    )
    _, kwargs = search_tune_config(opts, settings, _trial_base(opts, "flag"))
    searcher = kwargs["search_alg"]
    return [searcher.suggest(f"t{i}") for i in range(6)]


def test_the_same_search_seed_samples_the_same_configurations(tmp_path: Path) -> None:
    first = _suggestions(tmp_path / "a", "--search-seed", "11")
    again = _suggestions(tmp_path / "b", "--search-seed", "11")
    other = _suggestions(tmp_path / "c", "--search-seed", "12")
    assert first == again
    assert [c["training"] for c in first] != [c["training"] for c in other]
    # Three per market, taken in turn, each with its own sampler.
    assert [c["market"] for c in first] == ["NQ", "ES"] * 3


@pytest.mark.parametrize("searcher", ["optuna", "random"])
def test_an_rllib_search_samples_the_rllib_keys_only(tmp_path: Path, searcher: str) -> None:
    """The shipped space has ppo: and rllib: blocks: a search with --trainer rllib samples
    RLlib's keys (and env's), never a ppo: key the run would not use."""
    from tuner.search.space import flatten

    if searcher == "optuna":
        configs = _suggestions(tmp_path, "--trainer", "rllib")
        trainings = [c["training"] for c in configs]
    else:
        from tests.tiny_config import tiny_config_dir
        from tuner.driver.experiment import _trial_base
        from tuner.driver.search import search_tune_config
        from tuner.run import parse_options

        opts, settings = parse_options(
            [
                *("--markets", "NQ", "--config-dir", str(tiny_config_dir(tmp_path / "c"))),
                *("--storage-path", str(tmp_path / "rr"), "--models-root", str(tmp_path / "m")),
                *("--search", str(CONFIG_DIR / "search.yaml"), "--searcher", "random"),
                *("--trainer", "rllib"),
            ]
        )
        space, _ = search_tune_config(opts, settings, _trial_base(opts, "flag"))
        trainings = [space["training"]]
    for training in trainings:
        keys = flatten(training)
        assert {k.split(".")[1] for k in keys if k.startswith("phase")} == {"rllib"}, keys
        assert "phase1.rllib.lr" in keys and "env.drawdown_penalty" in keys
