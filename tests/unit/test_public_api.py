"""The public names of the checkpointing package, and its layering."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


PUBLIC = {
    *SEED_NOTE_NAMES,
    "CheckpointConfig",
    "CheckpointCorruptError",
    "CheckpointDiff",
    "CheckpointName",
    "CheckpointNameError",
    "CheckpointRetentionManager",
    "ConfigError",
    "LoadedCheckpoint",
    "TrainingInterrupted",
    "TrainingStopped",
    "diff_checkpoints",
    "format_checkpoint_name",
    "learn_with_checkpoints",
    "list_checkpoints",
    "load_config",
    "run_to_continue",
    "verify_checkpoint",
}


def test_the_public_names_are_exactly_these_and_all_import() -> None:
    assert set(checkpointing.__all__) == PUBLIC
    assert len(checkpointing.__all__) == len(PUBLIC)  # none listed twice
    for name in checkpointing.__all__:
        assert getattr(checkpointing, name) is not None
    assert sorted(dir(checkpointing)) == sorted(PUBLIC)


def test_importing_the_package_loads_neither_ray_tuner_nor_torch() -> None:
    code = (
        "import sys, checkpointing, checkpointing.config, checkpointing.store;"
        "checkpointing.parse_checkpoint_filename('x.zip');"
        "heavy = ('ray', 'tuner', 'torch', 'stable_baselines3');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_object_store_modules_load_pyarrow_only_when_used() -> None:
    code = (
        "import sys, checkpointing.uploads, checkpointing.object_store, checkpointing.locations;"
        "print(sorted(m for m in ('pyarrow', 'ray', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (at any depth of the file)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / package
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[module] = found
    return graph


def test_checkpointing_never_imports_ray_or_tuner() -> None:
    for module, imported in _imports("checkpointing").items():
        bad = sorted(m for m in imported if m.split(".")[0] in ("ray", "tuner"))
        assert bad == [], f"{module} imports {bad}"


@pytest.mark.parametrize("package", ["checkpointing", "tuner"])
def test_no_import_circles(package: str) -> None:
    graph = _imports(package)
    edges = {
        m: {i for i in imported if i in graph and i != package} for m, imported in graph.items()
    }

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(edges[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(edges[module])
        return seen

    circles = sorted(m for m in graph if m != package and m in reach(m))
    assert circles == []
