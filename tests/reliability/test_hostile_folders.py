"""Hostile entries in a models root are ignored, never deleted and never followed.

A copy of the real checkpoints of one tiny SB3 run (``sb3_models``) shares its checkpoint
folder with foreign files, names that only look like ours (``NQ_ts-²…``, full-width digits,
Greek letters, bytes that are not UTF-8, names of the longest length the file system allows),
folders and FIFOs named like checkpoints and companions, and symlinks to a file and to a folder
outside the models root, named like checkpoints, companions and temporaries; a market folder of
the phase is a symlink to a folder outside. Listing, sweep, the summary CLI, the registry
rebuild CLI and retention (dry run, then live, with a policy that deletes all it may) run over
it. Afterwards:

- every tool exits 0, and lists, counts, indexes and prunes exactly the real checkpoints;
- every hostile entry is still there, of the same type, with the same bytes or link target;
- everything outside the models root that a symlink points to is byte-identical, and nothing
  was created there.

"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpointing import list_checkpoints, verify_checkpoint
from checkpointing.cleanup import sweep
from checkpointing.metadata import read_checkpoint_metadata
from checkpointing.naming import parse_name
from checkpointing.registry import Registry
from checkpointing.selection import find_resume_checkpoint
from checkpointing.store import folder_lock
from tests.reliability.conftest import FaultLog
from tests.reliability.helpers import (
    CHECKPOINTS,
    call_main,
    calls_with_deadline,
    companions,
    copy_models,
    run_clis,
    snapshot_tree,
    tree_changes,
)

pytestmark = pytest.mark.reliability

V2 = "NQ_ts-{ts}_evt-periodic_val-+1.000_sharpe-+1.00_seed-42"
# Regular files that are not ours: never parsed as checkpoints, never swept, never deleted.
FOREIGN = [
    "notes.txt",
    "model.zip",
    ".hidden.zip",
    "NQ_ts-abc.zip",
    "NQ_ts-100_evt-periodic_val-+1.000_sharpe-+1.00_seed-42.zip",  # six digits
    V2.format(ts="0000100") + ".zip.bak",
    V2.format(ts="0000100") + ".ZIP",
    "NQ_ts-0000100_evt-weekly_val-+1.000_sharpe-+1.00_seed-42.zip",
    "NQ_ts-0000100_evt-periodic_val-+1.000_sharpe-+1.00_seed-99999999999.zip",
    "NQ_ts-0000100_evt-periodic_val-1.000_sharpe-+1.00_seed-42.zip",  # unsigned metric
    "NQ_ts-²⁰⁰⁰⁰⁰⁰_evt-periodic_val-+1.000_sharpe-+1.00_seed-42.zip",
    "NQ_ts-²⁰⁰⁰⁰⁰⁰_evt-periodic_val-+1.000_sharpe-+1.00_seed-42_metadata.json",
    "NQ_ts-０００００１０_evt-periodic_val-+1.000_sharpe-+1.00_seed-42.zip",
    "NQ_ts-0000010_evt-periodic_val-+1.000_sharpe-+1.00_seed-４２.zip",
    "ΝQ_ts-0000010_evt-periodic_val-+1.000_sharpe-+1.00_seed-42.zip",  # Greek capital Nu
    "NQ\u200b_ts-0000010_evt-periodic_val-+1.000_sharpe-+1.00_seed-42.zip",
    "NQ_ts-0000010_evt-periodic_val-+1.000_sharpe-+1.00_seed-42\u202egpj.zip",
    "NQ_ts-0000010_evt-périodic_val-+1.000_sharpe-+1.00_seed-42_vecnormalize.pkl",
    "foreign_metadata.json",
    "foreign_vecnormalize.pkl",
]
# Names that are not valid UTF-8 (bytes, as a hostile tool can write them).
FOREIGN_BYTES = [
    b"NQ_ts-\xff\xfe_evt-periodic_val-+1.000_sharpe-+1.00_seed-42.zip",
    V2.format(ts="0000011").encode() + b"\xff_metadata.json",
]


def _longest(folder: Path, stem: str, suffix: str, want: int = 300) -> str:
    """``stem`` repeated to a name of ``want`` bytes, or the longest the file system allows."""
    limit = min(want, os.pathconf(folder, "PC_NAME_MAX"))
    unit = len(stem.encode())
    return stem * ((limit - len(suffix.encode())) // unit) + suffix


def _hostile(root: Path, outside: Path) -> list[str]:
    """Plant the hostile entries (and their targets outside the root); return their names."""
    folder = root / CHECKPOINTS
    outside.mkdir()
    precious = outside / "precious.bin"
    precious.write_bytes(os.urandom(4096))
    victim = outside / "victim"
    copy_models(folder, victim)  # checkpoint-named files outside the models root
    market_victim = outside / "market_victim"
    copy_models(folder.parent, market_victim)

    names: list[str] = []

    def plant(name: str) -> Path:
        names.append(name)
        return folder / name

    for name in FOREIGN:
        plant(name).write_bytes(f"foreign {name}".encode())
    for raw in FOREIGN_BYTES:
        fd = os.open(os.path.join(os.fsencode(folder), raw), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"foreign bytes")
        os.close(fd)
        names.append(os.fsdecode(raw))
    for stem, suffix in (("x", ".zip"), ("é", ".zip"), ("y", "_metadata.json")):
        plant(_longest(folder, stem, suffix)).write_bytes(b"long")

    # Folders named like a checkpoint, an orphan companion, a temporary.
    plant(V2.format(ts="0000004") + ".zip").mkdir()
    plant(os.path.join(names[-1], "inside.txt")).write_text("in a folder named like ours")
    plant(V2.format(ts="0000005") + "_metadata.json").mkdir()
    plant(f".{V2.format(ts='0000005')}.zip.host-1.deadbeef.tmp").mkdir()
    # FIFOs named like a checkpoint, an orphan companion, a temporary.
    os.mkfifo(plant(V2.format(ts="0000006") + ".zip"))
    os.mkfifo(plant(V2.format(ts="0000007") + "_vecnormalize.pkl"))
    os.mkfifo(plant(f".{V2.format(ts='0000007')}.zip.host-1.0badf00d.tmp"))
    # Symlinks out of the models root: to a file and to a folder, named like checkpoints,
    # orphan companions, a temporary, and a companion of a real checkpoint retention deletes.
    os.symlink(precious, plant(V2.format(ts="0000001") + ".zip"))
    os.symlink(victim, plant(V2.format(ts="0000002") + ".zip"))
    os.symlink(precious, plant(V2.format(ts="0000003") + "_vecnormalize.pkl"))
    os.symlink(victim, plant(V2.format(ts="0000003") + "_metadata.json"))
    os.symlink(precious, plant(f".{V2.format(ts='0000003')}.zip.host-1.cafebabe.tmp"))
    oldest_real = list_checkpoints(folder)[0].path
    pkl, _ = companions(oldest_real)
    pkl.unlink()
    os.symlink(precious, plant(pkl.name))
    # A market folder of the phase that is a symlink out of the models root.
    os.symlink(market_victim, root / "phase1" / "YM")
    return names


def _entries(folder: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    snap = snapshot_tree(folder)
    return {n: snap[n] for n in names if n in snap} | {
        n: ("missing", "") for n in names if n not in snap
    }


def _aggressive_config(path: Path) -> Path:
    path.write_text(
        "checkpointing:\n"
        "  retention:\n"
        "    keep_last_n: 1\n"
        "    keep_top_k_by_sharpe: 0\n"
        "    keep_top_k_by_reward: 0\n"
        "    orphan_grace_seconds: 0\n"
    )
    return path


@pytest.fixture
def hostile_root(sb3_models: Path, tmp_path: Path) -> Iterator[tuple[Path, Path, list[str]]]:
    root = copy_models(sb3_models, tmp_path / "models")
    outside = tmp_path / "outside"
    names = _hostile(root, outside)
    yield root, outside, names


def test_hostile_entries_are_ignored_never_deleted_never_followed(
    hostile_root: tuple[Path, Path, list[str]], tmp_path: Path, fault_log: FaultLog
) -> None:
    """After each tool: it handled exactly the real checkpoints, every hostile entry is
    unchanged, and nothing outside the models root changed (see the module docstring)."""
    root, outside, names = hostile_root
    folder = root / CHECKPOINTS
    real = [i.filename for i in list_checkpoints(folder)]
    real = [n for n in real if n not in names]
    entries_before = _entries(folder, names)
    outside_before = snapshot_tree(outside)
    config = _aggressive_config(tmp_path / "aggressive.yaml")
    work = tmp_path / "work"
    work.mkdir()
    retention = ["checkpointing.retention", "--phase", "1", "--root", os.fspath(root)]
    retention += ["--config", os.fspath(config)]

    def untouched() -> None:
        changed = tree_changes(entries_before, _entries(folder, names))
        assert not changed, f"hostile entries touched: {changed}"
        changed = tree_changes(outside_before, snapshot_tree(outside))
        assert not changed, f"outside the models root: {changed}"

    with fault_log.tries("hostile entries in a models root") as t:
        with t.attempt("list_checkpoints"):
            listed = [i.filename for i in list_checkpoints(folder)]
            assert sorted(listed) == sorted(real), f"listed: {sorted(set(listed) - set(real))}"
            untouched()

        with t.attempt("sweep"):
            with folder_lock(folder):
                report = sweep(folder, grace_seconds=0.0)
            swept = [p.name for p in [*report.temporaries, *report.orphans]]
            assert swept == [], f"swept hostile entries: {swept}"
            untouched()

        rebuild, summary, dry_run = run_clis(
            [
                ["checkpointing.registry", "rebuild", "--root", os.fspath(root)],
                ["checkpointing.summary", "--root", os.fspath(root), "--json"],
                [*retention, "--dry-run", "--json"],
            ],
            work,
        )
        with t.attempt("checkpointing.registry rebuild"):
            assert rebuild.returncode == 0, rebuild.describe()
            indexed = json.loads((root / "registry.json").read_text())["checkpoints"]
            assert sorted(indexed) == sorted(f"{CHECKPOINTS.as_posix()}/{n}" for n in real)
            untouched()
        with t.attempt("checkpointing.summary"):
            assert summary.returncode == 0, summary.describe()
            rows = json.loads(summary.stdout)
            assert [(r["phase"], r["market"]) for r in rows] == [(1, "NQ")], rows
            assert rows[0]["total_count"] == len(real)
            untouched()
        with t.attempt("checkpointing.retention --dry-run"):
            assert dry_run.returncode == 0, dry_run.describe()
            (plan,) = json.loads(dry_run.stdout)["folders"]
            assert sorted(r["name"] for r in plan["rows"]) == sorted(real)
            assert plan["swept"] == {"temporaries": [], "orphans": []}
            untouched()

        (live,) = run_clis([[*retention, "--json"]], work)
        with t.attempt("checkpointing.retention (live)"):
            assert live.returncode == 0, live.describe()
            (done,) = json.loads(live.stdout)["folders"]
            assert done["deleted"] > 0, "the aggressive policy deleted nothing: no test"
            left = [i.filename for i in list_checkpoints(folder)]
            assert set(left) <= set(real), f"left: {sorted(set(left) - set(real))}"
            untouched()


# --------------------------------------------------------------------------- known bugs


def test_longest_names_that_parse_as_checkpoints_are_foreign(
    sb3_models: Path, tmp_path: Path, fault_log: FaultLog
) -> None:
    """Two names of 300 bytes, or the longest the file system allows (255 here), that match
    the v2 grammar: their ``_vecnormalize.pkl`` / ``_metadata.json`` names would exceed the
    limit, so the product cannot have written them. The tools must not crash on them nor
    delete them."""
    root = copy_models(sb3_models, tmp_path / "models")
    folder = root / CHECKPOINTS
    tail = "_ts-000000{}_evt-periodic_val-+1.000_sharpe-+1.00_seed-42.zip"
    market = "A" * (min(300, os.pathconf(folder, "PC_NAME_MAX")) - len(tail.format(1)))
    long_names = [market + tail.format(i) for i in (1, 2)]
    for name in long_names:
        assert parse_name(name.replace(market, "NQ")) is not None  # the grammar, but for length
        (folder / name).write_bytes(b"long")
    config = _aggressive_config(tmp_path / "aggressive.yaml")
    retention = ["checkpointing.retention", "--phase", "1", "--root", os.fspath(root)]
    retention += ["--config", os.fspath(config)]
    commands = [
        ["checkpointing.summary", "--root", os.fspath(root)],
        [*retention, "--dry-run"],
        ["checkpointing.registry", "rebuild", "--root", os.fspath(root)],
    ]
    with fault_log.tries("255-byte names that parse as checkpoints") as t:
        for argv in [*commands, retention]:  # the live pass last: it deletes
            what = argv[0] + (" rebuild" if "rebuild" in argv else "")
            what += " --dry-run" if "--dry-run" in argv else " (live)" * ("retention" in what)
            with t.attempt(what):
                result = call_main(argv[0], argv[1:])
                missing = [n[-40:] for n in long_names if not (folder / n).is_file()]
                assert result.returncode == 0 and not missing, (
                    f"deleted: {missing}; " + result.describe()
                )


def test_a_symlinked_checkpoint_folder_is_not_followed(
    sb3_models: Path, tmp_path: Path, fault_log: FaultLog
) -> None:
    """``phase1/ES/checkpoints`` is a symlink to a folder of checkpoints outside the models
    root (``phase1/ES`` itself is a real folder). Summary, registry rebuild and live retention
    over the root must not count, index or prune it; the outside folder stays byte-identical
    and gets no ``.checkpoint.lock``."""
    root = copy_models(sb3_models, tmp_path / "models")
    outside = copy_models(root / CHECKPOINTS, tmp_path / "outside")
    (root / "phase1" / "ES").mkdir()
    os.symlink(outside, root / "phase1" / "ES" / "checkpoints")
    before = snapshot_tree(outside)
    config = _aggressive_config(tmp_path / "aggressive.yaml")
    with fault_log.tries("symlinked checkpoints folder out of the root") as t:
        with t.attempt("checkpointing.summary"):
            summary = call_main("checkpointing.summary", ["--root", os.fspath(root), "--json"])
            assert summary.returncode == 0, summary.describe()
            markets = [r["market"] for r in json.loads(summary.stdout)]
            assert markets == ["NQ"], f"summarized {markets}"
        with t.attempt("checkpointing.registry rebuild"):
            rebuild = call_main("checkpointing.registry", ["rebuild", "--root", os.fspath(root)])
            assert rebuild.returncode == 0, rebuild.describe()
            indexed = json.loads((root / "registry.json").read_text())["checkpoints"]
            followed = [p for p in indexed if "/ES/" in p]
            assert not followed, f"indexed through the symlink: {followed}"
        with t.attempt("checkpointing.retention (live)"):
            argv = ["--phase", "1", "--root", os.fspath(root), "--config", os.fspath(config)]
            live = call_main("checkpointing.retention", argv)
            assert live.returncode == 0, live.describe()
            changed = tree_changes(before, snapshot_tree(outside))
            assert not changed, f"outside the models root: {changed}"


def test_a_fifo_in_place_of_a_metadata_file_never_blocks(
    sb3_models: Path, tmp_path: Path, fault_log: FaultLog
) -> None:
    """The newest checkpoint's ``_metadata.json`` is replaced by a FIFO nobody writes to.
    Verification must report it as corrupt, resume must fall back to the next checkpoint, and
    the registry rebuild must finish, each within seconds (a blocked call is released after the
    deadline so that the run goes on)."""
    root = copy_models(sb3_models, tmp_path / "models")
    folder = root / CHECKPOINTS
    newest = list_checkpoints(folder)[-1].path
    _, meta = companions(newest)
    meta.unlink()
    os.mkfifo(meta)
    outcomes = calls_with_deadline(
        {
            "verify_checkpoint": lambda: verify_checkpoint(newest),
            "read_checkpoint_metadata": lambda: read_checkpoint_metadata(newest),
            "find_resume_checkpoint latest": lambda: find_resume_checkpoint(folder, "latest"),
            "Registry.rebuild": lambda: Registry(root).rebuild(),
        },
        timeout=15.0,  # a hang blocks forever; a loaded machine may take seconds
        fifos=[meta],
    )
    with fault_log.tries("FIFO in place of a metadata file") as t:
        for what, outcome in outcomes.items():
            with t.attempt(what):
                assert not outcome.hung, f"{what} {outcome.describe()}"
    assert stat.S_ISFIFO(os.lstat(meta).st_mode), "the FIFO was replaced"


def test_a_symlinked_lock_file_is_reported_not_a_crash(
    sb3_models: Path, tmp_path: Path, fault_log: FaultLog
) -> None:
    """``.checkpoint.lock`` is a symlink to a file outside the models root. Retention must not
    follow it (the target stays byte-identical; this part holds) and must report the lock it
    could not take, with exit code 1 and no exception, as it does for a failed deletion (the
    driver's end-of-run retention must not die on it before writing its summary)."""
    root = copy_models(sb3_models, tmp_path / "models")
    folder = root / CHECKPOINTS
    precious = tmp_path / "precious.bin"
    precious.write_bytes(os.urandom(512))
    before = precious.read_bytes()
    (folder / ".checkpoint.lock").unlink()
    os.symlink(precious, folder / ".checkpoint.lock")
    with fault_log.tries("symlink in place of the folder lock") as t:
        for mode in (["--dry-run"], []):
            with t.attempt(" ".join(mode) or "live"):
                try:
                    argv = ["--phase", "1", "--root", os.fspath(root), *mode]
                    result = call_main("checkpointing.retention", argv)
                finally:
                    assert precious.read_bytes() == before, "the lock's target was written"
                assert result.returncode == 1, result.describe()
                assert ".checkpoint.lock" in result.output, result.describe()
