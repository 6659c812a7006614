"""A hyperparameter search (``tuner.run --search``): its two Tune experiments and its verdict.

1. **Search** (experiment ``<name>``): per market, ``--num-samples`` configurations sampled
   from the space (Tune's random search or Optuna's TPE, seeded by ``--search-seed``), each a
   trial on the first seed of ``--seeds``; ASHA stops weak trials at rungs in timesteps, or
   PBT copies better trials of the same market and phase into weaker ones.
2. **Confirmation** (experiment ``<name>-confirm``): per market, the ``--confirm-top`` best
   configurations by the last validation ``--metric`` are trained on every seed of
   ``--seeds`` (a search trial that ran to the end on the first seed counts as that seed's run,
   except under PBT, whose trials changed configuration on the way).
3. **Verdict**: per market, every configuration tried (values, metric, timesteps spent,
   stopped early or not), the chosen one (the best mean over the seeds; ties go to the
   smaller spread), its best checkpoint, and a ``training.yaml`` overlay of its settings.

Only validation metrics are read: selection never touches the test split.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuner.driver.experiments import Experiment, TrialInfo
from tuner.driver.options import RunOptions, SearchOptions

__all__ = [
    "confirm_cases",
    "confirm_param_space",
    "format_search",
    "rank_configurations",
    "search_summary",
    "search_tune_config",
    "write_overlays",
]

MODE = "max"  # every metric of checkpointing.ranking.METRICS is better higher


def _total_timesteps(opts: RunOptions, settings: Any) -> int:
    return sum(
        int(opts.timesteps or settings.checkpoint.phase(p).target_timesteps) for p in opts.phases
    )


def search_tune_config(
    opts: RunOptions, settings: Any, base: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tune's ``param_space`` and the ``TuneConfig`` keyword arguments of the search stage.

    ``base``: the trial config every trial shares (a :class:`TrialConfig` as a dict).
    """
    from ray import tune

    from tuner.search.algorithms import PerMarketScheduler, PerMarketSearcher
    from tuner.training.settings import merge_overlay

    search = _search(opts)
    space = search.spec.param_space()
    param_space = {**base, "seed": opts.seeds[0], "stage": "search"}
    kwargs: dict[str, Any] = {"metric": search.metric, "mode": MODE}
    markets = list(opts.markets)
    if search.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        seed = search.seed

        def make(market: str, index: int) -> Any:
            return OptunaSearch(
                space={"training": space},
                metric=search.metric,
                mode=MODE,
                sampler=optuna.samplers.TPESampler(seed=seed + index),
            )

        param_space["training"] = dict(opts.training_overlay)  # the suggestions merge into it
        kwargs["search_alg"] = PerMarketSearcher(
            markets, search.num_samples, make, search.metric, MODE
        )
        kwargs["num_samples"] = search.num_samples * len(markets)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        param_space["market"] = tune.grid_search(markets)
        param_space["training"] = merge_overlay(opts.training_overlay, space)
        kwargs["search_alg"] = BasicVariantGenerator(random_state=search.seed)
        kwargs["num_samples"] = search.num_samples
    scheduler = _scheduler(opts, settings, search)
    if scheduler is not None:
        kwargs["scheduler"] = PerMarketScheduler(
            scheduler, os.fspath(opts.experiment_dir / "scheduler-state.pkl")
        )
    return param_space, kwargs


def _search(opts: RunOptions) -> SearchOptions:
    if opts.search is None:
        raise ValueError("not a search")
    return opts.search


def _scheduler(opts: RunOptions, settings: Any, search: SearchOptions) -> Any:
    """A factory of one market's scheduler, or None (``--scheduler none``)."""
    total = _total_timesteps(opts, settings)
    spec = search.spec
    if search.scheduler == "asha":
        asha = spec.asha
        if asha.grace_period >= total:
            print(
                f"note: ASHA's grace period ({asha.grace_period:,} timesteps, {spec.path}) is "
                f"not below a trial's length ({total:,}): no trial will be stopped early",
                flush=True,
            )
        # ASHA stops every trial at max_t: past the end, so that a trial that runs to the
        # end finishes (its phase_end checkpoint and last report) instead.
        return _AshaFactory(
            max_t=2 * total, grace=min(asha.grace_period, total), eta=asha.reduction_factor
        )
    if search.scheduler == "pbt":
        return _PbtFactory(spec)
    return None


class _AshaFactory:
    """Builds one market's ASHA (a class, so that Tune can pickle it into ``tuner.pkl``)."""

    def __init__(self, max_t: int, grace: int, eta: float) -> None:
        self.max_t, self.grace, self.eta = max_t, grace, eta

    def __call__(self) -> Any:
        from ray.tune.schedulers import AsyncHyperBandScheduler

        return AsyncHyperBandScheduler(
            time_attr="timesteps",
            max_t=self.max_t,
            grace_period=max(1, self.grace),
            reduction_factor=self.eta,
            brackets=1,
        )


class _PbtFactory:
    """Builds one market's :class:`~tuner.search.algorithms.PhasePBT`."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self) -> Any:
        from tuner.search.algorithms import PhasePBT

        pbt = self.spec.pbt
        spec = self.spec

        def explore(config: dict[str, Any]) -> dict[str, Any]:
            config["training"] = spec.explore(config.get("training") or {})
            return config

        return PhasePBT(
            time_attr="timesteps",
            perturbation_interval=pbt.perturbation_interval,
            hyperparam_mutations={"training": spec.pbt_mutations()},
            quantile_fraction=pbt.quantile,
            resample_probability=pbt.resample_probability,
            perturbation_factors=tuple(pbt.perturbation_factors),
            custom_explore_fn=explore,
            log_config=False,
        )


# --------------------------------------------------------------------------- confirmation


def _score(trial: TrialInfo, metric: str) -> float:
    value = trial.metrics.get(metric)
    return value if isinstance(value, float) and math.isfinite(value) else -math.inf


def ranked_configs(trials: Sequence[TrialInfo], market: str, metric: str) -> list[TrialInfo]:
    """The market's search trials, one per configuration (its best trial), best first: those
    that ran to the end before those stopped early, then by the last ``metric``."""
    best: dict[str, TrialInfo] = {}
    for t in trials:
        if t.market != market or t.config_id is None or t.status not in ("finished", "stopped"):
            continue
        key = (t.status == "finished", _score(t, metric))
        held = best.get(t.config_id)
        if held is None or key > (held.status == "finished", _score(held, metric)):
            best[t.config_id] = t
    return sorted(
        best.values(),
        key=lambda t: (t.status != "finished", -_score(t, metric), t.config_id or ""),
    )


def confirm_cases(opts: RunOptions, search_experiment: Experiment) -> list[dict[str, Any]]:
    """The confirmation trials: per market, the top configurations on every seed, less the
    search trials that already are such a run (ran to the end on that seed, never exploited)."""
    search = _search(opts)
    cases = []
    for market in opts.markets:
        for top in ranked_configs(search_experiment.trials, market, search.metric)[
            : search.confirm_top
        ]:
            for seed in opts.seeds:
                if _reusable(search_experiment, top, seed, search):
                    continue
                cases.append(
                    {"market": market, "seed": seed, "training": top.training, "stage": "confirm"}
                )
    return cases


def _reusable(experiment: Experiment, top: TrialInfo, seed: int, search: SearchOptions) -> bool:
    if search.scheduler == "pbt":
        return False
    return any(
        t.market == top.market
        and t.seed == seed
        and t.config_id == top.config_id
        and t.status == "finished"
        for t in experiment.trials
    )


def confirm_param_space(base: Mapping[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    return {**base, "case": tune.grid_search(cases)}


# --------------------------------------------------------------------------- verdict


def search_summary(
    opts: RunOptions,
    search_experiment: Experiment,
    confirm_experiment: Experiment | None,
    summaries: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Per market: every configuration tried, the chosen one and its best checkpoint.

    ``summaries``: the regular summaries (:func:`tuner.driver.summary.build_summary`) of both
    experiments by name, for each trial's best checkpoint.
    """
    search = _search(opts)
    trials = list(search_experiment.trials)
    if confirm_experiment is not None:
        trials += list(confirm_experiment.trials)
    best_of = {
        (row["trial_id"]): row["best"].get(search.metric) or row["best"].get("val_reward")
        for s in summaries.values()
        for row in s["trials"]
    }
    markets = {}
    for market in opts.markets:
        configs = rank_configurations(trials, market, search.metric, opts.seeds, best_of)
        chosen = _choose(configs, len(opts.seeds))
        markets[market] = {"chosen": chosen, "configs": configs}
    return {
        "experiment": opts.name,
        "search": {
            "space": os.fspath(search.path),
            "trainer": opts.trainer,
            "searcher": search.searcher,
            "scheduler": search.scheduler,
            "metric": search.metric,
            "num_samples": search.num_samples,
            "confirm_top": search.confirm_top,
            "search_seed": search.seed,
            "seeds": list(opts.seeds),
        },
        "markets": markets,
    }


def rank_configurations(
    trials: Sequence[TrialInfo],
    market: str,
    metric: str,
    seeds: Sequence[int],
    best_of: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The configurations ``trials`` of ``market`` tried, ranked across ``seeds``: those
    trained on more of the seeds first, then by the mean of the last ``metric`` of their
    finished trials (one per seed), then by the smaller spread. ``best_of``: a best checkpoint
    per trial id (the summary's), for each configuration's best."""
    from tuner.search.space import flatten as flatten_overlay

    best_of = best_of or {}

    groups: dict[str, list[TrialInfo]] = {}
    for t in trials:
        if t.market == market and t.config_id is not None:
            groups.setdefault(t.config_id, []).append(t)
    rows: list[dict[str, Any]] = []
    for config_id, group in groups.items():
        per_seed = _per_seed(group, metric, seeds)
        values = list(per_seed.values())
        best = max(
            (best_of[t.trial_id] for t in group if best_of.get(t.trial_id)),
            key=lambda b: b["value"] if b["value"] is not None else -math.inf,
            default=None,
        )
        rows.append(
            {
                "config_id": config_id,
                "values": flatten_overlay(group[0].training),
                "training": group[0].training,
                "trials": len(group),
                "seeds": {str(k): v for k, v in sorted(per_seed.items())},
                "mean": statistics.fmean(values) if values else math.nan,
                "std": _spread(values),
                "timesteps": sum(t.timesteps or 0 for t in group),
                "stopped_early": any(t.status == "stopped" for t in group),
                "statuses": sorted({t.status for t in group}),
                "best_checkpoint": best,
            }
        )
    rows.sort(key=lambda r: (-len(r["seeds"]), -_finite_or(r["mean"]), r["std"], r["config_id"]))
    return rows


def _per_seed(group: Sequence[TrialInfo], metric: str, seeds: Sequence[int]) -> dict[int, float]:
    """The last ``metric`` of a configuration's finished trial on each seed."""
    per_seed: dict[int, float] = {}
    for t in group:
        score = _score(t, metric)
        if t.status == "finished" and t.seed in seeds and math.isfinite(score):
            per_seed.setdefault(int(t.seed or 0), score)
    return per_seed


def _spread(values: Sequence[float]) -> float:
    if len(values) > 1:
        return statistics.stdev(values)
    return 0.0 if values else math.nan


def _finite_or(value: float, default: float = -math.inf) -> float:
    return value if math.isfinite(value) else default


def _choose(configs: Sequence[Mapping[str, Any]], n_seeds: int) -> dict[str, Any] | None:
    """The configuration with the best mean over every seed (ties: the smaller spread)."""
    complete = [c for c in configs if len(c["seeds"]) == n_seeds and math.isfinite(c["mean"])]
    if not complete:
        return None
    best = max(complete, key=lambda c: (c["mean"], -c["std"]))
    return dict(best)


def write_overlays(summary: Mapping[str, Any], folder: str | os.PathLike[str]) -> list[Path]:
    """Per market with a chosen configuration: ``<experiment>_<market>_training.yaml``, a
    ``training.yaml`` overlay that ``--training-config`` takes (a search of ``--trainer
    rllib`` chose ``rllib:`` keys: train it with ``--trainer rllib``)."""
    import yaml

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for market, verdict in summary["markets"].items():
        chosen = verdict["chosen"]
        if chosen is None:
            continue
        path = out / f"{summary['experiment']}_{market}_training.yaml"
        trainer = summary["search"].get("trainer", "sb3")
        flag = "" if trainer == "sb3" else f" --trainer {trainer}"
        header = (
            f"# Chosen by the search {summary['experiment']} for {market}: configuration "
            f"{chosen['config_id']}, {summary['search']['metric']} "
            f"{chosen['mean']:+.4f} ± {chosen['std']:.4f} over seeds "
            f"{', '.join(chosen['seeds'])}.\n"
            f"# Train with it: python -m tuner.run --markets {market}{flag} "
            f"--training-config {path}\n"
        )
        body = yaml.safe_dump({"training": chosen["training"]}, sort_keys=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(header + body, encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths


def format_search(summary: Mapping[str, Any]) -> str:
    """The on-screen verdict: per market, the configurations tried and the one chosen."""
    metric = summary["search"]["metric"]
    lines = []
    for market, verdict in summary["markets"].items():
        lines.append(f"{market}: {len(verdict['configs'])} configurations ({metric}, last result)")
        head = f"  {'config':<9} {'seeds':>5} {'mean':>9} {'std':>7} {'steps':>10} {'stopped':>7}"
        lines.append(f"{head}  values")
        for c in verdict["configs"]:
            values = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in c["values"].items())
            lines.append(
                f"  {c['config_id']:<9} {len(c['seeds']):>5} {_fmt(c['mean'])} "
                f"{_fmt(c['std'], '7.3f')} {c['timesteps']:>10,} "
                f"{'yes' if c['stopped_early'] else 'no':>7}  {values}"
            )
        chosen = verdict["chosen"]
        if chosen is None:
            lines.append("  chosen: none (no configuration finished on every seed)")
        else:
            best = chosen.get("best_checkpoint") or {}
            lines.append(
                f"  chosen: {chosen['config_id']}  {metric} {chosen['mean']:+.4f} ± "
                f"{chosen['std']:.4f} over {len(chosen['seeds'])} seeds"
            )
            if best:
                lines.append(f"  best checkpoint: {best.get('path')}")
    return "\n".join(lines)


def _fmt(value: float, spec: str = "+9.3f") -> str:
    return (
        format(value, spec)
        if isinstance(value, float) and math.isfinite(value)
        else "nan".rjust(int(spec.lstrip("+").split(".")[0] or 0))
    )


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def options_json(opts: RunOptions) -> dict[str, Any]:
    return {k: v for k, v in asdict(_search(opts)).items() if k != "spec"}
