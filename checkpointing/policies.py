"""Retention rules: small frozen policies, each a pure function over checkpoint infos.

A policy answers one question for every checkpoint of a folder: *do you keep it, and why?*
Its one method, ``decide(infos) -> list[str | None]``, returns a reason (``kept_by``) for each
checkpoint it keeps and ``None`` for the others. Policies look only at the parsed name
(timesteps, event, val_reward, sharpe_ratio, seed, run) and, where a rule needs it, the zip's mtime
(one ``lstat`` on first use); they never open a file. A folder can hold 10,000 checkpoints,
planned at every prune: prefer ``info.name`` and ``info.filename`` to ``info.path``.
:class:`AnyPolicy` is their union::

    policy = AnyPolicy((LatestPeriodic(8), TopK("sharpe_ratio", 3), PreserveEvents(("phase_end",))))
    policy.explain(infos)   # -> [("last_8_periodic",), (), ("top_3_sharpe_ratio", ...), ...]

:func:`build_policy` makes the default union from ``checkpointing.retention`` in the config:

- the last ``keep_last_n`` ``periodic`` checkpoints of each run, by timesteps;
- the top ``keep_top_k_by_sharpe`` models by Sharpe and ``keep_top_k_by_reward`` by val_reward
  of each run, by the ranking rule of :mod:`checkpointing.ranking` (NaN never ranks; ties go to
  more timesteps, then to the smaller file name; a model saved under two events is one model,
  and both files are kept);
- every event named in ``preserve_events`` (``phase_boundary`` matches ``phase_boundary_*``),
  except ``interrupt``, which means :class:`KeepInterruptsUntilPhaseEnd`.

A user adds a rule from code (``build_policy(cfg, extra=[MyPolicy()])``: any object with a
``decide`` method) or from config with ``checkpointing.retention.rules`` (see
:func:`parse_rules`)::

    retention:
      rules:
        - keep_events: [best]               # every `best` checkpoint
        - keep_every_n_timesteps: 500000    # one checkpoint per 500K steps of each run

Every rule works **per run** (market, seed, run id): many runs share a folder (reruns, other
configurations, a search), and one run's saves never push another run's checkpoints out. v2
names without a run id form the legacy run of their market and seed; legacy v1 checkpoints
(only listed with ``include_legacy``) count as ``periodic`` checkpoints of one run of their own
with no metrics.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from checkpointing.errors import CheckpointNameError, ConfigError
from checkpointing.naming import (
    BOUNDARY_PREFIX,
    EVENT_KINDS,
    CheckpointName,
    LegacyName,
    validate_event,
)
from checkpointing.ranking import rank
from checkpointing.store import CheckpointInfo

__all__ = [
    "RULES",
    "AnyPolicy",
    "KeepEveryNTimesteps",
    "KeepInterruptsUntilPhaseEnd",
    "LatestPeriodic",
    "PreserveEvents",
    "RankedMetric",
    "RetentionPolicy",
    "RetentionSettings",
    "TopK",
    "build_policy",
    "parse_rules",
]

RankedMetric = Literal["sharpe_ratio", "val_reward"]
_RANKED_METRICS: tuple[RankedMetric, ...] = ("sharpe_ratio", "val_reward")

# A run inside one folder; legacy v1 checkpoints (no market, no seed) form one run of their own.
RunKey = tuple[str | None, int | None, str | None]


class RetentionPolicy(Protocol):
    """What every retention rule provides.

    ``decide`` gets the checkpoints of one folder (in any order) and returns, for each, the
    reason it is kept (a short string shown as ``kept_by``) or ``None``. It must be a pure
    function of ``infos``: no file system, no clock, no randomness.
    """

    def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]: ...


# --------------------------------------------------------------------------- helpers


# The run of a legacy v1 checkpoint. The loops below run over every checkpoint of a folder
# (10,000 of them, at every prune): each reads ``info.name`` once and avoids helper calls.
_LEGACY_RUN: RunKey = (None, None, None)


def _run_of(name: CheckpointName | LegacyName) -> RunKey:
    if isinstance(name, CheckpointName):
        return (name.market, name.seed, name.run_id)
    return _LEGACY_RUN


def _by_run(infos: Sequence[CheckpointInfo]) -> dict[RunKey, list[int]]:
    groups: dict[RunKey, list[int]] = defaultdict(list)
    for i, info in enumerate(infos):
        groups[_run_of(info.name)].append(i)
    return groups


def _latest(members: list[int], k: int, infos: Sequence[CheckpointInfo]) -> list[int]:
    """The ``k`` of ``members`` (indices into ``infos``) with the most timesteps; ties go to
    the larger file name. Only the members at or above the k-th are sorted."""
    if k <= 0 or not members:
        return []
    # The k-th most timesteps. sorted() is C code, and linear on (usual) ascending timesteps.
    cutoff = sorted((infos[i].timesteps for i in members), reverse=True)[min(k, len(members)) - 1]
    ties = [i for i in members if infos[i].timesteps >= cutoff]
    ties.sort(key=lambda i: (infos[i].timesteps, infos[i].filename), reverse=True)
    return ties[:k]


def _check_count(value: object, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class LatestPeriodic:
    """Keep the last ``n`` ``periodic`` checkpoints of each run by timesteps.

    Ties in timesteps go to the larger file name. Reason: ``last_{n}_periodic``.
    """

    n: int

    def __post_init__(self) -> None:
        _check_count(self.n, "LatestPeriodic.n", 0)

    def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
        out: list[str | None] = [None] * len(infos)
        if self.n == 0:
            return out
        groups: dict[RunKey, list[int]] = defaultdict(list)
        for i, info in enumerate(infos):
            name = info.name
            if not isinstance(name, CheckpointName):
                groups[_LEGACY_RUN].append(i)  # legacy v1: periodic, a run of their own
            elif name.event == "periodic":
                groups[(name.market, name.seed, name.run_id)].append(i)
        reason = f"last_{self.n}_periodic"
        for members in groups.values():
            for i in _latest(members, self.n, infos):
                out[i] = reason
        return out


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` best models of each run by ``metric`` (any event).

    ``metric`` is one the name carries: ``sharpe_ratio`` or ``val_reward`` (higher is better).
    Ranked by :func:`checkpointing.ranking.rank`: NaN never ranks, ties go to more timesteps,
    then to the smaller file name, so the choice is the same on every run; a model saved under
    two events (a ``best`` and its ``periodic`` twin) takes one place and both files are kept.
    Reason: ``top_{k}_{metric}``.
    """

    metric: RankedMetric
    k: int

    def __post_init__(self) -> None:
        if self.metric not in _RANKED_METRICS:
            raise ValueError(
                f"TopK.metric must be one of {list(_RANKED_METRICS)} (the metrics a checkpoint "
                f"name carries), got {self.metric!r}"
            )
        _check_count(self.k, "TopK.k", 0)

    def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
        out: list[str | None] = [None] * len(infos)
        if self.k == 0:
            return out
        metric = self.metric
        reason = f"top_{self.k}_{self.metric}"
        for run, members in _by_run(infos).items():
            if run is _LEGACY_RUN:
                continue  # v1 names carry no metrics
            candidates = []
            for i in members:
                name = infos[i].name
                assert isinstance(name, CheckpointName)
                value = getattr(name, metric)
                if value == value:  # NaN never ranks: skip the work for it
                    candidates.append((value, name.timesteps, infos[i].filename, name.model, i))
            for ranked in rank(candidates, self.k):
                for i in ranked.items:
                    out[i] = reason
        return out


@dataclass(frozen=True)
class PreserveEvents:
    """Keep every checkpoint whose event is listed.

    An entry matches the exact event (``phase_boundary_warmup``) or its kind:
    ``phase_boundary`` matches every ``phase_boundary_*``. Reason: ``event:{event}``.
    """

    events: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.events, str) or not isinstance(self.events, (tuple, list)):
            raise ValueError(
                f"PreserveEvents.events must be a tuple of events, got {self.events!r}"
            )
        for event in self.events:
            if event != "phase_boundary":
                try:
                    validate_event(event)
                except CheckpointNameError as exc:
                    raise ValueError(f"PreserveEvents.events: {exc}") from None
        object.__setattr__(self, "events", tuple(self.events))

    def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
        wanted = frozenset(self.events)
        boundaries = "phase_boundary" in wanted  # the kind matches every phase_boundary_*
        out: list[str | None] = []
        for info in infos:
            name = info.name
            if isinstance(name, CheckpointName) and (
                name.event in wanted or (boundaries and name.event.startswith(BOUNDARY_PREFIX))
            ):
                out.append(f"event:{name.event}")
            else:
                out.append(None)
        return out


@dataclass(frozen=True)
class KeepInterruptsUntilPhaseEnd:
    """Keep each ``interrupt`` checkpoint until its run, resumed, ends with ``phase_end``.

    Its run ends: a ``phase_end`` checkpoint of the same run (market, seed, run id) in the same
    folder, whose timesteps are >= the interrupt's **and** whose zip is at least as new (mtime)
    as the interrupt's: the timesteps say the run got past the interruption (a resumed run
    continues counting), the mtime that it happened afterwards. Another run's phase_end never
    releases an interrupt. When in doubt (e.g. copied files with shuffled mtimes) the
    interrupt is kept. Reason: ``interrupt_unresolved``.
    """

    def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
        # Legacy v1 checkpoints are periodic: neither interrupts nor phase ends.
        ours = [
            (i, info, name)
            for i, info in enumerate(infos)
            if isinstance(name := info.name, CheckpointName)
            and name.event in ("phase_end", "interrupt")
        ]
        ends: dict[RunKey, list[tuple[int, float]]] = defaultdict(list)
        for _, info, name in ours:
            if name.event == "phase_end":  # mtime: one lstat, only for these few
                ends[(name.market, name.seed, name.run_id)].append((name.timesteps, info.mtime))
        out: list[str | None] = [None] * len(infos)
        for i, info, name in ours:
            if name.event != "interrupt":
                continue
            run_ends = ends.get((name.market, name.seed, name.run_id), ())
            resolved = any(ts >= name.timesteps and mtime >= info.mtime for ts, mtime in run_ends)
            out[i] = None if resolved else "interrupt_unresolved"
        return out


@dataclass(frozen=True)
class KeepEveryNTimesteps:
    """Keep one checkpoint per ``n`` timesteps of each run: the first in each window.

    Windows are ``[0, n)``, ``[n, 2n)`` ...; in each, the checkpoint with the fewest timesteps
    (then the smaller file name) is kept, whatever its event. Later saves never change the
    choice, so a sparse history survives. Reason: ``every_{n}_timesteps``.
    """

    n: int

    def __post_init__(self) -> None:
        _check_count(self.n, "KeepEveryNTimesteps.n", 1)

    def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
        out: list[str | None] = [None] * len(infos)
        first: dict[tuple[RunKey, int], tuple[int, str, int]] = {}
        n = self.n
        for i, info in enumerate(infos):
            name = info.name
            timesteps = name.timesteps
            run = _run_of(name)
            key = (run, timesteps // n)
            candidate = (timesteps, info.filename, i)
            if key not in first or candidate < first[key]:
                first[key] = candidate
        reason = f"every_{self.n}_timesteps"
        for *_, i in first.values():
            out[i] = reason
        return out


@dataclass(frozen=True)
class AnyPolicy:
    """The union of policies: a checkpoint is kept when any of them keeps it.

    :meth:`explain` returns every reason per checkpoint (``kept_by``); :meth:`decide` joins them
    with ``+`` so a union is itself a policy and can be nested.
    """

    policies: tuple[RetentionPolicy, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))
        for policy in self.policies:
            if not callable(getattr(policy, "decide", None)):
                raise TypeError(f"a retention policy needs a decide(infos) method, got {policy!r}")

    def explain(self, infos: Sequence[CheckpointInfo]) -> list[tuple[str, ...]]:
        """For each checkpoint, the reasons of every policy that keeps it (empty: delete)."""
        columns: list[list[str | None]] = []
        for policy in self.policies:
            decisions = list(policy.decide(infos))
            if len(decisions) != len(infos):
                raise ValueError(
                    f"retention policy {policy!r} returned {len(decisions)} decisions "
                    f"for {len(infos)} checkpoints"
                )
            columns.append(decisions)
        if not columns:
            return [() for _ in infos]
        # Most checkpoints of a big folder are kept by no rule: `any` settles those at once.
        return [
            tuple([str(reason) for reason in row if reason]) if any(row) else ()
            for row in zip(*columns, strict=True)
        ]

    def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
        return ["+".join(r) if r else None for r in self.explain(infos)]


# --------------------------------------------------------------------------- from config


def _rule_keep_events(value: object, where: str) -> RetentionPolicy:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list of events, got {value!r}")
    for i, event in enumerate(value):
        if event in EVENT_KINDS:
            continue
        try:
            validate_event(event)
        except CheckpointNameError:
            raise ConfigError(
                f"{where}[{i}] must be one of {list(EVENT_KINDS)} or phase_boundary_<name>, "
                f"got {event!r}"
            ) from None
    return PreserveEvents(tuple(value))


def _rule_keep_every_n_timesteps(value: object, where: str) -> RetentionPolicy:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be an integer >= 1, got {value!r}")
    return KeepEveryNTimesteps(value)


# Rule name -> builder(value, key path). The keys of `checkpointing.retention.rules` items.
RULES: Mapping[str, Callable[[object, str], RetentionPolicy]] = {
    "keep_events": _rule_keep_events,
    "keep_every_n_timesteps": _rule_keep_every_n_timesteps,
}


def parse_rules(
    raw: object, where: str = "checkpointing.retention.rules"
) -> tuple[RetentionPolicy, ...]:
    """Build the extra policies of ``checkpointing.retention.rules`` (a list of one-key maps).

    Each item is ``{rule_name: value}`` with a rule of :data:`RULES`:
    ``keep_events: [best, ...]`` or ``keep_every_n_timesteps: 500000``. ``None`` means none.

    Raises:
        ConfigError: not a list, an item with no or several keys, an unknown rule name, or a
            bad value; the message names the key path and the value.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list, got {raw!r}")
    out: list[RetentionPolicy] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ConfigError(
                f"{at} must be a mapping with exactly one rule name (one of {sorted(RULES)}), "
                f"got {item!r}"
            )
        ((rule, value),) = item.items()
        builder = RULES.get(rule) if isinstance(rule, str) else None
        if builder is None:
            close = difflib.get_close_matches(str(rule), list(RULES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown retention rule {at}.{rule}{hint}; known rules: {sorted(RULES)}"
            )
        out.append(builder(value, f"{at}.{rule}"))
    return tuple(out)


class RetentionSettings(Protocol):
    """The settings :func:`build_policy` reads (``checkpointing.config.RetentionConfig``)."""

    @property
    def keep_last_n(self) -> int: ...
    @property
    def keep_top_k_by_sharpe(self) -> int: ...
    @property
    def keep_top_k_by_reward(self) -> int: ...
    @property
    def preserve_events(self) -> tuple[str, ...]: ...
    @property
    def rules(self) -> tuple[RetentionPolicy, ...]: ...


def build_policy(
    retention_cfg: RetentionSettings, extra: Iterable[RetentionPolicy] = ()
) -> AnyPolicy:
    """The default retention policy of a ``RetentionConfig``, plus ``extra`` policies.

    The union of :class:`LatestPeriodic` (``keep_last_n``), :class:`TopK` by Sharpe and by
    val_reward, :class:`PreserveEvents` (``preserve_events`` minus ``interrupt``),
    :class:`KeepInterruptsUntilPhaseEnd` (when ``interrupt`` is in ``preserve_events``), the
    config's extra ``rules`` and then ``extra``.
    """
    policies: list[RetentionPolicy] = [
        LatestPeriodic(retention_cfg.keep_last_n),
        TopK("sharpe_ratio", retention_cfg.keep_top_k_by_sharpe),
        TopK("val_reward", retention_cfg.keep_top_k_by_reward),
    ]
    events = tuple(e for e in retention_cfg.preserve_events if e != "interrupt")
    if events:
        policies.append(PreserveEvents(events))
    if "interrupt" in retention_cfg.preserve_events:
        policies.append(KeepInterruptsUntilPhaseEnd())
    policies.extend(retention_cfg.rules)
    policies.extend(extra)
    return AnyPolicy(tuple(policies))
