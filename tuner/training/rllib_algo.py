"""RLlib's side of a run: Ray, the env, the PPO algorithm, its checkpoints and its greedy policy.

:func:`build_algorithm` makes RLlib's PPO (new API stack) for one phase of one (market, seed):
``FuturesTradingEnv`` on the training split registered with ``register_env``, observations
normalized by RLlib's ``MeanStdFilter`` connector (whose statistics are part of the algorithm's
state, so they travel inside the checkpoint), the phase's ``rllib:`` settings.
:class:`RLlibSource` hands a save to the checkpoint manager (``save_to_path`` into a temporary
folder, packed into the checkpoint zip by the writer); :func:`restore` puts a verified,
unpacked checkpoint back into an algorithm built from this run's settings.
:class:`GreedyPolicy` is the policy's deterministic action on normalized observations with the
``predict`` of an SB3 model, so :mod:`tuner.trading.evaluation` measures both trainers alike.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm

    from tuner.training.job import PhaseJob
    from tuner.training.settings import RLlibConfig, Settings

__all__ = [
    "GreedyPolicy",
    "RLlibSource",
    "build_algorithm",
    "ensure_ray",
    "greedy_policy",
    "load_greedy_policy",
    "optimizer_lr",
    "ray_nodes",
    "restore",
    "rllib_settings",
    "settings_in_effect",
]

log = logging.getLogger(__name__)

# The object store of a Ray started here: sample batches of small envs need little.
OBJECT_STORE_BYTES = 128 * 1024**2
# The checkpoint folder of the policy's network inside RLlib's algorithm directory.
MODULE_DIR = ("learner_group", "learner", "rl_module", "default_policy")
FILTER_DIR = ("env_runner", "env_to_module_connector", "MeanStdFilter")


def ensure_ray(env_runners: int) -> None:
    """Start Ray on this machine, bound to 127.0.0.1, unless it runs already (a test's, or
    Tune's worker); with ``RAY_ADDRESS`` set, connect to that cluster instead."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        # Each env runner takes a CPU: more runners than cores share them rather than wait.
        num_cpus=max(os.cpu_count() or 1, env_runners),
        log_to_driver=False,
    )


def rllib_settings(job: PhaseJob, settings: Settings) -> RLlibConfig:
    """The phase's ``rllib:`` settings, with ``--env-runners``."""
    from dataclasses import replace

    cfg = settings.training.phase(job.phase).rllib
    if job.env_runners is not None:
        cfg = replace(cfg, num_env_runners=job.env_runners)
    return cfg


def _env_name(job: PhaseJob) -> str:
    return f"futures-{job.market}-phase{job.phase}-seed{job.seed}"


def _ppo_config(job: PhaseJob, settings: Settings, data: Any) -> Any:
    """RLlib's ``PPOConfig`` of the phase, its env registered."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    from tuner.trading.evaluation import make_env

    training = settings.training
    env_config = training.env_config()
    advisor = settings.advisor if job.phase == 3 else None
    phase, seed = job.phase, job.seed

    def create(context: Any) -> Any:
        # RLlib reseeds each env on its first reset (the run's seed + the runner's index).
        index = int(getattr(context, "worker_index", 0) or 0)
        return make_env(
            data, phase, "train", seed + index, config=env_config, advisor_config=advisor
        )

    register_env(_env_name(job), create)
    cfg = rllib_settings(job, settings)
    return (
        PPOConfig()
        .environment(_env_name(job))
        .framework("torch")
        .env_runners(
            num_env_runners=cfg.num_env_runners,
            num_envs_per_env_runner=cfg.num_envs_per_env_runner,
            env_to_module_connector=_mean_std_filter,
        )
        .learners(num_learners=0)
        .training(**cfg.training_kwargs())
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=list(training.rllib_net_arch), fcnet_activation="tanh"
            )
        )
        .debugging(seed=job.seed, log_level="ERROR")
    )


def _mean_std_filter(env: Any = None, spaces: Any = None, device: Any = None) -> Any:
    from ray.rllib.connectors.env_to_module import MeanStdFilter

    return MeanStdFilter()


def build_algorithm(job: PhaseJob, settings: Settings, data: Any) -> Algorithm:
    """RLlib's PPO for ``job`` (Ray must be running: :func:`ensure_ray`)."""
    algo: Algorithm = _ppo_config(job, settings, data).build_algo()
    return algo


def restore(algo: Algorithm, checkpoint: Path) -> dict[str, Any]:
    """Verify ``checkpoint`` (every file, before anything is unpickled), unpack it and load it
    into ``algo``: weights, optimizer, observation filter and counters. This run's settings
    are in effect at once (:func:`settings_in_effect`). Returns its metadata.

    Raises:
        CheckpointCorruptError: it fails verification; ConfigError: SB3 wrote it.
    """
    from checkpointing.trainers import unpack_checkpoint

    with tempfile.TemporaryDirectory(prefix="rllib-restore-") as tmp:
        metadata = unpack_checkpoint(checkpoint, tmp)
        algo.restore_from_path(tmp)
    settings_in_effect(algo)
    return metadata


def settings_in_effect(algo: Algorithm) -> None:
    """Make the algorithm's own settings the ones in effect after a restore. RLlib loads the
    optimizer with the learning rate it was saved with and sets the configured one only after
    the next update; here the configured ``lr`` is set at once. ``clip_param`` and
    ``entropy_coeff`` need nothing: the loss reads them from the algorithm's config, which a
    restore leaves as built."""

    def apply(learner: Any, **kwargs: Any) -> None:
        for optimizer in learner._named_optimizers.values():
            learner._set_optimizer_lr(optimizer, lr=float(learner.config.lr))

    group: Any = algo.learner_group
    group.foreach_learner(apply)


def ray_nodes(algo: Algorithm) -> dict[str, Any]:
    """Where the algorithm runs: the Ray node of its learner (this process) and of each remote
    env runner (empty without remote runners), as checkpoint metadata records them."""
    import ray

    group: Any = algo.env_runner_group
    runners = []
    if group is not None and group.num_remote_env_runners() > 0:
        runners = group.foreach_env_runner(
            lambda runner: ray.get_runtime_context().get_node_id(),
            local_env_runner=False,
            timeout_seconds=30,
        )
    return {
        "ray_node_id": ray.get_runtime_context().get_node_id(),
        "env_runner_node_ids": sorted(str(n) for n in runners),
    }


def optimizer_lr(algo: Algorithm) -> float:
    """The learning rate the algorithm's optimizer will take its next step with."""
    group: Any = algo.learner_group
    learner: Any = group._learner  # num_learners=0: the learner is local
    rates = {float(learner._get_optimizer_lr(o)) for o in learner._named_optimizers.values()}
    (rate,) = rates
    return rate


@dataclass
class RLlibSource:
    """One save of an RLlib algorithm (:class:`checkpointing.trainers.CheckpointSource`)."""

    algo: Algorithm
    timesteps: int
    trainer: str = "rllib"
    algorithm: str = "PPO"

    def estimated_bytes(self) -> int:
        module: Any = self.algo.get_module()
        n = sum(p.numel() for p in module.parameters()) if module is not None else 0
        return n * 4 * 6 + 1024 * 1024  # weights twice (learner, runner), Adam's moments

    def snapshot(self) -> Any:
        from checkpointing.trainers import DirectorySnapshot

        directory = Path(tempfile.mkdtemp(prefix="rllib-snapshot-"))
        try:
            self.algo.save_to_path(directory)
        except BaseException:
            DirectorySnapshot(directory).close()
            raise
        return DirectorySnapshot(directory)


class GreedyPolicy:
    """An RLlib module's deterministic action (the argmax of its logits) on observations
    normalized as its ``MeanStdFilter`` did in training, behind SB3's ``predict``."""

    policy = None  # evaluation switches no SB3 policy's training mode

    def __init__(self, module: Any, mean: np.ndarray, std: np.ndarray, clip: float | None):
        self.module = module
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.clip = clip

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        from ray.rllib.utils.filter import SMALL_NUMBER

        x = (np.asarray(obs, dtype=np.float64) - self.mean) / (self.std + SMALL_NUMBER)
        if self.clip:
            x = np.clip(x, -self.clip, self.clip)
        return x.astype(np.float32)

    def predict(
        self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, None]:
        import torch

        batch = {"obs": torch.as_tensor(self.normalize(obs))}
        logits = self.module.forward_inference(batch)["action_dist_inputs"]
        actions: np.ndarray = logits.argmax(dim=-1).cpu().numpy()
        return actions, None


def _filter_statistics(state: Any) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Mean, std and clip of a single-agent ``MeanStdFilter`` connector state."""
    from ray.rllib.utils.filter import RunningStat

    (agent,) = state.values()
    stats = RunningStat.from_state(agent["running_stats"][0])
    return np.array(stats.mean), np.array(stats.std), agent.get("clip_by_value")


def greedy_policy(algo: Algorithm) -> GreedyPolicy:
    """The algorithm's current policy, greedy, with a copy of its filter's statistics."""
    from ray.rllib.connectors.env_to_module import MeanStdFilter

    runner = algo.env_runner
    if runner is None:
        raise RuntimeError("the RLlib algorithm has no local env runner to evaluate with")
    pieces = [c for c in runner._env_to_module.connectors if isinstance(c, MeanStdFilter)]
    mean, std, clip = _filter_statistics(pieces[0].get_state())
    return GreedyPolicy(algo.get_module(), mean, std, clip)


def load_greedy_policy(directory: Path, job: PhaseJob, settings: Settings, env: Any) -> Any:
    """The greedy policy of an unpacked RLlib checkpoint (see
    :func:`checkpointing.trainers.unpack_checkpoint`), without Ray: the network is built from
    this project's settings and ``env``'s spaces, then its weights and the filter's statistics
    are read from ``directory``."""
    from ray.rllib.connectors.env_to_module import MeanStdFilter
    from ray.rllib.core import DEFAULT_MODULE_ID

    config = _ppo_config(job, settings, data=None)
    spaces = {DEFAULT_MODULE_ID: (env.observation_space, env.action_space)}
    module = config.get_rl_module_spec(spaces=spaces).build()
    module.restore_from_path(directory.joinpath(*MODULE_DIR))
    piece = MeanStdFilter()  # spaces given to the constructor fail in RLlib 2.60
    piece.input_observation_space = env.observation_space
    piece.restore_from_path(directory.joinpath(*FILTER_DIR))
    mean, std, clip = _filter_statistics(piece.get_state())
    return GreedyPolicy(module, mean, std, clip)
