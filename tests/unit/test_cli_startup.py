"""``--help`` and config validation load none of the heavy packages (torch, Ray, SB3, pandas ...).

Those take seconds to import; a command line must answer ``--help`` (and refuse a bad
argument) before it loads any of them. ``bench/cli_startup.py`` measures the times; these tests
pin the behaviour: which modules a fresh process has loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "stable_baselines3", "ray", "pandas", "pyarrow", "gymnasium")


def _loaded_after(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; the heavy packages it left in sys.modules."""
    probe = (
        "import json, sys\n"
        "exit_code = None\n"
        "try:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "except SystemExit as exc:\n"
        "    exit_code = exc.code\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted(m for m in heavy if m in sys.modules)\n"
        "sys.stdout.flush()\n"
        "print('\\n' + json.dumps({'exit': exit_code, 'loaded': loaded}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    *printed, last = done.stdout.rstrip("\n").split("\n")
    result: dict[str, object] = json.loads(last)
    result["stdout"] = "\n".join(printed)
    return result


@pytest.mark.parametrize(
    "module",
    [
        "tuner.run",
        "checkpointing.retention",
        "tuner.train",
        "tuner.browse",
        "checkpointing.diff",
        "tuner.diff",
        "tuner.data",
        "tuner.report",
    ],
)
def test_help_loads_no_heavy_package(module: str) -> None:
    result = _loaded_after(
        f"import runpy\nsys.argv = [{module!r}, '--help']\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    assert result["exit"] == 0
    assert "usage:" in str(result["stdout"])
    assert result["loaded"] == []


def test_a_bad_argument_is_refused_before_anything_heavy_loads() -> None:
    result = _loaded_after(
        "from tuner.run import main\n"
        "sys.exit(main(['--markets', 'NQ', '--seeds', 'x', '--config-dir', 'config']))"
    )
    assert result["exit"] == 2
    assert result["loaded"] == []


def test_validating_every_config_loads_no_heavy_package() -> None:
    result = _loaded_after(
        "from tuner.training.settings import load_settings\nload_settings('config')"
    )
    assert result["loaded"] == []


def test_writing_a_report_loads_no_heavy_package(tmp_path: Path) -> None:
    """The driver writes the report in its own process, which never imports torch or Ray."""
    from checkpointing.naming import CheckpointName
    from tests.report_files import checkpoint_dir, report_row, write_checkpoint, write_trial

    models = tmp_path / "models"
    name = CheckpointName("NQ", 500, "phase_end", 0.1, 1.0, 1, "light-t1")
    write_checkpoint(checkpoint_dir(models, "NQ"), name)
    rows = [report_row(name, finished=True)]
    write_trial(tmp_path / "rr" / "light", "t1", market="NQ", seed=1, models=models, rows=rows)
    result = _loaded_after(
        "from tuner.report import main\n"
        f"sys.exit(main(['--storage-path', {str(tmp_path / 'rr')!r}, '--experiment', 'light']))"
    )
    assert result["exit"] == 0, result
    assert (models / "summaries" / "light_report.html").is_file()
    assert result["loaded"] == []
