"""``python -m tuner.run --trainer rllib`` end to end with a real Ray on loopback.

One experiment, built once for the module as a user would live it: NQ x seeds 1, 2, RLlib
with one env runner a trial (so each trial is a placement group of two CPUs), 8,000 steps;
the worker of the seed-1 trial is SIGKILLed after its second periodic checkpoint and Tune
retries it; once the retry reports, the driver gets SIGINT; then ``--resume`` runs it to the
end. The summary, retention, the browser and the held-out test split then work on the RLlib
checkpoints. Expected values come from the checkpoint files and Tune's result files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from checkpointing import list_checkpoints, verify_checkpoint
from checkpointing.metadata import read_checkpoint_metadata
from checkpointing.naming import CheckpointName
from checkpointing.trainers import unpack_checkpoint
from tests.ray.conftest import (
    Crash,
    Driver,
    common,
    crash_trial,
    session_processes,
    trial_results,
    wait_for,
)
from tests.tiny_config import tiny_config_dir
from tuner.driver.experiments import load_experiment
from tuner.run import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS = 8_000
KEEP_LAST_N = 2  # small, so that retention deletes checkpoints of runs this short
ARGS = ["--markets", "NQ", "--seeds", "1,2", "--timesteps", str(STEPS), "--name", "rl"]
RLLIB = ["--trainer", "rllib", "--env-runners", "1", "--num-cpus", "4", "--max-failures", "2"]


@dataclass(frozen=True)
class Built:
    workdir: Path
    configs: Path
    storage: Path
    models: Path
    args: list[str]
    first_out: str
    resume_out: str
    crash: Crash
    interrupt: CheckpointName  # seed 1's, from the SIGINT
    interrupt_meta: dict[str, Any]  # its metadata, verified before --resume
    processes: list[str]  # the driver session's Ray processes while the trials ran

    @property
    def folder(self) -> Path:
        return self.models / "phase1" / "NQ" / "checkpoints"


def _names(folder: Path) -> list[CheckpointName]:
    return [i.name for i in list_checkpoints(folder) if isinstance(i.name, CheckpointName)]


def _ray_processes(driver: Driver) -> list[str]:
    """The executable and command of the driver's Ray processes, once an RLlib env runner is
    among them (else an empty list)."""
    names = []
    for p in session_processes(driver.proc.pid):
        with contextlib.suppress(psutil.Error):
            names.append(f"{p.name()}: {' '.join(p.cmdline())[:80]}")
    return names if any(": ray::SingleAgentEnvRunner" in n for n in names) else []


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    workdir = tmp_path_factory.mktemp("rllib-run")
    configs = tiny_config_dir(
        workdir / "config",
        checkpoint={
            "retention": {
                "keep_last_n": KEEP_LAST_N,
                "keep_top_k_by_sharpe": 1,
                "keep_top_k_by_reward": 1,
                "prune_frequency": 2,
            }
        },
    )
    args = [*ARGS, *RLLIB, *common(configs, workdir)]
    storage, models = workdir / "ray_results", workdir / "models"
    folder = models / "phase1" / "NQ" / "checkpoints"
    drivers: list[Driver] = []
    try:
        first = Driver(args, workdir)
        drivers.append(first)
        processes = wait_for(lambda: _ray_processes(first), 240, "an env runner", first)
        crash = crash_trial(first, folder, "NQ", 1, saves=2)

        def retried() -> bool:  # the driver's line comes at once; result.json may lag
            out = first.output
            at = out.find("[retry]  NQ seed 1")
            return at >= 0 and "[train]  NQ seed 1" in out[at:]

        wait_for(retried, 240, "the retried trial's first report", first)
        first.signal(signal.SIGINT)  # the driver alone, as Ctrl+C would
        assert first.wait(240) == 128 + signal.SIGINT, first.output[-3000:]
        (interrupt,) = [n for n in _names(folder) if n.seed == 1 and n.event == "interrupt"]
        interrupt_meta = verify_checkpoint(folder / interrupt.filename)
        resumed = Driver([*args, "--resume"], workdir, "resume.log")
        drivers.append(resumed)
        assert resumed.wait(600) == 0, resumed.output[-3000:]
        yield Built(
            workdir,
            configs,
            storage,
            models,
            args,
            first.output,
            resumed.output,
            crash,
            interrupt,
            interrupt_meta,
            processes,
        )
    finally:
        for d in drivers:
            d.kill()


def test_trials_train_with_rllib_in_the_trials_own_ray(built: Built) -> None:
    """Each checkpoint says RLlib and one env runner; the runners ran as actors of the
    experiment's Ray (one GCS in the session: no trial started a Ray of its own)."""
    assert "trainer rllib (1 env runner a trial)" in built.first_out
    assert sum(1 for p in built.processes if p.startswith("gcs_server:")) == 1, built.processes
    infos = list_checkpoints(built.folder)
    assert {i.name.seed for i in infos if isinstance(i.name, CheckpointName)} == {1, 2}
    for info in infos:
        meta = verify_checkpoint(info.path)
        assert meta["trainer"] == "rllib" and meta["env_runners"] == 1, info.filename
        assert meta["experiment"] == "rl" and meta["timesteps"] == info.timesteps


def test_a_killed_worker_is_retried_from_its_newest_checkpoint(built: Built) -> None:
    assert "[retry]  NQ seed 1" in built.first_out
    rows = trial_results(built.storage / "rl")["NQ/1"]
    pids = [r["pid"] for r in rows]
    assert built.crash.pid in pids and pids[-1] != built.crash.pid
    after = [r for r in rows if r["pid"] != built.crash.pid]
    # Resumed from the newest RLlib checkpoint that verified after the crash, not from zero,
    # in the same run; timesteps never go back.
    assert built.crash.saved > 0 and int(after[0]["timesteps"]) > built.crash.saved
    assert {r["run_id"] for r in rows} == {rows[0]["run_id"]}
    steps = [int(r["timesteps"]) for r in after]
    assert steps == sorted(steps) and rows[-1]["finished"] is True


def test_ctrl_c_then_resume_finishes_every_trial(built: Built) -> None:
    assert "asking running trials to save interrupt checkpoints" in built.first_out
    assert "--trainer rllib --env-runners 1" in built.first_out  # the printed resume command
    assert built.interrupt_meta["trainer"] == "rllib"
    rows = trial_results(built.storage / "rl")["NQ/1"]
    last_pid = rows[-1]["pid"]
    resumed = [r for r in rows if r["pid"] == last_pid]
    assert min(int(r["timesteps"]) for r in resumed) > built.interrupt.timesteps
    summary = json.loads((built.models / "summaries/rl.json").read_text())
    assert {(r["seed"], r["status"]) for r in summary["trials"]} == {
        (1, "finished"),
        (2, "finished"),
    }
    assert all(r["timesteps"] >= STEPS for r in summary["trials"])


def test_the_summary_names_rllib_runs_and_their_best_checkpoints(built: Built) -> None:
    summary = json.loads((built.models / "summaries/rl.json").read_text())
    results = trial_results(built.storage / "rl")
    for row in summary["trials"]:
        assert row["trainer"] == "rllib"
        last = results[f"NQ/{row['seed']}"][-1]
        assert row["metrics"]["val_reward"] == pytest.approx(last["val_reward"])
        best = row["best"]["sharpe_ratio"]
        assert best["path"].endswith(f"_seed-{row['seed']}_run-{row['run_id']}.zip")
        mine = [
            (verify_checkpoint(i.path)["sharpe_ratio"], i.path)
            for i in list_checkpoints(built.folder)
            if isinstance(i.name, CheckpointName) and i.name.run_id == row["run_id"]
        ]
        assert best["value"] == pytest.approx(max(v for v, _ in mine if v is not None))
        # Measured on the held-out test split by the project's evaluation of RLlib's policy.
        assert row["test"]["best"]["checkpoint"] == best["path"]
        assert row["test"]["phase_end"]["run_id"] == row["run_id"]
    with open(built.models / "summaries/rl.csv", newline="") as fh:
        assert {r["trainer"] for r in csv.DictReader(fh)} == {"rllib"}
    assert f" ({'rllib'})" in built.resume_out  # the table marks the trainer


def test_retention_keeps_each_runs_last_periodic_saves(built: Built) -> None:
    present = {i.filename for i in list_checkpoints(built.folder)}
    deleted = 0
    for rows in trial_results(built.storage / "rl").values():
        periodic = list(
            dict.fromkeys(
                r["checkpoint"] for r in rows if "_evt-periodic_" in (r.get("checkpoint") or "")
            )
        )
        assert [n for n in periodic[-KEEP_LAST_N:] if n not in present] == []
        deleted += sum(1 for n in periodic if n not in present)
        assert rows[-1]["checkpoint"] in present  # its phase_end
    assert deleted > 0  # retention pruned RLlib checkpoints


def test_the_browser_names_the_summarys_bests(
    built: Built, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tuner.browse import main as browse

    capsys.readouterr()
    code = browse(["--storage-path", str(built.storage), "--experiment", "rl", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    summary = json.loads((built.models / "summaries/rl.json").read_text())
    (from_summary,) = [b for b in summary["markets"]["NQ"]["best"] if b["metric"] == "sharpe_ratio"]
    (from_browse,) = doc["best"]["NQ"][:1]
    assert (from_browse["path"], from_browse["value"]) == (
        from_summary["path"],
        from_summary["value"],
    )
    # Every file of the best RLlib checkpoint verifies before anything would be unpickled.
    assert unpack_checkpoint(from_browse["path"], tmp_path / "best")["trainer"] == "rllib"


def test_resume_with_another_trainer_is_refused(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*ARGS, *common(built.configs, built.workdir), "--resume"]  # sb3, the default
    assert main(args) == 2
    assert "was run with --trainer rllib; resume it with --trainer rllib" in capsys.readouterr().err


PPO_ONLY = {"search": {"phase1": {"ppo": {"learning_rate": {"loguniform": [1.0e-4, 1.0e-3]}}}}}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--search", "{ppo_only}"],
            "--trainer rllib searches training.yaml's rllib: keys, but the space has none for "
            "the phases trained, only ppo: keys (such as phase1.ppo.learning_rate)",
        ),
        (["--env-runners", "-1"], "--env-runners goes with --trainer rllib and must be >= 0"),
    ],
)
def test_refused_before_ray_starts(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    configs = tiny_config_dir(tmp_path / "config")
    ppo_only = tmp_path / "config" / "ppo_only.yaml"
    ppo_only.write_text(yaml.safe_dump(PPO_ONLY))
    extra = [a.format(ppo_only=ppo_only) for a in extra]
    args = ["--markets", "NQ", "--trainer", "rllib", *extra, *common(configs, tmp_path)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "ray_results").exists()


SPACE = {
    "search": {
        "phase1": {
            "ppo": {"learning_rate": {"loguniform": [1.0e-4, 3.0e-3]}},  # for sb3: not searched
            "rllib": {
                "lr": {"loguniform": [1.0e-4, 3.0e-3]},
                "entropy_coeff": {"loguniform": [1.0e-4, 0.05]},
                "clip_param": {"uniform": [0.1, 0.3]},
                "net_arch": {"choice": [[16], [32]]},
            },
        }
    },
    "asha": {"grace_period": 500, "reduction_factor": 2},
}


def test_a_search_with_asha_tunes_rllib_keys_and_chooses_over_every_seed(
    tmp_path: Path, drivers: list[Driver]
) -> None:
    """Random search over RLlib's keys with ASHA, then the confirmation on both seeds: each
    trial trains with its sampled values, ASHA's stops end RLlib runs without an interrupt
    checkpoint, and the chosen overlay carries the rllib: values ``--training-config`` takes."""
    from tuner.training.settings import load_run_settings

    configs = tiny_config_dir(tmp_path / "config")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    search = ["--search", str(space), "--num-samples", "4", "--searcher", "random"]
    search += ["--scheduler", "asha", "--confirm-top", "1", "--search-seed", "5"]
    run = Driver(
        [
            *("--markets", "NQ", "--seeds", "1,2", "--timesteps", "1000", "--name", "rs"),
            *("--trainer", "rllib", "--num-cpus", "2", *search, *common(configs, tmp_path)),
        ],
        tmp_path,
    )
    drivers.append(run)
    assert run.wait(600) == 0, run.output[-4000:]
    assert "phases 1, trainer rllib (0 env runners a trial); then the best 1" in run.output
    storage, models = tmp_path / "ray_results", tmp_path / "models"
    folder = models / "phase1" / "NQ" / "checkpoints"
    trials = load_experiment(storage, "rs").trials + load_experiment(storage, "rs-confirm").trials
    assert len(trials) >= 5

    metas = [read_checkpoint_metadata(i.path) or {} for i in list_checkpoints(folder)]
    for trial in trials:
        mine = [m for m in metas if m.get("run_id") == trial.run_id]
        assert trial.trainer == "rllib"
        assert mine, trial.run_id
        sampled = trial.training["phase1"]["rllib"]
        assert set(trial.training) == {"phase1"} and set(trial.training["phase1"]) == {"rllib"}
        for meta in mine:  # trained by RLlib with the trial's own sampled values
            assert meta["trainer"] == "rllib"
            assert meta["learning_rate"] == pytest.approx(sampled["lr"])
            assert set(meta["hyperparameters"]) == {f"phase1.rllib.{k}" for k in sampled}
        events = {m["event_tag"] for m in mine}
        if trial.status == "stopped":  # ends as it stands: its evaluation's checkpoints only
            assert "interrupt" not in events and "phase_end" not in events, events
        else:
            assert trial.status == "finished" and "phase_end" in events
    assert "stopped" in {t.status for t in trials}, [t.status for t in trials]

    verdict = json.loads((models / "summaries" / "rs_search.json").read_text())
    assert verdict["search"]["trainer"] == "rllib"
    chosen = verdict["markets"]["NQ"]["chosen"]
    assert set(chosen["seeds"]) == {"1", "2"}
    assert set(chosen["values"]) == {
        f"phase1.rllib.{k}" for k in SPACE["search"]["phase1"]["rllib"]
    }
    overlay = models / "summaries" / "rs_NQ_training.yaml"
    assert "--trainer rllib --training-config" in overlay.read_text()
    rllib = load_run_settings(configs, str(overlay)).training.phase1.rllib
    assert rllib.lr == pytest.approx(chosen["values"]["phase1.rllib.lr"])
    assert rllib.clip_param == pytest.approx(chosen["values"]["phase1.rllib.clip_param"])
    assert list(rllib.net_arch or ()) == chosen["values"]["phase1.rllib.net_arch"]
