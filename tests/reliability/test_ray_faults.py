"""Ray faults, for real: trial workers SIGKILLed mid-run; the driver SIGKILLed while it stops
after Ctrl+C, then ``--resume``; a damaged Tune experiment state handed to ``--resume``.

One experiment serves the module (``scenario``, run once): NQ and ES, seed 1, 16,000 steps
each, a checkpoint every 1,000 steps, both trials at once on the driver's private loopback Ray.
Every fault is timed by what is on disk in the models root (Tune's result files in the storage
path lag by up to its sync period, ~10 s):

1. Each trial's worker process is SIGKILLed once it has committed two checkpoints, while the
   other trial trains; Tune retries it. (``tests/ray/test_run.py`` crashes one lone trial, with
   the same ``crash_trial``.) The scenario goes on once both retries have committed a
   checkpoint and the killed workers' results have reached the storage path.
2. Then the driver gets SIGINT and, as soon as the first ``interrupt`` checkpoint is
   committed (the driver still waiting for the other trial and for Tune), SIGKILL. Its Ray
   must go down with it.
3. What the killed driver left (storage path and models root) is copied for the damaged-state
   tries, then ``--resume`` must finish every trial from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import pickle
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from checkpointing import list_checkpoints, verify_checkpoint
from checkpointing.naming import CheckpointName, parse_name
from checkpointing.selection import find_resume_checkpoint
from tests.ray.conftest import (
    Crash,
    Driver,
    crash_trial,
    results_so_far,
    session_processes,
    trial_results,
    trial_worker,
)
from tests.reliability.conftest import FaultLog
from tests.reliability.helpers import (
    RAY_BANNER_MARKERS,
    CliResult,
    call_main,
    run_clis,
    snapshot_tree,
    tree_changes,
)
from tests.tiny_config import tiny_config_dir

pytestmark = [pytest.mark.reliability, pytest.mark.ray, pytest.mark.slow]

NAME = "faults"
SEED = 1
MARKETS = ("NQ", "ES")
TIMESTEPS = 16_000  # leaves the trials running through a sync period after the crashes
INTERVAL = 1_000  # constant: max_interval_multiplier 1
# Ray 2.60's dashboard and runtime-env agents notice that their raylet is gone but take about
# two minutes to exit; they train nothing and write no checkpoint. All else must go at once.
SLOW_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _folder(models: Path, market: str) -> Path:
    return models / "phase1" / market / "checkpoints"


def _newest_verified(models: Path, market: str) -> int:
    """Timesteps of the checkpoint a resume of (market, SEED) starts from; 0 if none."""
    path = find_resume_checkpoint(_folder(models, market), "latest", seed=SEED, market=market)
    parsed = parse_name(path.name) if path is not None else None
    return parsed.timesteps if parsed is not None else 0


def _saved(models: Path, market: str, event: str, above: int = -1) -> bool:
    return any(
        isinstance(i.name, CheckpointName)
        and i.name.seed == SEED
        and i.name.event == event
        and i.timesteps > above
        for i in list_checkpoints(_folder(models, market))
    )


def _written(models: Path, market: str, upto: int) -> set[tuple[str, float]]:
    """(name, mtime) of every checkpoint of (market, SEED) at or below ``upto`` timesteps."""
    return {
        (i.filename, i.mtime)
        for i in list_checkpoints(_folder(models, market))
        if isinstance(i.name, CheckpointName) and i.name.seed == SEED and i.timesteps <= upto
    }


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:120] or p.name()}"
    except psutil.Error:
        return f"{p.pid} (gone)"


def _kill_session(sid: int) -> None:
    """SIGKILL what is left of a driver's session (processes this module started)."""
    left = session_processes(sid)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=30)


def _poll(predicate: Callable[[], bool], timeout: float, what: str, driver: Driver) -> None:
    """Wait for ``predicate`` every 50 ms (faults timed to a fraction of a save interval)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if driver.proc.poll() is not None and not predicate():
            raise AssertionError(f"the driver exited waiting for {what}:\n{driver.output[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{driver.output[-3000:]}")
        time.sleep(0.05)


def _reported(experiment: Path, market: str, pid: int) -> bool:
    """Whether the storage path holds a result of (market, SEED) reported by process ``pid``."""
    rows = results_so_far(experiment).get(f"{market}/{SEED}", [])
    return any(r.get("pid") == pid for r in rows)


@dataclass
class Scenario:
    work: Path
    args: list[str]
    stages: list[str] = field(default_factory=list)  # the stages completed, in order
    timeline: list[str] = field(default_factory=list)  # seconds since the start, and what
    failure: str | None = None
    crashes: dict[str, Crash] = field(default_factory=dict)
    retry_first: dict[str, int] = field(default_factory=dict)  # the retry's first save
    rewritten: dict[str, list[str]] = field(default_factory=dict)  # at or below the crash's
    first_output: str = ""
    killed_rc: int | None = None
    survivors: list[str] = field(default_factory=list)
    newest_at_kill: dict[str, int] = field(default_factory=dict)
    first_pids: set[int] = field(default_factory=set)  # every trial worker of the killed run
    resume_rc: int | None = None
    resume_output: str = ""

    @property
    def models(self) -> Path:
        return self.work / "models"

    @property
    def experiment(self) -> Path:
        return self.work / "ray_results" / NAME

    @property
    def killed(self) -> Path:
        """A copy of ``ray_results`` and ``models`` as the SIGKILLed driver left them."""
        return self.work / "killed"

    def need(self, stage: str) -> None:
        if stage not in self.stages:
            raise AssertionError(
                f"the scenario broke before {stage!r}: {self.failure}\n" + "\n".join(self.timeline)
            )

    def mark(self, what: str, start: float) -> None:
        self.timeline.append(f"{time.monotonic() - start:6.1f} s  {what}")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    work = tmp_path_factory.mktemp("ray_faults")
    configs = tiny_config_dir(
        work / "configs", checkpoint={"phase1": {"max_interval_multiplier": 1}}
    )
    s = Scenario(
        work,
        [
            "--markets",
            ",".join(MARKETS),
            "--seeds",
            str(SEED),
            "--timesteps",
            str(TIMESTEPS),
            "--base-interval",
            str(INTERVAL),
            "--num-cpus",
            "2",
            "--no-test-eval",
            "--name",
            NAME,
            "--config-dir",
            str(configs),
            "--models-root",
            str(work / "models"),
            "--storage-path",
            str(work / "ray_results"),
        ],
    )
    started: list[Driver] = []
    try:
        _run(s, started)
    except Exception as exc:
        s.failure = f"{type(exc).__name__}: {exc}"
    finally:
        for d in started:
            d.kill()
            _kill_session(d.proc.pid)
    yield s


def _run(s: Scenario, started: list[Driver]) -> None:
    start = time.monotonic()
    first = Driver(s.args, s.work)
    started.append(first)

    # 1. Each trial's worker dies once it has committed two checkpoints; Tune retries it.
    old: dict[str, set[tuple[str, float]]] = {}  # what each crash left, taken at once
    for market in MARKETS:
        s.crashes[market] = crash_trial(first, _folder(s.models, market), market, SEED, saves=2)
        old[market] = _written(s.models, market, s.crashes[market].saved)
        s.mark(f"{market} crashed at {s.crashes[market].saved} steps", start)
    for market in MARKETS:
        saved = s.crashes[market].saved
        _poll(
            functools.partial(_saved, s.models, market, "periodic", above=saved),
            300,
            f"a checkpoint from the retry of {market}",
            first,
        )
        s.retry_first[market] = min(
            i.timesteps
            for i in list_checkpoints(_folder(s.models, market))
            if isinstance(i.name, CheckpointName) and i.name.seed == SEED and i.timesteps > saved
        )
        s.rewritten[market] = sorted(n for n, _ in _written(s.models, market, saved) - old[market])
    s.mark("both retries saved", start)
    # The killed workers' results reach the storage path with the driver's next sync of its
    # staging folder (every 10 s or more, by Tune's auto period); a driver SIGKILLed before
    # then takes them along, and the first test has nothing to measure the loss against.
    _poll(
        lambda: all(_reported(s.experiment, m, s.crashes[m].pid) for m in MARKETS),
        120,
        "the killed workers' results in the storage path",
        first,
    )
    s.stages.append("crash")
    s.mark("the killed workers' results synced", start)

    # 2. Ctrl+C, then SIGKILL as soon as the first interrupt checkpoint is committed.
    sid = first.proc.pid
    s.first_pids = {c.pid for c in s.crashes.values()}
    s.first_pids |= {w.pid for m in MARKETS if (w := trial_worker(first, m, SEED)) is not None}
    first.signal(signal.SIGINT)
    _poll(
        lambda: any(_saved(s.models, m, "interrupt") for m in MARKETS),
        120,
        "the first interrupt checkpoint",
        first,
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(sid, signal.SIGKILL)  # the driver alone: its Ray has to notice by itself
    s.mark("SIGINT, then SIGKILL after the first interrupt save", start)
    s.killed_rc = first.proc.wait(timeout=30)
    s.first_output = first.output

    # Its Ray must go down with it: nothing of the killed run may keep training.
    def survivors() -> list[str]:
        described = [_describe(p) for p in session_processes(sid)]
        return [d for d in described if not any(a in d for a in SLOW_AGENTS)]

    deadline = time.monotonic() + 60
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.5)
    s.survivors = survivors()
    s.mark("driver killed, its Ray gone", start)
    _kill_session(sid)
    s.newest_at_kill = {m: _newest_verified(s.models, m) for m in MARKETS}
    s.killed.mkdir()
    shutil.copytree(s.work / "ray_results", s.killed / "ray_results")
    shutil.copytree(s.models, s.killed / "models")
    s.stages.append("kill")

    # 3. --resume finishes the experiment.
    resumed = Driver([*s.args, "--resume"], s.work, "resume.log")
    started.append(resumed)
    s.resume_rc = resumed.wait(600)
    s.resume_output = resumed.output
    s.stages.append("resume")
    s.mark("resumed run ended", start)


def _rows(s: Scenario, market: str) -> list[dict[str, Any]]:
    """Every result of the trial, in order (complete once the resumed driver is done)."""
    s.need("resume")
    return trial_results(s.experiment)[f"{market}/{SEED}"]


# --------------------------------------------------------------------------- 1. crashes


def test_a_trial_worker_killed_mid_run_resumes_from_its_newest_checkpoint(
    scenario: Scenario, fault_log: FaultLog
) -> None:
    """At most one save interval of work is lost, and timesteps never go back past it."""
    with fault_log.tries("trial worker SIGKILL mid-run") as t:
        for market in MARKETS:
            with t.attempt(f"{market} seed {SEED}"):
                scenario.need("crash")
                crash = scenario.crashes[market]
                assert f"[retry]  {market} seed {SEED}: crashed" in scenario.first_output
                # The retry resumed from the newest checkpoint that verified after the crash:
                # its first save is the next one, and nothing below it was trained again.
                first = scenario.retry_first[market]
                assert 0 < crash.saved < first <= crash.saved + INTERVAL, (crash, first)
                assert not scenario.rewritten[market], scenario.rewritten[market]
                # That checkpoint was at most one interval behind the killed worker's last
                # report (whose save may have been in flight): under one interval was lost.
                rows = _rows(scenario, market)
                mine = [i for i, r in enumerate(rows) if r["pid"] == crash.pid]
                assert mine, f"no result from the killed worker {crash.pid}:\n" + "\n".join(
                    scenario.timeline
                )
                reached = max(int(rows[i]["timesteps"]) for i in mine)
                assert reached - crash.saved <= INTERVAL, (crash, reached)
                # Timesteps only grow, before the crash and from the resume point to the end.
                before = [int(rows[i]["timesteps"]) for i in mine]
                later = [int(r["timesteps"]) for r in rows[mine[-1] + 1 :]]
                assert before == sorted(before), before
                assert later and all(x > crash.saved for x in later), later
                assert later == sorted(later) and later[-1] >= TIMESTEPS, later


# --------------------------------------------------------------------------- 2. SIGINT + SIGKILL


def test_a_driver_killed_while_stopping_resumes_every_trial_to_the_end(
    scenario: Scenario, fault_log: FaultLog
) -> None:
    with fault_log.tries("driver SIGINT then SIGKILL while stopping, then --resume") as t:
        with t.attempt("the killed driver's Ray goes down with it"):
            scenario.need("kill")
            out = scenario.first_output
            assert "SIGINT: asking running trials to save interrupt checkpoints" in out, out
            assert scenario.killed_rc == -signal.SIGKILL, (
                f"the driver had exited ({scenario.killed_rc}) before the SIGKILL:\n{out}"
            )
            assert not scenario.survivors, f"outlived the killed driver: {scenario.survivors}"

        for market in MARKETS:
            with t.attempt(f"{market} seed {SEED} resumed and finished"):
                scenario.need("resume")
                assert scenario.resume_rc == 0, scenario.resume_output[-3000:]
                summary = json.loads((scenario.models / f"summaries/{NAME}.json").read_text())
                rows = {(r["market"], r["seed"]): r for r in summary["trials"]}
                assert set(rows) == {(m, SEED) for m in MARKETS}, sorted(rows)
                assert rows[(market, SEED)]["status"] == "finished", rows[(market, SEED)]
                with open(scenario.models / f"summaries/{NAME}.csv", newline="") as fh:
                    listed = {(r["market"], int(r["seed"])) for r in csv.DictReader(fh)}
                assert listed == set(rows), listed

                ends = [
                    i
                    for i in list_checkpoints(_folder(scenario.models, market))
                    if isinstance(i.name, CheckpointName)
                    and i.name.event == "phase_end"
                    and i.name.seed == SEED
                ]
                assert len(ends) == 1, [i.filename for i in ends]
                assert ends[0].timesteps >= TIMESTEPS, ends[0].filename
                meta = verify_checkpoint(ends[0].path)  # sha256 of zip and pkl vs metadata
                assert (meta["market"], meta["seed"]) == (market, SEED), meta

                # Resumed from the newest checkpoint the killed run left, not from scratch.
                saved = scenario.newest_at_kill[market]
                resumed = [
                    r for r in _rows(scenario, market) if r["pid"] not in scenario.first_pids
                ]
                steps = [int(r["timesteps"]) for r in resumed]
                assert steps, f"no result of {market} after --resume"
                assert saved < TIMESTEPS, f"{market} had finished before the driver was killed"
                assert saved < steps[0] <= saved + INTERVAL, (saved, steps)
                assert steps == sorted(steps), steps
                assert resumed[-1].get("finished") is True and steps[-1] >= TIMESTEPS


# --------------------------------------------------------------------------- 3. damaged state


def _state_file(experiment: Path) -> Path:
    return max(experiment.glob("experiment_state-*.json"), key=lambda p: p.name)


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# Each damage returns what the error must say: the file it names, and why.


def _state_truncated(experiment: Path) -> list[str]:
    path = _state_file(experiment)
    _cut_in_half(path)
    return [f"{path} is damaged (the file is truncated or not JSON"]


def _state_emptied(experiment: Path) -> list[str]:
    path = _state_file(experiment)
    path.write_bytes(b"")
    return [f"{path} is damaged (the file is truncated or not JSON"]


def _state_garbled(experiment: Path) -> list[str]:
    path = _state_file(experiment)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = b"\xff\xfe\x00garbage" * 6 + b"\x80" * 4
    path.write_bytes(bytes(raw))
    return [f"{path} is damaged (the file is not UTF-8 text)"]


def _state_not_tunes(experiment: Path) -> list[str]:
    path = _state_file(experiment)
    path.write_text(json.dumps({"trial_data": "nothing here", "runner_data": {}}))
    return [f"{path} is damaged (not a Tune experiment state"]


def _state_embedded_pickle_cut(experiment: Path) -> list[str]:
    """Still JSON, but a pickle Tune embeds (hex) in a trial's state lost its second half."""
    path = _state_file(experiment)
    doc = json.loads(path.read_text())

    def cut(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("_type") == "CLOUDPICKLE_FALLBACK":
                node["value"] = node["value"][: len(node["value"]) // 4 * 2]
                return True
            return any(cut(v) for v in node.values())
        return False

    trial = json.loads(doc["trial_data"][0][0])
    assert cut(trial), "no embedded pickle in the trial state"
    doc["trial_data"][0][0] = json.dumps(trial)
    path.write_text(json.dumps(doc))
    return [f"{path} is damaged (truncated or not a pickle"]


def _state_deleted(experiment: Path) -> list[str]:
    for path in experiment.glob("experiment_state-*.json"):
        path.unlink()
    return [f"{experiment} holds no experiment_state-*.json", "nothing to resume"]


def _pointers(experiment: Path, market: str) -> list[Path]:
    found = sorted(experiment.glob(f"*market={market},*/checkpoint_*/pointer.json"))
    assert found, f"no Tune checkpoint pointer of {market} in {experiment}"
    return found


def _trial_folder(pointer: Path) -> str:
    return f"{pointer.parent.parent}/checkpoint_"


def _nq_pointers_truncated(experiment: Path) -> list[str]:
    pointers = _pointers(experiment, "NQ")
    for path in pointers:
        _cut_in_half(path)
    return [_trial_folder(pointers[0]), "pointer.json is damaged (the pointer is truncated"]


def _es_pointers_garbled(experiment: Path) -> list[str]:
    pointers = _pointers(experiment, "ES")
    for path in pointers:
        path.write_bytes(b"\x00\xff not a pointer \x80")
    return [_trial_folder(pointers[0]), "pointer.json is damaged (the pointer is not UTF-8"]


def _nq_pointers_deleted(experiment: Path) -> list[str]:
    pointers = _pointers(experiment, "NQ")
    for path in pointers:
        path.unlink()
    return [_trial_folder(pointers[0]), "pointer.json is damaged (missing)"]


def _tuner_truncated(experiment: Path) -> list[str]:
    _cut_in_half(experiment / "tuner.pkl")
    return [f"{experiment / 'tuner.pkl'} is damaged (truncated or not a pickle"]


def _tuner_of_another_kind(experiment: Path) -> list[str]:
    """A complete pickle, but not a Tuner's state: only ``Tuner.restore`` itself can tell."""
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(["not", "a", "tuner"]))
    return [f"Tune cannot restore experiment {NAME!r} from {experiment} ("]


DAMAGES: dict[str, Callable[[Path], list[str]]] = {
    "experiment_state truncated": _state_truncated,
    "experiment_state emptied": _state_emptied,
    "experiment_state garbled": _state_garbled,
    "experiment_state not Tune's": _state_not_tunes,
    "experiment_state embedded pickle cut": _state_embedded_pickle_cut,
    "experiment_state deleted": _state_deleted,
    "NQ pointers truncated": _nq_pointers_truncated,
    "ES pointers garbled": _es_pointers_garbled,
    "NQ pointers deleted": _nq_pointers_deleted,
    "tuner.pkl truncated": _tuner_truncated,
    "tuner.pkl of another kind": _tuner_of_another_kind,
}


def _in_process(argv: list[str]) -> CliResult:
    try:
        return call_main("tuner.run", argv)
    except Exception as exc:  # what a real process would dump at the user as a traceback
        return CliResult(["tuner.run", *argv], 1, "", f"Traceback: {type(exc).__name__}: {exc}")


# Caught around Tuner.restore, once Ray has started: run as a real driver. The others are
# refused before Ray starts: run in-process through main(), with Ray out of reach.
STARTS_RAY = "tuner.pkl of another kind"


def test_a_damaged_experiment_state_is_refused_by_resume_naming_the_file(
    scenario: Scenario, fault_log: FaultLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 2 with an error that names the file and says what to do; no traceback; the models
    root untouched. (Left to itself, Tune restarts every trial from scratch.)"""
    import tuner.run

    def no_ray(*args: object) -> int:
        raise AssertionError("--resume went on to start Ray")

    monkeypatch.setattr(tuner.run, "run_experiment", no_ray)
    with fault_log.tries("damaged Tune experiment state on --resume") as t:
        scenario.need("kill")
        cases = []
        for index, (damage, make) in enumerate(DAMAGES.items()):
            root = tmp_path / f"d{index}"  # a copy of what the killed driver left, damaged
            shutil.copytree(scenario.killed, root)
            expected = make(root / "ray_results" / NAME)
            argv = [*scenario.args, "--resume"]
            argv[argv.index("--models-root") + 1] = str(root / "models")
            argv[argv.index("--storage-path") + 1] = str(root / "ray_results")
            cases.append((damage, expected, root / "models", snapshot_tree(root / "models"), argv))
        by_driver: list[CliResult] = []  # the one case that gets as far as Ray, meanwhile
        ray_argv = ["tuner.run", *next(c[-1] for c in cases if c[0] == STARTS_RAY)]
        thread = threading.Thread(
            target=lambda: by_driver.extend(run_clis([ray_argv], tmp_path, timeout=240))
        )
        thread.start()
        results = {c[0]: _in_process(c[-1]) for c in cases if c[0] != STARTS_RAY}
        thread.join()
        results[STARTS_RAY] = by_driver[0]
        for damage, expected, models, before, _ in cases:
            with t.attempt(damage):
                result = results[damage]
                errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
                assert result.returncode == 2, result.describe()
                assert "Traceback" not in result.output, result.describe()
                assert len(errors) == 1 and errors[0].startswith("error: --resume: "), errors
                assert all(e in errors[0] for e in expected), (expected, errors[0])
                assert "without --resume under another --name" in errors[0], errors[0]
                if damage != STARTS_RAY:
                    assert not any(m in result.output for m in RAY_BANNER_MARKERS), result.output
                changes = tree_changes(before, snapshot_tree(models))
                assert not changes, changes
