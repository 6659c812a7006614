"""The search file: what it accepts, what it refuses (naming file and key), and the Tune objects
it builds (sampled, suggested by Optuna, perturbed by PBT) staying inside the space."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tuner.search
from checkpointing.errors import ConfigError
from tuner.search import (
    AshaSettings,
    Dist,
    PbtSettings,
    SearchSpec,
    decode,
    flatten,
    load_search,
    unflatten,
)
from tuner.training.settings import TrainingConfig, load_training_config

ROOT = Path(__file__).resolve().parents[2]
TRAINING = load_training_config(ROOT / "config/training.yaml")  # n_envs 8, n_steps 256


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    return path


def shipped() -> SearchSpec:
    return load_search(ROOT / "config/search.yaml", TRAINING)


def phase1(body: str, tail: str = "") -> str:
    """A search file whose phase-1 PPO section is ``body`` (one ``key: value`` per line)."""
    lines = "".join(f"      {line}\n" for line in body.splitlines())
    return f"search:\n  phase1:\n    ppo:\n{lines}{tail}"


def rllib1(body: str, tail: str = "") -> str:
    """A search file whose phase-1 RLlib section is ``body`` (one ``key: value`` per line)."""
    lines = "".join(f"      {line}\n" for line in body.splitlines())
    return f"search:\n  phase1:\n    rllib:\n{lines}{tail}"


LR = "learning_rate: {loguniform: [1.0e-5, 1.0e-3]}"
PBT = "pbt:\n  perturbation_interval: 1000\n"


def within(dist: Dist, value: Any) -> bool:
    """``value`` is one ``dist`` can produce (clipping leaves it, up to float noise)."""
    clipped = dist.clip(value)
    if dist.kind in ("int", "qint") and not float(value).is_integer():
        return False
    if isinstance(value, float):
        return math.isclose(clipped, value, rel_tol=1e-9)
    return bool(clipped == value)


# ---- the shipped file -----------------------------------------------------------------------


def test_shipped_file_loads_against_shipped_training_config() -> None:
    spec = shipped()
    assert spec.path == ROOT / "config/search.yaml"
    assert spec.space["phase1.ppo.learning_rate"] == Dist("loguniform", (1.0e-4, 1.0e-3))
    assert spec.space["phase1.ppo.net_arch"] == Dist("choice", ((64, 64), (128, 128)))
    assert spec.space["phase1.ppo.n_steps"].values() == (128, 256)
    assert {k.split(".")[0] for k in spec.space} == {"phase1", "phase2", "phase3", "env"}
    assert spec.asha == AshaSettings(grace_period=6000, reduction_factor=3.0)
    assert spec.space["phase1.rllib.lr"] == Dist("loguniform", (1.0e-4, 1.0e-3))
    assert spec.space["phase1.rllib.lambda"] == Dist("uniform", (0.9, 0.98))
    assert spec.for_trainer("sb3").require_pbt().mutate == (
        "phase1.ppo.learning_rate",
        "phase1.ppo.ent_coef",
        "phase1.ppo.clip_range",
    )
    assert spec.for_trainer("rllib").require_pbt().mutate == (
        "phase1.rllib.lr",
        "phase1.rllib.entropy_coeff",
        "phase1.rllib.clip_param",
    )
    assert not spec.is_empty


def test_param_space_is_nested_like_training_yaml() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    space = shipped().param_space()
    assert set(space) == {"phase1", "phase2", "phase3", "env"}
    assert set(space["phase2"]) == {"ppo", "rllib"}
    assert set(space["phase3"]["ppo"]) == {"learning_rate"}
    assert set(space["phase3"]["rllib"]) == {"lr"}
    ppo = space["phase1"]["ppo"]
    assert isinstance(ppo["learning_rate"], Float) and isinstance(ppo["n_epochs"], Integer)
    assert ppo["net_arch"].categories == ["64x64", "128x128"]
    assert isinstance(space["env"]["stop_atr_multiple"], Categorical)


def test_fixed_values_are_plain_values_in_the_param_space(tmp_path: Path) -> None:
    path = write(tmp_path, phase1(f"{LR}\nn_epochs: 5\nnet_arch: [32, 32]"))
    spec = load_search(path, TRAINING)
    ppo = spec.param_space()["phase1"]["ppo"]
    assert (ppo["n_epochs"], ppo["net_arch"]) == (5, "32x32")
    assert spec.searched == ("phase1.ppo.learning_rate",)
    assert decode(spec.param_space())["phase1"]["ppo"]["net_arch"] == [32, 32]


def test_seeded_samples_stay_in_their_ranges_and_reach_both_ends_of_int_ranges() -> None:
    spec = shipped()
    for key, dist in spec.space.items():
        samples = dist.to_tune().sample(random_state=7, size=300)
        bad = [v for v in samples if not within(dist, v)]
        assert bad == [], (key, dist, bad[:3])
        if dist.kind == "int":
            assert {dist.args[0], dist.args[1]} <= set(samples), key  # both ends included
    arch = spec.space["phase1.ppo.net_arch"].to_tune().sample(random_state=7, size=50)
    assert set(arch) == {"64x64", "128x128"}


def test_each_kind_samples_inside_its_declared_range() -> None:
    dists = [
        Dist("uniform", (0.5, 0.75)),
        Dist("loguniform", (1e-4, 1e-2)),
        Dist("int", (2, 5)),
        Dist("qint", (64, 256, 64)),
        Dist("qint", (2, 6, 1)),
        Dist("quniform", (0.1, 0.3, 0.05)),
        Dist("qloguniform", (1e-4, 1e-2, 1e-4)),
        Dist("choice", (3, 5, 8)),
    ]
    for dist in dists:
        raw = dist.to_tune().sample(random_state=11, size=400)
        assert all(within(dist, v) for v in raw), dist
        samples = [decode({"v": v})["v"] for v in raw]  # without float noise: 0.3, not 0.3...04
        low, high = (min(dist.args), max(dist.args)) if dist.kind == "choice" else dist.args[:2]
        assert min(samples) >= low and max(samples) <= high
        if dist.kind in ("int", "qint"):
            assert max(samples) == high and min(samples) == low, dist  # inclusive


def test_optuna_suggests_configurations_inside_the_space() -> None:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    spec = shipped()
    searcher = OptunaSearch(
        space=spec.param_space(),
        metric="m",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=1),
    )
    archs = set()
    for i in range(12):
        config = searcher.suggest(f"t{i}")
        assert config is not None and set(config) == {"phase1", "phase2", "phase3", "env"}
        assert set(flatten(config)) == set(spec.space)
        assert all(within(spec.space[k], v) for k, v in flatten(config).items()), config
        overlay = decode(config)
        archs.add(tuple(overlay["phase1"]["ppo"]["net_arch"]))
        assert overlay["phase1"]["ppo"]["n_steps"] in (128, 256)
    assert archs <= {(64, 64), (128, 128)} and archs


# ---- clipping, PBT ---------------------------------------------------------------------------

CLIPS = [
    (Dist("uniform", (0.95, 0.995)), 1.19, 0.995),
    (Dist("uniform", (0.95, 0.995)), 0.97, 0.97),
    (Dist("loguniform", (1e-5, 1e-3)), 0.0, 1e-5),
    (Dist("int", (3, 10)), 4.6, 5),
    (Dist("int", (3, 10)), 12.0, 10),
    (Dist("qint", (64, 256, 64)), 100, 128),
    (Dist("qint", (64, 256, 64)), 10, 64),
    (Dist("quniform", (0.1, 0.3, 0.05)), 0.17, 0.15),
    (Dist("quniform", (0.1, 0.3, 0.05)), 0.36, 0.3),
    (Dist("qloguniform", (1e-4, 1e-2, 1e-4)), 0.00123, 0.0012),
    (Dist("choice", (128, 256)), 200, 256),
    (Dist("choice", (2.0, 3.0, 4.0, 6.0)), 5.2, 6.0),
    (Dist("choice", ((64, 64), (128, 128))), "128x128", "128x128"),
    (Dist("choice", ((64, 64), (128, 128))), [64, 64], "64x64"),
    (Dist("fixed", (5,)), 7, 5),
]


@pytest.mark.parametrize(("dist", "value", "expected"), CLIPS, ids=[str(c) for c in CLIPS])
def test_clip_returns_the_nearest_value_the_distribution_produces(
    dist: Dist, value: Any, expected: Any
) -> None:
    clipped = dist.clip(value)
    assert clipped == expected and type(clipped) is type(expected)


def test_clip_refuses_what_has_no_nearest_value() -> None:
    with pytest.raises(ValueError, match="not a number"):
        Dist("uniform", (0.0, 1.0)).clip("high")
    with pytest.raises(ValueError, match="none of"):
        Dist("choice", ((64, 64), (128, 128))).clip("32x32")


@pytest.mark.parametrize(
    ("kind", "args", "message"),
    [
        ("normal", (0.0, 1.0), "unknown distribution 'normal'"),
        ("fixed", (1, 2), "a fixed value is one value, got [1, 2]"),
        ("int", (1, 5, 1), "int takes [low, high] (numbers), got [1, 5, 1]"),
    ],
)
def test_a_dist_checks_itself(kind: str, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Dist(kind, args)
    assert str(info.value).startswith(message)


def test_values_are_given_for_choices_and_fixed_values_only() -> None:
    assert Dist("choice", (1, 2)).values() == (1, 2)
    assert Dist("fixed", (0.5,)).values() == (0.5,)
    assert Dist("int", (1, 2)).values() is None


def test_explore_clips_every_searched_value_and_leaves_the_rest() -> None:
    spec = shipped()
    config = {
        "phase1": {
            "ppo": {
                "gamma": 1.19,
                "learning_rate": 1e-6,
                "n_epochs": 13,
                "clip_range": 0.17,
                "net_arch": "128x128",
                "vf_coef": 7.0,  # not in the space: left as it is
            }
        },
        "env": {"stop_atr_multiple": 5.2},
    }
    explored = spec.explore(config)
    assert explored == {
        "phase1": {
            "ppo": {
                "gamma": 0.995,
                "learning_rate": 1e-4,
                "n_epochs": 10,
                "clip_range": 0.15,
                "net_arch": "128x128",
                "vf_coef": 7.0,
            }
        },
        "env": {"stop_atr_multiple": 6.0},
    }
    assert config["phase1"]["ppo"]["gamma"] == 1.19  # a copy


def test_pbt_perturbations_stay_in_the_space(tmp_path: Path) -> None:
    import numpy as np
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pbt import _explore

    path = write(
        tmp_path,
        phase1(
            "gamma: {uniform: [0.95, 0.999]}\nlearning_rate: {loguniform: [1.0e-5, 1.0e-3]}",
            "  env:\n    stop_atr_multiple: {choice: [2.0, 3.0, 4.0]}\n"
            "    episode_length: {qint: [512, 2048, 512]}\n"
            f"{PBT}  mutate: [phase1.ppo.gamma, env.stop_atr_multiple, env.episode_length]\n",
        ),
    )
    spec = load_search(path, TRAINING)
    mutations = spec.pbt_mutations()
    assert mutations["env"]["stop_atr_multiple"] == [2.0, 3.0, 4.0]  # shifted, not multiplied
    assert set(mutations) == {"phase1", "env"} and set(mutations["phase1"]["ppo"]) == {"gamma"}
    pbt = spec.require_pbt()
    PopulationBasedTraining(
        time_attr="timesteps",
        perturbation_interval=pbt.perturbation_interval,
        hyperparam_mutations=mutations,
        quantile_fraction=pbt.quantile,
        resample_probability=pbt.resample_probability,
        perturbation_factors=pbt.perturbation_factors,
        custom_explore_fn=spec.explore,
    )
    random.seed(3)  # PBT's choices of factor and resampling
    np.random.seed(3)  # its resampling of a domain
    config: dict[str, Any] = {
        "phase1": {"ppo": {"gamma": 0.999, "learning_rate": 1e-3}},
        "env": {"stop_atr_multiple": 4.0, "episode_length": 2048},
    }
    for _ in range(40):
        config, _ops = _explore(config, mutations, 0.25, (1.2, 0.8), spec.explore)
        assert all(within(spec.space[k], v) for k, v in flatten(config).items()), config


# ---- phases, descriptions, the nesting helpers -------------------------------------------------


def test_for_phases_keeps_the_trained_phases_and_env(tmp_path: Path) -> None:
    spec = shipped()
    one = spec.for_phases([1])
    assert {k.split(".")[0] for k in one.space} == {"phase1", "env"}
    assert one.require_pbt().mutate == spec.require_pbt().mutate
    later = spec.for_phases([2, 3])
    assert {k.split(".")[0] for k in later.space} == {"phase2", "phase3", "env"}
    with pytest.raises(ConfigError, match=r"search\.yaml: pbt\.mutate names no key"):
        later.require_pbt()
    with pytest.raises(ConfigError, match="phases must be among"):
        spec.for_phases([4])

    only2 = load_search(
        write(tmp_path, "search:\n  phase2:\n    ppo:\n      ent_coef: {uniform: [0, 0.1]}\n"),
        TRAINING,
    )
    assert not only2.is_empty and only2.for_phases([1]).is_empty
    with pytest.raises(ConfigError) as info:
        only2.require_pbt()
    assert str(info.value).startswith(f"{tmp_path / 'search.yaml'}: --scheduler pbt needs")


def test_for_trainer_keeps_that_trainers_keys_and_env(tmp_path: Path) -> None:
    spec = shipped().for_phases([1, 2])
    rllib = spec.for_trainer("rllib")
    assert rllib.trainer == "rllib"
    assert {k.split(".")[1] for k in rllib.space if k.startswith("phase")} == {"rllib"}
    assert {k for k in rllib.space if k.startswith("env.")} == {
        k for k in spec.space if k.startswith("env.")
    }
    assert "phase1.rllib.minibatch_size" in rllib.space and "phase2.rllib.lr" in rllib.space
    assert set(rllib.param_space()["phase1"]) == {"rllib"}
    sb3 = spec.for_trainer("sb3")
    assert {k.split(".")[1] for k in sb3.space if k.startswith("phase")} == {"ppo"}
    assert len(sb3.space) + len(rllib.space) - len(spec.space) == len(
        [k for k in spec.space if k.startswith("env.")]
    )
    with pytest.raises(ConfigError, match="trainer must be one of"):
        spec.for_trainer("jax")


@pytest.mark.parametrize(
    ("section", "trainer", "missing"), [("ppo", "rllib", "rllib"), ("rllib", "sb3", "ppo")]
)
def test_a_run_whose_trainer_has_no_block_is_refused(
    tmp_path: Path, section: str, trainer: str, missing: str
) -> None:
    path = write(
        tmp_path, f"search:\n  phase1:\n    {section}:\n      gamma: {{uniform: [0.9, 0.99]}}\n"
    )
    spec = load_search(path, TRAINING).for_phases([1])
    with pytest.raises(ConfigError) as info:
        spec.for_trainer(trainer)
    assert str(info.value) == (
        f"{path}: --trainer {trainer} searches training.yaml's {missing}: keys, but the space "
        f"has none for the phases trained, only {section}: keys (such as phase1.{section}.gamma); "
        f"add a '{missing}:' block beside them (e.g. search.phase1.{missing}."
        f"{'lr' if missing == 'rllib' else 'learning_rate'}), or train with --trainer "
        f"{'sb3' if section == 'ppo' else 'rllib'}"
    )
    assert spec.for_trainer("sb3" if section == "ppo" else "rllib").searched == (
        f"phase1.{section}.gamma",
    )


def test_an_env_only_space_searches_either_trainer(tmp_path: Path) -> None:
    path = write(tmp_path, "search:\n  env:\n    reward_clip: {uniform: [1, 5]}\n")
    spec = load_search(path, TRAINING)
    assert (
        spec.for_trainer("rllib").searched
        == spec.for_trainer("sb3").searched
        == ("env.reward_clip",)
    )


def test_pbt_keeps_the_mutated_keys_of_the_runs_trainer(tmp_path: Path) -> None:
    text = (
        "search:\n  phase1:\n    ppo:\n      learning_rate: {loguniform: [1.0e-5, 1.0e-3]}\n"
        "    rllib:\n      lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
        "      minibatch_size: {choice: [64, 128]}\n"
        f"{PBT}  mutate: [phase1.ppo.learning_rate, phase1.rllib.minibatch_size]\n"
    )
    spec = load_search(write(tmp_path, text), TRAINING)
    assert spec.for_trainer("rllib").require_pbt().mutate == ("phase1.rllib.minibatch_size",)
    assert spec.for_trainer("sb3").require_pbt().mutate == ("phase1.ppo.learning_rate",)
    only_ppo = load_search(
        write(tmp_path, text.replace(", phase1.rllib.minibatch_size", "")), TRAINING
    )
    with pytest.raises(
        ConfigError,
        match=r"pbt\.mutate names no key of the phases trained with "
        r"--trainer rllib",
    ):
        only_ppo.for_trainer("rllib").require_pbt()


def test_sampled_rllib_configurations_are_ones_training_yaml_takes() -> None:
    spec = shipped().for_phases([1]).for_trainer("rllib")
    for seed in range(5):
        flat = {k: d.to_tune().sample(random_state=seed) for k, d in spec.space.items()}
        overlay = decode(unflatten(flat))
        rllib = load_training_config(ROOT / "config/training.yaml", overlay).phase1.rllib
        assert rllib.lambda_ == overlay["phase1"]["rllib"]["lambda"]
        assert list(rllib.net_arch or ()) == overlay["phase1"]["rllib"]["net_arch"]
        assert rllib.lr == overlay["phase1"]["rllib"]["lr"]


def test_describe_shows_the_searched_values_flat_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path, phase1(f"net_arch: {{choice: [[64, 64], [128, 128]]}}\n{LR}\nn_epochs: 5")
    )
    spec = load_search(path, TRAINING)
    overlay = {"phase1": {"ppo": {"learning_rate": 3e-4, "n_epochs": 5, "net_arch": [128, 128]}}}
    assert spec.describe(overlay) == {
        "phase1.ppo.net_arch": "128x128",
        "phase1.ppo.learning_rate": 3e-4,
    }
    assert list(spec.describe(overlay)) == ["phase1.ppo.net_arch", "phase1.ppo.learning_rate"]


def test_flatten_and_unflatten_round_trip() -> None:
    nested = {"phase1": {"ppo": {"gamma": 0.9, "net_arch": [8, 8]}}, "env": {"reward_clip": 5}}
    flat = flatten(nested)
    assert flat == {"phase1.ppo.gamma": 0.9, "phase1.ppo.net_arch": [8, 8], "env.reward_clip": 5}
    assert unflatten(flat) == nested
    with pytest.raises(ValueError, match="is a value"):
        unflatten({"a.b": 1, "a.b.c": 2})
    with pytest.raises(ValueError, match="both a value and a mapping"):
        unflatten({"a.b.c": 2, "a.b": 1})


def test_decode_gives_training_yaml_values() -> None:
    import numpy as np

    config = {
        "phase1": {"ppo": {"net_arch": "256x128x64", "gamma": 0.1 + 0.2, "n_epochs": np.int64(4)}}
    }
    decoded = decode(config)
    assert decoded == {"phase1": {"ppo": {"net_arch": [256, 128, 64], "gamma": 0.3, "n_epochs": 4}}}
    assert type(decoded["phase1"]["ppo"]["n_epochs"]) is int
    assert decode({"phase1": {"ppo": {"net_arch": [64]}}}) == {
        "phase1": {"ppo": {"net_arch": [64]}}
    }
    with pytest.raises(ConfigError, match=r"phase1\.ppo\.net_arch must be layer widths"):
        decode({"phase1": {"ppo": {"net_arch": "64x"}}})


def test_defaults_without_asha_and_pbt_sections(tmp_path: Path) -> None:
    spec = load_search(write(tmp_path, phase1("n_epochs: {int: [3.0, 10]}")), TRAINING)
    assert spec.asha == AshaSettings(grace_period=25_000, reduction_factor=3.0)
    assert spec.pbt is None
    assert spec.space["phase1.ppo.n_epochs"] == Dist("int", (3, 10))
    defaults = load_search(
        write(tmp_path, phase1(LR, f"{PBT}  mutate: [phase1.ppo.learning_rate]\n")), TRAINING
    )
    assert defaults.pbt == PbtSettings(1000, ("phase1.ppo.learning_rate",), 0.25, 0.25, (1.2, 0.8))


def test_minibatch_check_uses_the_training_configs_n_envs(tmp_path: Path) -> None:
    path = write(tmp_path, phase1("batch_size: {choice: [256, 384]}"))
    with pytest.raises(ConfigError) as info:
        load_search(path, TRAINING)
    assert str(info.value) == (
        f"{path}: search.phase1.ppo.batch_size: batch_size 384 does not divide n_steps x n_envs "
        "(256 x 8 = 2048); every combination the space can produce must (training.yaml's value "
        "stands for a key not searched)"
    )
    three_envs = TrainingConfig(n_envs=3)  # 256 x 3 = 768 = 2 x 384
    assert load_search(path, three_envs).space["phase1.ppo.batch_size"].values() == (256, 384)


# ---- refusals ---------------------------------------------------------------------------------

BAD = [
    # (file text, the message after "<path>: ")
    ("", "the file is empty; expected a 'search:' section"),
    ("- phase1\n- env\n", "<top level> must be a mapping"),
    ("asha:\n  grace_period: 10\n", "no 'search:' section"),
    ("serch: {}\n", "unknown key <top level>.serch (did you mean 'search'?)"),
    (
        phase1("learning_rat: {uniform: [0.1, 0.2]}"),
        "unknown key search.phase1.ppo.learning_rat (did you mean 'learning_rate'?)",
    ),
    ("search:\n  phase4: {}\n", "unknown key search.phase4 (did you mean 'phase3'?)"),
    (
        phase1("learning_rate: {logunifrom: [1.0e-5, 1.0e-3]}"),
        "search.phase1.ppo.learning_rate: unknown distribution 'logunifrom' "
        "(did you mean 'loguniform'?)",
    ),
    (
        phase1("gamma: {fixed: 0.9}"),
        "search.phase1.ppo.gamma: unknown distribution 'fixed'; one of uniform, loguniform, int, "
        "qint, quniform, qloguniform, choice, or a plain value",
    ),
    (phase1("gamma: {uniform: [0.9]}"), "search.phase1.ppo.gamma: uniform takes [low, high]"),
    (phase1("gamma: {uniform: [0.9, 0.95, 0.99]}"), "search.phase1.ppo.gamma: uniform takes"),
    (phase1("gamma: {uniform: 0.9}"), "search.phase1.ppo.gamma: uniform takes a list"),
    (
        phase1("gamma: {uniform: [0.9, 0.99], choice: [0.9]}"),
        "search.phase1.ppo.gamma: a distribution is one mapping",
    ),
    (
        phase1("gamma: {uniform: [0.99, 0.9]}"),
        "search.phase1.ppo.gamma: the range is empty: low must be < high, got [0.99, 0.9]",
    ),
    (
        phase1("learning_rate: {loguniform: [0, 0.001]}"),
        "search.phase1.ppo.learning_rate: a log range must be > 0, got [0, 0.001]",
    ),
    (
        phase1("clip_range: {quniform: [0.1, 0.3, 0]}"),
        "search.phase1.ppo.clip_range: q must be > 0, got [0.1, 0.3, 0]",
    ),
    (
        phase1("clip_range: {quniform: [0.1, 0.3, 0.5]}"),
        "search.phase1.ppo.clip_range: q must be <= high - low (0.2), got [0.1, 0.3, 0.5]",
    ),
    (
        phase1("clip_range: {quniform: [0.1, 0.33, 0.05]}"),
        "search.phase1.ppo.clip_range: low and high must be multiples of q",
    ),
    (phase1("n_epochs: {int: [3.5, 10]}"), "search.phase1.ppo.n_epochs: int takes integers"),
    (
        phase1("n_epochs: {uniform: [3, 10]}"),
        "search.phase1.ppo.n_epochs: n_epochs is an integer: search it with choice, int, qint",
    ),
    (
        phase1("net_arch: {choice: []}"),
        "search.phase1.ppo.net_arch: choice takes a non-empty list of values",
    ),
    (
        phase1("n_epochs: {choice: [5, 10, 5]}"),
        "search.phase1.ppo.n_epochs: choice lists 5 twice",
    ),
    (
        phase1("gamma: {uniform: [0.95, 1.2]}"),
        "search.phase1.ppo.gamma: uniform [0.95, 1.2] can produce 1.2, but "
        "training.phase1.ppo.gamma must be > 0 and <= 1, got 1.2",
    ),
    (
        phase1("learning_rate: {choice: [0.001, -0.001]}"),
        "search.phase1.ppo.learning_rate: choice [0.001, -0.001] can produce -0.001, but "
        "training.phase1.ppo.learning_rate must be > 0",
    ),
    (
        phase1("n_epochs: 0"),
        "search.phase1.ppo.n_epochs: training.phase1.ppo.n_epochs must be >= 1, got 0",
    ),
    (phase1("learning_rate: [1.0e-5, 1.0e-3]"), "search.phase1.ppo.learning_rate: expected a"),
    (phase1("learning_rate:"), "search.phase1.ppo.learning_rate: expected a distribution"),
    (
        phase1("n_steps: {int: [128, 512]}"),
        "search.phase1.ppo.n_steps: n_steps must be a fixed value or a choice",
    ),
    (
        phase1("n_steps: {choice: [16, 256]}"),
        "search.phase1.ppo.n_steps: batch_size 256 does not divide n_steps x n_envs (16 x 8 = 128)",
    ),
    (
        phase1("net_arch: {choice: [[64, 64], [64, 0]]}"),
        "search.phase1.ppo.net_arch: choice [[64, 64], [64, 0]] can produce [64, 0], but "
        "training.phase1.ppo.net_arch must be a non-empty list of positive integers",
    ),
    (
        "search:\n  phase2:\n    ppo:\n      net_arch: {choice: [[64], [128]]}\n",
        "search.phase2.ppo.net_arch is not a setting here: phase 2 continues from the phase-1 "
        "network; its shape is training.phase1.ppo.net_arch",
    ),
    (
        "search:\n  phase1:\n    ppo: {}\n    target_timesteps: {int: [1000, 2000]}\n",
        "unknown key search.phase1.target_timesteps",
    ),
    (
        "search:\n  env:\n    max_position: {choice: [1, 3]}\n",
        "search.env.max_position cannot be searched: it fixes the action space",
    ),
    (
        "search:\n  env:\n    initial_capital: {choice: [50000, 100000]}\n",
        "search.env.initial_capital cannot be searched: it scales every dollar metric",
    ),
    (
        "search:\n  env:\n    phase1_cost_ticks: {uniform: [0.5, 2]}\n",
        "search.env.phase1_cost_ticks cannot be searched: it is also the cost phase-1 "
        "evaluation charges",
    ),
    (
        "search:\n  env:\n    drawdown_penalty: {uniform: [-0.5, 1]}\n",
        "search.env.drawdown_penalty: uniform [-0.5, 1] can produce -0.5, but "
        "training.env.drawdown_penalty must be >= 0",
    ),
    (
        "search:\n  env:\n    episode_length: {loguniform: [256, 4096]}\n",
        "search.env.episode_length: episode_length is an integer",
    ),
    (
        "search:\n  env:\n    drawdown_penlty: {uniform: [0, 1]}\n",
        "unknown key search.env.drawdown_penlty (did you mean 'drawdown_penalty'?)",
    ),
    (phase1("n_epochs: 5"), "search has nothing to search: every key given is a fixed value"),
    (phase1(LR, "asha:\n  grace_period: 0\n"), "asha.grace_period must be >= 1, got 0"),
    (phase1(LR, "asha:\n  reduction_factor: 1\n"), "asha.reduction_factor must be > 1, got 1"),
    (
        phase1(LR, "asha:\n  grace_perod: 10\n"),
        "unknown key asha.grace_perod (did you mean 'grace_period'?)",
    ),
    (
        phase1(LR, f"{PBT}  mutate: [phase1.ppo.gamma]\n"),
        "pbt.mutate[0]: 'phase1.ppo.gamma' is not in the search space; PBT perturbs searched "
        "keys: phase1.ppo.learning_rate",
    ),
    (
        phase1(
            f"{LR}\nnet_arch: {{choice: [[64], [128]]}}", f"{PBT}  mutate: [phase1.ppo.net_arch]\n"
        ),
        "pbt.mutate[0]: PBT cannot perturb phase1.ppo.net_arch: the network's shape cannot "
        "change under trained weights",
    ),
    (
        phase1(f"{LR}\nn_steps: {{choice: [128, 256]}}", f"{PBT}  mutate: [phase1.ppo.n_steps]\n"),
        "pbt.mutate[0]: PBT cannot perturb phase1.ppo.n_steps: it changes the rollout buffer",
    ),
    (
        phase1(f"{LR}\ngamma: 0.9", f"{PBT}  mutate: [phase1.ppo.gamma]\n"),
        "pbt.mutate[0]: phase1.ppo.gamma is fixed in the search space",
    ),
    (
        phase1(LR, f"{PBT}  mutate: [phase1.ppo.learning_rate, phase1.ppo.learning_rate]\n"),
        "pbt.mutate lists 'phase1.ppo.learning_rate' twice",
    ),
    (phase1(LR, f"{PBT}  mutate: []\n"), "pbt.mutate must be a non-empty list of searched keys"),
    # RLlib's keys, under rllib: beside ppo:
    (
        "search:\n  phase1:\n    rlib:\n      lr: {uniform: [0.001, 0.002]}\n",
        "unknown key search.phase1.rlib (did you mean 'rllib'?)",
    ),
    (
        rllib1("lamda: {uniform: [0.9, 0.99]}"),
        "unknown key search.phase1.rllib.lamda (did you mean 'lambda'?)",
    ),
    (
        rllib1("learning_rate: {uniform: [0.001, 0.002]}"),
        "unknown key search.phase1.rllib.learning_rate",
    ),
    (
        rllib1("num_env_runners: {choice: [1, 2]}"),
        "search.phase1.rllib.num_env_runners cannot be searched: it sets the CPUs every trial "
        "reserves",
    ),
    (
        rllib1("num_envs_per_env_runner: {int: [1, 4]}"),
        "search.phase1.rllib.num_envs_per_env_runner cannot be searched",
    ),
    (
        "search:\n  phase3:\n    rllib:\n      net_arch: {choice: [[64], [128]]}\n",
        "search.phase3.rllib.net_arch is not a setting here: phase 3 continues from the phase-1 "
        "network; its shape is training.phase1.rllib.net_arch",
    ),
    (
        rllib1("gamma: {uniform: [0.9, 1.5]}"),
        "search.phase1.rllib.gamma: uniform [0.9, 1.5] can produce 1.5, but "
        "training.phase1.rllib.gamma must be > 0 and <= 1, got 1.5",
    ),
    (
        rllib1("lambda: {uniform: [-0.1, 0.9]}"),
        "search.phase1.rllib.lambda: uniform [-0.1, 0.9] can produce -0.1, but "
        "training.phase1.rllib.lambda must be >= 0",
    ),
    (
        rllib1("num_epochs: {uniform: [3, 10]}"),
        "search.phase1.rllib.num_epochs: num_epochs is an integer: search it with choice, int, "
        "qint",
    ),
    (
        rllib1("minibatch_size: {int: [64, 8000]}"),
        "search.phase1.rllib.minibatch_size: minibatch_size 8000 would exceed train_batch_size "
        "4000; every combination the space can produce must keep minibatch_size <= "
        "train_batch_size",
    ),
    (
        rllib1("train_batch_size: {choice: [100, 4000]}"),
        "search.phase1.rllib.train_batch_size: minibatch_size 128 would exceed train_batch_size "
        "100",
    ),
    (
        rllib1("lr: {loguniform: [1.0e-5, 1.0e-3]}\nnet_arch: {choice: [[64], [128]]}")
        + f"{PBT}  mutate: [phase1.rllib.net_arch]\n",
        "pbt.mutate[0]: PBT cannot perturb phase1.rllib.net_arch: the network's shape cannot",
    ),
    (phase1(LR, f"{PBT}  mutate: [[phase1]]\n"), "pbt.mutate[0] must be a dotted key"),
    (
        phase1(LR, "pbt:\n  mutate: [phase1.ppo.learning_rate]\n"),
        "missing key pbt.perturbation_interval",
    ),
    (
        phase1(LR, "pbt:\n  perturbation_interval: 0\n  mutate: [phase1.ppo.learning_rate]\n"),
        "pbt.perturbation_interval must be >= 1, got 0",
    ),
    (
        phase1(LR, f"{PBT}  quantile: 0.7\n  mutate: [phase1.ppo.learning_rate]\n"),
        "pbt.quantile must be > 0 and <= 0.5, got 0.7",
    ),
    (
        phase1(LR, f"{PBT}  resample_probability: 1.5\n  mutate: [phase1.ppo.learning_rate]\n"),
        "pbt.resample_probability must be >= 0 and <= 1, got 1.5",
    ),
    (
        phase1(
            LR, f"{PBT}  perturbation_factors: [1.2, -0.8]\n  mutate: [phase1.ppo.learning_rate]\n"
        ),
        "pbt.perturbation_factors must be > 0, got -0.8",
    ),
    (
        phase1(LR, f"{PBT}  perturbation_factors: []\n  mutate: [phase1.ppo.learning_rate]\n"),
        "pbt.perturbation_factors must be a non-empty list of numbers",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m[:50] for _, m in BAD])
def test_bad_file_is_refused_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_search(path, TRAINING)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_an_unknown_key_lists_the_keys_of_its_phase(tmp_path: Path) -> None:
    for phase, arch in ((1, True), (2, False)):
        text = f"search:\n  phase{phase}:\n    ppo:\n      gama: {{uniform: [0.9, 0.99]}}\n"
        with pytest.raises(ConfigError) as info:
            load_search(write(tmp_path, text), TRAINING)
        message = str(info.value)
        assert f"unknown key search.phase{phase}.ppo.gama (did you mean 'gamma'?)" in message
        assert ("net_arch" in message) is arch, message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_search(tmp_path / "nope.yaml", TRAINING)


# ---- the package -------------------------------------------------------------------------------


def test_public_names() -> None:
    assert sorted(tuner.search.__all__) == [
        "AshaSettings",
        "Dist",
        "PbtSettings",
        "SearchSpec",
        "decode",
        "flatten",
        "load_search",
        "unflatten",
    ]


def test_loading_a_search_file_imports_no_ray() -> None:
    code = (
        "import sys; from tuner.search import load_search;"
        "from tuner.training.settings import load_training_config;"
        "spec = load_search('config/search.yaml', load_training_config('config/training.yaml'));"
        "spec.for_phases([1]).explore({'phase1': {'ppo': {'gamma': 2.0}}});"
        "print(sorted(m for m in ('ray', 'optuna', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
