"""Retention policies: table-driven cases over made-up checkpoint infos (no files)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from checkpointing.config import RetentionConfig
from checkpointing.errors import ConfigError
from checkpointing.naming import format_checkpoint_name, parse_name
from checkpointing.policies import (
    AnyPolicy,
    KeepEveryNTimesteps,
    KeepInterruptsUntilPhaseEnd,
    LatestPeriodic,
    PreserveEvents,
    RetentionPolicy,
    TopK,
    build_policy,
    parse_rules,
)
from checkpointing.store import CheckpointInfo

NAN = math.nan


def ck(
    ts: int,
    event: str = "periodic",
    val: float = NAN,
    sharpe: float = NAN,
    seed: int = 42,
    *,
    market: str = "NQ",
    run: str | None = None,
    mtime: float | None = None,
) -> CheckpointInfo:
    """A made-up checkpoint info; mtime defaults to the timesteps (later saves are newer)."""
    filename = format_checkpoint_name(market, ts, event, val, sharpe, seed, run)
    name = parse_name(filename)
    assert name is not None
    return CheckpointInfo(Path(filename), name, 100, float(ts) if mtime is None else mtime)


def legacy(ts: int) -> CheckpointInfo:
    name = parse_name(f"phase1_{ts}_steps.zip")
    assert name is not None
    return CheckpointInfo(Path(name.filename), name, 100, float(ts))


def kept(policy: RetentionPolicy, infos: Sequence[CheckpointInfo]) -> list[int]:
    decisions = policy.decide(infos)
    assert len(decisions) == len(infos)
    return [i for i, reason in enumerate(decisions) if reason is not None]


CASES = [
    # --- LatestPeriodic: last n periodic of each run (market, seed), by timesteps
    pytest.param(LatestPeriodic(2), [ck(10), ck(30), ck(20), ck(40)], [1, 3], id="last2"),
    pytest.param(
        LatestPeriodic(1),
        [ck(10, seed=1), ck(20, seed=1), ck(30, seed=2), ck(5, seed=2)],
        [1, 2],
        id="last-per-seed",
    ),
    pytest.param(
        LatestPeriodic(1),
        [ck(10), ck(20), ck(30, "best"), ck(40, "interrupt"), ck(50, "phase_end")],
        [1],
        id="last-ignores-other-events",
    ),
    pytest.param(
        LatestPeriodic(1),
        [ck(10, market="NQ"), ck(20, market="NQ"), ck(5, market="ES")],
        [1, 2],
        id="last-per-market",
    ),
    pytest.param(LatestPeriodic(0), [ck(10), ck(20)], [], id="last0"),
    pytest.param(
        LatestPeriodic(1),
        [ck(20, val=0.1), ck(20, val=0.2)],
        [1],
        id="last-tie-larger-name",
    ),
    pytest.param(
        LatestPeriodic(1), [legacy(100), legacy(200), ck(10)], [1, 2], id="last-legacy-own-run"
    ),
    pytest.param(LatestPeriodic(3), [], [], id="last-empty"),
    # --- TopK: best k of the folder; NaN never ranks; ties -> more timesteps, then name
    pytest.param(
        TopK("sharpe_ratio", 2),
        [ck(10, sharpe=1.0), ck(20, sharpe=2.0), ck(30, sharpe=1.5), ck(40, sharpe=0.5)],
        [1, 2],
        id="top2-sharpe",
    ),
    pytest.param(
        TopK("val_reward", 1),
        [ck(10, val=0.3, sharpe=0.1), ck(20, val=0.2, sharpe=9.0)],
        [0],
        id="top1-reward",
    ),
    pytest.param(
        TopK("sharpe_ratio", 2),
        [ck(10, sharpe=NAN), ck(20, sharpe=0.1), ck(30, sharpe=NAN)],
        [1],
        id="top-nan-never-ranks",
    ),
    pytest.param(TopK("sharpe_ratio", 3), [ck(10), ck(20), legacy(30)], [], id="top-all-nan"),
    pytest.param(
        TopK("sharpe_ratio", 1),
        [ck(10, sharpe=1.0), ck(30, sharpe=1.0), ck(20, sharpe=1.0)],
        [1],
        id="top-tie-more-timesteps",
    ),
    pytest.param(
        TopK("sharpe_ratio", 1),
        [ck(10, val=-0.5, sharpe=1.0), ck(10, val=0.5, sharpe=1.0)],
        [1],
        id="top-tie-smaller-name",
    ),
    pytest.param(
        TopK("sharpe_ratio", 1),
        [ck(10, sharpe=1.0, seed=7), ck(10, sharpe=1.0, seed=3)],
        [0, 1],
        id="top-per-seed",
    ),
    pytest.param(
        TopK("sharpe_ratio", 1),
        [ck(10, sharpe=1.0, run="a"), ck(20, sharpe=5.0, run="b"), ck(30, sharpe=0.5, run="a")],
        [0, 1],
        id="top-per-run",
    ),
    pytest.param(
        TopK("sharpe_ratio", 2),
        [ck(10, sharpe=3.0), ck(10, "best", sharpe=3.0), ck(20, sharpe=2.0), ck(30, sharpe=1.0)],
        [0, 1, 2],
        id="top-twins-take-one-place",
    ),
    pytest.param(
        TopK("val_reward", 1),
        [ck(10, val=1.0, run="a"), ck(10, "best", val=1.0, run="a"), ck(10, val=1.0, run="b")],
        [0, 1, 2],
        id="top-twins-kept-together-per-run",
    ),
    pytest.param(
        TopK("sharpe_ratio", 1),
        [ck(10, sharpe=2.0), ck(15, "interrupt", sharpe=2.0)],
        [0],
        id="top-never-an-interrupt-with-its-evaluations-metrics",
    ),
    pytest.param(
        LatestPeriodic(1),
        [ck(10, run="a"), ck(20, run="a"), ck(30, run="b"), ck(40, run="b"), ck(50)],
        [1, 3, 4],
        id="latest-per-run",
    ),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(15, "interrupt", run="a"), ck(40, "phase_end", run="b")],
        [0],
        id="interrupt-kept-when-another-run-ends",
    ),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(15, "interrupt", run="a"), ck(40, "phase_end", run="a")],
        [],
        id="interrupt-released-when-its-run-ends",
    ),
    pytest.param(
        KeepEveryNTimesteps(100),
        [ck(10, run="a"), ck(20, run="b"), ck(30, run="a")],
        [0, 1],
        id="every-n-per-run",
    ),
    pytest.param(
        TopK("sharpe_ratio", 5),
        [ck(10, sharpe=-1.0), ck(20, "best", sharpe=0.5)],
        [0, 1],
        id="top-k-above-count-any-event",
    ),
    pytest.param(
        TopK("sharpe_ratio", 1),
        [ck(10, sharpe=-math.inf), ck(20, sharpe=-3.0)],
        [1],
        id="top-minus-inf-ranks-last",
    ),
    pytest.param(TopK("val_reward", 0), [ck(10, val=1.0)], [], id="top0"),
    # --- PreserveEvents
    pytest.param(
        PreserveEvents(("phase_end",)),
        [ck(10), ck(20, "phase_end"), ck(30, "best"), ck(40, "phase_boundary_warmup")],
        [1],
        id="events-phase-end",
    ),
    pytest.param(
        PreserveEvents(("phase_boundary",)),
        [ck(10, "phase_boundary_warmup"), ck(20, "phase_boundary_regime_2"), ck(30, "phase_end")],
        [0, 1],
        id="events-boundary-kind",
    ),
    pytest.param(
        PreserveEvents(("phase_boundary_warmup",)),
        [ck(10, "phase_boundary_warmup"), ck(20, "phase_boundary_regime_2")],
        [0],
        id="events-exact-boundary",
    ),
    pytest.param(PreserveEvents(("periodic",)), [legacy(10), ck(20)], [1], id="events-no-legacy"),
    # --- KeepInterruptsUntilPhaseEnd: "later run" = same market+seed, ts >= and mtime >=
    pytest.param(KeepInterruptsUntilPhaseEnd(), [ck(10), ck(50, "interrupt")], [1], id="int-alone"),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(50, "interrupt"), ck(100, "phase_end")],
        [],
        id="int-resolved",
    ),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(50, "interrupt", mtime=5.0), ck(50, "phase_end", mtime=5.0)],
        [],
        id="int-resolved-equal",
    ),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(50, "interrupt", seed=1), ck(100, "phase_end", seed=2)],
        [0],
        id="int-other-seed",
    ),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(50, "interrupt", market="NQ"), ck(100, "phase_end", market="ES")],
        [0],
        id="int-other-market",
    ),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(500, "interrupt", mtime=10.0), ck(100, "phase_end", mtime=20.0)],
        [0],
        id="int-phase-end-fewer-steps",
    ),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(100, "interrupt", mtime=20.0), ck(2000, "phase_end", mtime=10.0)],
        [0],
        id="int-older-finished-run",
    ),
    pytest.param(
        KeepInterruptsUntilPhaseEnd(),
        [ck(50, "interrupt"), ck(60, "interrupt"), ck(55, "phase_end"), ck(70, "periodic")],
        [1],
        id="int-each-on-its-own",
    ),
    # --- KeepEveryNTimesteps: the first checkpoint of each window of each run
    pytest.param(
        KeepEveryNTimesteps(100),
        [ck(20), ck(90), ck(100), ck(150), ck(330), ck(50, "best")],
        [0, 2, 4],
        id="every-n",
    ),
    pytest.param(
        KeepEveryNTimesteps(100),
        [ck(50, seed=1), ck(60, seed=2), ck(70, seed=2)],
        [0, 1],
        id="every-n-per-seed",
    ),
]


@pytest.mark.parametrize(("policy", "infos", "expected"), CASES)
def test_policy_keeps(
    policy: RetentionPolicy, infos: list[CheckpointInfo], expected: list[int]
) -> None:
    assert kept(policy, infos) == expected


@pytest.mark.parametrize(("policy", "infos", "expected"), CASES)
def test_policy_ignores_input_order(
    policy: RetentionPolicy, infos: list[CheckpointInfo], expected: list[int]
) -> None:
    shuffled = list(reversed(infos))
    assert sorted(infos.index(shuffled[i]) for i in kept(policy, shuffled)) == expected


@pytest.mark.parametrize(("policy", "infos", "expected"), CASES)
def test_policy_is_idempotent(
    policy: RetentionPolicy, infos: list[CheckpointInfo], expected: list[int]
) -> None:
    """Applied to what it kept, a policy keeps all of it: two prunes give the result of one."""
    survivors = [infos[i] for i in expected]
    assert kept(policy, survivors) == list(range(len(survivors)))


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        (LatestPeriodic(8), "last_8_periodic"),
        (TopK("sharpe_ratio", 3), "top_3_sharpe_ratio"),
        (TopK("val_reward", 2), "top_2_val_reward"),
        (KeepEveryNTimesteps(1000), "every_1000_timesteps"),
    ],
)
def test_reasons_name_the_rule(policy: RetentionPolicy, reason: str) -> None:
    assert policy.decide([ck(10, val=0.1, sharpe=1.0)]) == [reason]


def test_event_and_interrupt_reasons() -> None:
    infos = [ck(10, "phase_boundary_warmup"), ck(20, "interrupt")]
    assert PreserveEvents(("phase_boundary",)).decide(infos) == [
        "event:phase_boundary_warmup",
        None,
    ]
    assert KeepInterruptsUntilPhaseEnd().decide(infos) == [None, "interrupt_unresolved"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LatestPeriodic(-1), "LatestPeriodic.n must be an integer >= 0, got -1"),
        (lambda: TopK("win_rate", 1), "got 'win_rate'"),  # type: ignore[arg-type]
        (lambda: TopK("sharpe_ratio", True), "TopK.k must be an integer >= 0, got True"),
        (lambda: PreserveEvents(("finished",)), "'finished'"),
        (lambda: PreserveEvents("phase_end"), "got 'phase_end'"),  # type: ignore[arg-type]
        (lambda: KeepEveryNTimesteps(0), "KeepEveryNTimesteps.n must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()  # type: ignore[operator]


# --------------------------------------------------------------------------- union


def test_union_keeps_what_any_rule_keeps_with_all_reasons() -> None:
    infos = [ck(10, val=0.9, sharpe=0.1), ck(20, val=0.1, sharpe=0.1), ck(30, val=0.2, sharpe=5)]
    union = AnyPolicy((LatestPeriodic(1), TopK("val_reward", 1), TopK("sharpe_ratio", 1)))
    assert union.explain(infos) == [
        ("top_1_val_reward",),
        (),
        ("last_1_periodic", "top_1_sharpe_ratio"),
    ]
    assert union.decide(infos) == ["top_1_val_reward", None, "last_1_periodic+top_1_sharpe_ratio"]


def test_unions_nest() -> None:
    inner = AnyPolicy((PreserveEvents(("best",)),))
    outer = AnyPolicy((inner, LatestPeriodic(1)))
    assert outer.explain([ck(10, "best"), ck(20), ck(5)]) == [
        ("event:best",),
        ("last_1_periodic",),
        (),
    ]


def test_union_refuses_a_policy_with_the_wrong_number_of_decisions() -> None:
    @dataclasses.dataclass(frozen=True)
    class Broken:
        def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
            return ["x"]

    with pytest.raises(ValueError, match="returned 1 decisions for 2 checkpoints"):
        AnyPolicy((Broken(),)).explain([ck(1), ck(2)])


def test_union_refuses_something_that_is_not_a_policy() -> None:
    with pytest.raises(TypeError, match="needs a decide"):
        AnyPolicy((LatestPeriodic(1), "keep everything"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- build_policy


def test_default_policy_is_the_union_of_the_configured_rules() -> None:
    policy = build_policy(RetentionConfig())
    assert policy.policies == (
        LatestPeriodic(8),
        TopK("sharpe_ratio", 3),
        TopK("val_reward", 2),
        PreserveEvents(("phase_end", "phase_boundary")),
        KeepInterruptsUntilPhaseEnd(),
    )


def test_without_interrupt_in_preserve_events_interrupts_are_not_kept() -> None:
    retention = RetentionConfig(preserve_events=("phase_end",))
    infos = [ck(10, "interrupt"), ck(20, "phase_boundary_x"), ck(30, "phase_end")]
    assert kept(build_policy(retention), infos) == [2]


def test_a_user_policy_from_code_joins_the_union() -> None:
    @dataclasses.dataclass(frozen=True)
    class KeepSeed:
        seed: int

        def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
            return [
                f"seed_{self.seed}" if getattr(i.name, "seed", None) == self.seed else None
                for i in infos
            ]

    retention = RetentionConfig(keep_last_n=1, keep_top_k_by_sharpe=0, keep_top_k_by_reward=0)
    infos = [ck(10, seed=7), ck(20, seed=7), ck(10, seed=1), ck(20, seed=1)]
    policy = build_policy(retention, extra=[KeepSeed(7)])
    assert policy.explain(infos) == [
        ("seed_7",),
        ("last_1_periodic", "seed_7"),
        (),
        ("last_1_periodic",),
    ]


def test_rules_from_config_join_the_union() -> None:
    rules = parse_rules([{"keep_events": ["best"]}, {"keep_every_n_timesteps": 100}])
    assert rules == (PreserveEvents(("best",)), KeepEveryNTimesteps(100))
    retention = RetentionConfig(keep_last_n=1, keep_top_k_by_sharpe=0, keep_top_k_by_reward=0)
    infos = [ck(10), ck(20, "best"), ck(110), ck(120), ck(130)]
    assert kept(build_policy(retention, extra=rules), infos) == [0, 1, 2, 4]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("keep_events", "checkpointing.retention.rules must be a list, got 'keep_events'"),
        ([{"keep_evnts": ["best"]}], "rules[0].keep_evnts (did you mean 'keep_events'?)"),
        ([{}], "rules[0] must be a mapping with exactly one rule name"),
        ([{"keep_events": ["best"], "keep_every_n_timesteps": 5}], "exactly one rule name"),
        ([{"keep_events": []}], "rules[0].keep_events must be a non-empty list"),
        ([{"keep_events": ["best", "finished"]}], "rules[0].keep_events[1] must be one of"),
        ([{"keep_every_n_timesteps": 0}], "keep_every_n_timesteps must be an integer >= 1, got 0"),
        ([{"keep_every_n_timesteps": "1e5"}], "got '1e5'"),
    ],
)
def test_bad_rules_in_config_name_the_culprit(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_rules(raw)
    assert message in str(excinfo.value)


def test_no_rules() -> None:
    assert parse_rules(None) == ()
    assert parse_rules([]) == ()
