"""Retention on real files: the seed note's 100 -> 14 example, what is never touched,
interrupts, leftovers, the lock, and the CLI (run as a subprocess)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpointing.config import CheckpointConfig, RetentionConfig
from checkpointing.files import temp_name
from checkpointing.metadata import build_metadata
from checkpointing.naming import CheckpointName
from checkpointing.policies import LatestPeriodic, build_policy
from checkpointing.registry import Registry
from checkpointing.retention import plan, prune_folder, prune_tree
from checkpointing.store import commit_files, folder_lock, list_checkpoints

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = CheckpointConfig()
SEED = 42

# The seed note: 100 checkpoints in models/phase1/NQ/checkpoints/ -> 14 kept.
# 99 periodic (20K .. 1.28M every 14K, then 1.3M .. 2M every 100K) and 1 phase_end at 2M.
PERIODIC_TS = [20_000 + 14_000 * i for i in range(91)] + [1_300_000 + 100_000 * i for i in range(8)]
TOP_SHARPE = {30: 2.10, 50: 1.98, 70: 1.92}  # index into PERIODIC_TS -> Sharpe
TOP_REWARD = {10: 0.301, 60: 0.298}  # index -> val_reward


def seed_note_names() -> tuple[list[CheckpointName], set[str]]:
    """The 100 checkpoint names and the 14 the seed note keeps."""
    rng = random.Random(7)
    names = []
    for i, ts in enumerate(PERIODIC_TS):
        sharpe = TOP_SHARPE.get(i, rng.uniform(0.5, 1.85))
        val = TOP_REWARD.get(i, rng.uniform(0.05, 0.29))
        names.append(CheckpointName("NQ", ts, "periodic", val, sharpe, SEED))
    names.append(CheckpointName("NQ", 2_000_000, "phase_end", 0.200, 1.50, SEED))
    keep = {n.filename for n in names[91:99]}  # last 8 periodic: 1.3M .. 2M
    keep |= {names[i].filename for i in (*TOP_SHARPE, *TOP_REWARD)}
    keep.add(names[-1].filename)
    return names, keep


def commit(
    folder: Path, name: CheckpointName, *, registry: Registry | None = None, phase: int = 1
) -> Path:
    """Commit a small real checkpoint (zip, pkl, metadata JSON) through the commit protocol."""
    metrics = {"val_reward": name.val_reward, "sharpe_ratio": name.sharpe_ratio, "win_rate": 0.5}
    zip_path, _ = commit_files(
        folder,
        name.filename,
        lambda tmp: tmp.write_bytes(b"PK\x05\x06" + bytes(18) + name.filename.encode()),
        b"vecnormalize " + name.base.encode(),
        build_metadata(name=name, phase=phase, metrics=metrics, metrics_timesteps=name.timesteps),
        on_commit=None if registry is None else registry.record,
    )
    return zip_path


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability is not under test here; fsync makes building 100 checkpoints slow."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


# Files that are not ours (or not prunable) and must survive every pass.
UNTOUCHABLE = [
    "notes.txt",
    "best_model.zip",
    "best_model_vecnormalize.pkl",
    "phase1_foundational_final.zip",
    "phase1_100000_steps.zip",  # legacy v1: only with include_legacy
    "NQ_ts-0000010_evt-periodic_val-+0.100_sharpe-+1.00_seed-42.zip.bak",
    "nq_ts-12.zip",
]


@pytest.fixture(scope="module")
def seed_note_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("template") / "models" / "phase1" / "NQ" / "checkpoints"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        names, _ = seed_note_names()
        for i, name in enumerate(names):
            zip_path = commit(folder, name)
            os.utime(zip_path, (1_000_000 + i, 1_000_000 + i))  # saved in timestep order
    for extra in UNTOUCHABLE:
        (folder / extra).write_bytes(b"not ours")
    (folder / "subdir").mkdir()
    return folder.parents[2]


@pytest.fixture
def models(seed_note_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(seed_note_template, root)
    return root


def nq_folder(root: Path) -> Path:
    return CONFIG.checkpoint_dir(1, "NQ", root)


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime)
        for p in folder.iterdir()
        if p.name != ".checkpoint.lock"
    }


def expected_files(keep: set[str]) -> set[str]:
    files = set(UNTOUCHABLE) | {"subdir"}
    for zip_name in keep:
        base = zip_name[: -len(".zip")]
        files |= {zip_name, base + "_vecnormalize.pkl", base + "_metadata.json"}
    return files


# --------------------------------------------------------------------------- seed note


def test_seed_note_example_dry_run_plans_14_and_deletes_nothing(models: Path) -> None:
    folder = nq_folder(models)
    before = snapshot(folder)
    report = prune_folder(folder, RetentionConfig(), dry_run=True)
    _, keep = seed_note_names()
    assert report.plan is not None
    assert {r.name for r in report.plan.rows if r.keep} == keep
    assert (report.kept, report.deleted) == (14, 86)
    assert snapshot(folder) == before
    rows = {r.name: r for r in report.plan.rows}
    names, _ = seed_note_names()
    assert rows[names[-1].filename].kept_by == ("event:phase_end",)
    assert rows[names[98].filename].kept_by == ("last_8_periodic",)
    assert rows[names[30].filename].kept_by == ("top_3_sharpe_ratio",)
    assert rows[names[10].filename].kept_by == ("top_2_val_reward",)
    assert rows[names[0].filename].kept_by == ()
    # bytes to free: the 86 zips with their companions, as on disk
    deleted_bytes = sum(
        (folder / f).stat().st_size
        for f in expected_files({r.name for r in report.plan.rows if not r.keep})
        - expected_files(set())
    )
    assert report.bytes_freed == report.plan.bytes_to_free == deleted_bytes


def test_seed_note_example_live_leaves_the_14_with_companions(models: Path) -> None:
    folder = nq_folder(models)
    dry = prune_folder(folder, RetentionConfig(), dry_run=True)
    report = prune_folder(folder, RetentionConfig())
    _, keep = seed_note_names()
    assert (report.kept, report.deleted) == (14, 86)
    assert {p.name for p in folder.iterdir()} - {".checkpoint.lock"} == expected_files(keep)
    assert report.errors == ()
    # The bytes freed, learnt while deleting, are what the dry run announced.
    assert report.bytes_freed == dry.bytes_freed > 0
    assert [r.to_dict() for r in report.deleted_rows] == [r.to_dict() for r in dry.deleted_rows]


def test_a_second_prune_changes_nothing(models: Path) -> None:
    folder = nq_folder(models)
    prune_folder(folder, RetentionConfig())
    after_one = snapshot(folder)
    report = prune_folder(folder, RetentionConfig())
    assert (report.kept, report.deleted, report.swept.count) == (14, 0, 0)
    assert snapshot(folder) == after_one


def test_plan_reads_names_only(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning never opens a metadata file (10,000 checkpoints must plan in milliseconds)."""
    opened: list[str] = []
    real_open = open

    def spy(file: object, *args: object, **kwargs: object) -> object:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", spy)
    assert plan(nq_folder(models), build_policy(RetentionConfig())).kept == 14
    assert opened == []


def test_plan_stats_only_what_a_rule_needs(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing reads file types from the folder; only phase_end/interrupt mtimes are stat'ed
    (and the deleted rows' sizes, when asked, or while deleting)."""
    stats: list[str] = []
    real_lstat = os.lstat

    def spy(path: str, **kwargs: object) -> os.stat_result:
        stats.append(os.path.basename(path))
        return real_lstat(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", spy)
    the_plan = plan(nq_folder(models), build_policy(RetentionConfig()))
    names, _ = seed_note_names()
    assert stats == [names[-1].filename]  # the phase_end, for the interrupt rule
    assert the_plan.to_delete[0].bytes_freed > 0
    assert len(stats) == 4  # that row's zip and two companions


# --------------------------------------------------------------------------- never touched


def test_legacy_checkpoints_are_pruned_only_when_asked(models: Path) -> None:
    folder = nq_folder(models)
    (folder / "phase1_200000_steps.zip").write_bytes(b"legacy")
    (folder / "phase1_200000_steps_vecnormalize.pkl").write_bytes(b"legacy")
    retention = RetentionConfig(keep_last_n=1)
    prune_folder(folder, retention)
    assert (folder / "phase1_100000_steps.zip").exists()
    report = prune_folder(folder, retention, include_legacy=True)
    assert not (folder / "phase1_100000_steps.zip").exists()  # the older legacy one goes
    assert (folder / "phase1_200000_steps.zip").exists()  # the last legacy periodic stays
    assert (folder / "phase1_200000_steps_vecnormalize.pkl").exists()
    assert [r.name for r in report.deleted_rows] == ["phase1_100000_steps.zip"]
    for name in UNTOUCHABLE:
        if name != "phase1_100000_steps.zip":
            assert (folder / name).read_bytes() == b"not ours"


def test_disabled_retention_touches_nothing(models: Path) -> None:
    folder = nq_folder(models)
    before = snapshot(folder)
    report = prune_folder(folder, RetentionConfig(enabled=False))
    assert report.skipped == "retention is disabled"
    assert snapshot(folder) == before


def test_missing_folder_is_reported_not_created(tmp_path: Path) -> None:
    report = prune_folder(tmp_path / "nope", RetentionConfig())
    assert report.skipped == "no such folder"
    assert not (tmp_path / "nope").exists()


# --------------------------------------------------------------------------- interrupts


def test_interrupt_survives_until_a_later_phase_end_of_its_run(tmp_path: Path) -> None:
    folder = nq_folder(tmp_path / "models")
    retention = RetentionConfig(keep_last_n=1, keep_top_k_by_sharpe=0, keep_top_k_by_reward=0)
    for ts in (10_000, 20_000):
        commit(folder, CheckpointName("NQ", ts, "periodic", 0.1, 1.0, SEED))
    interrupt = commit(folder, CheckpointName("NQ", 25_000, "interrupt", 0.1, 1.0, SEED))
    other_seed = commit(folder, CheckpointName("NQ", 5_000, "interrupt", 0.1, 1.0, 7))
    os.utime(interrupt, (1000, 1000))
    os.utime(other_seed, (1000, 1000))
    for ts in (30_000, 40_000):  # the resumed run goes on ...
        commit(folder, CheckpointName("NQ", ts, "periodic", 0.1, 1.0, SEED))
    prune_folder(folder, retention)
    assert interrupt.exists() and other_seed.exists()

    end = commit(folder, CheckpointName("NQ", 50_000, "phase_end", 0.1, 1.0, SEED))  # ... and ends
    report = prune_folder(folder, retention)
    assert not interrupt.exists()
    assert not interrupt.with_name(interrupt.name[:-4] + "_metadata.json").exists()
    assert end.exists()
    assert other_seed.exists()  # seed 7 never finished
    assert report.plan is not None
    assert {r.name: r.kept_by for r in report.plan.rows}[other_seed.name] == (
        "interrupt_unresolved",
    )


def test_phase_end_of_an_older_run_does_not_release_a_newer_interrupt(tmp_path: Path) -> None:
    folder = nq_folder(tmp_path / "models")
    end = commit(folder, CheckpointName("NQ", 2_000_000, "phase_end", 0.1, 1.0, SEED))
    os.utime(end, (1000, 1000))
    interrupt = commit(folder, CheckpointName("NQ", 300_000, "interrupt", 0.1, 1.0, SEED))
    prune_folder(folder, RetentionConfig(keep_top_k_by_sharpe=0, keep_top_k_by_reward=0))
    assert interrupt.exists()


# --------------------------------------------------------------------------- leftovers


def test_orphans_and_stale_temporaries_are_swept_and_reported(models: Path) -> None:
    folder = nq_folder(models)
    orphan = folder / "NQ_ts-0000001_evt-periodic_val-+0.100_sharpe-+1.00_seed-42_metadata.json"
    orphan.write_text("{}")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_tmp = folder / temp_name("NQ_x.zip", pid=int(dead.stdout))
    old_tmp = folder / temp_name("NQ_y.zip")
    fresh_tmp = folder / temp_name("NQ_z.zip")
    for path in (dead_tmp, old_tmp, fresh_tmp):
        path.write_bytes(b"partial")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))

    dry = prune_folder(folder, RetentionConfig(), dry_run=True)
    assert {p.name for p in dry.swept.orphans} == {orphan.name}
    assert {p.name for p in dry.swept.temporaries} == {dead_tmp.name, old_tmp.name}
    assert orphan.exists() and dead_tmp.exists()

    report = prune_folder(folder, RetentionConfig())
    assert report.swept.count == 3
    assert report.to_dict()["swept"]["orphans"] == [orphan.name]
    assert not orphan.exists() and not dead_tmp.exists() and not old_tmp.exists()
    assert fresh_tmp.exists()  # its writer (us) is alive and it is young: a commit in flight


# --------------------------------------------------------------------------- lock, registry, tree


def test_prune_waits_for_the_folder_lock(models: Path) -> None:
    """A prune never runs while a commit (or another prune) holds the folder lock."""
    folder = nq_folder(models)
    code = (
        "import sys; from checkpointing.config import RetentionConfig;"
        "from checkpointing.retention import prune_folder;"
        "r = prune_folder(sys.argv[1], RetentionConfig()); print(r.deleted)"
    )
    with folder_lock(folder):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
        assert child.poll() is None, "the prune ran while the lock was held"
        assert len(list_checkpoints(folder, include_legacy=False)) == 100
    out, _ = child.communicate(timeout=30)
    assert out.strip() == "86"


def test_prune_tells_the_registry(models: Path) -> None:
    registry = Registry(models)
    registry.rebuild()
    report = prune_folder(nq_folder(models), RetentionConfig(), registry=registry)
    indexed = json.loads(registry.path.read_text())["checkpoints"]
    assert {k.rsplit("/", 1)[1] for k in indexed} == {
        r.name
        for r in report.plan.rows
        if r.keep  # type: ignore[union-attr]
    } | {"phase1_100000_steps.zip"}
    registry.rebuild()
    assert json.loads(registry.path.read_text())["checkpoints"] == indexed


def test_prune_tree_covers_every_market_of_the_chosen_phases(models: Path) -> None:
    es = CONFIG.checkpoint_dir(1, "ES", models)
    nq2 = CONFIG.checkpoint_dir(2, "NQ", models)
    for ts in range(1, 12):
        commit(es, CheckpointName("ES", ts * 1000, "periodic", 0.1, 1.0, 1))
        commit(nq2, CheckpointName("NQ", ts * 1000, "periodic", 0.1, 1.0, 1), phase=2)
    (models / "phase1" / "not_a_market_").mkdir()
    reports = prune_tree(models, CONFIG, phases=[1], dry_run=True)
    assert [(r.phase, r.market, r.deleted) for r in reports] == [(1, "ES", 3), (1, "NQ", 86)]
    reports = prune_tree(models, CONFIG, markets=["NQ"], policy=LatestPeriodic(2))
    assert [(r.phase, r.market, r.kept) for r in reports] == [(1, "NQ", 2), (2, "NQ", 2)]
    assert len(list_checkpoints(es)) == 11


# --------------------------------------------------------------------------- CLI


def run_cli(
    *args: str, cwd: Path, module: str = "checkpointing.retention"
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_dry_run_json(models: Path) -> None:
    folder = nq_folder(models)
    before = snapshot(folder)
    out = run_cli("--phase", "1", "--market", "NQ", "--dry-run", "--json", cwd=models.parent)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["dry_run"] is True
    assert doc["totals"]["kept"] == 14 and doc["totals"]["deleted"] == 86
    (report,) = doc["folders"]
    assert {r["name"] for r in report["rows"] if r["action"] == "keep"} == seed_note_names()[1]
    assert report["bytes_freed"] > 0
    assert snapshot(folder) == before


def test_cli_live_run_prints_rows_and_totals(models: Path) -> None:
    out = run_cli(
        "--phase", "1", "--market", "NQ", "--root", str(models), cwd=PROJECT_ROOT / "tests"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.strip().startswith("keep ") for line in lines) == 14
    assert sum(line.strip().startswith("delete ") for line in lines) == 86
    assert "kept 14, deleted 86, freed" in out.stdout
    assert len(list_checkpoints(nq_folder(models), include_legacy=False)) == 14


def test_cli_phase_wide(models: Path) -> None:
    commit(CONFIG.checkpoint_dir(1, "ES", models), CheckpointName("ES", 1000, "periodic", 0, 0, 1))
    out = run_cli("--phase", "1", "--dry-run", cwd=models.parent)
    assert out.returncode == 0, out.stderr
    assert "phase1/ES/checkpoints" in out.stdout and "phase1/NQ/checkpoints" in out.stdout
    assert "total over 2 folders: would keep 15, would delete 86" in out.stdout


def test_cli_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "models" / "phase1" / "NQ" / "checkpoints").mkdir(parents=True)
    out = run_cli("--phase", "1", "--market", "NQ", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "no checkpoints in models/phase1/NQ/checkpoints" in out.stdout
    out = run_cli("--phase", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "no checkpoint folders of phase 2" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--phase", "1", "--market", "NQ"],
            "checkpoint folder 'models/phase1/NQ/checkpoints' does not exist",
        ),
        (["--phase", "1", "--market", "N_Q"], "invalid market name 'N_Q'"),
        (["--phase", "4"], "invalid choice: 4"),
        (["--market", "NQ"], "the following arguments are required: --phase"),
        (["--phase", "1", "--config", "missing.yaml"], "config file not found: 'missing.yaml'"),
        (["--phase", "1", "--config", "bad.yaml"], "keep_last_n must be >= 1, got 0"),
        (["--phase", "1", "--root", "nowhere"], "models root 'nowhere' does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "bad.yaml").write_text("checkpointing:\n  retention:\n    keep_last_n: 0\n")
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_cli_modules_import_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys, checkpointing.retention, checkpointing.registry, checkpointing.summary;"
        "heavy = ('torch', 'stable_baselines3', 'ray', 'tuner', 'numpy', 'yaml');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert run_cli("--help", cwd=tmp_path).returncode == 0
