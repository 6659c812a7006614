"""The hyperparameter search file (``config/search.yaml``): a space over training.yaml's keys.

A trial's configuration is an *overlay* on the ``training:`` section of ``training.yaml``: the
same nesting and key names, holding only the keys the search sets::

    {"phase1": {"ppo": {"learning_rate": 0.0004, "net_arch": [128, 128]}},
     "env": {"drawdown_penalty": 0.3}}

:func:`load_search` reads the file and checks, before Ray starts, that every configuration the
space can produce is one ``training.yaml`` would accept (its own bounds, and ``batch_size``
dividing ``n_steps x n_envs``). The :class:`SearchSpec` then builds the Tune objects::

    spec = load_search("config/search.yaml", settings.training).for_phases((1,))
    spec = spec.for_trainer("rllib")         # the rllib: keys only (ConfigError if none)
    if spec.is_empty: ...                    # nothing to search in the phases trained
    param_space = {"training": spec.param_space(), ...}
    pbt = spec.require_pbt()                 # --scheduler pbt: its settings, or ConfigError
    PopulationBasedTraining(
        hyperparam_mutations={"training": spec.pbt_mutations()},
        custom_explore_fn=lambda c: {**c, "training": spec.explore(c["training"])}, ...)
    overlay = decode(config["training"])     # in the trial: Tune's values -> training.yaml's

The file::

    search:                # phase1, phase2, phase3 (each ppo: and/or rllib:) and env
      phase1:
        ppo:                                     # --trainer sb3
          learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
          n_epochs: 5                            # a plain value fixes the key
        rllib:                                   # --trainer rllib, under RLlib's names
          lr: {loguniform: [1.0e-5, 1.0e-3]}
    asha: {grace_period: 25000, reduction_factor: 3}    # --scheduler asha; these defaults
    pbt:                                                 # --scheduler pbt; no section, no PBT
      perturbation_interval: 4000                        # required, as is mutate
      mutate: [phase1.ppo.learning_rate]                 # searched keys PBT perturbs

Distributions: ``uniform: [low, high]``, ``loguniform: [low, high]`` (low > 0), ``int: [low,
high]`` (both ends included), ``qint``, ``quniform``, ``qloguniform: [low, high, q]`` (the
multiples of ``q`` from ``low`` to ``high``; both must be multiples of ``q``, so Tune and Optuna
draw from the same grid) and ``choice: [v1, v2, ...]``.

Tune's values differ from training.yaml's: a ``net_arch`` is the string ``"64x64"`` (Optuna's
categorical choices must be numbers or strings), and numbers may be numpy's or carry float noise;
:func:`decode` turns them into training.yaml's (``[64, 64]``). Optuna samples ``qloguniform``
log-uniformly without its grid (it cannot do both); the values stay inside the range.

Loading and checking need no Ray: the methods that build Tune objects import it when called.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from checkpointing.errors import ConfigError
from checkpointing.validation import suggest
from tuner.training.settings import PHASES

__all__ = [
    "TRAINER_SECTIONS",
    "AshaSettings",
    "Dist",
    "PbtSettings",
    "SearchSpec",
    "decode",
    "flatten",
    "unflatten",
]

# Distribution -> its arguments (``choice`` takes a list of any length).
_ARGS = {
    "uniform": "low, high",
    "loguniform": "low, high",
    "int": "low, high",
    "qint": "low, high, q",
    "quniform": "low, high, q",
    "qloguniform": "low, high, q",
    "choice": "v1, v2, ...",
}
_KINDS = (*_ARGS, "fixed")
_LISTED_KINDS = frozenset({"choice", "fixed"})

# A phase's section of each trainer's settings in training.yaml (and in the search file).
TRAINER_SECTIONS = {"sb3": "ppo", "rllib": "rllib"}

_ARCH = re.compile(r"[1-9][0-9]*(x[1-9][0-9]*)*")


def _is_number(x: object) -> bool:
    # numbers.Real: Tune samples numpy numbers.
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _on_grid(x: float, q: float) -> bool:
    return math.isclose(x / q, round(x / q), rel_tol=1e-9, abs_tol=1e-9)


def _tidy(x: float) -> float:
    """``3 * 0.05`` as ``0.15``: a grid value without float noise."""
    return float(f"{x:.12g}")


def _encode(value: Any) -> Any:
    """Tune's representation of a value: a network ``(64, 64)`` is ``"64x64"``."""
    if isinstance(value, list | tuple):
        return "x".join(str(u) for u in value)
    return value


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Dist:
    """One key's distribution, or its fixed value.

    Attributes:
        kind: ``uniform``, ``loguniform``, ``int``, ``qint``, ``quniform``, ``qloguniform``,
            ``choice`` or ``fixed``.
        args: ``(low, high)``, ``(low, high, q)``, the choices, or ``(value,)`` for ``fixed``;
            a network is a tuple of layer widths.

    Raises:
        ConfigError: an unknown kind, wrong arguments, an empty range, a log range not above
            0, a ``q`` that is not > 0, larger than the range or off the bounds' grid, an empty
            choice or a choice listed twice.
    """

    kind: str
    args: tuple[Any, ...]

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(_unknown_distribution(self.kind))
        if self.kind == "choice":
            _check_choices(self.args)
        elif self.kind == "fixed":
            if len(self.args) != 1:
                raise ConfigError(f"a fixed value is one value, got {list(self.args)!r}")
        else:
            _check_range(self.kind, self.args)

    def to_tune(self) -> Any:
        """The Ray Tune domain (``fixed``: the value itself), in Tune's representation."""
        from ray import tune

        a = self.args
        if self.kind == "fixed":
            return _encode(a[0])
        if self.kind == "choice":
            return tune.choice([_encode(v) for v in a])
        if self.kind == "int" or (self.kind == "qint" and a[2] == 1):
            return tune.randint(a[0], a[1] + 1)  # Tune's upper bound is excluded
        builders: dict[str, Callable[..., Any]] = {
            "uniform": tune.uniform,
            "loguniform": tune.loguniform,
            "qint": tune.qrandint,
            "quniform": tune.quniform,
            "qloguniform": tune.qloguniform,
        }
        return builders[self.kind](*a)

    def clip(self, value: Any) -> Any:
        """The value the distribution can produce nearest to ``value`` (in Tune's
        representation): within the bounds, rounded to an integer or onto the grid of ``q``,
        or the nearest choice.

        Raises:
            ValueError: a value that is not a number for a range, or that matches no
                non-numeric choice.
        """
        if self.kind in _LISTED_KINDS:
            return _nearest(tuple(_encode(v) for v in self.args), _encode(value))
        if not _is_number(value):
            raise ValueError(f"{value!r} is not a number within {self.kind} {list(self.args)}")
        low, high = self.args[0], self.args[1]
        if self.kind == "int":
            return int(min(max(round(value), low), high))
        if self.kind in ("uniform", "loguniform"):
            return float(min(max(value, low), high))
        q = self.args[2]
        steps = min(max(round(value / q), round(low / q)), round(high / q))
        return int(steps * q) if self.kind == "qint" else _tidy(steps * q)

    def values(self) -> tuple[Any, ...] | None:
        """The values of a ``choice`` or ``fixed``; ``None`` for a range."""
        return self.args if self.kind in _LISTED_KINDS else None

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    def __str__(self) -> str:
        shown = [list(v) if isinstance(v, tuple) else v for v in self.args]
        return repr(shown[0]) if self.is_fixed else f"{self.kind} {shown!r}"


def _unknown_distribution(name: object) -> str:
    return (
        f"unknown distribution {name!r}{suggest(name, _ARGS)}; one of {', '.join(_ARGS)}, "
        "or a plain value"
    )


def _check_range(kind: str, args: tuple[Any, ...]) -> None:
    got = f"got {list(args)!r}"
    if len(args) != len(_ARGS[kind].split(", ")) or not all(_is_number(a) for a in args):
        raise ConfigError(f"{kind} takes [{_ARGS[kind]}] (numbers), {got}")
    low, high = args[0], args[1]
    if kind in ("int", "qint") and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{kind} takes integers, {got}")
    if low >= high:
        raise ConfigError(f"the range is empty: low must be < high, {got}")
    if kind in ("loguniform", "qloguniform") and low <= 0:
        raise ConfigError(f"a log range must be > 0, {got}")
    if len(args) == 3:
        q = args[2]
        if q <= 0:
            raise ConfigError(f"q must be > 0, {got}")
        if q > high - low:
            raise ConfigError(f"q must be <= high - low ({_tidy(high - low):g}), {got}")
        if not (_on_grid(low, q) and _on_grid(high, q)):
            raise ConfigError(f"low and high must be multiples of q, {got}")


def _check_choices(choices: tuple[Any, ...]) -> None:
    if not choices:
        raise ConfigError("choice takes a non-empty list of values, got []")
    seen: list[Any] = []
    for value in choices:
        if value in seen:
            raise ConfigError(f"choice lists {_show(value)!r} twice")
        seen.append(value)


def _show(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _nearest(choices: tuple[Any, ...], value: Any) -> Any:
    if value in choices:
        return choices[choices.index(value)]
    numeric = [c for c in choices if _is_number(c)]
    if not _is_number(value) or not numeric:
        raise ValueError(f"{value!r} is none of {list(choices)!r}")
    return min(numeric, key=lambda c: abs(c - value))


@dataclass(frozen=True)
class AshaSettings:
    """``asha:`` (``--scheduler asha``). Defaults: a trial trains ``grace_period=25000``
    timesteps (phase 1's first evaluation with the shipped checkpoint config) before it can be
    stopped; each rung keeps ``1 / reduction_factor`` (3) of the trials."""

    grace_period: int = 25_000
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class PbtSettings:
    """``pbt:`` (``--scheduler pbt``): every ``perturbation_interval`` timesteps the trials of
    the bottom ``quantile`` copy a top-quantile trial and perturb its ``mutate`` keys (each
    resampled with ``resample_probability``, else multiplied by one of
    ``perturbation_factors``; a choice moves to a neighbouring choice). After
    :meth:`SearchSpec.for_phases`, ``mutate`` holds only the keys of the phases trained."""

    perturbation_interval: int
    mutate: tuple[str, ...]
    quantile: float = 0.25
    resample_probability: float = 0.25
    perturbation_factors: tuple[float, ...] = (1.2, 0.8)


@dataclass(frozen=True)
class SearchSpec:
    """A loaded search file: the space (dotted key -> :class:`Dist`) and the schedulers'
    settings. Build it with :func:`load_search`."""

    path: Path
    space: Mapping[str, Dist]
    asha: AshaSettings = field(default_factory=AshaSettings)
    pbt: PbtSettings | None = None
    trainer: str | None = None  # set by for_trainer: the trainer whose keys the space holds

    @property
    def searched(self) -> tuple[str, ...]:
        """The keys the search varies (every key of the space but the fixed ones)."""
        return tuple(k for k, d in self.space.items() if not d.is_fixed)

    @property
    def is_empty(self) -> bool:
        """True when nothing is left to search (e.g. after :meth:`for_phases`)."""
        return not self.searched

    def for_phases(self, phases: Sequence[int]) -> SearchSpec:
        """The space of a run that trains ``phases``: the ``phaseN`` keys of the other phases
        are dropped (from ``pbt.mutate`` too); the ``env`` keys stay."""
        bad = [p for p in phases if p not in PHASES]
        if bad:
            raise ConfigError(f"phases must be among {list(PHASES)}, got {list(phases)!r}")
        keep = ("env", *(f"phase{p}" for p in phases))
        return self._only(k for k in self.space if k.split(".")[0] in keep)

    def for_trainer(self, trainer: str) -> SearchSpec:
        """The space of a run with ``trainer`` (``sb3`` or ``rllib``): the phase keys of the
        other trainer's section are dropped (from ``pbt.mutate`` too); the ``env`` keys stay.

        Raises:
            ConfigError: an unknown trainer, or a space with phase keys of the other trainer
                only (a search of ``ppo:`` keys cannot tune an RLlib run, nor the reverse).
        """
        if trainer not in TRAINER_SECTIONS:
            raise ConfigError(f"trainer must be one of {list(TRAINER_SECTIONS)}, got {trainer!r}")
        section = TRAINER_SECTIONS[trainer]
        sections = {k: _section_of(k) for k in self.space}
        others = sorted({s for s in sections.values() if s not in (None, section)})
        if others and section not in sections.values():
            example = next(k for k, s in sections.items() if s is not None)
            raise ConfigError(
                f"{os.fspath(self.path)}: --trainer {trainer} searches training.yaml's "
                f"{section}: keys, but the space has none for the phases trained, only "
                f"{', '.join(f'{s}:' for s in others)} keys (such as {example}); add a "
                f"'{section}:' block beside them (e.g. search.phase1.{section}."
                f"{_EXAMPLE_KEY[section]}), or train with --trainer "
                f"{_TRAINER_OF[others[0]]}"
            )
        kept = self._only(k for k in self.space if sections[k] in (None, section))
        return replace(kept, trainer=trainer)

    def _only(self, keys: Iterable[str]) -> SearchSpec:
        """This spec with only ``keys`` of its space, in ``pbt.mutate`` too."""
        space = {k: self.space[k] for k in keys}
        pbt = self.pbt
        if pbt is not None:
            pbt = replace(pbt, mutate=tuple(k for k in pbt.mutate if k in space))
        return replace(self, space=space, pbt=pbt)

    def require_pbt(self) -> PbtSettings:
        """The PBT settings, for ``--scheduler pbt``.

        Raises:
            ConfigError: the file has no ``pbt:`` section, or none of its ``mutate`` keys is
                trained.
        """
        where = os.fspath(self.path)
        if self.pbt is None:
            raise ConfigError(
                f"{where}: --scheduler pbt needs a 'pbt:' section (perturbation_interval, "
                "mutate: the searched keys to perturb)"
            )
        if not self.pbt.mutate:
            trained = "" if self.trainer is None else f" with --trainer {self.trainer}"
            raise ConfigError(
                f"{where}: pbt.mutate names no key of the phases trained{trained}; PBT would "
                "have nothing to perturb"
            )
        return self.pbt

    def param_space(self) -> dict[str, Any]:
        """The space as Tune's nested ``param_space`` (``{"phase1": {"ppo": {...}}, "env":
        {...}}``): a domain per searched key, the value of each fixed one."""
        return unflatten({k: d.to_tune() for k, d in self.space.items()})

    def pbt_mutations(self) -> dict[str, Any]:
        """``hyperparam_mutations`` for PBT: a domain per mutated key, nested like the
        overlay; a choice is its list of values, so PBT moves to a neighbouring choice
        instead of multiplying one."""
        mutate = self.pbt.mutate if self.pbt is not None else ()
        out: dict[str, Any] = {}
        for key in mutate:
            dist = self.space[key]
            out[key] = [_encode(v) for v in dist.args] if dist.kind == "choice" else dist.to_tune()
        return unflatten(out)

    def explore(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the overlay ``config`` (in Tune's representation) with the value of every
        key of the space clipped into its distribution (:meth:`Dist.clip`): PBT's
        ``custom_explore_fn``, so a perturbed value stays a value the space can produce."""
        flat = flatten(config)
        for key, dist in self.space.items():
            if key in flat:
                flat[key] = dist.clip(flat[key])
        return unflatten(flat)

    def describe(self, overlay: Mapping[str, Any]) -> dict[str, Any]:
        """The searched keys' values of an overlay, flat (``{"phase1.ppo.gamma": 0.97}``), in
        the space's order, for tables; a network reads ``"64x64"``. Fixed keys are left out:
        they are the same in every trial."""
        flat = flatten(overlay)
        return {k: _encode(flat[k]) for k in self.searched if k in flat}


_TRAINER_OF = {section: trainer for trainer, section in TRAINER_SECTIONS.items()}
_EXAMPLE_KEY = {"ppo": "learning_rate", "rllib": "lr"}


def _section_of(key: str) -> str | None:
    """``phase1.rllib.lr`` -> ``rllib``; ``None`` for a key of no trainer (``env.*``)."""
    parts = key.split(".")
    return parts[1] if parts[0].startswith("phase") and len(parts) > 2 else None


def flatten(overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``{"phase1": {"ppo": {"gamma": 0.99}}}`` -> ``{"phase1.ppo.gamma": 0.99}`` (a list such
    as ``net_arch`` is a value)."""
    flat: dict[str, Any] = {}
    for key, value in overlay.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            flat[str(key)] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"phase1.ppo.gamma": 0.99}`` -> ``{"phase1": {"ppo": {"gamma": 0.99}}}``.

    Raises:
        ValueError: a key that is both a value and a mapping (``a.b`` and ``a.b.c``).
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key!r} lies under {part!r}, which is a value")
        if last in node:
            raise ValueError(f"{key!r} is both a value and a mapping")
        node[last] = value
    return out


def decode(overlay: Mapping[str, Any]) -> dict[str, Any]:
    """The training.yaml overlay of a trial's configuration as Tune gives it: every
    ``net_arch`` string ``"64x64"`` becomes ``[64, 64]``, numbers become plain ``int`` and
    ``float``, and floats lose the noise of quantized sampling (Tune's ``quniform`` over
    ``[0.1, 0.3, 0.05]`` yields ``0.30000000000000004``, which could pass a bound of
    training.yaml) by rounding to 12 significant digits.

    Raises:
        ConfigError: a ``net_arch`` string that is not layer widths joined by ``x``.
    """
    flat = flatten(overlay)
    for key, value in flat.items():
        if key.rsplit(".", 1)[-1] == "net_arch" and isinstance(value, str):
            if not _ARCH.fullmatch(value):
                raise ConfigError(f"{key} must be layer widths like '64x64', got {value!r}")
            flat[key] = [int(u) for u in value.split("x")]
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            flat[key] = int(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            flat[key] = _tidy(float(value))
    return unflatten(flat)
