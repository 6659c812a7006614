"""What an S3 models root costs: the training thread's block per save, upload throughput, and
how soon a save is on the bucket.

One run, a ~50 MB PPO policy (``bench/save_overhead.py``'s, zip stored), a real S3 server on
loopback (moto in server mode, in its own process, on 127.0.0.1):

1. **Block per save** on the training thread, interleaved: a manager with a local models root
   versus one with an ``s3://`` root as ``tuner.train`` wires it (a staging folder, the
   :class:`~checkpointing.uploads.Uploader` on the commit hook, registry and retention hooks
   from ``tuner/training/setup.py``). The block is the time ``manager.save(...)`` takes to
   return; the commit and the upload happen on their own threads while training goes on, and
   each round waits (training) until both are done. Target: the S3 root within 10% of local.
2. **Upload throughput** of the run's checkpoints (zip, ``.pkl``, ``.json``), N rounds, each
   running both back to back (in turn first): the Uploader (a catch-up of a staging folder
   holding hard links to them: verify the staged files, put each (hashing what it sends), read
   each back and compare it with the staged file byte for byte, the registry shard; a zip's
   read-back overlaps the next checkpoint's preparation) versus a plain
   ``pyarrow.fs.copy_files`` of the same files to the same server. Target: >= 0.8x, for the
   median of the rounds' ratios (:func:`paired_ratios`; best against best is printed too). The
   Uploader has no switch for its read-back, so a plain read of the same objects is timed too,
   as its read-back reads them (one GET per object up to 64 MiB) and in 8 MiB reads (each a
   ranged GET): what the read-back costs, and what it would cost in smaller reads.
3. **Save to visible**: seconds from a save (``save()`` called; and from its commit) until a
   listing of the bucket shows its zip (polled every 20 ms from another thread).

Runs in about two minutes on 2 cores (``--quick``: 2 saves per root, 2 upload rounds, about
80 s)::

    .venv/bin/python bench/object_store.py [--saves 4] [--rounds 5] [--quick] [--dir /tmp]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, verdict, write_figures  # noqa: E402
from bench.save_overhead import BIG, _record_time, _train, bench_config, make_model  # noqa: E402
from checkpointing import DynamicCheckpointManager  # noqa: E402
from checkpointing.locations import StoreURI, parse_location  # noqa: E402
from checkpointing.object_store import ObjectStore  # noqa: E402
from checkpointing.store import list_checkpoints  # noqa: E402
from checkpointing.uploads import Uploader  # noqa: E402
from tuner.training.setup import retention_hooks  # noqa: E402

BUCKET = "bench"
TARGET_BLOCK = 1.10
TARGET_THROUGHPUT = 0.80
POLL = 0.02
READ_BACK = 64 << 20  # checkpointing.object_store's read size: one GET per object up to it
RANGED = 8 << 20  # its read size before (each read a ranged GET)
_MOTO = """\
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 on 127.0.0.1 in a child process (not competing for this one's GIL); yields
    its endpoint. Stopped by closing its stdin (killed if it does not stop)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def use_server(endpoint: str) -> None:
    """Point this process's AWS settings at ``endpoint`` (test keys, no other AWS setting)
    and make the bucket."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(
        AWS_ENDPOINT_URL_S3=endpoint,
        AWS_ACCESS_KEY_ID="AKIABENCHS3SERVER000",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)


def store_at(key: str) -> ObjectStore:
    uri = parse_location(f"s3://{BUCKET}/{key}", "--models-root")
    assert isinstance(uri, StoreURI)
    return ObjectStore(uri)


# --------------------------------------------------------------------- 1 and 3: saves


@dataclass
class Root:
    """One models root under test and what its saves measured."""

    name: str
    manager: DynamicCheckpointManager
    uploader: Uploader | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.samples.setdefault(key, []).append(value)

    def busy(self) -> bool:
        # wait(0): whether the uploader has any job left (checkpoints, deletions, shards).
        return self.manager.writer.busy or not (self.uploader is None or self.uploader.wait(0))


def make_root(name: str, folder: Path, uploader: Uploader | None = None) -> Root:
    """A manager as ``tuner.train`` builds one: registry and retention hooks, and with an
    uploader, each commit queued for upload."""
    config = bench_config("stored")
    manager = DynamicCheckpointManager(
        config,
        phase=1,
        market="BENCH",
        seed=0,
        models_root=folder,
        async_saves=True,
        **retention_hooks(config, folder, uploader),
    )
    return Root(name, manager, uploader)


class ZipWatch(threading.Thread):
    """Lists a bucket folder every :data:`POLL` seconds until a zip not in ``before`` shows;
    ``seen`` is then its ``perf_counter`` time."""

    def __init__(self, store: ObjectStore, folder: str, before: set[str]) -> None:
        super().__init__(name="zip-watch", daemon=True)
        self.store, self.folder, self.before = store, folder, before
        self.seen: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(n.endswith(".zip") for n in set(self.store.listing(self.folder)) - self.before):
                self.seen = time.perf_counter()
                return
            time.sleep(POLL)


def save_once(root: Root, model: Any, venv: Any, i: int, watch: ObjectStore) -> None:
    """One save; training goes on until the commit (and the upload) are done."""
    folder = ""
    before: set[str] = set()
    if root.uploader is not None:
        folder = root.uploader.key_of(root.manager.folder)
        before = set(watch.listing(folder))
    committed: list[float] = []
    cpu0, started = time.thread_time(), time.perf_counter()
    future = root.manager.save(model, venv, "periodic", metrics={"val_reward": float(i)})
    returned, cpu1 = time.perf_counter(), time.thread_time()
    future.add_done_callback(partial(_record_time, committed))
    watcher = ZipWatch(watch, folder, before) if root.uploader is not None else None
    if watcher is not None:
        watcher.start()
    _train(model)
    while root.busy() or (watcher is not None and watcher.is_alive()):
        _train(model)
    root.manager.flush()
    outcome = future.result()
    if not outcome.ok:
        raise SystemExit(f"save failed ({root.name} root): {outcome}")
    if i == 0:
        return  # the first round warms up
    root.add(blocked=returned - started, blocked_cpu=cpu1 - cpu0)
    if watcher is not None:
        if watcher.seen is None:
            raise SystemExit("the zip never showed on the bucket")
        root.add(save_visible=watcher.seen - started, commit_visible=watcher.seen - committed[0])


def measure_saves(saves: int, work: Path) -> tuple[Root, Root, Path]:
    """Interleaved saves with a local and an S3 models root; returns both roots and the
    staged checkpoint folder of the S3 one."""
    model = make_model(BIG)
    venv = model.get_vec_normalize_env()
    assert venv is not None
    _train(model)  # optimizer state exists, as in a real save
    uploader = Uploader(store_at("models"), work / "staging")
    local = make_root("local", work / "local")
    remote = make_root("s3", work / "staging", uploader)
    watch = store_at("models")
    try:
        for i in range(saves + 1):
            order = (local, remote) if i % 2 == 0 else (remote, local)
            for root in order:
                save_once(root, model, venv, i, watch)
    finally:
        local.manager.close()
        remote.manager.close()
        report = uploader.close(timeout=120)
    if not report.complete:
        raise SystemExit(f"uploads left: {report.lines()}")
    return local, remote, remote.manager.folder


# --------------------------------------------------------------------- 2: throughput


def checkpoint_files(folder: Path) -> list[Path]:
    """The zips of ``folder`` and their companions."""
    out: list[Path] = []
    for info in list_checkpoints(folder, include_legacy=False):
        base = info.filename[: -len(".zip")]
        out += sorted(p for p in folder.iterdir() if p.name.startswith(base))
    return out


def stage_copy(files: list[Path], staging: Path) -> Path:
    """Hard links of ``files`` in ``staging/ckpt`` (a staging folder with nothing uploaded)."""
    folder = staging / "ckpt"
    folder.mkdir(parents=True)
    for path in files:
        os.link(path, folder / path.name)
    return folder


def read_objects(store: ObjectStore, folder: str, chunk: int) -> float:
    """Seconds to read every object under ``folder``, ``chunk`` bytes a read (each read is
    a ranged GET)."""
    started = time.perf_counter()
    for key in store.tree(folder):
        with store.fs.open_input_file(store.uri.child(f"{folder}/{key}").path) as src:
            while src.read_buffer(chunk):
                pass
    return time.perf_counter() - started


def time_uploader(files: list[Path], work: Path, n: int) -> tuple[float, float, float]:
    """Seconds for the Uploader to catch up a staging folder of ``files``, then for a plain
    read of the objects it wrote (one GET per object, as its read-back; then 8 MiB reads)."""
    store = store_at(f"up{n}")
    staging = work / f"up{n}"
    folder = stage_copy(files, staging)
    uploader = Uploader(store, staging)
    started = time.perf_counter()
    queued = uploader.catch_up(folder)
    done = uploader.wait(300)
    took = time.perf_counter() - started
    uploader.close(1)
    if queued != len(list_checkpoints(folder)) or not done:
        raise SystemExit(f"the uploader did not upload the {len(files)} files")
    read = read_objects(store, "ckpt", READ_BACK)
    ranged = read_objects(store, "ckpt", RANGED)
    store.fs.delete_dir(store.uri.path)
    shutil.rmtree(staging)
    return took, read, ranged


def time_copy(files: list[Path], work: Path, n: int) -> float:
    """Seconds for ``pyarrow.fs.copy_files`` of ``files`` to the same server."""
    from pyarrow import fs as pafs

    store = store_at(f"plain{n}")
    staging = work / f"plain{n}"
    folder = stage_copy(files, staging)
    started = time.perf_counter()
    pafs.copy_files(
        str(folder),
        store.uri.child("ckpt").path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=store.fs,
    )
    took = time.perf_counter() - started
    if len(store.listing("ckpt")) != len(files):
        raise SystemExit("copy_files did not copy every file")
    store.fs.delete_dir(store.uri.path)
    shutil.rmtree(staging)
    return took


def measure_uploads(files: list[Path], rounds: int, work: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"uploader": [], "read": [], "ranged": [], "copy": []}
    for n in range(rounds):
        if n % 2 == 0:
            up, read, ranged = time_uploader(files, work, n)
            copy = time_copy(files, work, n)
        else:
            copy = time_copy(files, work, n)
            up, read, ranged = time_uploader(files, work, n)
        for key, value in (("uploader", up), ("read", read), ("ranged", ranged), ("copy", copy)):
            times[key].append(value)
    return times


# --------------------------------------------------------------------- report


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:7.1f} {min(values) * 1e3:7.1f}"


def print_saves(local: Root, remote: Root) -> float:
    ratio = statistics.median(remote.samples["blocked"]) / statistics.median(
        local.samples["blocked"]
    )
    n = len(local.samples["blocked"])
    print(f"training thread blocked per save, 50 MB policy ({n} saves per root, interleaved)")
    print(f"{'models root':<40} {'median ms':>9} {'best ms':>7} | {'CPU median, best':>16}")
    for root, label in ((local, "local folder"), (remote, "s3:// (staging + uploader)")):
        s = root.samples
        print(f"{label:<40} {_ms(s['blocked']):>17} | {_ms(s['blocked_cpu']):>16}")
    print(
        f"ratio s3 / local (medians): {ratio:.2f}; target <= {TARGET_BLOCK:.2f}: "
        f"{verdict(ratio <= TARGET_BLOCK)}\n"
    )
    return ratio


def print_uploads(times: dict[str, list[float]], mb: float, count: int) -> float:
    best = {k: min(v) for k, v in times.items()}
    print(
        f"upload of the run's {count} files ({mb:.1f} MB), best / median of "
        f"{len(times['copy'])} rounds, interleaved"
    )
    print(f"{'method':<52} {'best s':>6} {'MB/s':>6} {'median s':>8}")
    rows = (
        ("uploader", "Uploader: verify, put, read back + compare, shard"),
        ("copy", "pyarrow.fs.copy_files (plain copy)"),
        ("read", "plain read of its objects, one GET each (read-back)"),
        ("ranged", "plain read of its objects, 8 MiB reads (ranged GETs)"),
    )
    for key, label in rows:
        med = statistics.median(times[key])
        print(f"{label:<52} {best[key]:>6.2f} {mb / best[key]:>6.1f} {med:>8.2f}")
    paired = paired_ratios(times)
    ratio = statistics.median(paired)
    print(
        "Uploader / plain copy throughput, round by round: " + ", ".join(f"{r:.2f}" for r in paired)
    )
    print(
        f"median of the rounds: {ratio:.2f}x (best against best: "
        f"{best['copy'] / best['uploader']:.2f}x); target >= {TARGET_THROUGHPUT:.2f}x: "
        f"{verdict(ratio >= TARGET_THROUGHPUT)}; the read-back's plain read is "
        f"{best['read'] / best['uploader']:.0%} of the Uploader's time, beside other work\n"
    )
    return ratio


def paired_ratios(times: dict[str, list[float]]) -> list[float]:
    """Plain copy time / Uploader time of each round: the two ran back to back, on the server
    as it was then. Their median is the throughput figure: robust to a round that went
    unusually well or badly for either (``copy_files`` sends every file at once, and its time
    has a lucky tail that best against best would compare with a typical Uploader round)."""
    return [copy / up for copy, up in zip(times["copy"], times["uploader"], strict=True)]


def figures(
    local: Root, remote: Root, times: dict[str, list[float]], mb: float, ratios: tuple[float, ...]
) -> list[Figure]:
    block, throughput = ratios
    best = {k: min(v) for k, v in times.items()}
    vis = remote.samples["save_visible"]
    com = remote.samples["commit_visible"]
    return [
        Figure(
            "object_store",
            "training thread blocked per save, 50 MB policy: s3:// root / local root (medians)",
            f"<= {TARGET_BLOCK:.2f}",
            f"{statistics.median(remote.samples['blocked']) * 1e3:.1f} ms vs "
            f"{statistics.median(local.samples['blocked']) * 1e3:.1f} ms ({block:.2f})",
            block <= TARGET_BLOCK,
        ),
        Figure(
            "object_store",
            "upload throughput: Uploader (verify, put, read back) / pyarrow copy_files, median "
            "of the rounds' ratios (best against best)",
            f">= {TARGET_THROUGHPUT:.2f}",
            f"{throughput:.2f}: {mb / statistics.median(times['uploader']):.0f} vs "
            f"{mb / statistics.median(times['copy']):.0f} MB/s median "
            f"({best['copy'] / best['uploader']:.2f}: {mb / best['uploader']:.0f} vs "
            f"{mb / best['copy']:.0f} MB/s best)",
            throughput >= TARGET_THROUGHPUT,
        ),
        Figure(
            "object_store",
            "the read-back: plain read of the same objects, one GET each (MB/s, share of the "
            "Uploader's time); in 8 MiB reads",
            "",
            f"{mb / best['read']:.0f} MB/s, {best['read'] / best['uploader']:.0%}; "
            f"{mb / best['ranged']:.0f} MB/s",
        ),
        Figure(
            "object_store",
            "seconds from a save to its zip listed on the bucket (from its commit), median",
            "",
            f"{statistics.median(vis):.2f} s ({statistics.median(com):.2f} s); "
            f"max {max(vis):.2f} s",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=4, help="measured saves per models root")
    parser.add_argument("--rounds", type=int, default=5, help="upload rounds per method")
    parser.add_argument("--quick", action="store_true", help="2 saves per root, 2 rounds")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    saves = min(args.saves, 2) if args.quick else max(1, args.saves)
    rounds = min(args.rounds, 2) if args.quick else max(1, args.rounds)
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="object_store_", dir=args.dir))
    try:
        with moto_server() as endpoint:
            use_server(endpoint)
            local, remote, staged = measure_saves(saves, work)
            files = checkpoint_files(staged)
            mb = sum(p.stat().st_size for p in files) / 1e6
            times = measure_uploads(files, rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    vis, com = remote.samples["save_visible"], remote.samples["commit_visible"]
    one, five, _ = os.getloadavg()
    print(f"\nS3 server: moto on 127.0.0.1 (own process); load average {one:.1f}, {five:.1f}\n")
    block = print_saves(local, remote)
    throughput = print_uploads(times, mb, len(files))
    print(
        f"save -> zip listed on the bucket: median {statistics.median(vis):.2f} s "
        f"(min {min(vis):.2f}, max {max(vis):.2f}); from the commit: "
        f"{statistics.median(com):.2f} s (polled every {POLL * 1e3:.0f} ms)"
    )
    write_figures(args.json, figures(local, remote, times, mb, (block, throughput)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
