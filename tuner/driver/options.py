"""The driver's options: the command line of ``tuner.run`` checked against the configs.

Everything is validated before Ray starts; a mistake raises an error naming it.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.errors import ConfigError
from checkpointing.locations import StoreURI, is_uri
from checkpointing.naming import validate_market, validate_seed
from tuner.cli import check_path_argument
from tuner.job_paths import check_job_paths

if TYPE_CHECKING:
    from tuner.driver.remote import Locations

__all__ = ["RunOptions", "SearchOptions", "options_from_args"]

_COMMAND = "python -m tuner.run"
_EXPERIMENT_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_]|[.-](?=[A-Za-z0-9_]))*\Z", re.ASCII)


@dataclass(frozen=True)
class SearchOptions:
    """A hyperparameter search (``--search``): the space and how it is searched."""

    path: Path
    spec: Any  # tuner.search.space.SearchSpec, for the trained phases
    num_samples: int = 8
    searcher: str = "optuna"
    scheduler: str = "asha"
    metric: str = "val_reward"
    confirm_top: int = 3
    seed: int = 0


@dataclass(frozen=True)
class RunOptions:
    markets: tuple[str, ...]
    seeds: tuple[int, ...]
    phases: tuple[int, ...]
    timesteps: int | None
    base_interval: int | None
    config_dir: Path
    models_root: Path
    storage_path: Path
    name: str
    cpus_per_trial: float
    max_concurrent: int | None
    max_failures: int
    resume: bool
    address: str | None
    num_cpus: int | None
    training_config: Path | None = None
    training_overlay: dict[str, Any] = field(default_factory=dict)
    search: SearchOptions | None = None
    test_eval: bool = True  # measure the chosen checkpoints on the test split at the end
    report: bool = True  # write the HTML report beside the summary at the end
    trainer: str = "sb3"  # sb3 | rllib
    env_runners: int | None = None  # --env-runners; None: each phase's rllib.num_env_runners
    env_runner_cpus: int = 0  # CPUs a trial reserves for RLlib's env runners (1 each)
    # Object storage (tuner.driver.remote): with models_uri, models_root is the staging folder
    # of the driver's node; with storage_uri, storage_path is the driver's copy of Tune's.
    models_uri: StoreURI | None = None
    storage_uri: StoreURI | None = None
    staging_dir: Path | None = None  # --staging-dir (else each node's default)
    upload_timeout: float = 300.0

    @property
    def experiment_dir(self) -> Path:
        return self.storage_path / self.name

    def trial_bundles(self) -> list[dict[str, float]]:
        """A trial's resources as placement-group bundles: its own CPUs, then one CPU per
        RLlib env runner (a bundle each, so the runners may sit on other nodes)."""
        return [{"CPU": self.cpus_per_trial}] + [{"CPU": 1.0}] * self.env_runner_cpus

    @property
    def confirm_name(self) -> str:
        """The confirmation stage's experiment of a search."""
        return f"{self.name}-confirm"


def _split(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"--{what} needs at least one value, got {text!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"--{what} lists a value twice: {text!r}")
    return items


def options_from_args(args: argparse.Namespace) -> tuple[RunOptions, Any]:
    """Validate the parsed command line and every config, before Ray starts.

    Returns the options and the loaded settings. Raises ConfigError / CheckpointNameError /
    DataError naming the culprit.
    """
    from tuner.training.job import PhaseJob, check, parse_phases, prepare
    from tuner.training.settings import load_run_settings

    markets = [validate_market(m) for m in _split(args.markets, "markets")]
    seeds = _seeds(args.seeds)
    phases = parse_phases(args.phases) if args.phases else parse_phases(str(args.phase or 1))
    _check_numbers(args)

    settings = load_run_settings(args.config_dir, args.training_config)
    search = _search_options(args, settings, phases)
    where = _locations(args, settings)
    models_root, storage = where.models_root, where.storage_path
    name = args.name or (
        f"{'-'.join(markets)}_s{'-'.join(map(str, seeds))}_p{''.join(map(str, phases))}"
    )
    if not _EXPERIMENT_RE.match(name) or len(name) > 120:
        raise ConfigError(
            f"--name must be letters, digits, '_' and inner '.'/'-' (at most 120), got {name!r}"
        )
    for market in markets:  # names known, data loadable: nothing written but the data cache
        jobs = [
            PhaseJob(
                market,
                seeds[0],
                phase,
                args.timesteps,
                args.base_interval,
                models_root,
                trainer=args.trainer,
                env_runners=args.env_runners,
            )
            for phase in phases
        ]
        for job in jobs[1:]:
            check(job, settings)
        prepare(jobs[0], settings)  # once per market; fills the cache the trials then map

    opts = RunOptions(
        markets=tuple(markets),
        seeds=tuple(seeds),
        phases=tuple(phases),
        timesteps=args.timesteps,
        base_interval=args.base_interval,
        config_dir=settings.config_dir.resolve(),
        models_root=models_root,
        storage_path=storage,
        name=name,
        cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        resume=args.resume,
        address=args.address,
        num_cpus=args.num_cpus,
        training_config=Path(args.training_config).resolve() if args.training_config else None,
        training_overlay=dict(settings.training_overlay),
        search=search,
        test_eval=not args.no_test_eval,
        report=not args.no_report,
        trainer=args.trainer,
        env_runners=args.env_runners,
        env_runner_cpus=_env_runner_cpus(args, settings, phases),
        models_uri=where.models_uri,
        storage_uri=where.storage_uri,
        staging_dir=where.staging_dir,
        upload_timeout=args.upload_timeout,
    )
    _check_experiment(opts)
    return opts, settings


_REWARD_SHAPING = ("env.drawdown_penalty", "env.reward_clip")
_SEARCH_FLAGS = ("num_samples", "searcher", "scheduler", "metric", "confirm_top", "search_seed")


def _locations(args: argparse.Namespace, settings: Any) -> Locations:
    """``--models-root`` and ``--storage-path``: folders, or URIs preflighted before Ray
    starts (:mod:`tuner.driver.remote`); the local folders checked as every job's are."""
    from tuner.driver.remote import resolve_locations

    if not args.upload_timeout >= 0:
        raise ConfigError(f"--upload-timeout must be >= 0 seconds, got {args.upload_timeout!r}")
    if args.models_root is not None and not is_uri(args.models_root):
        check_path_argument(args.models_root, "--models-root", folder=True, command=_COMMAND)
    where = resolve_locations(
        args.models_root,
        args.storage_path,
        args.staging_dir,
        Path(settings.checkpoint.paths.root),
    )
    folders = {
        "--models-root" if where.models_uri is None else "--staging-dir": where.models_root,
    }
    if where.storage_uri is None:
        folders["--storage-path"] = where.storage_path
    check_job_paths(folders, allow_ephemeral=args.allow_ephemeral)
    return where


def _search_options(
    args: argparse.Namespace, settings: Any, phases: list[int]
) -> SearchOptions | None:
    """The search of ``--search``, its file validated; None without ``--search``."""
    if args.search is None:
        given = [f for f in _SEARCH_FLAGS if getattr(args, f) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag} goes with --search (a search space to sample)")
        return None
    from checkpointing.ranking import METRICS
    from tuner.search.loading import load_search

    path = check_path_argument(args.search, "--search")
    spec = load_search(path, settings.training).for_phases(phases).for_trainer(args.trainer)
    if spec.is_empty:
        raise ConfigError(
            f"{os.fspath(path)}: nothing to search for phases {phases} with --trainer "
            f"{args.trainer} (the space only names phases that are not trained, or fixes "
            "every key of these)"
        )
    scheduler = args.scheduler or "asha"
    searcher = args.searcher or ("random" if scheduler == "pbt" else "optuna")
    if scheduler == "pbt":
        if searcher != "random":
            raise ConfigError(
                "--scheduler pbt samples its first population at random: use --searcher random "
                "(or leave --searcher out)"
            )
        spec.require_pbt()
    metric = args.metric or "val_reward"
    if metric not in METRICS:
        raise ConfigError(f"--metric must be one of {list(METRICS)}, got {metric!r}")
    shaping = [k for k in spec.searched if k in _REWARD_SHAPING]
    if shaping and metric == "val_reward":
        print(
            f"note: {os.fspath(path)} searches reward shaping ({', '.join(shaping)}): "
            "val_reward then measures something else in each trial; --metric sharpe_ratio "
            "compares them on one scale",
            flush=True,
        )
    for flag, value, low in (
        ("--num-samples", args.num_samples, 1),
        ("--confirm-top", args.confirm_top, 1),
        ("--search-seed", args.search_seed, 0),
    ):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value!r}")
    samples = args.num_samples or 8
    if scheduler == "pbt" and samples < 2:
        raise ConfigError("--scheduler pbt needs a population: --num-samples 2 or more")
    return SearchOptions(
        path=path.resolve(),
        spec=spec,
        num_samples=samples,
        searcher=searcher,
        scheduler=scheduler,
        metric=metric,
        confirm_top=args.confirm_top or 3,
        seed=args.search_seed or 0,
    )


def _env_runner_cpus(args: argparse.Namespace, settings: Any, phases: list[int]) -> int:
    """The env runners a trial of ``--trainer rllib`` reserves a CPU for: ``--env-runners``,
    else the most any of its phases' ``rllib.num_env_runners`` asks; none for sb3."""
    if args.trainer != "rllib":
        return 0
    if args.env_runners is not None:
        return int(args.env_runners)
    return max(settings.training.phase(p).rllib.num_env_runners for p in phases)


def _seeds(text: str) -> list[int]:
    seeds = []
    for item in _split(text, "seeds"):
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(f"--seeds must be integers, got {item!r}") from None
        seeds.append(validate_seed(value))
    return seeds


def _check_numbers(args: argparse.Namespace) -> None:
    if args.timesteps is not None and args.timesteps < 1:
        raise ConfigError(f"--timesteps must be >= 1, got {args.timesteps!r}")
    if args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial!r}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent!r}")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures!r}")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError(f"--num-cpus must be >= 1, got {args.num_cpus!r}")
    if args.num_cpus is not None and (args.address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError(
            "--num-cpus applies to a Ray started here; a cluster (--address or RAY_ADDRESS) "
            "has its own CPUs"
        )


def _check_experiment(opts: RunOptions) -> None:
    """A new experiment must not exist yet; one to resume must exist and be readable."""
    name, storage = opts.name, os.fspath(opts.storage_path)
    if opts.storage_uri is not None:
        _fetch_experiments(opts)
        storage = str(opts.storage_uri)
    if not opts.resume and opts.storage_uri is None:
        if opts.search is not None and (opts.storage_path / opts.confirm_name).exists():
            raise ConfigError(
                f"experiment {opts.confirm_name!r} (the confirmation stage of {name!r}) already "
                f"exists in {storage}: add --resume to continue it, or choose another --name"
            )
        if opts.experiment_dir.exists():
            raise ConfigError(
                f"experiment {name!r} already exists in {storage}: add --resume to continue "
                "it, or choose another --name"
            )
    if not opts.resume:
        return
    if not (opts.experiment_dir / "tuner.pkl").exists():
        raise ConfigError(
            f"--resume: no experiment {name!r} in {storage} (nothing to resume; run without "
            "--resume to start it)"
        )
    # Tune would restart every trial from scratch on a damaged state.
    from tuner.driver.resume_check import check_resumable

    check_resumable(opts.experiment_dir, opts.models_root, trainer=opts.trainer)


def _fetch_experiments(opts: RunOptions) -> None:
    """With Tune's storage on a bucket: the experiment (and a search's confirmation stage)
    copied from the bucket into the driver's copy, which the checks below and the end steps
    read; a new experiment must have nothing on the bucket."""
    from tuner.driver.remote import download_experiment, experiment_on_bucket

    assert opts.storage_uri is not None
    names = [opts.name] + ([opts.confirm_name] if opts.search is not None else [])
    for name in names:
        if not opts.resume and experiment_on_bucket(opts.storage_uri, name):
            raise ConfigError(
                f"experiment {name!r} already exists in {opts.storage_uri}: add --resume "
                "to continue it, or choose another --name"
            )
        # The driver's copy: the bucket's (none for a new experiment, whatever was cached).
        download_experiment(opts.storage_uri, name, opts.storage_path / name)
