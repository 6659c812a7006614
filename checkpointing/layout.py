"""Where checkpoints live under a models root: the folder templates and what they imply.

``checkpointing.paths`` (the seed note's keys) holds one template per phase with a
``{market}`` slot, e.g. ``./models/phase1/{market}/checkpoints/``. From them:

- the **checkpoint folder** of a (phase, market): ``models/phase1/NQ/checkpoints``, one folder
  for every run of that market in that phase (a file name carries its run);
- the **market folder** (the template's ``{market}`` part): ``models/phase1/NQ``, home of
  ``best_model.zip`` (the best validation reward of that market and phase, whichever run
  reached it) and of ``runs/<run_id>/``, each run's own files (the legacy final model);
- the **folders of a root**, found on disk for a retention pass, a summary or the registry.

Nothing is shared by two markets. :class:`Layout` binds the templates to one models root
(``--models-root`` moves every folder below ``paths.root`` there).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from checkpointing.errors import CheckpointNameError, ConfigError
from checkpointing.locations import StoreURI, parse_location
from checkpointing.naming import validate_market, validate_run_id

__all__ = [
    "PHASES",
    "RUNS_DIR",
    "CheckpointFolder",
    "Layout",
    "PathsConfig",
    "locate_folder",
]

PHASES = (1, 2, 3)
RUNS_DIR = "runs"
_MARKET_SLOT = "{market}"


@dataclass(frozen=True)
class PathsConfig:
    """``checkpointing.paths``: the models root and one folder template per phase."""

    root: str = "./models"
    phase1: str = "./models/phase1/{market}/checkpoints/"
    phase2: str = "./models/phase2/{market}/checkpoints/"
    phase3: str = "./models/phase3_hybrid/{market}/checkpoints/"

    def template(self, phase: int) -> str:
        if isinstance(phase, bool) or phase not in PHASES:
            raise ConfigError(f"phase must be one of {list(PHASES)}, got {phase!r}")
        return str(getattr(self, f"phase{phase}"))


@dataclass(frozen=True)
class CheckpointFolder:
    """One checkpoint folder of the layout: ``{root}/phase{N}/{market}/checkpoints``."""

    phase: int
    market: str
    path: Path


def _market_or_none(text: str) -> str | None:
    try:
        return validate_market(text)
    except CheckpointNameError:
        return None


def _slot_regex(text: str) -> re.Pattern[str]:
    """A regex for a path (part) with one ``{market}`` slot; the slot matches one path part."""
    before, _, after = text.partition(_MARKET_SLOT)
    return re.compile(re.escape(before) + r"(?P<market>[^/]+)" + re.escape(after))


def _real_dirs(top: Path, below: Sequence[str]) -> bool:
    """``top`` and each folder ``below`` it are directories, none a symlink (``lstat``)."""
    paths = [top]
    for part in below:
        paths.append(paths[-1] / part)
    try:
        return all(stat.S_ISDIR(os.lstat(p).st_mode) for p in paths)
    except OSError:
        return False


def _local_root(root: str | os.PathLike[str], what: str) -> Path:
    """``root`` as a local folder; a URI is refused (a layout is folders on this machine: a
    run with an object-store models root commits to a local staging folder and uploads)."""
    if isinstance(root, str) and not root:
        raise ConfigError(f"the models root must be a non-empty path without NUL, got {root!r}")
    where = parse_location(root, what)
    if isinstance(where, StoreURI):
        raise ConfigError(
            f"{what} {str(where)!r} is an object-store URI, not a folder: checkpoints are "
            "committed to a local staging folder and uploaded from there (pass the URI as "
            "--models-root to python -m tuner.train)"
        )
    return where


class Layout:
    """The folder templates of ``paths`` bound to one models root.

    Args:
        paths: ``checkpointing.paths``.
        root: the models root; ``None`` keeps ``paths.root``. A root other than ``paths.root``
            needs every template under ``paths.root``.

    Raises:
        ConfigError: an empty root, one with NUL, or an object-store URI (see
            :mod:`checkpointing.locations`).
    """

    def __init__(self, paths: PathsConfig, root: str | os.PathLike[str] | None = None) -> None:
        self.paths = paths
        if root is None:
            self.root = _local_root(paths.root, "checkpointing.paths.root")
            self._moved = False
        else:
            self.root = _local_root(root, "the models root")
            self._moved = True

    def __repr__(self) -> str:
        return f"Layout(root={os.fspath(self.root)!r})"

    # ----------------------------------------------------------------- one folder

    def checkpoint_dir(self, phase: int, market: str) -> Path:
        """``paths.phase{N}`` with the market filled in, rebased onto the root.

        The market name must already be validated (see ``naming.validate_market``).
        """
        template = self.paths.template(phase)
        folder = Path(template.format(market=market))
        if not self._moved:
            return folder
        default_root = Path(os.path.normpath(self.paths.root))
        try:
            relative = Path(os.path.normpath(folder)).relative_to(default_root)
        except ValueError:
            raise ConfigError(
                f"checkpointing.paths.phase{phase} ({template!r}) is not under "
                f"checkpointing.paths.root ({self.paths.root!r}), so it cannot be moved to "
                f"the models root {os.fspath(self.root)!r}"
            ) from None
        return self.root / relative

    def market_dir(self, phase: int, market: str) -> Path:
        """The folder of the template's ``{market}`` part: ``models/phase1/NQ``.

        Home of the market's ``best_model.zip`` and of ``runs/<run_id>/``.
        """
        folder = self.checkpoint_dir(phase, market)
        parts = Path(self.paths.template(phase)).parts
        below = len(parts) - 1 - next(i for i, p in enumerate(parts) if _MARKET_SLOT in p)
        return folder.parents[below - 1] if below else folder

    def run_dir(self, phase: int, market: str, run_id: str) -> Path:
        """``{market_dir}/runs/{run_id}``: the files of one run beside its checkpoints."""
        return self.market_dir(phase, market) / RUNS_DIR / validate_run_id(run_id)

    # ----------------------------------------------------------------- every folder

    def folders(
        self, phases: Iterable[int] | None = None, markets: Iterable[str] | None = None
    ) -> list[CheckpointFolder]:
        """The existing checkpoint folders of ``phases`` (default all) and ``markets`` (default
        all found on disk), in phase then market order. Symlinked folders are left out.

        Raises:
            ConfigError: a phase that is not 1, 2 or 3, or a template that cannot be moved.
            CheckpointNameError: a bad market name.
        """
        wanted = None if markets is None else [validate_market(m) for m in markets]
        out: list[CheckpointFolder] = []
        for phase in PHASES if phases is None else list(phases):
            parts = self.checkpoint_dir(phase, _MARKET_SLOT).parts
            i = next(i for i, part in enumerate(parts) if _MARKET_SLOT in part)
            parent = Path(*parts[:i]) if i else Path(".")
            if wanted is not None:
                for market in wanted:
                    market_dir = parts[i].replace(_MARKET_SLOT, market)
                    if _real_dirs(parent / market_dir, parts[i + 1 :]):
                        out.append(
                            CheckpointFolder(phase, market, self.checkpoint_dir(phase, market))
                        )
                continue
            pattern = _slot_regex(parts[i])
            try:
                names = sorted(
                    e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)
                )
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                m = pattern.fullmatch(name)
                found = _market_or_none(m["market"]) if m else None
                if found is not None and _real_dirs(Path(parent, name), parts[i + 1 :]):
                    out.append(CheckpointFolder(phase, found, Path(parent, name, *parts[i + 1 :])))
        return out

    def relative_templates(self) -> list[tuple[int, re.Pattern[str], int]]:
        """Per phase: a regex over a folder's path relative to the root, and its depth."""
        out = []
        for phase in PHASES:
            rel = Layout(self.paths, ".").checkpoint_dir(phase, _MARKET_SLOT)
            out.append((phase, _slot_regex(rel.as_posix()), len(rel.parts)))
        return out

    def where(self, rel_folder: str) -> tuple[int | None, str | None]:
        """(phase, market) of a checkpoint folder given relative to the root (``/``-separated),
        or ``(None, None)`` when it is not a folder of the layout."""
        for phase, pattern, _ in self.relative_templates():
            m = pattern.fullmatch(rel_folder)
            if m is not None:
                return phase, _market_or_none(m["market"])
        return None, None


def locate_folder(
    folder: str | os.PathLike[str], paths: PathsConfig | None = None
) -> tuple[Path, int, str] | None:
    """``(root, phase, market)`` of a checkpoint folder of the layout, or ``None``.

    ``models/phase1/NQ/checkpoints`` -> ``(Path("models"), 1, "NQ")`` with the default paths.
    """
    parts = Path(os.path.abspath(folder)).parts
    for phase, pattern, depth in Layout(paths or PathsConfig(), ".").relative_templates():
        if len(parts) <= depth:
            continue
        m = pattern.fullmatch("/".join(parts[-depth:]))
        market = _market_or_none(m["market"]) if m else None
        if market is not None:
            return Path(*parts[:-depth]), phase, market
    return None
