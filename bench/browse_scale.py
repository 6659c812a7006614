"""Benchmark: ``python -m tuner.browse`` and the driver's summary over 1,000 trials.

A hyperparameter search makes experiments of hundreds or thousands of trials, many of them runs
of the same (market, seed). This builds one such experiment in a temporary folder (default
1,000 trials: 2 markets x 1 seed x 500 samples, each trial its own run) with the files Ray Tune
2.60 and our trainable write, then times, best of ``--repeat``:

- ``python -m tuner.browse --storage-path S --experiment E`` in a fresh process (what a user
  waits for), ``python -m tuner.browse --storage-path S`` (the experiments list) and, as the
  baseline, ``python -m tuner.browse --help`` (the interpreter and the imports alone);
- in-process, warm: :func:`load_experiment`, :func:`build_summary` over it (what the driver
  does after ``fit()``) and the browser's view (:func:`best_checkpoints` + :func:`format_view`);
- the floor: reading every file those read (the experiment state, each trial's
  ``params.json`` and ``result.json``, the registry) as bytes, no parsing.

Target: at 1,000 trials, the browser's view in a fresh process and the driver's summary in
about 1 s, taken as at most 1.2 s (quick runs, 200 trials, are not judged). Most of what is
left is the JSON parsing itself (Tune's state, every result, the registry). ``--against DIR``
times another checkout of the project (e.g. the commit before a change, from ``git
archive``) the same way, interleaved, and checks that it prints the same::

    .venv/bin/python bench/browse_scale.py [--trials 1000] [--markets 2] [--seeds 1]
        [--results 20] [--repeat 5] [--quick] [--against DIR] [--profile] [--keep]
        [--dir /tmp] [--json PATH]

What is real and what is synthetic:

- Tune's files. Each trial is a real ``ray.tune`` ``Trial`` (Ray is not started) given the
  results our trainable reports, with the fields Tune adds to each; the experiment state is
  ``Trial.get_json_state()`` of each, written with Tune's encoder as ``TuneController`` writes
  it. ``result.json``, ``progress.csv``, ``params.json`` and ``params.pkl`` come from the
  driver's own loggers (:func:`tuner.driver.result_logs.result_loggers`), each Tune checkpoint
  ``checkpoint_<n>/pointer.json`` from :func:`write_pointer`. Synthetic: the runner data
  (Tune's keys, a stopper and a checkpoint config as Tune embeds them), ``tuner.pkl`` (a small
  pickle: the browser only looks for it), the searcher's state file and the callback state in
  the pointers (a few fields). Metrics are random (seeded); 1% of the trials fail half-way
  (``error.txt``, status ERROR), the others finish.
- Our checkpoints. One periodic checkpoint per evaluation, a ``best`` twin (hard links, its own
  metadata) when a monitored metric improves by 2%, a ``phase_end`` at the last one; names,
  metadata (:func:`build_metadata`), retention (:func:`prune_folder` with the shipped
  config), ``best_model`` and the final models (:func:`publish`) and the registry
  (:meth:`Registry.rebuild`) are our code. The zip and the ``.pkl`` are a few hundred random
  bytes with real digests: nothing timed here opens them.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import inspect
import io
import json
import os
import pickle
import pstats
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, write_figures  # noqa: E402
from checkpointing.config import CheckpointConfig, load_config  # noqa: E402
from checkpointing.metadata import build_metadata, encode_metadata  # noqa: E402
from checkpointing.naming import (  # noqa: E402
    LEGACY_FINAL_NAMES,
    METADATA_SUFFIX,
    VECNORM_SUFFIX,
    CheckpointName,
    run_id_for_trial,
)
from checkpointing.publish import publish  # noqa: E402
from checkpointing.registry import Registry  # noqa: E402
from checkpointing.retention import prune_folder  # noqa: E402
from tuner.driver.trial_config import TrialConfig  # noqa: E402
from tuner.driver.tune_files import write_pointer  # noqa: E402

__all__ = ["build_experiment", "main"]

MARKETS = ("NQ", "ES", "YM", "RTY", "CL", "GC", "ZN", "6E")
EXPERIMENT = "search-p1"
PHASE = 1
PHASE_STEPS = 2_000_000
TARGET_S = 1.2  # "about 1 s"
TARGET_TRIALS = 1000
ERROR_TEXT = "Failure # 1 (occurred at 2026-12-05_06-00-00)\nray.exceptions.RayTaskError: ...\n"
_MONITORED = ("val_reward", "sharpe_ratio", "win_rate")


# --------------------------------------------------------------------------- building


class _LoggedTrial:
    """What Tune's JSON and CSV loggers use of a trial, writing straight into its folder of the
    storage path (Tune writes a staging copy and copies it there; Ray is not started here)."""

    def __init__(self, config: dict[str, Any], folder: Path) -> None:
        self.config = config
        self.local_path = os.fspath(folder)
        self.checkpoint = None  # nothing to restore from the storage path

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def _metrics(rng: random.Random, drift: float, k: int) -> dict[str, float]:
    sharpe = rng.gauss(drift * k, 0.6)
    return {
        "val_reward": rng.gauss(0.02 * sharpe, 0.05),
        "sharpe_ratio": sharpe,
        "win_rate": min(1.0, max(0.0, rng.gauss(0.5 + 0.02 * sharpe, 0.03))),
        "max_drawdown": -abs(rng.gauss(0.05, 0.02)),
        "total_return": rng.gauss(sharpe, 1.0),
        "n_trades": float(rng.randint(5, 60)),
        "exposure": rng.uniform(0.3, 1.0),
        "buy_hold_gap": rng.gauss(0.0, 2.0),
    }


def _improved(bests: dict[str, float], metrics: dict[str, float]) -> list[str]:
    """The monitored metrics that beat their best by 2% of |best| (floor 0.01)."""
    out = []
    for m in _MONITORED:
        best = bests.get(m)
        if best is None or metrics[m] - best >= 0.02 * max(abs(best), 0.01):
            out.append(m)
    for m in _MONITORED:
        bests[m] = max(bests.get(m, metrics[m]), metrics[m])
    return out


class _Writer:
    """Writes one trial's checkpoints as a run of ours would (companions, then the zip)."""

    def __init__(self, folder: Path, rng: random.Random, about: dict[str, Any]) -> None:
        self.folder = folder
        self.rng = rng
        self.about = about  # experiment, trial_id

    def save(
        self,
        name: CheckpointName,
        metrics: dict[str, float],
        improved: Sequence[str] = (),
        twin_of: CheckpointName | None = None,
    ) -> None:
        zip_path = self.folder / name.filename
        pkl_path = self.folder / (name.base + VECNORM_SUFFIX)
        if twin_of is None:
            zip_bytes = b"PK\x03\x04" + self.rng.randbytes(252)
            pkl_bytes = b"\x80\x04" + self.rng.randbytes(94)
        else:  # a best save is a hard link of its periodic twin, with its own metadata
            zip_bytes = (self.folder / twin_of.filename).read_bytes()
            pkl_bytes = (self.folder / (twin_of.base + VECNORM_SUFFIX)).read_bytes()
        meta = build_metadata(
            name=name,
            phase=PHASE,
            metrics=metrics,
            metrics_timesteps=name.timesteps,
            runtime={"algorithm": "PPO", "eval_episodes_run": 5, "n_envs": 8},
            improved_metrics=list(improved),
            extra=self.about,
        )
        meta["files"] = {
            "zip": {
                "name": name.filename,
                "size": len(zip_bytes),
                "sha256": hashlib.sha256(zip_bytes).hexdigest(),
            },
            "vecnormalize": {
                "name": pkl_path.name,
                "size": len(pkl_bytes),
                "sha256": hashlib.sha256(pkl_bytes).hexdigest(),
            },
        }
        if twin_of is None:
            pkl_path.write_bytes(pkl_bytes)
        else:
            os.link(self.folder / (twin_of.base + VECNORM_SUFFIX), pkl_path)
        (self.folder / (name.base + METADATA_SUFFIX)).write_bytes(encode_metadata(meta))
        if twin_of is None:
            zip_path.write_bytes(zip_bytes)
        else:
            os.link(self.folder / twin_of.filename, zip_path)


def _tune_fields(
    trial: Any, k: int, started: float, now: float, pid: int, ckpt: int | None = None
) -> dict[str, Any]:
    """The fields Tune adds to the ``k``-th reported result, in Tune's order."""
    return {
        "timestamp": int(now),
        "checkpoint_dir_name": None if ckpt is None else f"checkpoint_{ckpt:06d}",
        "should_checkpoint": ckpt is not None,
        "done": False,
        "training_iteration": k,
        "trial_id": trial.trial_id,
        "date": time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now)),
        "time_this_iter_s": 30.0,
        "time_total_s": now - started,
        "pid": pid,
        "hostname": socket.gethostname(),
        "node_ip": "127.0.0.1",
        "config": dict(trial.config),
        "time_since_restore": now - started,
        "iterations_since_restore": k,
    }


def _build_trial(
    trial: Any,
    experiment_dir: Path,
    checkpoint_dir: Path,
    results: int,
    errored: bool,
    rng: random.Random,
    loggers: list[Any],
    started: float,
    dead_pid: int,
) -> tuple[CheckpointName | None, str]:
    """Write one trial's Tune files and checkpoints; returns its phase_end and run id."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.experiment import Trial

    config = trial.config
    run_id = run_id_for_trial(config["experiment"], trial.trial_id)
    about = {"market": config["market"], "seed": config["seed"], "run_id": run_id}
    folder = experiment_dir / trial.relative_logdir
    logged = _LoggedTrial(config, folder)
    logged.init_local_path()
    for logger in loggers:
        logger.log_trial_start(logged)
    writer = _Writer(checkpoint_dir, rng, {"experiment": EXPERIMENT, "trial_id": trial.trial_id})
    trial.set_status(Trial.RUNNING)
    trial.run_metadata.start_time = started
    drift, bests = rng.uniform(-0.02, 0.08), {}
    last = min(results, rng.randint(2, results)) if errored else results
    phase_end: CheckpointName | None = None
    own: dict[str, Any] = {}
    now, k = started, 0
    for k in range(1, last + 1):
        now = started + 30.0 * k
        steps = PHASE_STEPS * k // results
        metrics = _metrics(rng, drift, k)
        event = "phase_end" if k == results else "periodic"
        name = CheckpointName(
            config["market"], steps, event, metrics["val_reward"], metrics["sharpe_ratio"],
            config["seed"], run_id,
        )  # fmt: skip
        writer.save(name, metrics)
        improved = _improved(bests, metrics)
        if improved and event == "periodic":
            twin = CheckpointName(
                name.market, steps, "best", name.val_reward, name.sharpe_ratio, name.seed, run_id
            )
            writer.save(twin, metrics, improved, twin_of=name)
        if event == "phase_end":
            phase_end = name
        # What our trainable reports after an evaluation, then what Tune adds.
        own = {**metrics, **about, "phase": PHASE, "phase_timesteps": steps, "timesteps": steps}
        own["checkpoint"] = name.filename
        report = {**own, **_tune_fields(trial, k, started, now, dead_pid, k - 1)}
        pointer = {
            **about,
            "phase": PHASE,
            "folder": os.fspath(checkpoint_dir),
            "checkpoint": name.filename,
            "callback_state": {"version": 1, "phase": PHASE, **about, "saves": k},
        }
        tune_checkpoint = folder / f"checkpoint_{k - 1:06d}"
        tune_checkpoint.mkdir()
        write_pointer(tune_checkpoint, pointer)
        _log(trial, logged, loggers, report)
        trial.on_checkpoint(_TrainingResult(Checkpoint(os.fspath(tune_checkpoint)), report))
    if errored:
        (folder / "error.txt").write_text(ERROR_TEXT, encoding="utf-8")
        trial.run_metadata.num_failures = 3
        trial.run_metadata.error_filename = "error.txt"
        trial.set_status(Trial.ERROR)
    else:
        final = {**own, "finished": True, **_tune_fields(trial, k + 1, started, now, dead_pid)}
        _log(trial, logged, loggers, final)
        trial.set_status(Trial.TERMINATED)
    for logger in loggers:
        logger.log_trial_end(logged)
    return phase_end, run_id


def _log(trial: Any, logged: _LoggedTrial, loggers: list[Any], result: dict[str, Any]) -> None:
    for logger in loggers:
        logger.log_trial_result(result["training_iteration"], logged, dict(result))
    trial.update_last_result(result)  # Tune adds the experiment tag to what it keeps


def _dead_pid() -> int:
    """The pid of a process that has exited (a failed trial's worker)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def build_experiment(
    workdir: Path, trials: int, markets: int, seeds: int, results: int, seed: int = 0
) -> tuple[Path, Path]:
    """Write an experiment of ``trials`` trials under ``workdir``; returns (storage, models)."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from tuner.driver.result_logs import result_loggers

    rng = random.Random(seed)
    storage, models, config_dir = workdir / "ray_results", workdir / "models", workdir / "config"
    shutil.copytree(ROOT / "config", config_dir)
    checkpoint_config: CheckpointConfig = load_config(config_dir / "checkpoint_config.yaml")
    experiment_dir = storage / EXPERIMENT
    experiment_dir.mkdir(parents=True)
    (experiment_dir / ".validate_storage_marker").touch()
    base = TrialConfig(
        market="",
        seed=0,
        phases=(PHASE,),
        experiment=EXPERIMENT,
        config_dir=os.fspath(config_dir),
        models_root=os.fspath(models),
        timesteps=None,
        base_interval=None,
        cpus=1.0,
        stop_flag=f"stop-flag:{EXPERIMENT}",
    )
    market_names, seed_values = MARKETS[:markets], [42, 7, 36, 11, 3, 5, 8, 13][:seeds]
    loggers = result_loggers()
    session = time.strftime("%Y-%m-%d_%H-%M-%S")
    started = time.time() - 30.0 * (results + 2) - trials
    dead_pid = _dead_pid()
    made: list[Any] = []
    finals: list[tuple[str, str, CheckpointName]] = []
    for index in range(trials):
        market = market_names[index % markets]
        seed_value = seed_values[(index // markets) % seeds]
        config = {**vars(base), "market": market, "seed": seed_value, "phases": [PHASE]}
        # A search's trial: its sampled configuration, as Tune passes it (networks as text).
        config["stage"] = "search"
        config["training"] = {
            "phase1": {
                "ppo": {
                    "learning_rate": float(10 ** rng.uniform(-4.5, -2.5)),
                    "ent_coef": float(10 ** rng.uniform(-4, -1.5)),
                    "net_arch": ["64x64", "128x128"][index % 2],
                }
            }
        }
        tune_storage = StorageContext(
            storage_path=os.fspath(storage), experiment_dir_name=EXPERIMENT
        )
        trial = Trial(
            "train_trial",
            config=config,
            trial_id=f"a1b2c_{index:05d}",
            storage=tune_storage,
            evaluated_params={"market": market, "seed": seed_value},
            experiment_tag=f"{index}_market={market},seed={seed_value}",
            max_failures=2,
            stub=True,
            _setup_default_resource=False,
        )
        trial.relative_logdir = trial._generate_dirname()
        trial.storage.trial_dir_name = trial.relative_logdir
        folder = checkpoint_config.checkpoint_dir(PHASE, market, models)
        folder.mkdir(parents=True, exist_ok=True)
        errored = index % 100 == 99
        phase_end, run_id = _build_trial(
            trial, experiment_dir, folder, results, errored, rng, loggers, started + index,
            dead_pid,
        )  # fmt: skip
        if phase_end is not None:
            finals.append((market, run_id, phase_end))
        made.append(trial)

    _end_of_runs(checkpoint_config, models, market_names, finals)
    _write_tune_state(experiment_dir, made, started, session, results)
    return storage, models


def _end_of_runs(
    config: CheckpointConfig,
    models: Path,
    markets: Sequence[str],
    finals: list[tuple[str, str, CheckpointName]],
) -> None:
    """Retention, best_model and the runs' final models, and the registry, as runs leave them."""
    layout = config.layout(models)
    for market in markets:
        prune_folder(config.checkpoint_dir(PHASE, market, models), config.retention)
    for market, run_id, name in finals:
        path = config.checkpoint_dir(PHASE, market, models) / name.filename
        publish(path, layout.market_dir(PHASE, market), "best_model", only_if_better=True)
        stem = LEGACY_FINAL_NAMES[PHASE]
        publish(path, layout.run_dir(PHASE, market, run_id), stem, only_if_better=False)
    Registry(models, config).rebuild()


def _write_tune_state(
    experiment_dir: Path, trials: list[Any], started: float, session: str, results: int
) -> None:
    """The experiment state as ``TuneController.save_to_dir`` writes it, the searcher's state
    and ``tuner.pkl`` (both stand-ins)."""
    from ray.tune import CheckpointConfig as TuneCheckpointConfig
    from ray.tune.stopper import NoopStopper
    from ray.tune.utils.serialization import TuneFunctionEncoder

    runner_data = {
        "_earliest_stopping_actor": float("inf"),
        "_actor_cleanup_timeout": 600,
        "_actor_force_cleanup_timeout": 10,
        "_reuse_actors": True,
        "_buffer_length": 1,
        "_buffer_min_time_s": 0.0,
        "_buffer_max_time_s": 100.0,
        "_max_pending_trials": 200,
        "_metric": None,
        "_total_time": 30.0 * results,
        "_iteration": len(trials) * (results + 1),
        "_has_errored": True,
        "_fail_fast": False,
        "_print_trial_errors": True,
        "_cached_trial_decisions": {},
        "_queued_trial_decisions": {},
        "_should_stop_experiment": False,
        "_stopper": NoopStopper(),
        "_start_time": started,
        "_session_str": session,
        "_checkpoint_period": "auto",
        "_trial_checkpoint_config": TuneCheckpointConfig(num_to_keep=None),
        "_resumed": False,
    }
    state = {
        "trial_data": [list(t.get_json_state()) for t in trials],
        "runner_data": runner_data,
        "stats": {"start_time": started},
    }
    with open(experiment_dir / f"experiment_state-{session}.json", "w") as fh:
        json.dump(state, fh, cls=TuneFunctionEncoder)
    searcher = {"_total_samples": len(trials), "_finished": True, "_uuid_prefix": "a1b2c_"}
    (experiment_dir / f"basic-variant-state-{session}.json").write_text(json.dumps(searcher))
    (experiment_dir / "tuner.pkl").write_bytes(pickle.dumps({"_tune_config": None}))


# --------------------------------------------------------------------------- timing


def time_calls(storage: str, experiment: str, repeat: int) -> dict[str, Any]:
    """Best wall times (s) of the in-process calls, and a digest of what they produce. Runs in
    this process, or as ``python -c`` (its source) against another checkout."""
    import contextlib as _contextlib
    import hashlib as _hashlib
    import io as _io
    import json as _json
    import time as _time

    from tuner.browse import main as browse_main
    from tuner.driver.browse_view import best_checkpoints, format_view
    from tuner.driver.experiments import json_ready, load_experiment
    from tuner.driver.summary import build_summary

    def best(fn: Any) -> tuple[float, Any]:
        times, out = [], None
        for _ in range(repeat):
            t0 = _time.perf_counter()
            out = fn()
            times.append(_time.perf_counter() - t0)
        return min(times), out

    def load() -> Any:
        return load_experiment(storage, experiment)

    load_s, exp = best(load)
    summary_s, summary = best(lambda: build_summary(load(), phases=[1]))
    view_s, text = best(lambda: format_view(best_checkpoints(load())))
    with _contextlib.redirect_stdout(_io.StringIO()):
        main_s, _ = best(
            lambda: browse_main(["--storage-path", storage, "--experiment", experiment])
        )
    doc = _json.dumps(json_ready(summary), sort_keys=True)
    return {
        "trials": len(exp.trials),
        "load_experiment": load_s,
        "build_summary": summary_s,
        "view": view_s,
        "main": main_s,
        "summary_sha256": _hashlib.sha256(doc.encode()).hexdigest(),
        "view_sha256": _hashlib.sha256(text.encode()).hexdigest(),
    }


def _time_calls_in(src: Path, storage: Path, experiment: str, repeat: int) -> dict[str, Any]:
    code = inspect.getsource(time_calls)
    code = (
        "from typing import Any\n"
        + code
        + (
            "\nimport json, sys\n"
            "print(json.dumps(time_calls(sys.argv[1], sys.argv[2], int(sys.argv[3]))))\n"
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", code, os.fspath(storage), experiment, str(repeat)],
        cwd=src,
        env=dict(os.environ, PYTHONPATH=os.fspath(src)),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def _cli(src: Path, args: Sequence[str]) -> tuple[float, str]:
    """Wall time of ``python -m tuner.browse ARGS`` in a fresh process, and what it printed."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tuner.browse", *args],
        cwd=src,
        env=dict(os.environ, PYTHONPATH=os.fspath(src)),
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, done.stdout


def _floor(storage: Path, models: Path) -> float:
    """Seconds to read, as bytes, every file the browser's view reads."""
    experiment = storage / EXPERIMENT
    t0 = time.perf_counter()
    for path in experiment.glob("experiment_state-*.json"):
        path.read_bytes()
    with os.scandir(experiment) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                for name in ("params.json", "result.json"):
                    with contextlib.suppress(FileNotFoundError):
                        Path(entry.path, name).read_bytes()
    (models / "registry.json").read_bytes()
    return time.perf_counter() - t0


def _profile(storage: Path, experiment: str, top: int) -> None:
    from tuner.browse import main as browse_main
    from tuner.driver.experiments import load_experiment
    from tuner.driver.summary import build_summary

    for label, call in (
        ("tuner.browse --experiment", lambda: browse_main(
            ["--storage-path", os.fspath(storage), "--experiment", experiment])),
        ("build_summary(load_experiment)", lambda: build_summary(
            load_experiment(storage, experiment), phases=[PHASE])),
    ):  # fmt: skip
        profiler = cProfile.Profile()
        with contextlib.redirect_stdout(io.StringIO()):
            profiler.runcall(call)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
        print(f"\n-- profile of {label} (by own time, top {top})")
        print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


# --------------------------------------------------------------------------- main


def _sizes(storage: Path, models: Path) -> str:
    experiment = storage / EXPERIMENT
    state = sum(p.stat().st_size for p in experiment.glob("experiment_state-*.json"))
    results = sum(p.stat().st_size for p in experiment.glob("*/result.json"))
    registry = (models / "registry.json").stat().st_size
    entries = len(json.loads((models / "registry.json").read_bytes())["checkpoints"])
    mb = 1024 * 1024
    return (
        f"experiment state {state / mb:.1f} MB, result.json files {results / mb:.1f} MB, "
        f"registry {registry / mb:.1f} MB ({entries:,} checkpoints)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None, help="trials (default 1000)")
    parser.add_argument("--markets", type=int, default=2, help="markets (default 2)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per market (default 1)")
    parser.add_argument("--results", type=int, default=20, help="evaluations per trial")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; best counts")
    parser.add_argument("--quick", action="store_true", help="200 trials, 3 runs per figure")
    parser.add_argument("--against", help="another checkout of the project, timed the same way")
    parser.add_argument("--profile", action="store_true", help="print cProfile of both calls")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--dir", default=None, help="where to put the temporary folder")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    trials = args.trials or (200 if args.quick else TARGET_TRIALS)
    repeat = min(args.repeat, 3) if args.quick else max(1, args.repeat)
    if not 1 <= args.markets <= len(MARKETS) or not 1 <= args.seeds <= 8 or args.results < 2:
        parser.error("--markets 1..8, --seeds 1..8, --results >= 2")
    against = Path(args.against).resolve() if args.against else None

    workdir = Path(tempfile.mkdtemp(prefix="bench-browse-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        storage, models = build_experiment(workdir, trials, args.markets, args.seeds, args.results)
        print(
            f"built {trials:,} trials ({args.markets} markets x {args.seeds} seeds, "
            f"{args.results} evaluations each) in {time.perf_counter() - t0:.0f} s: "
            f"{_sizes(storage, models)}"
        )
        rows = _measure(storage, models, repeat, against)
        if args.profile:
            _profile(storage, EXPERIMENT, 25)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    write_figures(args.json, _figures(rows, trials, repeat))
    return 0


VIEW = "python -m tuner.browse --storage-path S --experiment E"
LISTING = "python -m tuner.browse --storage-path S"
HELP = "python -m tuner.browse --help"
SUMMARY = "build_summary(load_experiment(S, E))"


def _time_cli(
    storage: Path, repeat: int, trees: dict[str, Path]
) -> tuple[dict[str, dict[str, float]], bool]:
    """Best wall time per command and tree (fresh processes, interleaved), and whether every
    tree printed the same."""
    view = ["--storage-path", os.fspath(storage), "--experiment", EXPERIMENT]
    commands = {
        HELP: ["--help"],
        LISTING: ["--storage-path", os.fspath(storage)],
        VIEW: view,
        "... --experiment E --json": [*view, "--json"],
    }
    best: dict[str, dict[str, float]] = {tree: {} for tree in trees}
    printed: dict[str, dict[str, str]] = {tree: {} for tree in trees}
    for i in range(repeat):
        order = list(trees.items())
        for tree, src in order if i % 2 == 0 else order[::-1]:
            for label, args in commands.items():
                took, out = _cli(src, args)
                best[tree][label] = min(best[tree].get(label, took), took)
                printed[tree][label] = out
    same = all(printed[tree] == printed["this"] for tree in trees)
    return best, same


def _measure(
    storage: Path, models: Path, repeat: int, against: Path | None
) -> dict[str, dict[str, float]]:
    trees = {"this": ROOT} | ({"against": against} if against is not None else {})
    best, same_cli = _time_cli(storage, repeat, trees)
    calls = {"this": time_calls(os.fspath(storage), EXPERIMENT, repeat)}
    if against is not None:
        calls["against"] = _time_calls_in(against, storage, EXPERIMENT, repeat)
    for tree in trees:
        best[tree].update(
            {
                "load_experiment(S, E)": calls[tree]["load_experiment"],
                SUMMARY: calls[tree]["build_summary"],
                "format_view(best_checkpoints(load_experiment(S, E)))": calls[tree]["view"],
                "tuner.browse.main([... --experiment E])": calls[tree]["main"],
            }
        )
    floor = min(_floor(storage, models) for _ in range(repeat))
    _print_table(best, calls["this"]["trials"], repeat, floor)
    if against is not None:
        same_calls = all(
            calls["this"][k] == calls["against"][k] for k in ("summary_sha256", "view_sha256")
        )
        print(
            f"same output as {against}: command lines {'yes' if same_cli else 'NO'}, "
            f"summary and view {'yes' if same_calls else 'NO'}"
        )
        if not (same_cli and same_calls):
            raise SystemExit(1)
    return best


def _print_table(best: dict[str, dict[str, float]], trials: int, repeat: int, floor: float) -> None:
    against = "against" in best
    print(f"\n{trials:,} trials, seconds, best of {repeat} (fresh processes interleaved)")
    head = f"{'':<54} {'this':>7} {'ms/trial':>8}"
    print(head + (f" {'against':>8} {'ratio':>6}" if against else ""))
    for label, this in best["this"].items():
        line = f"{label:<54} {this:>7.3f} {this * 1000 / trials:>8.3f}"
        if against:
            other = best["against"][label]
            line += f" {other:>8.3f} {this / other:>6.2f}"
        print(line)
    floor_label = "floor: their files read as bytes, no parsing"
    print(f"{floor_label:<54} {floor:>7.3f} {floor * 1000 / trials:>8.3f}")


def _figures(rows: dict[str, dict[str, float]], trials: int, repeat: int) -> list[Figure]:
    this, before = rows["this"], rows.get("against")
    judged = trials >= TARGET_TRIALS
    target = f"about 1 s (<= {TARGET_S} s) at {TARGET_TRIALS:,}"

    def result(label: str) -> str:
        was = f" (against: {before[label]:.2f} s)" if before is not None else ""
        return f"{this[label]:.2f} s{was}"

    return [
        Figure(
            "browse_scale",
            f"`tuner.browse --experiment` over {trials:,} trials, fresh process "
            f"(python + imports {this[HELP]:.2f} s; best of {repeat})",
            target,
            result(VIEW),
            this[VIEW] <= TARGET_S if judged else None,
        ),
        Figure(
            "browse_scale",
            f"the driver's summary, `{SUMMARY}`, over {trials:,} trials",
            target,
            result(SUMMARY),
            this[SUMMARY] <= TARGET_S if judged else None,
        ),
        Figure(
            "browse_scale",
            f"`tuner.browse` (the experiments list) over {trials:,} trials, fresh process",
            target,
            result(LISTING),
            this[LISTING] <= TARGET_S if judged else None,
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
