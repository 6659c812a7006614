"""Reading and checking a search file (``config/search.yaml``) into a
:class:`~tuner.search.space.SearchSpec`: every key validated like every YAML of the project,
before Ray starts; every message names the file and the key path. The file's format is
described in :mod:`tuner.search.space` and in the shipped file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from checkpointing.errors import ConfigError
from checkpointing.validation import Section, read_yaml
from tuner.search.space import (
    _ARGS,
    _KINDS,
    _LISTED_KINDS,
    AshaSettings,
    Dist,
    PbtSettings,
    SearchSpec,
    _freeze,
    _is_number,
    _show,
    _unknown_distribution,
)
from tuner.trading.env_config import EnvConfig
from tuner.training.settings import (
    _PPO_FLOATS,
    _PPO_INTS,
    _RLLIB_FLOATS,
    _RLLIB_INTS,
    PHASES,
    TrainingConfig,
)

__all__ = ["load_search"]

_INTEGER_KINDS = frozenset({"int", "qint", "choice", "fixed"})

# The env keys worth searching: they change how the agent is trained, not what is measured.
# episode_length (training episodes only; evaluation windows are training.eval_episode_length),
# drawdown_penalty and reward_clip (reward shaping), stop_atr_multiple (the phase 2-3 stop rule,
# part of the strategy every trial is evaluated with).
_ENV_SEARCHABLE = ("episode_length", "stop_atr_multiple", "drawdown_penalty", "reward_clip")
_ENV_REFUSED = {
    "max_position": "it fixes the action space (2 x max_position + 1 actions), which every "
    "phase and every PBT copy of a model must share",
    "initial_capital": "it scales every dollar metric (returns, drawdowns), so trials with "
    "different values cannot be compared",
    "phase1_cost_ticks": "it is also the cost phase-1 evaluation charges, so the search would "
    "favour cheaper trading instead of better trading",
    "reward_scale": "it is in dollars, which differ by market; null (the default) derives it "
    "from each market's training split",
    "eval_episode_length": "every trial must be evaluated on the same windows; it is "
    "training.eval_episode_length in training.yaml",
    "consult_every": "the phase-3 advisor is set in llm_config.yaml",
    "min_confidence": "the phase-3 advisor is set in llm_config.yaml",
}
# RLlib keys that set a trial's resources rather than how it learns.
_RLLIB_REFUSED = {
    "num_env_runners": "it sets the CPUs every trial reserves (one per env runner), which "
    "the search's trials share; set it in training.yaml or with --env-runners",
    "num_envs_per_env_runner": "it sets how many envs each env runner steps, not how the agent "
    "learns; set it in training.yaml",
}
# Keys PBT cannot perturb under a trained model, and why.
_NOT_MUTABLE = {
    "net_arch": "the network's shape cannot change under trained weights",
    "n_steps": "it changes the rollout buffer, and batch_size must keep dividing n_steps x n_envs",
    "batch_size": "batch_size must keep dividing n_steps x n_envs, which a perturbation "
    "cannot guarantee",
}
_LOCKSTEP = ("n_steps", "batch_size")  # searched as fixed values or choices only


def load_search(path: str | os.PathLike[str], training: TrainingConfig) -> SearchSpec:
    """Load and check a search file against the training config it overlays.

    Every value the space can produce must pass training.yaml's own checks, ``n_steps`` and
    ``batch_size`` must be fixed or choices such that every ``batch_size`` divides every
    ``n_steps x training.n_envs``, RLlib's ``minibatch_size`` must stay <= its
    ``train_batch_size``, and ``pbt.mutate`` must name searched keys. A phase may hold a
    ``ppo:`` block (``--trainer sb3``) and an ``rllib:`` block (``--trainer rllib``);
    :meth:`SearchSpec.for_trainer` keeps the run's.

    Raises:
        ConfigError: ``<path>: <key path>: <problem>``, for the first problem found.
    """
    where_file = os.fspath(path)
    doc = read_yaml(path)
    if doc is None:
        raise ConfigError(f"{where_file}: the file is empty; expected a 'search:' section")
    try:
        return _parse(doc, Path(path), training)
    except ConfigError as exc:
        raise ConfigError(f"{where_file}: {exc}") from None


def _parse(doc: object, path: Path, training: TrainingConfig) -> SearchSpec:
    top = Section(doc, "<top level>")
    top.only("search", "asha", "pbt")
    if top.raw("search", None) is None:
        raise ConfigError(
            "no 'search:' section: expected the space over training.yaml's keys, e.g. "
            "search.phase1.ppo.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}"
        )
    space = _parse_space(Section(top.raw("search"), "search"))
    if not any(not d.is_fixed for d in space.values()):
        raise ConfigError("search has nothing to search: every key given is a fixed value")
    _check_minibatches(space, training)
    _check_rllib_minibatches(space, training)
    asha = _parse_asha(Section(top.raw("asha"), "asha")) if top.has("asha") else AshaSettings()
    pbt = _parse_pbt(Section(top.raw("pbt"), "pbt"), space) if top.has("pbt") else None
    return SearchSpec(path, space, asha, pbt)


def _parse_space(sec: Section) -> dict[str, Dist]:
    space: dict[str, Dist] = {}
    phases = [f"phase{n}" for n in PHASES]
    sec.known(*phases, "env")
    sec.done()
    for n, name in zip(PHASES, phases, strict=True):
        if not sec.has(name):
            continue
        phase = sec.section(name)
        phase.only("ppo", "rllib")  # each trainer's settings under its own names
        for section, checks in (("ppo", _ppo_checks(n)), ("rllib", _rllib_checks(n))):
            if phase.has(section):
                keys = phase.section(section)
                _refuse_keys(keys, n, section)
                space.update(_parse_keys(keys, f"{name}.{section}", checks))
    if sec.has("env"):
        env = sec.section("env")
        for key in env.data:
            if key in _ENV_REFUSED:
                raise ConfigError(f"{env.where(key)} cannot be searched: {_ENV_REFUSED[key]}")
        space.update(_parse_keys(env, "env", _env_checks()))
    return space


def _refuse_keys(keys: Section, phase: int, section: str) -> None:
    """A trainer's keys that exist in training.yaml but cannot be searched there."""
    if phase != 1 and keys.has("net_arch"):
        raise ConfigError(
            f"{keys.where('net_arch')} is not a setting here: phase {phase} continues from "
            f"the phase-1 network; its shape is training.phase1.{section}.net_arch"
        )
    refused = _RLLIB_REFUSED if section == "rllib" else {}
    for key in keys.data:
        if key in refused:
            raise ConfigError(f"{keys.where(key)} cannot be searched: {refused[key]}")


# A searchable key: the distributions it allows, and training.yaml's check of one value.
_Check = tuple[frozenset[str], Callable[[Any], object]]


def _ppo_checks(phase: int) -> dict[str, _Check]:
    where = f"training.phase{phase}.ppo"
    checks: dict[str, _Check] = {}
    for key, bounds in _PPO_FLOATS.items():
        checks[key] = (frozenset(_KINDS), partial(_check_float, where, key, bounds))
    for key, low in _PPO_INTS.items():
        kinds = _LISTED_KINDS if key in _LOCKSTEP else _INTEGER_KINDS
        checks[key] = (kinds, partial(_check_int, where, key, low))
    if phase == 1:
        checks["net_arch"] = (_LISTED_KINDS, partial(_check_net_arch, where))
    return checks


def _rllib_checks(phase: int) -> dict[str, _Check]:
    where = f"training.phase{phase}.rllib"
    checks: dict[str, _Check] = {}
    for key, (_, bounds) in _RLLIB_FLOATS.items():
        checks[key] = (frozenset(_KINDS), partial(_check_float, where, key, bounds))
    for key, low in _RLLIB_INTS.items():
        if key not in _RLLIB_REFUSED:
            checks[key] = (_INTEGER_KINDS, partial(_check_int, where, key, low))
    if phase == 1:
        checks["net_arch"] = (_LISTED_KINDS, partial(_check_net_arch, where))
    return checks


def _env_checks() -> dict[str, _Check]:
    default = EnvConfig()
    checks: dict[str, _Check] = {}
    for key in _ENV_SEARCHABLE:
        integer = isinstance(getattr(default, key), int)
        kinds = _INTEGER_KINDS if integer else frozenset(_KINDS)
        checks[key] = (kinds, partial(_check_env, key))
    return checks


def _check_float(where: str, key: str, bounds: Mapping[str, float], value: Any) -> None:
    Section({key: value}, where).get_float(key, **bounds)


def _check_int(where: str, key: str, low: int, value: Any) -> None:
    Section({key: value}, where).get_int(key, ge=low)


def _check_env(key: str, value: Any) -> None:
    EnvConfig.from_mapping({key: value}, "training.env")


def _check_net_arch(where: str, value: Any) -> None:
    # training.yaml's rule for training.phase1.ppo.net_arch.
    if (
        not isinstance(value, tuple)
        or not value
        or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in value)
    ):
        raise ConfigError(
            f"{where}.net_arch must be a non-empty list of positive integers, got {_show(value)!r}"
        )


def _parse_keys(sec: Section, prefix: str, checks: Mapping[str, _Check]) -> dict[str, Dist]:
    sec.known(*checks)
    sec.done()
    space: dict[str, Dist] = {}
    for key in sec.names():  # in the file's order, for tables
        kinds, check = checks[key]
        where = f"search.{prefix}.{key}"
        try:
            dist = _parse_dist(sec.raw(key), listed=key == "net_arch")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if dist.kind not in kinds:
            raise ConfigError(f"{where}: {_why_not(key, kinds)}, got {dist}")
        _check_values(dist, check, where)
        space[f"{prefix}.{key}"] = dist
    return space


def _why_not(key: str, kinds: frozenset[str]) -> str:
    if key in _LOCKSTEP:
        return (
            f"{key} must be a fixed value or a choice: batch_size must divide n_steps x n_envs "
            "for every value searched, which a range cannot guarantee"
        )
    return f"{key} is an integer: search it with {', '.join(sorted(kinds - {'fixed'}))}"


def _parse_dist(raw: Any, *, listed: bool) -> Dist:
    """A distribution ``{name: args}`` or a fixed value (a list only where ``listed``)."""
    if isinstance(raw, Mapping):
        if len(raw) != 1:
            raise ConfigError(
                f"a distribution is one mapping {{name: [args]}}, got {dict(raw)!r}; "
                f"names: {', '.join(_ARGS)}"
            )
        ((name, args),) = raw.items()
        if name not in _ARGS:  # "fixed" too: a fixed value is written plain
            raise ConfigError(_unknown_distribution(name))
        if not isinstance(args, list):
            raise ConfigError(f"{name} takes a list [{_ARGS[name]}], got {args!r}")
        if name == "choice":
            return Dist("choice", tuple(_freeze(v) for v in args))
        return Dist(name, tuple(_integral(a) if name in ("int", "qint") else a for a in args))
    if raw is None or (isinstance(raw, list) and not listed):
        raise ConfigError(
            f"expected a distribution such as {{uniform: [low, high]}} or {{choice: [...]}}, or "
            f"a plain value, got {raw!r}"
        )
    return Dist("fixed", (_freeze(raw),))


def _integral(x: Any) -> Any:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _check_values(dist: Dist, check: Callable[[Any], object], where: str) -> None:
    """Every value ``dist`` can produce passes training.yaml's check (the bounds are
    intervals, so a range's two ends stand for all its values)."""
    values = dist.values()
    for value in values if values is not None else dist.args[:2]:
        try:
            check(value)
        except ConfigError as exc:
            produces = "" if dist.is_fixed else f"{dist} can produce {_show(value)!r}, but "
            raise ConfigError(f"{where}: {produces}{exc}") from None


def _check_minibatches(space: Mapping[str, Dist], training: TrainingConfig) -> None:
    """PPO splits each rollout of ``n_steps x n_envs`` into minibatches of ``batch_size``:
    every combination the space can produce must split evenly."""
    n_envs = training.n_envs
    for n in PHASES:
        ppo = training.phase(n).ppo
        steps, batches = (space.get(f"phase{n}.ppo.{k}") for k in _LOCKSTEP)
        if steps is None and batches is None:
            continue
        blame = "batch_size" if batches is not None else "n_steps"
        for s in _values_or(steps, ppo.n_steps):
            for b in _values_or(batches, ppo.batch_size):
                if (s * n_envs) % b:
                    raise ConfigError(
                        f"search.phase{n}.ppo.{blame}: batch_size {b} does not divide n_steps x "
                        f"n_envs ({s} x {n_envs} = {s * n_envs}); every combination the space "
                        "can produce must (training.yaml's value stands for a key not searched)"
                    )


def _check_rllib_minibatches(space: Mapping[str, Dist], training: TrainingConfig) -> None:
    """RLlib's ``minibatch_size`` must not exceed ``train_batch_size`` for any combination
    the space can produce: the largest minibatch against the smallest batch (a PBT
    perturbation, clipped into the space, then keeps the rule too)."""
    for n in PHASES:
        rllib = training.phase(n).rllib
        batches, minibatches = (
            space.get(f"phase{n}.rllib.{k}") for k in ("train_batch_size", "minibatch_size")
        )
        if batches is None and minibatches is None:
            continue
        smallest = min(_ends_or(batches, rllib.train_batch_size))
        largest = max(_ends_or(minibatches, rllib.minibatch_size))
        if largest > smallest:
            blame = "minibatch_size" if minibatches is not None else "train_batch_size"
            raise ConfigError(
                f"search.phase{n}.rllib.{blame}: minibatch_size {largest} would exceed "
                f"train_batch_size {smallest}; every combination the space can produce must "
                "keep minibatch_size <= train_batch_size (training.yaml's value stands for a "
                "key not searched)"
            )


def _ends_or(dist: Dist | None, default: int) -> Iterable[int]:
    """The values of a choice or fixed value, or a range's two ends."""
    if dist is None:
        return (default,)
    values = dist.values()
    return values if values is not None else dist.args[:2]


def _values_or(dist: Dist | None, default: int) -> Iterable[int]:
    # n_steps and batch_size are fixed values or choices: their args are their values.
    return (default,) if dist is None else dist.args


def _parse_asha(sec: Section) -> AshaSettings:
    sec.only("grace_period", "reduction_factor")
    d = AshaSettings()
    return AshaSettings(
        grace_period=sec.get_int("grace_period", d.grace_period, ge=1),
        reduction_factor=sec.get_float("reduction_factor", d.reduction_factor, gt=1.0),
    )


def _parse_pbt(sec: Section, space: Mapping[str, Dist]) -> PbtSettings:
    sec.only(
        "perturbation_interval",
        "quantile",
        "resample_probability",
        "perturbation_factors",
        "mutate",
    )
    d = PbtSettings(perturbation_interval=1, mutate=())
    factors = sec.raw("perturbation_factors", list(d.perturbation_factors))
    if not isinstance(factors, list) or not factors or not all(_is_number(f) for f in factors):
        raise ConfigError(
            f"{sec.where('perturbation_factors')} must be a non-empty list of numbers, "
            f"got {factors!r}"
        )
    for f in factors:
        if f <= 0:
            raise ConfigError(f"{sec.where('perturbation_factors')} must be > 0, got {f!r}")
    return PbtSettings(
        perturbation_interval=sec.get_int("perturbation_interval", ge=1),
        mutate=_parse_mutate(sec, space),
        quantile=sec.get_float("quantile", d.quantile, gt=0.0, le=0.5),
        resample_probability=sec.get_float(
            "resample_probability", d.resample_probability, ge=0.0, le=1.0
        ),
        perturbation_factors=tuple(float(f) for f in factors),
    )


def _parse_mutate(sec: Section, space: Mapping[str, Dist]) -> tuple[str, ...]:
    keys = sec.raw("mutate")
    where = sec.where("mutate")
    if not isinstance(keys, list) or not keys:
        raise ConfigError(
            f"{where} must be a non-empty list of searched keys such as "
            f"phase1.ppo.learning_rate, got {keys!r}"
        )
    searched = [k for k, d in space.items() if not d.is_fixed]
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise ConfigError(
                f"{where}[{i}] must be a dotted key such as phase1.ppo.gamma, got {key!r}"
            )
        name = key.rsplit(".", 1)[-1]
        if name in _NOT_MUTABLE:
            raise ConfigError(f"{where}[{i}]: PBT cannot perturb {key}: {_NOT_MUTABLE[name]}")
        if key not in space:
            raise ConfigError(
                f"{where}[{i}]: {key!r} is not in the search space; "
                f"PBT perturbs searched keys: {', '.join(searched)}"
            )
        if space[key].is_fixed:
            raise ConfigError(
                f"{where}[{i}]: {key} is fixed in the search space; PBT perturbs searched keys only"
            )
        if key in keys[:i]:
            raise ConfigError(f"{where} lists {key!r} twice")
    return tuple(keys)
