"""Malformed configuration is refused by ``python -m tuner.run`` before Ray starts.

A corpus of broken config folders: each is a valid tiny folder (``tests/tiny_config.py``) with
exactly one thing broken in one of the four files (typos, wrong types, negative, NaN and
infinite values, YAML ``no``, empty and missing files, a folder instead of a file, binary
garbage, deeply nested junk, an inheritance cycle). For each, ``tuner.run`` must:

- exit with code 2, with a message naming the key or the file (no traceback);
- create neither a ``ray_results`` nor a models folder (nothing at all in its cwd);
- never start Ray: ``ray.is_initialized()`` is False and Ray's start-up banner is not printed.

Most cases run in-process through ``tuner.run.main(argv)`` (cheap);
``tuner.run.run_experiment``, the part that starts Ray, is replaced by a tripwire so a case
that slips through fails instead of training. A few run as real subprocesses
(``python -m tuner.run``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.reliability.conftest import FaultLog
from tests.reliability.helpers import RAY_BANNER_MARKERS, run_clis
from tests.tiny_config import tiny_config_dir

pytestmark = pytest.mark.reliability

CKPT, LLM, MARKETS, TRAINING = (
    "checkpoint_config.yaml",
    "llm_config.yaml",
    "markets.yaml",
    "training.yaml",
)


@dataclass(frozen=True)
class Case:
    """One broken config folder: ``breaks(folder)`` breaks ``file``; ``culprit`` must be named
    in the error (a key, or the file's name)."""

    name: str
    file: str
    breaks: Callable[[Path], None]
    culprit: str


def _set(file: str, path: str, value: Any) -> Callable[[Path], None]:
    """Set the key at the dotted ``path`` (creating it if needed) in the YAML ``file``."""

    def breaks(folder: Path) -> None:
        doc = yaml.safe_load((folder / file).read_text())
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
        (folder / file).write_text(yaml.safe_dump(doc, sort_keys=False))

    return breaks


def _rename(file: str, path: str, new_key: str) -> Callable[[Path], None]:
    """Rename the key at ``path`` (a typo), keeping its value."""

    def breaks(folder: Path) -> None:
        doc = yaml.safe_load((folder / file).read_text())
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[new_key] = node.pop(last)
        (folder / file).write_text(yaml.safe_dump(doc, sort_keys=False))

    return breaks


def _text(file: str, pattern: str, replacement: str) -> Callable[[Path], None]:
    """Replace the first match of ``pattern`` in the file's text (YAML spelled by hand)."""

    def breaks(folder: Path) -> None:
        text = (folder / file).read_text()
        new = re.sub(pattern, replacement, text, count=1, flags=re.MULTILINE)
        assert new != text, f"{pattern!r} not found in {file}"
        (folder / file).write_text(new)

    return breaks


def _content(file: str, raw: bytes) -> Callable[[Path], None]:
    def breaks(folder: Path) -> None:
        (folder / file).write_bytes(raw)

    return breaks


def _missing(file: str) -> Callable[[Path], None]:
    def breaks(folder: Path) -> None:
        (folder / file).unlink()

    return breaks


def _a_folder(file: str) -> Callable[[Path], None]:
    def breaks(folder: Path) -> None:
        (folder / file).unlink()
        (folder / file).mkdir()
        (folder / file / "inside.yaml").write_text("checkpointing: {}\n")

    return breaks


def _cycle(folder: Path) -> None:
    """llm_config.yaml inherits base.yaml, which inherits llm_config.yaml."""
    (folder / "base.yaml").write_text(
        "checkpointing:\n  use_default_config: true\n  default_config: llm_config.yaml\n"
    )
    _set(LLM, "checkpointing.default_config", "base.yaml")(folder)


# Bytes that are not UTF-8 (the first one never starts a UTF-8 sequence), then junk.
GARBAGE = b"\xff\xfe\x00\x01" + bytes(range(256)) * 4
NESTED = ("x: " + "[" * 800 + "]" * 800 + "\n").encode()

CASES = [
    # checkpoint_config.yaml (inherited by llm_config.yaml)
    Case(
        "typo keep_lastn",
        CKPT,
        _rename(CKPT, "checkpointing.retention.keep_last_n", "keep_lastn"),
        "keep_lastn",
    ),
    Case(
        "negative keep_last_n",
        CKPT,
        _set(CKPT, "checkpointing.retention.keep_last_n", -1),
        "keep_last_n",
    ),
    Case(
        "NaN max_interval_multiplier",
        CKPT,
        _set(CKPT, "checkpointing.phase1.max_interval_multiplier", math.nan),
        "max_interval_multiplier",
    ),
    Case(
        "infinite min_disk_space_gb",
        CKPT,
        _set(CKPT, "checkpointing.performance.min_disk_space_gb", math.inf),
        "min_disk_space_gb",
    ),
    Case(
        "string base_interval",
        CKPT,
        _set(CKPT, "checkpointing.phase1.base_interval", "25k"),
        "base_interval",
    ),
    Case(
        "YAML no as base_interval",
        CKPT,
        _text(CKPT, r"base_interval: \d+", "base_interval: no"),
        "base_interval",
    ),
    Case(
        "YAML no as atomic_saves",
        CKPT,
        _text(CKPT, r"atomic_saves: true", "atomic_saves: no"),
        "atomic_saves",
    ),
    Case(
        "unknown event in preserve_events",
        CKPT,
        _set(CKPT, "checkpointing.retention.preserve_events", ["phase_end", "weekly"]),
        "preserve_events",
    ),
    Case(
        "path template without {market}",
        CKPT,
        _set(CKPT, "checkpointing.paths.phase1", "./models/phase1/checkpoints/"),
        "paths.phase1",
    ),
    Case(
        "monitored_metrics not a list",
        CKPT,
        _set(CKPT, "checkpointing.events.monitored_metrics", "sharpe_ratio"),
        "monitored_metrics",
    ),
    Case("empty checkpoint_config.yaml", CKPT, _content(CKPT, b""), CKPT),
    Case("missing checkpoint_config.yaml", CKPT, _missing(CKPT), CKPT),
    Case("checkpoint_config.yaml is a folder", CKPT, _a_folder(CKPT), CKPT),
    Case("binary checkpoint_config.yaml", CKPT, _content(CKPT, GARBAGE), CKPT),
    Case(
        "not YAML: tab indentation",
        CKPT,
        _content(CKPT, b"checkpointing:\n\tphase1: {}\n"),
        CKPT,
    ),
    # llm_config.yaml
    Case(
        "advisor min_confidence 1.5",
        LLM,
        _set(LLM, "advisor.min_confidence", 1.5),
        "min_confidence",
    ),
    Case("unknown advisor kind", LLM, _set(LLM, "advisor.kind", "gpt"), "kind"),
    Case(
        "quoted 'yes' as use_default_config",
        LLM,
        _set(LLM, "checkpointing.use_default_config", "yes"),
        "use_default_config",
    ),
    Case(
        "default_config that does not exist",
        LLM,
        _set(LLM, "checkpointing.default_config", "no_such_base.yaml"),
        "no_such_base.yaml",
    ),
    Case(
        "unknown llm_metadata field",
        LLM,
        _set(LLM, "checkpointing.llm_metadata", ["reasoning_usage_rate", "vibes"]),
        "llm_metadata",
    ),
    Case("empty llm_config.yaml", LLM, _content(LLM, b""), LLM),
    # markets.yaml
    Case("negative tick_size", MARKETS, _set(MARKETS, "markets.NQ.tick_size", -0.25), "tick_size"),
    Case(
        "NaN commission_per_side",
        MARKETS,
        _set(MARKETS, "markets.NQ.commission_per_side", math.nan),
        "commission_per_side",
    ),
    Case(
        "YAML no as a market name",
        MARKETS,
        _text(MARKETS, r"^  NQ:", "  NO:"),
        MARKETS,
    ),
    Case(
        "split fractions above 1",
        MARKETS,
        _set(MARKETS, "defaults.split.train", 0.95),
        "split",
    ),
    Case(
        "data file that does not exist",
        MARKETS,
        _set(MARKETS, "markets.NQ.data", {"file": "no_such_bars.csv"}),
        "no_such_bars.csv",
    ),
    Case("missing markets.yaml", MARKETS, _missing(MARKETS), MARKETS),
    Case("markets.yaml is a folder", MARKETS, _a_folder(MARKETS), MARKETS),
    # training.yaml
    Case("zero n_envs", TRAINING, _set(TRAINING, "training.n_envs", 0), "n_envs"),
    Case(
        "NaN learning_rate",
        TRAINING,
        _set(TRAINING, "training.phase1.ppo.learning_rate", math.nan),
        "learning_rate",
    ),
    Case("typo n_env", TRAINING, _rename(TRAINING, "training.n_envs", "n_env"), "n_env"),
    Case(
        "1e6 is a string in YAML",
        TRAINING,
        _text(TRAINING, r"target_timesteps: \d+", "target_timesteps: 1e6"),
        "target_timesteps",
    ),
    Case(
        "batch_size above n_steps x n_envs",
        TRAINING,
        _set(TRAINING, "training.phase1.ppo.batch_size", 4096),
        "batch_size",
    ),
    Case(
        "net_arch outside phase 1",
        TRAINING,
        _set(TRAINING, "training.phase2.ppo.net_arch", [8]),
        "net_arch",
    ),
    Case("unknown device", TRAINING, _set(TRAINING, "training.device", "gpu"), "device"),
    Case(
        "YAML no as eval_episode_length",
        TRAINING,
        _text(TRAINING, r"eval_episode_length: \d+", "eval_episode_length: no"),
        "eval_episode_length",
    ),
    Case("empty training.yaml", TRAINING, _content(TRAINING, b""), TRAINING),
    Case("binary training.yaml", TRAINING, _content(TRAINING, GARBAGE), TRAINING),
]

# Once let through as tracebacks (binary and nested YAML, an inheritance cycle).
CASES += [
    Case("binary markets.yaml", MARKETS, _content(MARKETS, GARBAGE), MARKETS),
    Case("deeply nested checkpoint_config.yaml", CKPT, _content(CKPT, NESTED), CKPT),
    Case("deeply nested training.yaml", TRAINING, _content(TRAINING, NESTED), TRAINING),
    Case("default_config inheritance cycle", LLM, _cycle, "default_config"),
]


@pytest.fixture(scope="module")
def pristine_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_config_dir(tmp_path_factory.mktemp("pristine_config"))


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace ``tuner.run.run_experiment`` (which starts Ray) by a tripwire; returns what
    reached it."""
    import tuner.run

    reached: list[str] = []

    def tripwire(opts: Any, settings: Any) -> int:
        reached.append(opts.name)
        return 0

    monkeypatch.setattr(tuner.run, "run_experiment", tripwire)
    return reached


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")  # never imported: never started
    return bool(ray is not None and ray.is_initialized())


def _run_case(
    case: Case,
    pristine: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    reached: list[str],
) -> None:
    import tuner.run

    folder = shutil.copytree(pristine, tmp_path / "config")
    case.breaks(folder)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = tuner.run.main(["--markets", "NQ,ES", "--config-dir", os.fspath(folder)])
    out, err = capsys.readouterr()
    assert not reached, f"validation let it through: Ray would have started ({reached})"
    assert code == 2, f"exit {code!r}; stderr: {err[-1500:]}"
    assert case.culprit in err, f"the message does not name {case.culprit!r}: {err[-1500:]}"
    assert os.listdir(work) == [], f"created {os.listdir(work)} (ray_results? models?)"
    assert not _ray_initialized(), "Ray was started"
    banner = [m for m in RAY_BANNER_MARKERS if m in out + err]
    assert not banner, f"Ray's banner was printed: {banner}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_config_is_refused_before_ray(
    case: Case,
    pristine_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str],
    fault_log: FaultLog,
) -> None:
    """Exit 2 naming the culprit; no Ray, no banner, nothing created (module docstring)."""
    with fault_log.tries(f"bad {case.file}") as t, t.attempt(case.name):
        _run_case(case, pristine_config, tmp_path, monkeypatch, capsys, no_ray)


REAL_CASES = ("typo keep_lastn", "YAML no as a market name", "1e6 is a string in YAML")


def test_real_tuner_run_refuses_bad_config_before_ray(
    pristine_config: Path, tmp_path: Path, fault_log: FaultLog
) -> None:
    """The same promise from real ``python -m tuner.run`` processes (three cases, run at once
    in one empty working directory): exit 2, the culprit named, no Ray banner, nothing
    created."""
    picked = [c for c in CASES if c.name in REAL_CASES]
    assert len(picked) == len(REAL_CASES)
    commands = []
    for i, case in enumerate(picked):
        folder = shutil.copytree(pristine_config, tmp_path / f"config{i}")
        case.breaks(folder)
        commands.append(["tuner.run", "--markets", "NQ,ES", "--config-dir", os.fspath(folder)])
    work = tmp_path / "work"
    work.mkdir()
    results = run_clis(commands, work)
    with fault_log.tries("bad config: real python -m tuner.run") as t:
        for case, result in zip(picked, results, strict=True):
            with t.attempt(case.name):
                assert result.returncode == 2, result.describe()
                assert "Traceback" not in result.stderr, result.describe()
                assert case.culprit in result.stderr, result.describe()
                banner = [m for m in RAY_BANNER_MARKERS if m in result.output]
                assert not banner, f"Ray's banner was printed: {banner}"
                assert os.listdir(work) == [], f"created {os.listdir(work)}"
