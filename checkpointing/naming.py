"""The checkpoint file-name grammar: one formatter and one parser for each kind of name.

v2 (ours), the seed note's name with the run that wrote it::

    {market}_ts-{timesteps:07d}_evt-{event}_val-{val_reward:+.3f}_sharpe-{sharpe:+.2f}_seed-{seed}_run-{run_id}.zip

A name without ``_run-{run_id}`` (written before runs had ids) still parses: it belongs to the
legacy run of its market and seed (``run_id`` None).

legacy v1::

    phase{N}_{steps}_steps.zip

A metric not yet measured is written ``nan``; timesteps above 9,999,999 widen the field.
Every other file name in a checkpoint folder is foreign: :func:`parse_name` returns ``None``
for it, and nothing in this package ever deletes it.

A run id is letters and digits with ``.`` or ``-`` between them, at most 64 characters:
:func:`new_run_id` makes one from the clock (``20261205-031644-3fa2``), :func:`run_id_for_trial`
one from a Tune experiment and trial.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from checkpointing.errors import CheckpointNameError

__all__ = [
    "BASE_EVENTS",
    "COMPANION_SUFFIXES",
    "EVENT_KINDS",
    "LEGACY_FINAL_NAMES",
    "CheckpointName",
    "CheckpointNameError",
    "LegacyName",
    "base_of",
    "companion_paths_for",
    "format_checkpoint_name",
    "new_run_id",
    "parse_checkpoint_filename",
    "parse_name",
    "run_id_for_trial",
    "validate_boundary_name",
    "validate_event",
    "validate_market",
    "validate_run_id",
    "validate_seed",
]

BASE_EVENTS = ("periodic", "best", "phase_end", "interrupt")
BOUNDARY_PREFIX = "phase_boundary_"
# Event kinds: every phase_boundary_{name} is of kind phase_boundary.
EVENT_KINDS = (*BASE_EVENTS, "phase_boundary")
MAX_RUN_ID_LENGTH = 64
MAX_SEED = 2**32 - 1
VECNORM_SUFFIX = "_vecnormalize.pkl"
METADATA_SUFFIX = "_metadata.json"
# The longest zip name the commit protocol can write: its pkl's temporary
# ".{base}_vecnormalize.pkl.{host<=32}-{pid<=7}.{token 8}.tmp" must fit in NAME_MAX (255).
MAX_NAME_LENGTH = 255 - (len(VECNORM_SUFFIX) - len(".zip")) - (1 + 1 + 32 + 1 + 7 + 1 + 8 + 4)
COMPANION_SUFFIXES = (VECNORM_SUFFIX, METADATA_SUFFIX)

# Final models the v1 scripts wrote at the phase root; they are never pruned.
LEGACY_FINAL_NAMES = {
    1: "phase1_foundational_final",
    2: "phase2_position_mgmt_final",
    3: "phase3_hybrid_final",
}

_MARKET = r"[A-Za-z0-9](?:[A-Za-z0-9]|[.-](?=[A-Za-z0-9]))*"
_BOUNDARY = r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*"
_EVENT = rf"(?:periodic|best|phase_end|interrupt|{BOUNDARY_PREFIX}{_BOUNDARY})"
# A metric: signed fixed-point, or nan, or a signed infinity.
_NUM = r"(?:[+-](?:\d+\.\d+|inf)|nan)"

# Run ids share the market grammar (no "_": it separates the fields of a name).
_RUN = _MARKET

_MARKET_RE = re.compile(rf"{_MARKET}\Z", re.ASCII)
_RUN_RE = re.compile(rf"{_RUN}\Z", re.ASCII)
_BOUNDARY_RE = re.compile(rf"{_BOUNDARY}\Z", re.ASCII)
_EVENT_RE = re.compile(rf"{_EVENT}\Z", re.ASCII)
_V2_RE = re.compile(
    rf"(?P<market>{_MARKET})"
    r"_ts-(?P<ts>\d{7,})"
    rf"_evt-(?P<event>{_EVENT})"
    rf"_val-(?P<val>{_NUM})"
    rf"_sharpe-(?P<sharpe>{_NUM})"
    r"_seed-(?P<seed>0|[1-9]\d*)"
    rf"(?:_run-(?P<run>{_RUN}))?"
    r"\.zip\Z",
    re.ASCII,
)
_LEGACY_RE = re.compile(r"phase(?P<phase>[1-9]\d*)_(?P<steps>0|[1-9]\d*)_steps\.zip\Z", re.ASCII)
_V2_MATCH = _V2_RE.match
_new = object.__new__


def validate_market(market: object) -> str:
    """Return ``market`` if it is a valid market name, else raise :class:`CheckpointNameError`.

    Valid: ASCII letters and digits, with ``.`` or ``-`` allowed between them (``6E``,
    ``BRK.B``, ``ES-MINI``). Refused: ``_``, ``/``, ``\\``, NUL, ``..``, empty names.
    """
    if not isinstance(market, str):
        raise CheckpointNameError(f"market must be a string, got {market!r}")
    if not _MARKET_RE.match(market):
        raise CheckpointNameError(
            f"invalid market name {market!r}: use letters and digits, with '.' or '-' "
            "only between them (no '_', '/', '\\', '..' or NUL)"
        )
    return market


def validate_seed(seed: object) -> int:
    """Return ``seed`` if it is an int in ``[0, 2**32 - 1]``; raise CheckpointNameError if not."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CheckpointNameError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise CheckpointNameError(f"seed must be in [0, {MAX_SEED}], got {seed!r}")
    return seed


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a valid run id, else raise :class:`CheckpointNameError`.

    Valid: ASCII letters and digits, with ``.`` or ``-`` only between them, at most 64
    characters (``20261205-031644-3fa2``, ``NQ-ES-s42-p1-a1b2c-00001``).
    """
    if not isinstance(run_id, str):
        raise CheckpointNameError(f"run id must be a string, got {run_id!r}")
    if len(run_id) > MAX_RUN_ID_LENGTH or not _RUN_RE.match(run_id):
        raise CheckpointNameError(
            f"invalid run id {run_id!r}: use at most {MAX_RUN_ID_LENGTH} letters and digits, "
            "with '.' or '-' only between them"
        )
    return run_id


def new_run_id(now: float | None = None) -> str:
    """A fresh run id from the local clock and 16 random bits: ``20261205-031644-3fa2``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{secrets.token_hex(2)}"


def run_id_for_trial(experiment: str, trial_id: str) -> str:
    """The run id of a Tune trial: ``{experiment}-{trial_id}`` in the run-id alphabet.

    Every run of characters other than letters and digits becomes one ``-``
    (``NQ-ES_s42-7_p1`` + ``a1b2c_00001`` -> ``NQ-ES-s42-7-p1-a1b2c-00001``). A result
    longer than 64 characters keeps the experiment's start, a digest of its whole name and the
    trial id, so two experiments never share a run id by truncation.
    """

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "x"

    exp, trial = clean(experiment), clean(trial_id)
    run_id = f"{exp}-{trial}"
    if len(run_id) > MAX_RUN_ID_LENGTH:
        digest = hashlib.blake2s(experiment.encode(), digest_size=4).hexdigest()
        keep = MAX_RUN_ID_LENGTH - len(trial) - len(digest) - 2
        run_id = f"{exp[:keep].rstrip('.-')}-{digest}-{trial}"
    return validate_run_id(run_id)


def validate_boundary_name(name: object) -> str:
    """Return ``name`` if it can follow ``phase_boundary_``; raise CheckpointNameError if not."""
    if not isinstance(name, str) or not _BOUNDARY_RE.match(name):
        raise CheckpointNameError(
            f"invalid phase boundary name {name!r}: use letters and digits, "
            "optionally joined by single '_'"
        )
    return name


def validate_event(event: object) -> str:
    """Return ``event`` if it is a known event tag, else raise :class:`CheckpointNameError`."""
    if not isinstance(event, str) or not _EVENT_RE.match(event):
        raise CheckpointNameError(
            f"invalid event {event!r}: expected one of {', '.join(BASE_EVENTS)} "
            f"or {BOUNDARY_PREFIX}<name>"
        )
    return event


def _validate_timesteps(timesteps: object) -> int:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 0:
        raise CheckpointNameError(f"timesteps must be a non-negative integer, got {timesteps!r}")
    return timesteps


def _fmt(value: float, digits: int) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}"


@dataclass(frozen=True)
class CheckpointName:
    """The fields a v2 checkpoint name carries. ``str(name)`` is the file name.

    ``run_id`` is None for names written before runs had ids (the legacy run of the seed).
    """

    market: str
    timesteps: int
    event: str
    val_reward: float
    sharpe_ratio: float
    seed: int
    run_id: str | None = None

    def __post_init__(self) -> None:
        validate_market(self.market)
        _validate_timesteps(self.timesteps)
        validate_event(self.event)
        validate_seed(self.seed)
        if self.run_id is not None:
            validate_run_id(self.run_id)
        for field_name in ("val_reward", "sharpe_ratio"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CheckpointNameError(f"{field_name} must be a number, got {value!r}")
            object.__setattr__(self, field_name, float(value))
        if len(self.filename) > MAX_NAME_LENGTH:
            raise CheckpointNameError(
                f"checkpoint name {self.filename!r} is longer than {MAX_NAME_LENGTH} characters "
                "(shorten the market or boundary name)"
            )

    @property
    def filename(self) -> str:
        return (
            f"{self.market}_ts-{self.timesteps:07d}_evt-{self.event}"
            f"_val-{_fmt(self.val_reward, 3)}_sharpe-{_fmt(self.sharpe_ratio, 2)}"
            f"_seed-{self.seed}" + ("" if self.run_id is None else f"_run-{self.run_id}") + ".zip"
        )

    @property
    def base(self) -> str:
        """The name without ``.zip``; companions are ``{base}_vecnormalize.pkl`` and so on."""
        return self.filename[: -len(".zip")]

    @property
    def model(self) -> str:
        """The name without its event: the same for every event one model was saved under
        (a ``best`` save and its ``periodic`` twin), different for any other model."""
        return self.filename.replace(f"_evt-{self.event}_", "_", 1)

    @property
    def is_boundary(self) -> bool:
        return self.event.startswith(BOUNDARY_PREFIX)

    @property
    def event_kind(self) -> str:
        """``phase_boundary`` for every boundary event, else the event itself."""
        return "phase_boundary" if self.is_boundary else self.event

    def as_dict(self) -> dict[str, Any]:
        """The seed note's dictionary form (``event_tag``, ``sharpe_ratio`` ...)."""
        return {
            "market": self.market,
            "timesteps": self.timesteps,
            "event_tag": self.event,
            "val_reward": self.val_reward,
            "sharpe_ratio": self.sharpe_ratio,
            "seed": self.seed,
            "run_id": self.run_id,
        }

    def __str__(self) -> str:
        return self.filename


@dataclass(frozen=True)
class LegacyName:
    """A v1 periodic checkpoint name ``phase{N}_{steps}_steps.zip`` (no metrics)."""

    phase: int
    timesteps: int

    @property
    def filename(self) -> str:
        return f"phase{self.phase}_{self.timesteps}_steps.zip"

    @property
    def base(self) -> str:
        return self.filename[: -len(".zip")]

    def as_dict(self) -> dict[str, Any]:
        nan = float("nan")
        return {
            "market": None,
            "timesteps": self.timesteps,
            "event_tag": "periodic",
            "val_reward": nan,
            "sharpe_ratio": nan,
            "seed": None,
            "run_id": None,
            "phase": self.phase,
            "legacy": True,
        }

    def __str__(self) -> str:
        return self.filename


def format_checkpoint_name(
    market: str,
    timesteps: int,
    event: str,
    val_reward: float = math.nan,
    sharpe_ratio: float = math.nan,
    seed: int = 0,
    run_id: str | None = None,
) -> str:
    """Build a v2 checkpoint file name; raises :class:`CheckpointNameError` on a bad field."""
    return CheckpointName(market, timesteps, event, val_reward, sharpe_ratio, seed, run_id).filename


def parse_name(filename: str) -> CheckpointName | LegacyName | None:
    """Parse a bare file name (no folder). ``None`` for anything that is not ours."""
    if len(filename) > MAX_NAME_LENGTH:  # we cannot have written it: its companions cannot exist
        return None
    m = _V2_MATCH(filename)
    if m is not None:
        market, ts, event, val, sharpe, seed_text, run_id = m.groups()
        seed = int(seed_text)
        if seed > MAX_SEED:
            return None
        # The regex has validated every field: skip __post_init__ (listing 10,000 names) and
        # fill the frozen instance's fields directly.
        name = _new(CheckpointName)
        fields = name.__dict__
        fields["market"] = market
        fields["timesteps"] = int(ts)
        fields["event"] = event
        fields["val_reward"] = float(val)  # "nan", "+inf", "-0.125" all parse
        fields["sharpe_ratio"] = float(sharpe)
        fields["seed"] = seed
        fields["run_id"] = run_id
        return name
    m = _LEGACY_RE.match(filename)
    if m is not None:
        return LegacyName(phase=int(m["phase"]), timesteps=int(m["steps"]))
    return None


def parse_checkpoint_filename(filename: str) -> dict[str, Any] | None:
    """Seed-note API: the fields of a checkpoint file name as a dict, or ``None``.

    Accepts a bare name or a path; for v1 names the metrics are NaN and ``legacy`` is True.
    """
    name = parse_name(str(filename).replace("\\", "/").rsplit("/", 1)[-1])
    return None if name is None else name.as_dict()


def base_of(zip_name: str) -> str:
    """``foo.zip`` -> ``foo``."""
    if not zip_name.endswith(".zip"):
        raise CheckpointNameError(f"not a checkpoint zip name: {zip_name!r}")
    return zip_name[: -len(".zip")]


def companion_paths_for(zip_name: str) -> dict[Literal["vecnormalize", "metadata"], str]:
    """The companion file names of a checkpoint zip name."""
    base = base_of(zip_name)
    return {"vecnormalize": base + VECNORM_SUFFIX, "metadata": base + METADATA_SUFFIX}
