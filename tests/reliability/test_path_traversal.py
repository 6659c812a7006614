"""Traversal, absolute and NUL names and paths are refused before anything touches the disk.

Culprits: ``../x``, absolute paths and NUL in market names, experiment names and CLI paths
(``--models-root``, ``--config-dir``, ``--storage-path``, ``--model-path``, ``--root`` and
``--config``). The real CLIs run as subprocesses with a working directory in tmp; NUL cannot
travel through argv, so NUL (and the other culprits, cheaply) also go through the Python APIs:
``DynamicCheckpointManager(market=...)`` and the CLIs' ``main(argv)`` in-process. Afterwards:

- the exit code is 2 (argparse's and ours for bad input), without a traceback;
- the message on stderr names the culprit;
- no file or folder was created anywhere under the test's tmp dir (nor at an absolute culprit).

In-process, ``tuner.run.run_experiment`` (which starts Ray) and ``tuner.train.train_phase`` (which
trains) are replaced by tripwires: reaching one means validation let the culprit through.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpointing import DynamicCheckpointManager
from checkpointing.errors import CheckpointNameError
from tests.reliability.conftest import FaultLog
from tests.reliability.helpers import call_main, run_clis, snapshot_tree, tree_changes
from tests.tiny_config import tiny_config_dir

pytestmark = pytest.mark.reliability

ABSOLUTE_EXPERIMENT = "/tmp/reliability-absolute-experiment"
CONTINUE_FROM_MISSING = ("--continue", "--model-path", "../no/such.zip")


class ReachedTheDisk(Exception):
    """Raised by the tripwires: validation let a culprit through to Ray or to training."""


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A tiny valid config folder and an empty working directory (the cwd), both in tmp."""
    config = tiny_config_dir(tmp_path / "config")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "a-file").write_text("a file, not a folder")
    monkeypatch.chdir(work)
    yield {"tmp": tmp_path, "config": config, "work": work, "file": tmp_path / "a-file"}


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.run
    import tuner.train

    def reached(what: str) -> Callable[..., Any]:
        def wire(*args: Any, **kwargs: Any) -> Any:
            raise ReachedTheDisk(f"validation let it through to {what}")

        return wire

    monkeypatch.setattr(tuner.run, "run_experiment", reached("tuner.run.run_experiment (Ray)"))
    monkeypatch.setattr(tuner.train, "train_phase", reached("tuner.train.train_phase"))


def _in_process(module: str, argv: list[str]) -> tuple[int | str, str]:
    """``module.main(argv)`` in-process: (exit code, stderr)."""
    result = call_main(module, argv)
    return result.returncode, result.stderr


def _names(culprit: str, message: str) -> bool:
    return culprit in message or repr(culprit)[1:-1] in message


def _check_refused(
    code: int | str, err: str, culprit: str, before: dict[str, Any], tmp: Path
) -> None:
    assert code == 2, f"exit {code!r}; stderr: {err[-1500:]}"
    assert "Traceback" not in err, err[-3000:]
    assert _names(culprit, err), f"the message does not name {culprit!r}: {err[-1500:]}"
    changes = tree_changes(before, snapshot_tree(tmp))
    assert not changes, f"the disk was touched: {changes}"


# --------------------------------------------------------------------------- real CLIs


def test_the_real_clis_refuse_traversal_and_absolute_culprits(
    sandbox: dict[str, Path], fault_log: FaultLog
) -> None:
    """Nine real CLI processes at once, one culprit each: exit 2 naming it, nothing created."""
    cfg = os.fspath(sandbox["config"])
    cases = [  # (argv, culprit); all run at once
        (["tuner.run", "--markets", "../x", "--config-dir", cfg], "../x"),
        (
            ["tuner.run", "--markets", "NQ", "--name", ABSOLUTE_EXPERIMENT, "--config-dir", cfg],
            ABSOLUTE_EXPERIMENT,
        ),
        (["tuner.run", "--markets", "NQ", "--config-dir", "../no-config"], "../no-config"),
        (
            ["tuner.train", "--market", "NQ", "--config-dir", cfg, *CONTINUE_FROM_MISSING],
            "../no/such.zip",
        ),
        (["checkpointing.retention", "--phase", "1", "--market", "../x"], "../x"),
        (["checkpointing.retention", "--phase", "1", "--root", "../no-root"], "../no-root"),
        (["checkpointing.retention", "--phase", "1", "--config", "/no/such.yaml"], "/no/such.yaml"),
        (["checkpointing.summary", "--market", "/NQ"], "/NQ"),
        (["checkpointing.summary", "--root", "../../no-root"], "../../no-root"),
    ]
    before = snapshot_tree(sandbox["tmp"])
    results = run_clis([argv for argv, _ in cases], sandbox["work"])
    with fault_log.tries("traversal/absolute culprits: real CLIs") as t:
        for (argv, culprit), result in zip(cases, results, strict=True):
            with t.attempt(f"{argv[0]} {culprit}"):
                _check_refused(result.returncode, result.stderr, culprit, before, sandbox["tmp"])
                assert not os.path.exists(ABSOLUTE_EXPERIMENT)


# --------------------------------------------------------------------------- Python APIs

MARKETS = ["../x", "/NQ", "N\x00Q", "NQ/../ES", "..", "NQ\\ES", ""]


def test_checkpoint_manager_refuses_traversal_in_market_names(
    sandbox: dict[str, Path], fault_log: FaultLog
) -> None:
    """``DynamicCheckpointManager(market=...)`` raises ``CheckpointNameError`` naming the
    market before any path is built: nothing appears under the models root."""
    before = snapshot_tree(sandbox["tmp"])
    with fault_log.tries("traversal/absolute/NUL market: DynamicCheckpointManager") as t:
        for market in MARKETS:
            with t.attempt(repr(market)):
                with pytest.raises(CheckpointNameError) as info:
                    DynamicCheckpointManager(
                        None, phase=1, market=market, seed=42, models_root=sandbox["tmp"] / "m"
                    )
                assert repr(market) in str(info.value)
                assert not tree_changes(before, snapshot_tree(sandbox["tmp"]))


def _api_cases(s: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    cfg = ["--config-dir", os.fspath(s["config"])]
    cases: list[tuple[str, list[str], str]] = []
    for market in MARKETS[:5]:
        cases.append(("tuner.run", ["--markets", f"ES,{market}", *cfg], market))
        cases.append(("tuner.train", ["--market", market, *cfg], market))
        cases.append(("checkpointing.retention", ["--phase", "1", "--market", market], market))
        cases.append(("checkpointing.summary", ["--phase", "1", "--market", market], market))
    for name in ("../x", ABSOLUTE_EXPERIMENT, "a\x00b", "a/b", ".."):
        cases.append(("tuner.run", ["--markets", "NQ", "--name", name, *cfg], name))
    nul = "mo\x00dels"
    for flag in ("--models-root", "--storage-path", "--config-dir"):
        args = ["--markets", "NQ", *cfg, flag, nul]
        cases.append(("tuner.run", args, nul))
    for flag in ("--models-root", "--config-dir"):
        cases.append(("tuner.train", ["--market", "NQ", *cfg, flag, nul], nul))
    cases.append(("tuner.train", ["--market", "NQ", *cfg, "--continue", "--model-path", nul], nul))
    cases.append(("tuner.run", ["--markets", "NQ", *cfg, "--storage-path", ""], ""))
    cases.append(("checkpointing.retention", ["--phase", "1", "--root", nul], nul))
    return cases


def test_python_apis_refuse_traversal_absolute_and_nul(
    sandbox: dict[str, Path], tripwires: None, fault_log: FaultLog
) -> None:
    """Market names, experiment names and NUL paths through the four CLIs' ``main(argv)``:
    exit 2 naming the culprit, no tripwire reached, nothing created."""
    before = snapshot_tree(sandbox["tmp"])
    with fault_log.tries("traversal/absolute/NUL culprits: CLIs' main() in-process") as t:
        for module, argv, culprit in _api_cases(sandbox):
            with t.attempt(f"{module} {argv[-2]} {culprit!r}"):
                code, err = _in_process(module, argv)
                _check_refused(code, err, culprit, before, sandbox["tmp"])


# --------------------------------------------------------------------------- known bugs


def test_nul_in_the_config_and_root_of_retention_and_summary(
    sandbox: dict[str, Path], fault_log: FaultLog
) -> None:
    before = snapshot_tree(sandbox["tmp"])
    nul = "con\x00fig.yaml"
    cases = [
        ("checkpointing.retention", ["--phase", "1", "--config", nul]),
        ("checkpointing.summary", ["--config", nul]),
        ("checkpointing.summary", ["--root", nul]),
    ]
    with fault_log.tries("NUL in retention/summary --config, --root") as t:
        for module, argv in cases:
            with t.attempt(f"{module} {argv[-2]}"):
                code, err = _in_process(module, argv)
                _check_refused(code, err, argv[-1], before, sandbox["tmp"])


def test_empty_cli_paths_are_refused(
    sandbox: dict[str, Path], tripwires: None, fault_log: FaultLog
) -> None:
    cfg = ["--config-dir", os.fspath(sandbox["config"])]
    cases = [
        ("tuner.run", ["--markets", "NQ", *cfg, "--models-root", ""]),
        ("tuner.train", ["--market", "NQ", *cfg, "--models-root", ""]),
        ("tuner.train", ["--market", "NQ", *cfg, "--continue", "--model-path", ""]),
        ("checkpointing.retention", ["--phase", "1", "--root", ""]),
        ("checkpointing.summary", ["--root", ""]),
    ]
    before = snapshot_tree(sandbox["tmp"])
    with fault_log.tries("empty CLI paths") as t:
        for module, argv in cases:
            with t.attempt(f"{module} {argv[-2]} ''"):
                code, err = _in_process(module, argv)
                _check_refused(code, err, argv[-2], before, sandbox["tmp"])


def test_a_file_where_a_folder_is_needed_is_refused_before_ray(
    sandbox: dict[str, Path], tripwires: None, fault_log: FaultLog
) -> None:
    cfg = ["--config-dir", os.fspath(sandbox["config"])]
    a_file = os.fspath(sandbox["file"])
    cases = [
        ("tuner.run", ["--markets", "NQ", *cfg, "--models-root", a_file]),
        ("tuner.run", ["--markets", "NQ", *cfg, "--storage-path", a_file]),
        ("tuner.train", ["--market", "NQ", *cfg, "--models-root", a_file]),
    ]
    before = snapshot_tree(sandbox["tmp"])
    with fault_log.tries("a file given as a folder path") as t:
        for module, argv in cases:
            with t.attempt(f"{module} {argv[-2]}"):
                code, err = _in_process(module, argv)
                _check_refused(code, err, a_file, before, sandbox["tmp"])
