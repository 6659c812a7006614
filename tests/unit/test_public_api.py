"""The public names of the checkpointing package, and its layering."""

from __future__ import annotations

import subprocess
import sys

import checkpointing

SEED_NOTE_NAMES = {
    "DynamicCheckpointManager",
    "MetricTrackingEvalCallback",
    "parse_checkpoint_filename",
    "read_checkpoint_metadata",
    "write_checkpoint_metadata",
    "load_checkpoint",
    "find_resume_checkpoint",
}


def test_seed_note_names_are_importable() -> None:
    assert set(checkpointing.__all__) >= SEED_NOTE_NAMES
    for name in checkpointing.__all__:
        assert getattr(checkpointing, name) is not None


def test_importing_the_package_loads_neither_ray_tuner_nor_torch() -> None:
    code = (
        "import sys, checkpointing, checkpointing.config, checkpointing.store;"
        "checkpointing.parse_checkpoint_filename('x.zip');"
        "heavy = ('ray', 'tuner', 'torch', 'stable_baselines3');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
