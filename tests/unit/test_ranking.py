"""The one ranking rule: table-driven cases over made-up candidates (no files)."""

from __future__ import annotations

import math

import pytest

from checkpointing.naming import CheckpointName
from checkpointing.ranking import METRICS, Candidate, check_metric, rank

NAN = math.nan


def c(
    label: str,
    value: float,
    ts: int = 1000,
    event: str = "periodic",
    *,
    seed: int = 42,
    run: str | None = "r1",
) -> Candidate[str]:
    """A made-up candidate whose item is ``label``; its name and model key are real ones."""
    name = CheckpointName("NQ", ts, event, 0.0, 0.0, seed, run)
    return (value, ts, name.filename, name.model, label)


CASES = [
    pytest.param(
        [c("a", 0.1, 1000), c("b", 0.3, 2000), c("c", 0.2, 3000)],
        None,
        [("b",), ("c",), ("a",)],
        id="higher-first",
    ),
    pytest.param(
        [c("deep", -0.30, 1000), c("shallow", -0.05, 2000), c("mid", -0.10, 3000)],
        None,
        [("shallow",), ("mid",), ("deep",)],
        id="negative-values-higher-first-max-drawdown",
    ),
    pytest.param(
        [c("nan", NAN, 3000), c("a", -1.0, 1000), c("nan2", NAN, 2000)],
        None,
        [("a",)],
        id="nan-never-ranks",
    ),
    pytest.param([c("nan", NAN)], None, [], id="only-nan"),
    pytest.param(
        [c("int", 9.0, 3000, "interrupt"), c("a", 0.5, 1000)],
        None,
        [("a",)],
        id="interrupt-never-ranks",
    ),
    pytest.param(
        [c("fewer", 1.0, 1000), c("more", 1.0, 5000), c("mid", 1.0, 3000)],
        None,
        [("more",), ("mid",), ("fewer",)],
        id="tie-more-timesteps-first",
    ),
    pytest.param(
        [c("seed7", 1.0, 1000, seed=7), c("seed3", 1.0, 1000, seed=3)],
        None,
        [("seed3",), ("seed7",)],
        id="tie-same-timesteps-smaller-name-first",
    ),
    pytest.param(
        [c("periodic", 1.0, 1000), c("best", 1.0, 1000, "best")],
        None,
        [("best", "periodic")],
        id="twins-one-model-items-in-name-order",
    ),
    pytest.param(
        [
            c("a-periodic", 3.0, 1000),
            c("b", 2.0, 2000),
            c("a-best", 3.0, 1000, "best"),
            c("c", 1.0, 3000),
        ],
        2,
        [("a-best", "a-periodic"), ("b",)],
        id="twins-count-once-against-k",
    ),
    pytest.param(
        [c("a-best", 0.9, 1000, "best"), c("b", 0.5, 2000), c("a-periodic", 0.1, 1000)],
        1,
        [("a-best", "a-periodic")],
        id="twin-of-kept-model-joins-after-kth",
    ),
    pytest.param(
        [c("r1", 1.0, 1000, run="r1"), c("r2", 1.0, 1000, run="r2"), c("legacy", 1.0, run=None)],
        None,
        [("legacy",), ("r1",), ("r2",)],  # "...seed-42.zip" < "...seed-42_run-r1.zip"
        id="same-step-other-runs-are-other-models",
    ),
    pytest.param(
        [c("a", 0.1, 1000), c("b", 0.3, 2000), c("c", 0.2, 3000)],
        2,
        [("b",), ("c",)],
        id="k-cuts",
    ),
    pytest.param([c("a", 0.1)], 0, [], id="k0"),
    pytest.param([], None, [], id="empty"),
    pytest.param([], 3, [], id="empty-with-k"),
]


@pytest.mark.parametrize(("candidates", "k", "expected"), CASES)
def test_rank(
    candidates: list[Candidate[str]], k: int | None, expected: list[tuple[str, ...]]
) -> None:
    assert [r.items for r in rank(candidates, k)] == expected


def test_ranked_carries_the_models_value_steps_names_and_first_item() -> None:
    best = c("a-best", 2.5, 7000, "best")
    periodic = c("a-periodic", 2.5, 7000)
    (top,) = rank([periodic, best], k=1)
    assert (top.value, top.timesteps) == (2.5, 7000)
    assert top.names == (best[2], periodic[2])
    assert top.item == "a-best"


def test_rank_accepts_any_iterable_once() -> None:
    ranked = rank(cand for cand in [c("a", 0.1, 1000), c("b", 0.2, 2000)])
    assert [r.item for r in ranked] == ["b", "a"]


@pytest.mark.parametrize("metric", METRICS)
def test_check_metric_accepts_every_metric(metric: str) -> None:
    assert check_metric(metric) == metric


@pytest.mark.parametrize("metric", ["sharpe", "", "SHARPE_RATIO", None, 1])
def test_check_metric_refuses_others_naming_them(metric: object) -> None:
    with pytest.raises(ValueError, match="retention metric must be one of") as err:
        check_metric(metric, "retention metric")
    assert repr(metric) in str(err.value)
