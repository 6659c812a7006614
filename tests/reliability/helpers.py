"""Tools of the reliability suite: canaries, armed checkpoints, tree snapshots, real CLIs.

A *canary* is a file that only an unpickled payload creates: the payload's ``__reduce__`` is
``os.mknod(canary)``. Every test that hands hostile bytes to the product checks afterwards that
the canary does not exist, i.e. that nothing was unpickled.

An *armed* checkpoint is a real one whose model zip and VecNormalize pkl have been replaced by
payload carriers (the zip's ``data`` entry holds a cloudpickled payload, which SB3 unpickles on
load; the pkl is a pickled payload), optionally with metadata whose size and sha256 match the
hostile files, as an attacker with write access to the folder can write too.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VECNORM_SUFFIX = "_vecnormalize.pkl"
METADATA_SUFFIX = "_metadata.json"
# Room after the pickle's STOP opcode: pickle.load ignores it, so a byte flipped there leaves a
# payload that still runs but no longer matches its sha256.
PICKLE_PADDING = b"\x00" * 64
ZIP_COMMENT = b"reliability suite: a byte of this comment gets flipped" * 2
# What Ray prints when it starts a local instance; a refused run must never print it.
RAY_BANNER_MARKERS = ("Started a local Ray instance", "Ray runtime started", "View the dashboard")


# Where the tiny SB3 run of conftest.sb3_models saves, relative to its models root.
CHECKPOINTS = Path("phase1", "NQ", "checkpoints")


def copy_models(pristine: Path, target: Path) -> Path:
    """A private copy of a models root (symlinks copied as links); returns ``target``."""
    shutil.copytree(pristine, target, symlinks=True)
    return target


# --------------------------------------------------------------------------- canaries


class _Payload:
    """Unpickling this creates ``path`` (a regular file): the proof that it was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mknod, (os.fspath(self.path),))


def payload_pickle(canary: Path) -> bytes:
    """A pickle that creates ``canary`` when loaded, followed by padding pickle ignores."""
    import pickle

    return pickle.dumps(_Payload(canary)) + PICKLE_PADDING


def payload_zip(source: Path, target: Path, canary: Path, *, in_pth: bool = False) -> None:
    """A copy of the SB3 zip ``source`` that creates ``canary`` when SB3 loads it.

    The ``data`` entry gets a cloudpickled payload (SB3 ``cloudpickle.loads`` it on load). With
    ``in_pth`` the payload goes into ``pytorch_variables.pth`` instead (SB3 reads ``.pth``
    entries with ``torch.load(weights_only=True)``). The zip carries a comment, so a flipped
    comment byte leaves a loadable zip that fails its sha256.
    """
    with zipfile.ZipFile(source) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    if in_pth:
        import torch

        buffer = io.BytesIO()
        torch.save(_Payload(canary), buffer)
        entries["pytorch_variables.pth"] = buffer.getvalue()
    else:
        data = json.loads(entries["data"])
        encoded = base64.b64encode(payload_pickle(canary)).decode()
        data["_reliability_payload"] = {":type:": "<class 'object'>", ":serialized:": encoded}
        entries["data"] = json.dumps(data).encode()
    tmp = target.with_name(target.name + ".building")
    with zipfile.ZipFile(tmp, "w") as zout:
        for name, raw in entries.items():
            zout.writestr(name, raw)
        zout.comment = ZIP_COMMENT
    os.replace(tmp, target)


def companions(zip_path: Path) -> tuple[Path, Path]:
    """The ``(pkl, metadata)`` companions of a checkpoint zip."""
    base = zip_path.name[: -len(".zip")]
    return zip_path.with_name(base + VECNORM_SUFFIX), zip_path.with_name(base + METADATA_SUFFIX)


def digest(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    return {"name": path.name, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def fired(canaries: Path) -> list[str]:
    """The canaries that exist in the folder ``canaries``: each names the payload that ran."""
    return sorted(os.listdir(canaries))


def arm_checkpoint(
    zip_path: Path,
    canaries: Path,
    *,
    template: Path,
    metadata: str = "match",
    overrides: Mapping[str, Any] | None = None,
    in_pth: bool = False,
    pkl_payload: bool = True,
) -> None:
    """Turn ``zip_path`` (existing or not) into an armed checkpoint made from ``template``.

    Args:
        zip_path: where the armed zip goes; its pkl companion is armed too.
        canaries: the folder where the payloads create their canaries, named after the file
            that carries them (``{zip name}`` and ``{pkl name}``).
        template: a real checkpoint zip whose entries and metadata are copied.
        metadata: ``"match"`` writes metadata whose digests match the armed files (an
            attacker can compute them too); ``"none"`` removes any metadata.
        overrides: fields to set in the matching metadata (metrics, timesteps ...).
        in_pth: put the zip's payload in a ``.pth`` entry instead of ``data``.
        pkl_payload: arm the pkl too (else it is a copy of the template's genuine pkl).
    """
    pkl, meta = companions(zip_path)
    payload_zip(template, zip_path, canaries / zip_path.name, in_pth=in_pth)
    if pkl_payload:
        pkl.write_bytes(payload_pickle(canaries / pkl.name))
    else:
        pkl.write_bytes(companions(template)[0].read_bytes())
    if metadata == "none":
        with contextlib.suppress(FileNotFoundError):
            meta.unlink()
        return
    if metadata != "match":
        raise ValueError(f"metadata must be 'match' or 'none', got {metadata!r}")
    _, template_meta = companions(template)
    doc = json.loads(template_meta.read_text())
    doc.update(overrides or {})
    doc["checkpoint"] = zip_path.name
    doc["files"] = {"zip": digest(zip_path), "vecnormalize": digest(pkl)}
    meta.write_text(json.dumps(doc, indent=2))


def flip_byte(path: Path, offset: int) -> None:
    """Flip the lowest bit of the byte at ``offset`` (negative: from the end)."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- snapshots


def snapshot_tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root`` (not following symlinks): relative path -> (kind, detail).

    ``detail`` is the sha256 of a regular file, the target of a symlink, "" otherwise. FIFOs
    are never opened.
    """
    out: dict[str, tuple[str, str]] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    out[rel] = ("file", hashlib.sha256(fh.read()).hexdigest())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "")
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo", "")
            else:
                out[rel] = ("other", "")
    return out


def tree_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`snapshot_tree` results."""
    changes = [f"created {p!r}" for p in sorted(after.keys() - before.keys())]
    changes += [f"removed {p!r}" for p in sorted(before.keys() - after.keys())]
    changes += [
        f"changed {p!r}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]
    ]
    return changes


# --------------------------------------------------------------------------- real CLIs


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class CliResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def label(self) -> str:
        """``checkpointing.retention --dry-run``: the module and the mode, not the paths."""
        modes = [a for a in self.argv[1:] if a in ("rebuild", "--dry-run", "--json")]
        return " ".join([self.argv[0], *modes])

    def describe(self) -> str:
        return (
            f"python -m {' '.join(self.argv)!s} -> exit {self.returncode}\n"
            f"--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )


def run_clis(
    commands: Sequence[Sequence[str]], cwd: Path, *, timeout: float = 120.0
) -> list[CliResult]:
    """Run ``python -m <argv...>`` for every command at once (each in its own session) and
    return their results in order. A process still running after ``timeout`` is killed with its
    process group and reported with exit code -9."""
    env = cli_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for argv in commands
    ]
    deadline = time.monotonic() + timeout
    results = []
    for argv, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        results.append(
            CliResult(
                list(argv),
                proc.returncode,
                out.decode("utf-8", "replace"),
                err.decode("utf-8", "replace"),
            )
        )
    return results


def call_main(module: str, argv: Sequence[str]) -> CliResult:
    """``module.main(argv)`` in-process (a CLI without the cost of a new interpreter): its exit
    code (argparse's ``SystemExit`` included) and what it printed. Exceptions propagate."""
    import importlib

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return CliResult([module, *argv], code, out.getvalue(), err.getvalue())


@dataclass
class Outcome:
    """How a call made by :func:`calls_with_deadline` ended."""

    hung: bool = False
    value: Any = None
    error: BaseException | None = None

    def describe(self) -> str:
        if self.hung:
            return "did not return (blocked)"
        if self.error is not None:
            return f"raised {type(self.error).__name__}: {self.error}"
        return f"returned {self.value!r:.200}"


def calls_with_deadline(
    calls: Mapping[str, Callable[[], Any]], timeout: float, fifos: Sequence[Path] = ()
) -> dict[str, Outcome]:
    """Run each call in its own daemon thread, all at once; wait up to ``timeout`` seconds.

    A call still running then is reported ``hung``; every reader blocked on ``fifos`` is then
    given an end-of-file so that its thread can finish (nothing is left blocked).
    """
    outcomes = {name: Outcome() for name in calls}

    def runner(name: str, fn: Callable[[], Any]) -> None:
        try:
            outcomes[name].value = fn()
        except BaseException as exc:
            outcomes[name].error = exc

    threads = {
        name: threading.Thread(target=runner, args=(name, fn), daemon=True, name=f"call-{name}")
        for name, fn in calls.items()
    }
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    for name, thread in threads.items():
        outcomes[name].hung = thread.is_alive()
    release_deadline = time.monotonic() + 10.0
    while any(t.is_alive() for t in threads.values()) and time.monotonic() < release_deadline:
        release_fifos(fifos)
    return outcomes


def release_fifos(fifos: Sequence[Path]) -> None:
    """Give every reader blocked on ``fifos`` an end-of-file (open the write end, close it)."""
    for fifo in fifos:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader right now
            continue
        os.close(fd)
    time.sleep(0.01)
