"""The reader of Tune's files (:mod:`tuner.driver.tune_files`): a trial's ``result.json`` read in
one pass, and the experiment state read with and without its embedded pickles checked."""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkpointing.naming import CheckpointName, parse_name
from checkpointing.ranking import METRICS
from tuner.driver.tune_files import (
    Damaged,
    TrialResults,
    finite,
    integer,
    parse_experiment_state,
    read_results,
)

OURS = CheckpointName("NQ", 2000, "periodic", 0.1, 1.5, 7, "exp-a1b2c-00001").filename
LATER = CheckpointName("NQ", 3000, "phase_end", 0.2, 1.7, 7, "exp-a1b2c-00001").filename
LEGACY_RUN = CheckpointName("NQ", 1000, "periodic", 0.1, 1.5, 7).filename  # before run ids


def _row(**fields: Any) -> dict[str, Any]:
    return {"val_reward": 0.1, "sharpe_ratio": 1.5, "run_id": "exp-a1b2c-00001", **fields}


def _write(path: Path, rows: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def test_a_cut_last_line_leaves_the_last_whole_result(tmp_path: Path) -> None:
    rows = [_row(timesteps=1000, checkpoint=OURS), _row(timesteps=2000, finished=True)]
    cut = json.dumps(_row(timesteps=3000, checkpoint=LATER))[:40]  # a copy in progress
    out = read_results(_write(tmp_path / "result.json", rows, cut))
    assert out.count == 2
    assert out.last == rows[1]
    assert out.timesteps == 2000
    assert out.checkpoint == OURS


def test_the_most_timesteps_and_the_latest_metrics_checkpoint_and_time(tmp_path: Path) -> None:
    rows = [
        _row(timesteps=30_000, timestamp=200, checkpoint=f"/models/phase1/NQ/{OURS}"),
        _row(timesteps=31_000, timestamp=210, checkpoint=LATER),
        # A retry from an earlier checkpoint reports fewer timesteps; its clock went back too.
        _row(timesteps=26_000, timestamp=150, val_reward=0.4, checkpoint="model.pt"),
        {"timesteps": 27_000, "checkpoint": None, "run_id": "exp-a1b2c-00001"},  # no metrics
    ]
    out = read_results(_write(tmp_path / "result.json", rows))
    assert (out.count, out.first, out.last) == (4, rows[0], rows[3])
    assert out.timesteps == 31_000
    assert out.last_time == 210
    assert out.metrics["val_reward"] == 0.4  # the latest result that carried metrics
    assert out.checkpoint == LATER  # the last one of ours named
    assert out.run_id == "exp-a1b2c-00001"


def test_results_before_run_ids_take_the_run_of_their_checkpoints(tmp_path: Path) -> None:
    rows = [
        {"val_reward": 0.1, "checkpoint": f"/models/phase1/NQ/checkpoints/{OURS}"},
        {"val_reward": 0.2, "checkpoint": LEGACY_RUN},  # the legacy run: no run in the name
    ]
    out = read_results(_write(tmp_path / "result.json", rows))
    assert out.run_id == "exp-a1b2c-00001"
    assert out.checkpoint == LEGACY_RUN
    out = read_results(_write(tmp_path / "result.json", rows[:1]))
    assert out.checkpoint == OURS  # a path gives its file name


def test_a_missing_file_reads_as_no_results(tmp_path: Path) -> None:
    assert read_results(tmp_path / "result.json") == TrialResults()


def _reference(rows: list[object]) -> TrialResults:
    """Each result taken in turn, as the definition of :class:`TrialResults` reads."""
    out = TrialResults()
    for row in rows:
        if not isinstance(row, dict):
            continue
        out.count += 1
        out.first = out.first if out.first is not None else row
        out.last = row
        if any(isinstance(row.get(m), (int, float)) for m in METRICS):
            out.metrics = {m: finite(row.get(m)) for m in METRICS}
        if integer(row.get("phase")) is not None:
            out.phase = integer(row.get("phase"))
        steps = integer(row.get("timesteps"))
        if steps is not None:
            out.timesteps = steps if out.timesteps is None else max(out.timesteps, steps)
        value = row.get("checkpoint")
        name = value.replace("\\", "/").rsplit("/", 1)[-1] if isinstance(value, str) else None
        parsed = parse_name(name) if name else None
        if parsed is not None:
            out.checkpoint = name
            if isinstance(parsed, CheckpointName) and parsed.run_id:
                out.run_id = parsed.run_id
        if isinstance(row.get("run_id"), str):
            out.run_id = row["run_id"]
        stamp = finite(row.get("timestamp"))
        if stamp is not None:
            out.last_time = stamp if out.last_time is None else max(out.last_time, stamp)
    return out


_ROWS = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "val_reward": st.sampled_from([0.5, float("nan"), True, "x"]),
                "phase": st.sampled_from([1, 2, 2.0, "3"]),
                "timesteps": st.integers(0, 5),
                "timestamp": st.sampled_from([1.0, 3.0, float("inf")]),
                "checkpoint": st.sampled_from(
                    [OURS, LATER, LEGACY_RUN, f"dir/{LATER}", "model.pt", "", None, 3]
                ),
                "run_id": st.sampled_from(["exp-a", "exp-b", None, 5]),
            },
        ),
        st.sampled_from([[1], "text", 7]),
    ),
    max_size=8,
)


@given(rows=_ROWS)
def test_one_pass_is_each_result_in_turn(rows: list[object]) -> None:
    lines = [json.dumps(r) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "result.json")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert read_results(path) == _reference([json.loads(line) for line in lines])


def _state(embedded_pickle: bytes) -> bytes:
    trial = {"relative_logdir": "train_trial_0", "trial_id": "a1b2c_00000", "status": "RUNNING"}
    trial["storage"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": embedded_pickle.hex()}
    runtime = {"start_time": 5.0, "num_failures": 1, "last_result": {"timesteps": 10}}
    doc = {"trial_data": [[json.dumps(trial), json.dumps(runtime)]], "runner_data": {}}
    return json.dumps(doc).encode()


def test_the_embedded_pickles_are_checked_unless_asked_not_to() -> None:
    cut = _state(pickle.dumps({"storage": list(range(10))})[:-5])
    with pytest.raises(Damaged, match="truncated or not a pickle"):
        parse_experiment_state(cut)
    (trial,) = parse_experiment_state(cut, check_pickles=False)
    assert (trial.relative_logdir, trial.trial_id, trial.status) == (
        "train_trial_0",
        "a1b2c_00000",
        "RUNNING",
    )
    assert (trial.start_time, trial.num_failures) == (5.0, 1)
    assert parse_experiment_state(_state(pickle.dumps(None))) == [trial]
