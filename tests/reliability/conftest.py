"""The reliability suite's infrastructure: the fault log and its table, and real checkpoints.

Every test injects a fault for real and counts its *tries* (one per operation exposed to the
fault) and how many *survived* (passed every check) in the session's :class:`FaultLog`::

    def test_x(fault_log: FaultLog) -> None:
        with fault_log.tries("truncated zip") as t:
            for op in operations:
                with t.attempt(op.name):
                    op.run_and_check()

A try whose checks raise is counted as not survived and the test fails at the end of the block
(after every try has run), so the counts are honest. At the end of the run, when reliability
tests ran, the suite prints one table: fault, tries, survived.

Training processes to kill or starve come from ``spawn`` (``tests/training_processes.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3 import s3, s3_server  # noqa: F401  (fixtures, used by name)
from tests.training_processes import (  # noqa: F401  (fixtures, used by name)
    fork_server,
    sb3_logs_in_tmp,
    spawn,
)

RELIABILITY_DIR = Path(__file__).resolve().parent


class FaultLog:
    """Tries and survivors per fault, summed over the session (first-recorded order)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}

    def record(self, fault: str, tries: int, survived: int) -> None:
        """Add ``tries`` exposures of ``fault``, of which ``survived`` passed their checks."""
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise ValueError(f"tries must be an integer >= 1, got {tries!r}")
        if isinstance(survived, bool) or not isinstance(survived, int):
            raise ValueError(f"survived must be an integer, got {survived!r}")
        if not 0 <= survived <= tries:
            raise ValueError(f"survived must be in [0, {tries}], got {survived!r}")
        row = self.rows.setdefault(fault, [0, 0])
        row[0] += tries
        row[1] += survived

    @contextlib.contextmanager
    def tries(self, fault: str) -> Iterator[Tries]:
        """Count the attempts made in the block, record them, then fail if any did not survive.

        An exception escaping the block outside any attempt counts as one more failed try.
        """
        t = Tries()
        try:
            yield t
        except (Exception, pytest.fail.Exception) as exc:
            t.count += 1
            t.failures.append(f"outside any attempt: {type(exc).__name__}: {exc}")
        if t.count == 0:
            raise AssertionError(f"no try was made for fault {fault!r}")
        self.record(fault, t.count, t.count - len(t.failures))
        if t.failures:
            pytest.fail(
                f"{fault}: {len(t.failures)} of {t.count} tries did not survive:\n"
                + "\n".join(f"- {f}" for f in t.failures),
                pytrace=False,
            )


class Tries:
    """The attempts of one fault inside :meth:`FaultLog.tries`."""

    def __init__(self) -> None:
        self.count = 0
        self.failures: list[str] = []

    @contextlib.contextmanager
    def attempt(self, what: str) -> Iterator[None]:
        """One try: it survived if the block raises nothing (its checks held)."""
        self.count += 1
        try:
            yield
        except (Exception, pytest.fail.Exception) as exc:
            self.failures.append(f"{what}: {type(exc).__name__}: {exc}")


FAULT_LOG = pytest.StashKey[FaultLog]()


@pytest.fixture(scope="session")
def fault_log(request: pytest.FixtureRequest) -> FaultLog:
    """The session's fault log (see :class:`FaultLog`); its table is printed at the end."""
    log = request.config.stash.get(FAULT_LOG, None)
    if log is None:
        log = request.config.stash[FAULT_LOG] = FaultLog()
    return log


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    log = config.stash.get(FAULT_LOG, None)
    if log is None or not log.rows:
        return
    header = ("fault", "tries", "survived")
    rows = [(fault, str(t), str(s)) for fault, (t, s) in log.rows.items()]
    total_tries = sum(t for t, _ in log.rows.values())
    total_survived = sum(s for _, s in log.rows.values())
    footer = ("total", str(total_tries), str(total_survived))
    widths = [max(len(r[i]) for r in [header, *rows, footer]) for i in range(3)]

    def line(cells: tuple[str, str, str]) -> str:
        return f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  {cells[2]:>{widths[2]}}"

    tr = terminalreporter
    tr.write_sep("=", "reliability: faults injected")
    tr.write_line(line(header))
    tr.write_line("  ".join("-" * w for w in widths))
    for row in rows:
        tr.write_line(line(row))
    tr.write_line("  ".join("-" * w for w in widths))
    tr.write_line(line(footer))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of this folder must carry the ``reliability`` marker."""
    for item in items:
        if (
            item.path.is_relative_to(RELIABILITY_DIR)
            and item.get_closest_marker("reliability") is None
        ):
            raise pytest.UsageError(f"{item.nodeid} is not marked @pytest.mark.reliability")


# --------------------------------------------------------------------------- real checkpoints


@pytest.fixture(scope="session")
def sb3_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root holding the checkpoints of one tiny real SB3 run (PPO on CartPole).

    Phase 1, market NQ, seed 42, 384 steps saved every 128: periodic checkpoints at 128, 256
    and 384 steps, the ``best`` ones the evaluations earned and a ``phase_end``, each with its
    VecNormalize pkl and metadata; ``best_model`` and the final model at the phase root.
    Read-only: tests work on copies (``helpers.copy_models``).
    """
    import torch

    from checkpointing import learn_with_checkpoints, list_checkpoints
    from tests.integration.train_script import (
        make_callback,
        make_manager,
        make_model,
        make_train_env,
        write_config,
    )

    work = tmp_path_factory.mktemp("sb3_run")  # SB3_LOGDIR: sb3_logs_in_tmp (autouse)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = write_config(
            work / "checkpoint_config.yaml",
            base_interval=128,
            max_interval_multiplier=1.0,
            target_timesteps=384,
            async_saves=False,
        )
        manager = make_manager(config, work / "models")
        model = make_model(make_train_env())
        callback = make_callback(manager, handle_signals=False)
        try:
            learn_with_checkpoints(model, 384, callback)
        finally:
            manager.close()
            callback.eval_env.close()
            model.get_env().close()
    finally:
        torch.set_num_threads(threads)
    names = [i.filename for i in list_checkpoints(manager.folder)]
    assert len(names) >= 4, f"the tiny run saved too few checkpoints: {names}"
    return work / "models"
